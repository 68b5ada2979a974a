// Small DOM helpers and the image tiles every view uses.
import { sourceUrl } from "./api.js";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export const $ = (sel) => document.querySelector(sel);

export function showError(box, err) {
  box.textContent = err ? `${err.message}${err.status ? ` (HTTP ${err.status})` : ""}` : "";
}

// Run `work` with the button disabled; errors go to `box`. Returns work's value, or undefined on error.
export async function busy(button, box, work) {
  button.disabled = true;
  showError(box, null);
  try {
    return await work();
  } catch (err) {
    showError(box, err);
    return undefined;
  } finally {
    button.disabled = false;
  }
}

export function intOrNull(input) {
  const v = input.value.trim();
  return v === "" ? null : Number.parseInt(v, 10);
}

// A generated image: PNG, its seed, snippet id and bank version, a download link and the source behind it.
export function imageTile(img, { bankVersion, alpha, temporary, onPick } = {}) {
  const src = `data:image/png;base64,${img.png}`;
  const sid = img.snippet_id;
  const name = `gmem-seed${img.seed}-snippet${sid ?? "none"}${alpha !== undefined ? `-alpha${alpha.toFixed(2)}` : ""}.png`;
  const provenance = sourceUrl(sid);
  const main = el("img", { src, alt: `sample, seed ${img.seed}, snippet ${sid}`, class: "sample",
    "data-seed": img.seed, "data-snippet-id": sid ?? "" });
  // The source image is a background, not an <img>: the view's <img> elements are exactly its results.
  const picture = provenance
    ? el("div", { class: "pair" }, main, el("div", { class: "src", role: "img", "data-source": provenance,
        style: `background-image: url("${provenance}")`, "aria-label": `training image behind snippet ${sid}`,
        title: `training image behind snippet ${sid}` }))
    : main;
  const caption = el("figcaption", {},
    alpha !== undefined ? el("div", {}, "α ", el("span", { class: "k" }, alpha.toFixed(2))) : null,
    el("div", {}, "seed ", el("span", { class: "k" }, img.seed)),
    el("div", {}, "snippet ", el("span", { class: "k" }, sid ?? "–"), temporary ? " (temp.)" : ""),
    el("div", {}, "bank v", el("span", { class: "k" }, bankVersion ?? img.bank_version ?? "?")));
  const acts = el("div", { class: "acts" }, el("a", { href: src, download: name, title: "download as PNG" }, "PNG"),
    onPick && sid !== null && sid !== undefined && !temporary
      ? [el("button", { type: "button", class: "mini", onclick: () => onPick("a", sid), title: "use as interpolation A" }, "A"),
         el("button", { type: "button", class: "mini", onclick: () => onPick("b", sid), title: "use as interpolation B" }, "B")]
      : null);
  return el("figure", { class: "tile" }, picture, caption, acts);
}

// A bank snippet: its source image (or a placeholder), id, kind, label, name, parents.
export function snippetTile(s, { distance, actions = [] } = {}) {
  const pic = s.source
    ? el("img", { src: s.source, alt: `source image of snippet ${s.id}`, class: "src" })
    : el("div", { class: "placeholder" }, s.kind === "base" ? "no source" : s.kind);
  const caption = el("figcaption", {},
    el("div", {}, el("span", { class: "k" }, `#${s.id}`), " ", el("span", { class: `badge ${s.kind}` }, s.kind)),
    s.label !== null && s.label !== undefined ? el("div", {}, "label ", el("span", { class: "k" }, s.label)) : null,
    s.name ? el("div", { title: s.name }, s.name.length > 28 ? `${s.name.slice(0, 27)}…` : s.name) : null,
    s.parents && s.parents.length ? el("div", {}, `parents ${s.parents.join(", ")}`,
      s.alpha !== null && s.alpha !== undefined ? ` α=${Number(s.alpha).toFixed(2)}` : "") : null,
    distance !== undefined ? el("div", {}, "d ", el("span", { class: "k" }, distance.toFixed(3))) : null);
  return el("figure", { class: "tile", "data-snippet-id": s.id }, pic, caption,
    actions.length ? el("div", { class: "acts" }, actions) : null);
}
