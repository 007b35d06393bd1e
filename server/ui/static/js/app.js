// The latent explorer: picks a served model (POST /v2/repository/index), reads what it is (model metadata
// and config), and wires the sections. URL hash #model=NAME&version=V opens a given model version.

import * as api from "./api.js";
import { act, report, setRecovery, showMessage, state } from "./core.js";
import * as draw from "./draw.js";
import * as interpolate from "./interpolate.js";
import * as plane from "./plane.js";
import * as samples from "./samples.js";
import * as traversal from "./traversal.js";
import { $ } from "./view.js";

const RETRY_EMPTY_MS = 5000;
let emptyTimer = null;

function isDerived(name, names) {
  return [".decoder", ".encoder"].some((s) => name.endsWith(s) && names.has(name.slice(0, -s.length)));
}

/** The served generators, newest version first: [{name, version}]. */
async function servedModels() {
  const index = await api.repositoryIndex();
  const names = new Set(index.map((e) => e.name));
  return index.filter((e) => e.state === "READY" && !isDerived(e.name, names))
    .sort((a, b) => a.name.localeCompare(b.name) || Number(b.version) - Number(a.version));
}

function wanted() {
  const hash = new URLSearchParams(window.location.hash.slice(1));
  return { name: hash.get("model"), version: hash.get("version") };
}

async function loadModels(reason) {
  const models = await servedModels();
  const select = $("model");
  select.replaceChildren(...models.map((m) => new Option(`${m.name} · version ${m.version}`,
    JSON.stringify([m.name, m.version]))));
  select.disabled = models.length === 0;
  if (models.length === 0) {
    $("main").hidden = true;
    state.model = null;
    select.replaceChildren(new Option("no models"));
    showMessage("The server serves no models right now (POST /v2/repository/index lists no READY version). "
      + `Export one with aegen-export into its repository; this page asks again every ${RETRY_EMPTY_MS / 1000} s.`);
    clearTimeout(emptyTimer);
    emptyTimer = setTimeout(() => act("Listing the models", () => loadModels("empty")), RETRY_EMPTY_MS);
    return;
  }
  if (reason === "empty") showMessage("");
  $("main").hidden = false;
  const current = state.model && models.find((m) => m.name === state.model.name && m.version === state.model.version);
  const hash = wanted();
  const chosen = (reason === "back" && current)
    || models.find((m) => m.name === hash.name && (!hash.version || m.version === hash.version))
    || models[0];
  select.value = JSON.stringify([chosen.name, chosen.version]);
  if (reason !== "back" || !current) await selectModel(chosen.name, chosen.version);
}

async function describe(name, version) {
  const [meta, config, encoder] = await Promise.all([api.metadata(name, version), api.config(name, version),
    api.metadata(`${name}.encoder`, version)]);
  const output = (m, n) => m.outputs.find((o) => o.name === n);
  const parameter = (key) => (config.parameters && config.parameters[key] ? config.parameters[key].string_value : "");
  return {
    name, version,
    latentDim: output(meta, "LATENTS").shape[1],
    imageShape: output(meta, "IMAGES").shape.slice(1),
    kind: output(encoder, "LOG_VARIANCE") ? "VAE" : "AE",
    samplers: (parameter("samplers") || "standard_normal").split(","),
    classes: parameter("classes"),
    dataset: parameter("dataset"),
  };
}

async function selectModel(name, version) {
  state.model = null;
  const model = await describe(name, version);
  state.model = model;
  state.samples = null;
  state.drawing = null;
  window.history.replaceState(null, "", `#model=${encodeURIComponent(name)}&version=${encodeURIComponent(version)}`);
  $("model-info").textContent = `${model.kind} · latent ${model.latentDim} · ${model.dataset || "?"}`
    + (model.classes ? ` (classes ${model.classes})` : "") + ` · samplers: ${model.samplers.join(", ")}`;
  samples.reset(model);
  plane.reset(model);
  traversal.reset(model);
  interpolate.reset(model);
  draw.reset(model);
  await act("Sample", samples.run);
  if (model.latentDim === 2) await act("Decode the plane", plane.run);
  await act("Interpolate", interpolate.run);
}

function init() {
  samples.init({ picked: (source) => (state.model.latentDim === 2 ? plane.mark("picked", source.latent)
    : traversal.setFrom(source)) });
  plane.init();
  traversal.init();
  interpolate.init();
  draw.init({ encoded: (latent) => {
    if (state.model.latentDim === 2) plane.mark("drawing", latent);
  }, useAs: interpolate.useDrawing });
  $("model").addEventListener("change", (event) => {
    const [name, version] = JSON.parse(event.target.value);
    showMessage("");
    act("Opening the model", () => selectModel(name, version));
  });
  api.onCall((method, path, status, ms) => {
    const log = $("api-log");
    const line = document.createElement("li");
    line.textContent = `${method} ${path} → ${status} (${ms.toFixed(0)} ms)`;
    log.prepend(line);
    while (log.children.length > 12) log.lastChild.remove();
  });
  setRecovery(loadModels);
  window.addEventListener("hashchange", () => {
    const { name, version } = wanted();
    if (!state.model || name !== state.model.name || (version && version !== state.model.version)) {
      showMessage("");
      act("Opening the model", () => loadModels("link"));
    }
  });
  window.addEventListener("unhandledrejection", (event) => report("Unexpected", event.reason));
  act("Listing the models", () => loadModels("start"));
}

init();
