// Bank: page through snippets (kind, label, name, parents, source image), search, delete run-time ones.
import { api } from "./api.js";
import { $, busy, el, intOrNull, showError, snippetTile } from "./ui.js";

let hooks = {};

function actions(s) {
  const acts = [
    el("button", { type: "button", class: "mini", onclick: () => hooks.onPick("a", s.id), title: "interpolation A" }, "A"),
    el("button", { type: "button", class: "mini", onclick: () => hooks.onPick("b", s.id), title: "interpolation B" }, "B"),
    el("button", { type: "button", class: "mini", onclick: () => hooks.onGenerate(s.id), title: "generate from it" }, "gen"),
    el("button", { type: "button", class: "mini", onclick: () => search(s.id), title: "nearest snippets" }, "near"),
  ];
  if (s.kind !== "base") {
    acts.push(el("button", { type: "button", class: "mini danger", title: "delete from the bank",
      onclick: () => remove(s.id) }, "del"));
  }
  return acts;
}

export async function load() {
  const box = $("#browse-message"), pool = $("#browse-pool").value, offset = intOrNull($("#browse-offset")) ?? 0;
  await busy($("#browse-load"), box, async () => {
    const page = await api(`/api/snippets?pool=${pool}&offset=${offset}&limit=24`);
    const last = Math.min(page.offset + page.items.length, page.total);
    $("#browse-info").textContent = page.total === 0
      ? `the ${pool} pool is empty (bank v${page.version})`
      : `${pool} pool: snippets ${page.offset + 1}–${last} of ${page.total} · bank v${page.version}`;
    $("#browse").replaceChildren(...page.items.map((s) => snippetTile(s, { actions: actions(s) })));
    $("#browse").dataset.total = page.total;
  });
}

async function search(id) {
  $("#browse-query").value = id;
  await busy($("#browse-search"), $("#browse-message"), async () => {
    const out = await api("/api/search", { method: "POST", json: { id, k: 24 } });
    $("#browse-info").textContent = `the ${out.neighbors.length} snippets nearest to #${id} (first: itself)`;
    $("#browse").replaceChildren(...out.neighbors.map((s) => snippetTile(s, { distance: s.distance, actions: actions(s) })));
  });
}

async function remove(id) {
  const box = $("#browse-message");
  try {
    await api(`/api/snippets/${id}`, { method: "DELETE" });
    showError(box, null);
    hooks.onChange();
    await load();
  } catch (err) {
    showError(box, err);
  }
}

export function initBrowse(h) {
  hooks = h;
  $("#browse-form").addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
  $("#browse-pool").addEventListener("change", () => { $("#browse-offset").value = 0; load(); });
  const step = (dir) => {
    const total = Number($("#browse").dataset.total || 0), cur = intOrNull($("#browse-offset")) ?? 0;
    $("#browse-offset").value = Math.max(0, Math.min(cur + dir * 24, Math.max(0, total - 1)));
    load();
  };
  $("#browse-prev").addEventListener("click", () => step(-1));
  $("#browse-next").addEventListener("click", () => step(1));
  $("#browse-search").addEventListener("click", () => {
    const id = intOrNull($("#browse-query"));
    if (id === null) showError($("#browse-message"), { message: "type a snippet id to search around" });
    else search(id);
  });
}
