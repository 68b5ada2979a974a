// Generate: a grid from seed, n, steps, sampler, cfg and pool, with progress while it runs.
import { api, ApiError } from "./api.js";
import { $, busy, imageTile, intOrNull } from "./ui.js";

// Follow a run's event stream until `done`; onProgress gets each progress event.
function follow(runId, onProgress) {
  return new Promise((resolve, reject) => {
    const source = new EventSource(`/api/runs/${runId}/events`);
    let finished = false;
    source.addEventListener("progress", (e) => onProgress(JSON.parse(e.data)));
    source.addEventListener("done", (e) => {
      finished = true;
      source.close();
      const done = JSON.parse(e.data);
      if (done.status === "succeeded") resolve(done.result);
      else reject(new ApiError(done.http_status || 502, done.error.code, done.error.message));
    });
    source.onerror = () => {
      if (finished) return;
      source.close();
      reject(new ApiError(0, "stream", "lost the connection to the playground while generating; is it still running?"));
    };
  });
}

function showProgress(p) {
  const bar = $("#gen-progress"), text = $("#gen-progress-text");
  bar.hidden = false;
  if (p.step === null || p.step === undefined || !p.steps) {
    bar.removeAttribute("value");
    text.textContent = p.mode === "direct"
      ? "generating… (this generator has no job API yet, so there is no step count)" : "queued…";
  } else {
    bar.max = p.steps;
    bar.value = p.step;
    text.textContent = `step ${p.step} / ${p.steps}`;
  }
  // A preview is one PNG of the whole batch's current estimate; it stays outside #gallery, which holds results.
  if (typeof p.preview === "string" && p.preview) {
    $("#gen-preview-img").src = `data:image/png;base64,${p.preview}`;
    $("#gen-preview").hidden = false;
  }
}

export function renderGallery(box, result, onPick) {
  box.replaceChildren(...result.images.map((img) => imageTile(img, { bankVersion: result.bank_version, onPick })));
}

export function initGenerate({ onPick }) {
  $("#seed-random").addEventListener("click", () => { $("#seed").value = Math.floor(Math.random() * 1e6); });
  $("#generate-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = $("#generate"), box = $("#gen-message");
    const body = { n: intOrNull($("#n")) ?? 1, seed: intOrNull($("#seed")) ?? 0, pool: $("#pool").value,
      cfg_scale: Number.parseFloat($("#cfg").value || "1") };
    const steps = intOrNull($("#steps")), pin = intOrNull($("#gen-snippet"));
    if (steps !== null) body.steps = steps;
    if ($("#sampler").value) body.sampler = $("#sampler").value;
    if (pin !== null) body.snippet_ids = [pin];
    const t0 = performance.now();
    const result = await busy(button, box, async () => {
      const run = await api("/api/runs", { method: "POST", json: body });
      showProgress({ step: null, mode: run.mode });
      try {
        return await follow(run.id, showProgress);
      } finally {
        $("#gen-progress").hidden = true;
        $("#gen-preview").hidden = true;
      }
    });
    if (result) {
      renderGallery($("#gallery"), result, onPick);
      $("#gen-progress-text").textContent =
        `${result.images.length} images · ${result.sampler}, ${result.steps} steps · model ${result.model} · ` +
        `bank v${result.bank_version} · ${((performance.now() - t0) / 1000).toFixed(1)} s`;
    } else {
      $("#gen-progress-text").textContent = "";
    }
  });
}

