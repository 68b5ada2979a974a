// Interpolate: a strip of images from snippet A to snippet B along alpha, all from the same noise.
import { api, ApiError } from "./api.js";
import { $, busy, el, imageTile, intOrNull, showError } from "./ui.js";

function request(alphas) {
  const a = intOrNull($("#interp-a")), b = intOrNull($("#interp-b"));
  if (a === null || b === null) {
    throw new ApiError(0, "missing_ids", "give two snippet ids, A and B (type them, or pick them from search results or the bank)");
  }
  const body = { a, b, method: $("#interp-method").value, seed: intOrNull($("#interp-seed")) ?? 0,
    keep: $("#interp-keep").checked };
  if (alphas) body.alphas = alphas;
  else body.points = intOrNull($("#interp-points")) ?? 6;
  const steps = intOrNull($("#steps"));
  if (steps !== null) body.steps = steps;
  if ($("#sampler").value) body.sampler = $("#sampler").value;
  return body;
}

function tile(item, temporary) {
  return imageTile(item, { alpha: item.alpha, temporary, bankVersion: item.bank_version });
}

let timer = null;

async function renderOne() {
  const box = $("#interp-message"), alpha = Number.parseFloat($("#interp-alpha").value);
  try {
    const out = await api("/api/interpolate", { method: "POST", json: request([alpha]) });
    $("#interp-single").replaceChildren(tile(out.items[0], !out.kept));
    showError(box, null);
  } catch (err) {
    showError(box, err);
  }
}

export function initInterpolate({ onChange }) {
  const slider = $("#interp-alpha");
  slider.addEventListener("input", () => {
    $("#interp-alpha-value").textContent = Number(slider.value).toFixed(2);
    clearTimeout(timer);
    timer = setTimeout(renderOne, 250);
  });
  $("#interp-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const bar = $("#interp-progress");
    const out = await busy($("#interpolate"), $("#interp-message"), async () => {
      const body = request(null);
      bar.hidden = false;
      try {
        return await api("/api/interpolate", { method: "POST", json: body });
      } finally {
        bar.hidden = true;
      }
    });
    if (out) {
      $("#strip").replaceChildren(...out.items.map((it) => tile(it, !out.kept)));
      slider.disabled = false;
      if (out.kept) onChange();
    }
  });
}

export function pick(which, id) {
  $(which === "a" ? "#interp-a" : "#interp-b").value = id;
  $("#interp-a").closest("section").scrollIntoView({ behavior: "smooth", block: "start" });
  showError($("#interp-message"), null);
}

