// The page: service status in the header, and the four views wired together.
import { api, state } from "./api.js";
import { initBrowse, load as loadBank } from "./browse.js";
import { initGenerate } from "./generate.js";
import { initInsert } from "./insert.js";
import { initInterpolate, pick } from "./interpolate.js";
import { $, el } from "./ui.js";

const POLL_MS = 5000;

function pill(kind, ...content) {
  return el("span", { class: `pill ${kind}` }, ...content);
}

function renderStatus(s) {
  const parts = [];
  const b = s.bank, g = s.generator;
  const trouble = (name, x) => (x.state === "not_ready" ? `${name} not ready: ` : `${name} down: `);
  if (!b.ok) parts.push(pill("bad", el("b", {}, trouble("bank", b)), b.error));
  else {
    parts.push(pill(b.ready ? "ok" : "warn", el("b", {}, b.ready ? "bank ready" : "bank not ready"),
      ` · v${b.version} · ${b.size} snippets (${b.base_size} base) · ${b.encoder} · rank ${b.rank}`,
      b.source ? ` · ${b.source}` : ""));
    if (b.provenance.loading) parts.push(pill("warn", "opening the source dataset for provenance…"));
    else if (!b.provenance.available) parts.push(pill("warn", "no source images: ", b.provenance.reason || "unknown source"));
  }
  if (!g.ok) parts.push(pill(g.state === "not_ready" ? "warn" : "bad", el("b", {}, trouble("generator", g)), g.error));
  else {
    const m = g.model;
    parts.push(pill(g.ready ? "ok" : "warn", el("b", {}, g.ready ? "generator ready" : "generator not ready"),
      ` · ${m.id} · ${m.resolution}×${m.resolution}×${m.channels} · ${(m.parameters / 1e6).toFixed(1)}M params · `,
      g.jobs ? "step progress (jobs)" : "no job API (indeterminate progress)"));
  }
  if (!s.playground.token_configured) parts.push(pill("warn", "no GMEM_BANK_TOKEN on the playground: edits are refused"));
  $("#status").replaceChildren(...parts);
  $("#status").dataset.bank = b.ok ? (b.ready ? "ready" : "not-ready") : "down";
  $("#status").dataset.generator = g.ok ? (g.ready ? "ready" : "not-ready") : "down";
  $("#status").dataset.provenance = b.ok ? (b.provenance.loading ? "loading" : String(b.provenance.available)) : "unknown";
  // While the source dataset opens, ask again soon so the source images appear without waiting a full poll.
  if (b.ok && b.provenance.loading) setTimeout(refreshStatus, 1000);
}

function fillSamplers(g) {
  const select = $("#sampler");
  if (!g.ok || select.options.length > 1) return;
  for (const name of g.model.samplers) select.append(el("option", { value: name }, name));
  $("#steps").placeholder = `model's (${g.model.default_steps})`;
}

// A model trained without a CFG null refuses cfg != 1 (the page sends no negative snippet): show cfg 1, disabled.
function applyCfg(g) {
  const input = $("#cfg");
  const off = g.ok && g.model.trained_null === false;
  if (off) input.value = "1";
  input.disabled = off;
  input.title = off
    ? "this model was trained without a CFG null (p_uncond 0), so guidance is off: cfg 1"
    : "classifier-free guidance scale; 1 = none";
}

export async function refreshStatus() {
  try {
    const s = await api("/api/status");
    state.status = s;
    renderStatus(s);
    fillSamplers(s.generator);
    applyCfg(s.generator);
    return s;
  } catch (err) {
    $("#status").replaceChildren(pill("bad", el("b", {}, "playground unreachable: "), err.message));
    $("#status").dataset.bank = $("#status").dataset.generator = "unknown";
    return null;
  }
}

function onGenerate(id) {
  $("#gen-snippet").value = id;
  $("#generate-view").scrollIntoView({ behavior: "smooth" });
  $("#generate").click();
}

const hooks = { onPick: pick, onChange: refreshStatus, onGenerate };
initGenerate(hooks);
initInsert(hooks);
initInterpolate(hooks);
initBrowse(hooks);
refreshStatus().then(() => loadBank());
setInterval(refreshStatus, POLL_MS);
