// For a model with more than two latent units: one slider per unit over the code of a picked sample; each
// change decodes the code (one request to <model>.decoder; moves while a request is out coalesce into one).

import { infer } from "./api.js";
import { act, state } from "./core.js";
import { $, drawImages } from "./view.js";

let code = null;  // Float32Array (latentDim)
let inFlight = false;
let again = false;

export function init() {
  $("sliders").addEventListener("input", (event) => {
    const unit = Number(event.target.dataset.unit);
    if (!code || Number.isNaN(unit)) return;
    code[unit] = Number(event.target.value);
    event.target.nextElementSibling.textContent = code[unit].toFixed(2);
    schedule();
  });
}

export function reset(model) {
  $("traversal-card").hidden = model.latentDim === 2;
  code = null;
  $("traversal-source").textContent = "";
  const canvas = $("traversal-image");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  $("sliders").replaceChildren(...Array.from({ length: model.latentDim }, (_, unit) => {
    const label = document.createElement("label");
    const input = Object.assign(document.createElement("input"),
      { type: "range", min: "-3", max: "3", step: "0.01", value: "0" });
    input.dataset.unit = String(unit);
    label.append(`z${unit + 1}`, input, document.createElement("output"));
    return label;
  }));
}

/** Start from a code ({label, latent}): the sliders take its values, wider than ±3 where it needs. */
export function setFrom(source) {
  if (!state.model || state.model.latentDim === 2) return;
  code = Float32Array.from(source.latent);
  $("sliders").querySelectorAll("input").forEach((input, unit) => {
    const reach = Math.max(3, Math.ceil(Math.abs(code[unit]) * 1.5));
    Object.assign(input, { min: String(-reach), max: String(reach), value: String(code[unit]) });
    input.nextElementSibling.textContent = code[unit].toFixed(2);
  });
  $("traversal-source").textContent = `Starting from ${source.label}.`;
  schedule();
}

function schedule() {
  if (inFlight) {
    again = true;
    return;
  }
  inFlight = true;
  act("Decode the traversal", decode).finally(() => {
    inFlight = false;
    if (again) {
      again = false;
      schedule();
    }
  });
}

async function decode() {
  const model = state.model;
  if (!code || code.length !== model.latentDim) return;
  const out = await infer(`${model.name}.decoder`, model.version,
    [{ name: "LATENTS", datatype: "FP32", shape: [1, code.length], data: Float32Array.from(code) }],
    { outputs: ["IMAGES"] });
  if (model !== state.model) return;
  drawImages($("traversal-image"), out.IMAGES, 1);
}
