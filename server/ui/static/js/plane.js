// A 2-D model's latent plane: a grid of decodings over [−R, R]² (one request to <model>.decoder), the codes
// of held-out digits drawn over it (one request to <model>.encoder with the images shipped with the page),
// and a click decoding the point under the mouse.

import { infer } from "./api.js";
import { act, modelLabel, state } from "./core.js";
import { $, DIGIT_COLOURS, drawImages, formatCode, numberInput, validationDigits } from "./view.js";

let view = null;   // {model, extent, size} of the decoded grid on show
let codes = null;  // {model, points: Float32Array (n × 2), labels}
let marks = {};    // name → code: "clicked", "picked" (a sample), "drawing"

const MARKS = { clicked: ["#ffffff", "clicked"], picked: ["#ffd400", "picked sample"], drawing: ["#00e676", "your digit"] };

export function init() {
  $("plane-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("Decode the plane", run);
  });
  $("plane-codes").addEventListener("click", (event) => act("Decode the point", () => decodeAt(event)));
}

export function reset(model) {
  $("plane-card").hidden = model.latentDim !== 2;
  view = null;
  codes = null;
  marks = {};
  for (const id of ["plane-grid", "plane-codes", "plane-decoded"]) {
    const canvas = $(id);
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  }
  $("plane-status").textContent = "";
  $("plane-legend").replaceChildren();
  $("plane-point").textContent = "Click the plane to decode a point.";
}

export async function run() {
  const model = state.model;
  const extent = numberInput("extent");
  const size = numberInput("resolution", { integer: true });
  const latents = new Float32Array(size * size * 2);
  for (let row = 0; row < size; row += 1) {
    for (let column = 0; column < size; column += 1) {
      const k = 2 * (row * size + column);
      latents[k] = -extent + ((column + 0.5) * 2 * extent) / size;    // z1 grows to the right
      latents[k + 1] = extent - ((row + 0.5) * 2 * extent) / size;    // z2 grows upwards
    }
  }
  const out = await infer(`${model.name}.decoder`, model.version,
    [{ name: "LATENTS", datatype: "FP32", shape: [size * size, 2], data: latents }], { outputs: ["IMAGES"] });
  if (model !== state.model) return;
  drawImages($("plane-grid"), out.IMAGES, size);
  view = { model, extent, size };
  drawOverlay();
  await loadCodes(model);
  drawOverlay();
}

async function loadCodes(model) {
  if (codes && codes.model === model) return;
  if (model.dataset !== "digits") {
    $("plane-status").textContent = `No held-out images of "${model.dataset}" ship with this page: no codes drawn.`;
    return;
  }
  const digits = await validationDigits();
  let tiles = digits.sets[model.classes || "all"];
  let which = model.classes ? `the validation split of a model of digits ${model.classes}` : "the validation split";
  if (!tiles) {
    const keep = new Set(model.classes.split(",").map(Number));
    tiles = digits.sets.all.filter((t) => keep.has(digits.labels[t]));
    which = `the digits ${model.classes} of the all-digit validation split`;
  }
  const side = digits.tile;
  const images = new Uint8Array(tiles.length * side * side);
  tiles.forEach((t, i) => images.set(digits.pixels.subarray(t * side * side, (t + 1) * side * side), i * side * side));
  const out = await infer(`${model.name}.encoder`, model.version,
    [{ name: "IMAGES", datatype: "UINT8", shape: [tiles.length, 1, side, side], data: images }], { outputs: ["LATENTS"] });
  if (model !== state.model) return;
  codes = { model, points: out.LATENTS.data, labels: tiles.map((t) => digits.labels[t]) };
  const outside = codes.labels.filter((_, i) => Math.max(Math.abs(codes.points[2 * i]),
    Math.abs(codes.points[2 * i + 1])) > view.extent).length;
  $("plane-status").textContent = `${tiles.length} held-out digits (${which}) encoded by ${model.name}.encoder `
    + `(${model.kind === "VAE" ? "the mean of q(z|x)" : "z"}); each dot is one code`
    + (outside ? `; ${outside} lie outside ±${view.extent}: widen the extent to see them.` : ".");
  const shown = [...new Set(codes.labels)].sort();
  $("plane-legend").replaceChildren(...shown.map((digit) => legendItem(DIGIT_COLOURS[digit], `digit ${digit}`)),
    ...Object.values(MARKS).map(([colour, label]) => legendItem(colour, label, true)));
}

function legendItem(colour, label, ring = false) {
  const item = document.createElement("span");
  const dot = document.createElement("i");
  dot.style.background = ring ? "transparent" : colour;
  dot.style.borderColor = colour === "#ffffff" ? "#9aa3b2" : colour;  // a white ring on the white page
  item.append(dot, label);
  return item;
}

function toPixel(canvas, z1, z2) {
  const { extent } = view;
  return [((z1 + extent) / (2 * extent)) * canvas.width, ((extent - z2) / (2 * extent)) * canvas.height];
}

function drawOverlay() {
  const canvas = $("plane-codes");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!view) return;
  if (codes && codes.model === view.model) {
    context.globalAlpha = 0.85;
    for (let i = 0; i < codes.labels.length; i += 1) {
      const [x, y] = toPixel(canvas, codes.points[2 * i], codes.points[2 * i + 1]);
      context.fillStyle = DIGIT_COLOURS[codes.labels[i]];
      context.beginPath();
      context.arc(x, y, 6, 0, 2 * Math.PI);
      context.fill();
    }
    context.globalAlpha = 1;
  }
  for (const [name, code] of Object.entries(marks)) {
    const [x, y] = toPixel(canvas, code[0], code[1]);
    context.strokeStyle = MARKS[name][0];
    context.lineWidth = 4;
    context.beginPath();
    context.arc(x, y, 13, 0, 2 * Math.PI);
    context.stroke();
  }
}

/** Mark a code on the plane ("picked", "drawing"). */
export function mark(name, code) {
  marks[name] = Array.from(code);
  drawOverlay();
}

async function decodeAt(event) {
  if (!view) throw new Error("the plane is not decoded yet: press “Decode the plane”");
  const model = state.model;
  const rect = event.currentTarget.getBoundingClientRect();
  const fx = (event.clientX - rect.left) / rect.width;
  const fy = (event.clientY - rect.top) / rect.height;
  const z = Float32Array.of(-view.extent + fx * 2 * view.extent, view.extent - fy * 2 * view.extent);
  const out = await infer(`${model.name}.decoder`, model.version,
    [{ name: "LATENTS", datatype: "FP32", shape: [1, 2], data: z }], { outputs: ["IMAGES"] });
  if (model !== state.model) return;
  const decoded = $("plane-decoded");
  drawImages(decoded, out.IMAGES, 1);
  decoded.dataset.z = JSON.stringify(Array.from(z));
  $("plane-point").textContent = `z = ${formatCode(z)} decoded by ${modelLabel(model)}`;
  mark("clicked", z);
}
