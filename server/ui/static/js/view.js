// Pictures: uint8 images into canvases, the validation digits' sprite sheet, colours, small DOM helpers.

export const $ = (id) => document.getElementById(id);

// One colour per digit; as in the course's figures, 1s are blue and 8s red.
export const DIGIT_COLOURS = ["#9467bd", "#1f77b4", "#2ca02c", "#ff7f0e", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22", "#d62728", "#17becf"];

/** Draw images (uint8, n × h × w, white on black) into `canvas` as a grid of `columns` tiles. */
export function drawGrid(canvas, pixels, count, h, w, columns) {
  const rows = Math.max(1, Math.ceil(count / columns));
  canvas.width = columns * w;
  canvas.height = rows * h;
  const context = canvas.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, canvas.width, canvas.height);
  const tile = context.createImageData(w, h);
  for (let i = 0; i < count; i += 1) {
    for (let p = 0; p < h * w; p += 1) {
      const v = pixels[i * h * w + p];
      tile.data.set([v, v, v, 255], 4 * p);
    }
    context.putImageData(tile, (i % columns) * w, Math.floor(i / columns) * h);
  }
  canvas.dataset.renders = String(Number(canvas.dataset.renders || 0) + 1);
}

/** An IMAGES output ({shape: [n, 1, h, w], data}) drawn as a grid. */
export function drawImages(canvas, images, columns) {
  const [n, , h, w] = images.shape;
  drawGrid(canvas, images.data, n, h, w, Math.min(columns, n));
}

/** The grey values (uint8) of a canvas's pixels, from its red channel. */
export function greyPixels(canvas) {
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  const grey = new Uint8Array(canvas.width * canvas.height);
  for (let p = 0; p < grey.length; p += 1) grey[p] = data[4 * p];
  return grey;
}

let sheet = null;
/**
 * The held-out digits shipped with the page (digits.png + digits.json, written by
 * `python -m training.explorer_digits`): {pixels: uint8 [count·28·28], labels, sets, tile}.
 */
export async function validationDigits() {
  if (sheet) return sheet;
  const [description, image] = await Promise.all([
    fetch("/ui/digits.json", { cache: "no-store" }).then((r) => {
      if (!r.ok) throw new Error(`GET /ui/digits.json: ${r.status}`);
      return r.json();
    }),
    new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("GET /ui/digits.png failed"));
      img.src = "/ui/digits.png";
    }),
  ]);
  const canvas = document.createElement("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  canvas.getContext("2d").drawImage(image, 0, 0);
  const grey = greyPixels(canvas);
  const { tile, columns, count } = description;
  const pixels = new Uint8Array(count * tile * tile);
  for (let i = 0; i < count; i += 1) {
    const x0 = (i % columns) * tile;
    const y0 = Math.floor(i / columns) * tile;
    for (let y = 0; y < tile; y += 1) {
      const row = grey.subarray((y0 + y) * canvas.width + x0, (y0 + y) * canvas.width + x0 + tile);
      pixels.set(row, (i * tile + y) * tile);
    }
  }
  sheet = { ...description, pixels };
  return sheet;
}

export function formatCode(values, digits = 2) {
  return `(${Array.from(values, (v) => v.toFixed(digits)).join(", ")})`;
}

/** Read a number input, refusing what it cannot take with a message that names it. */
export function numberInput(id, { integer = false } = {}) {
  const element = $(id);
  const value = Number(element.value);
  const label = element.closest("label") ? element.closest("label").textContent.trim() : id;
  const min = element.min === "" ? -Infinity : Number(element.min);
  const max = element.max === "" ? Infinity : Number(element.max);
  if (element.value === "" || !Number.isFinite(value) || (integer && !Number.isInteger(value))
      || value < min || value > max) {
    const range = Number.isFinite(max) ? ` in ${element.min}…${element.max}` : (min > -Infinity ? ` ≥ ${element.min}` : "");
    throw new Error(`${label}: expected ${integer ? "an integer" : "a number"}${range}, got "${element.value}"`);
  }
  return value;
}
