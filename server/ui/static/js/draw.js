// Draw a digit: the strokes are cropped, scaled into a 20×20 box and centred by their mass in 28×28, as
// MNIST's digits were; <model>.encoder gives its code (UINT8 in, LATENTS out) and <model>.decoder its
// reconstruction. On a 2-D model the code is marked on the plane.

import { infer } from "./api.js";
import { act, showMessage, state } from "./core.js";
import { $, drawGrid, drawImages, formatCode, greyPixels } from "./view.js";

const SIDE = 28;
const BOX = 20;
let hooks = { encoded: () => {}, useAs: () => {} };
let drawing = false;
let inked = false;

export function init(callbacks) {
  hooks = callbacks;
  const canvas = $("draw-canvas");
  clear();
  canvas.addEventListener("pointerdown", (event) => {
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    stroke(event, true);
  });
  canvas.addEventListener("pointermove", (event) => drawing && stroke(event, false));
  const end = () => {
    if (!drawing) return;
    drawing = false;
    act("Encode your drawing", encode);
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  $("draw-clear").addEventListener("click", () => {
    clear();
    reset();
  });
  $("draw-to-a").addEventListener("click", () => state.drawing && hooks.useAs("A", state.drawing));
  $("draw-to-b").addEventListener("click", () => state.drawing && hooks.useAs("B", state.drawing));
}

export function reset() {
  for (const id of ["draw-recon", "draw-input"]) {
    const c = $(id);
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
  }
  $("draw-code").textContent = inked ? "" : "Draw a digit on the black square.";
  $("draw-to-a").disabled = true;
  $("draw-to-b").disabled = true;
  if (inked && state.model) act("Encode your drawing", encode);
}

function clear() {
  const canvas = $("draw-canvas");
  const context = canvas.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, canvas.width, canvas.height);
  inked = false;
}

function stroke(event, start) {
  const canvas = $("draw-canvas");
  const rect = canvas.getBoundingClientRect();
  const x = ((event.clientX - rect.left) / rect.width) * canvas.width;
  const y = ((event.clientY - rect.top) / rect.height) * canvas.height;
  const context = canvas.getContext("2d");
  Object.assign(context, { strokeStyle: "#fff", fillStyle: "#fff", lineWidth: 22, lineCap: "round", lineJoin: "round" });
  if (start) {
    context.beginPath();
    context.arc(x, y, 11, 0, 2 * Math.PI);
    context.fill();
    context.beginPath();
    context.moveTo(x, y);
  } else {
    context.lineTo(x, y);
    context.stroke();
  }
  inked = true;
}

/** The drawing as the encoder's 28×28 uint8 input, or null if nothing is drawn. */
function encoderInput() {
  const canvas = $("draw-canvas");
  const grey = greyPixels(canvas);
  let [left, top, right, bottom] = [canvas.width, canvas.height, -1, -1];
  for (let p = 0; p < grey.length; p += 1) {
    if (grey[p] > 0) {
      const x = p % canvas.width;
      const y = Math.floor(p / canvas.width);
      [left, top, right, bottom] = [Math.min(left, x), Math.min(top, y), Math.max(right, x), Math.max(bottom, y)];
    }
  }
  if (right < 0) return null;
  const [w, h] = [right - left + 1, bottom - top + 1];
  const scale = BOX / Math.max(w, h);
  const boxed = document.createElement("canvas");
  boxed.width = SIDE;
  boxed.height = SIDE;
  const context = boxed.getContext("2d");
  context.imageSmoothingQuality = "high";
  context.drawImage(canvas, left, top, w, h, (SIDE - w * scale) / 2, (SIDE - h * scale) / 2, w * scale, h * scale);
  // shift so the centre of mass sits at the centre, as MNIST's preprocessing did
  const pixels = greyPixels(boxed);
  let [mass, mx, my] = [0, 0, 0];
  pixels.forEach((v, p) => {
    mass += v;
    mx += v * (p % SIDE);
    my += v * Math.floor(p / SIDE);
  });
  const [dx, dy] = [Math.round((SIDE - 1) / 2 - mx / mass), Math.round((SIDE - 1) / 2 - my / mass)];
  const centred = new Uint8Array(SIDE * SIDE);
  for (let y = 0; y < SIDE; y += 1) {
    for (let x = 0; x < SIDE; x += 1) {
      const [sx, sy] = [x - dx, y - dy];
      if (sx >= 0 && sx < SIDE && sy >= 0 && sy < SIDE) centred[y * SIDE + x] = pixels[sy * SIDE + sx];
    }
  }
  return centred;
}

async function encode() {
  const model = state.model;
  const pixels = encoderInput();
  if (!pixels) {
    showMessage("Draw a digit first: the canvas is empty.", "info");
    return;
  }
  drawGrid($("draw-input"), pixels, 1, SIDE, SIDE, 1);
  const encoded = await infer(`${model.name}.encoder`, model.version,
    [{ name: "IMAGES", datatype: "UINT8", shape: [1, 1, SIDE, SIDE], data: pixels }], { outputs: ["LATENTS"] });
  const code = encoded.LATENTS.data;
  const decoded = await infer(`${model.name}.decoder`, model.version,
    [{ name: "LATENTS", datatype: "FP32", shape: [1, code.length], data: code }], { outputs: ["IMAGES"] });
  if (model !== state.model) return;
  drawImages($("draw-recon"), decoded.IMAGES, 1);
  const text = $("draw-code");
  text.textContent = `its code: ${formatCode(code)}${model.latentDim === 2 ? " (the green ring on the plane)" : ""}`;
  text.dataset.z = JSON.stringify(Array.from(code));
  state.drawing = code;
  $("draw-to-a").disabled = false;
  $("draw-to-b").disabled = false;
  hooks.encoded(code);
}
