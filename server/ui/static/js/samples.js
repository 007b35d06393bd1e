// New samples: SEED [n, 1] (seed, seed + 1, …), TEMPERATURE and the `sampler` parameter to the generator;
// IMAGES drawn as a grid, LATENTS kept for the traversal and the interpolation.

import { infer } from "./api.js";
import { act, state } from "./core.js";
import { $, drawImages, numberInput } from "./view.js";

const COLUMNS = 8;
let hooks = { picked: () => {} };

export function init(callbacks) {
  hooks = callbacks;
  $("samples-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("Sample", run);
  });
  $("samples-grid").addEventListener("click", (event) => pick(event));
}

export function reset(model) {
  const select = $("sampler");
  const previous = select.value;
  select.replaceChildren(...model.samplers.map((s) => new Option(s.replace("_", " "), s)));
  select.value = model.samplers.includes(previous) ? previous : model.samplers[0];
}

/** The sampler and temperature chosen above: the generator's parameters, also used for seeds elsewhere. */
export function seedInputs(seeds) {
  const temperature = numberInput("temperature");
  return {
    inputs: [
      { name: "SEED", datatype: "UINT64", shape: [seeds.length, 1], data: BigUint64Array.from(seeds, BigInt) },
      { name: "TEMPERATURE", datatype: "FP32", shape: [1, 1], data: Float32Array.of(temperature) },
    ],
    parameters: { sampler: $("sampler").value },
  };
}

export async function run() {
  const model = state.model;
  const count = numberInput("count", { integer: true });
  const seed = numberInput("seed", { integer: true });
  const seeds = Array.from({ length: count }, (_, i) => seed + i);
  const { inputs, parameters } = seedInputs(seeds);
  const out = await infer(model.name, model.version, inputs, { outputs: ["IMAGES", "LATENTS"], parameters });
  if (model !== state.model) return;  // another model was chosen meanwhile
  const grid = $("samples-grid");
  drawImages(grid, out.IMAGES, COLUMNS);
  grid.dataset.seed = String(seed);
  state.samples = { seed, count, latents: out.LATENTS.data };
  choose(0);
}

function choose(i) {
  const { seed, latents } = state.samples;
  const d = state.model.latentDim;
  hooks.picked({ label: `the sample of seed ${seed + i}`, seed: seed + i, latent: latents.slice(i * d, (i + 1) * d) });
}

function pick(event) {
  if (!state.samples) return;
  const grid = event.currentTarget;
  const rect = grid.getBoundingClientRect();
  const columns = Math.min(COLUMNS, state.samples.count);
  const rows = Math.ceil(state.samples.count / columns);
  const i = Math.floor(((event.clientY - rect.top) / rect.height) * rows) * columns
    + Math.floor(((event.clientX - rect.left) / rect.width) * columns);
  if (i < 0 || i >= state.samples.count) return;
  choose(i);
  $(event.shiftKey ? "interp-b" : "interp-a").value = String(state.samples.seed + i);
  $(event.shiftKey ? "interp-b" : "interp-a").dispatchEvent(new Event("input"));
}
