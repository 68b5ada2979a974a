// Insert a style: an image file -> a new snippet, its residual, its nearest snippets, generations from it.
import { api } from "./api.js";
import { $, el, imageTile, intOrNull, showError, snippetTile } from "./ui.js";

async function insert(file, { onPick, onChange }) {
  const box = $("#insert-message"), result = $("#insert-result");
  showError(box, null);
  result.textContent = `inserting ${file.name}…`;
  $("#search-results").replaceChildren();
  $("#insert-gallery").replaceChildren();
  const preview = $("#insert-preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  try {
    const form = new FormData();
    form.append("image", file, file.name);
    const name = $("#insert-name").value.trim();
    if (name) form.append("name", name);
    const created = await api("/api/snippets", { method: "POST", form });
    result.replaceChildren("Inserted snippet ", el("span", { class: "id", id: "inserted-id" }, created.id),
      ` from ${file.name} · bank v${created.version} · projection residual `,
      el("b", {}, created.residual === null ? "n/a" : created.residual.toFixed(3)),
      " ", el("button", { type: "button", class: "mini", onclick: () => onPick("a", created.id) }, "use as A"),
      " ", el("button", { type: "button", class: "mini", onclick: () => onPick("b", created.id) }, "use as B"));
    onChange();
    const near = await api("/api/search", { method: "POST", json: { id: created.id, k: 9 } });
    $("#search-results").replaceChildren(...near.neighbors.filter((n) => n.id !== created.id).map((n) =>
      snippetTile(n, { distance: n.distance, actions: [
        el("button", { type: "button", class: "mini", onclick: () => onPick("a", n.id) }, "A"),
        el("button", { type: "button", class: "mini", onclick: () => onPick("b", n.id) }, "B")] })));
    const n = intOrNull($("#insert-n")) ?? 0;
    if (n > 0) {
      $("#insert-gallery").textContent = "generating…";
      // The Generate form's seed, steps and sampler, so the previews compare with the grid above.
      const body = { n, seed: intOrNull($("#seed")) ?? 0, snippet_ids: [created.id] };
      const steps = intOrNull($("#steps"));
      if (steps !== null) body.steps = steps;
      if ($("#sampler").value) body.sampler = $("#sampler").value;
      const gen = await api("/api/generate", { method: "POST", json: body });
      $("#insert-gallery").replaceChildren(...gen.images.map((img) => imageTile(img, { bankVersion: gen.bank_version })));
    }
  } catch (err) {
    if (!result.querySelector("#inserted-id")) result.textContent = "";
    $("#insert-gallery").replaceChildren();
    showError(box, err);
  }
}

export function initInsert(hooks) {
  const input = $("#upload"), drop = $("#drop");
  input.addEventListener("change", () => {
    if (input.files.length) insert(input.files[0], hooks);
    input.value = "";  // choosing the same file again must insert again
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) insert(e.dataTransfer.files[0], hooks);
  });
}
