// Interpolation: the codes of two seeds (the generator's LATENTS) or of the drawn digit, and the decodings
// of `steps` points on the straight line between them (one request to <model>.decoder).

import { infer } from "./api.js";
import { act, state } from "./core.js";
import { seedInputs } from "./samples.js";
import { $, drawImages, numberInput } from "./view.js";

const drawn = { A: null, B: null };  // a drawn digit's code in place of the seed
const INPUT = { A: "interp-a", B: "interp-b" };

export function init() {
  $("interp-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("Interpolate", run);
  });
  for (const end of ["A", "B"]) {
    $(INPUT[end]).addEventListener("input", () => {
      drawn[end] = null;
      describe();
    });
  }
}

export function reset() {
  drawn.A = null;
  drawn.B = null;
  describe();
  const strip = $("interp-strip");
  strip.getContext("2d").clearRect(0, 0, strip.width, strip.height);
}

/** Use the drawn digit's code as end A or B, and interpolate. */
export function useDrawing(end, code) {
  drawn[end] = Float32Array.from(code);
  describe();
  act("Interpolate", run);
}

function describe() {
  const name = (end) => (drawn[end] ? "your drawing" : `seed ${$(INPUT[end]).value}`);
  $("interp-ends").textContent = `Now: from ${name("A")} to ${name("B")}.`;
}

async function codes(model) {
  const seeds = ["A", "B"].filter((end) => !drawn[end]);
  const found = { ...drawn };
  if (seeds.length) {
    const { inputs, parameters } = seedInputs(seeds.map((end) => numberInput(INPUT[end], { integer: true })));
    const out = await infer(model.name, model.version, inputs, { outputs: ["LATENTS"], parameters });
    seeds.forEach((end, i) => {
      found[end] = out.LATENTS.data.slice(i * model.latentDim, (i + 1) * model.latentDim);
    });
  }
  return [found.A, found.B];
}

export async function run() {
  const model = state.model;
  const steps = numberInput("interp-steps", { integer: true });
  const [a, b] = await codes(model);
  const d = model.latentDim;
  const line = new Float32Array(steps * d);
  for (let k = 0; k < steps; k += 1) {
    const t = k / (steps - 1);
    for (let u = 0; u < d; u += 1) line[k * d + u] = (1 - t) * a[u] + t * b[u];
  }
  const out = await infer(`${model.name}.decoder`, model.version,
    [{ name: "LATENTS", datatype: "FP32", shape: [steps, d], data: line }], { outputs: ["IMAGES"] });
  if (model !== state.model) return;
  drawImages($("interp-strip"), out.IMAGES, steps);
}
