// What the sections share: the chosen model, the busy indicator, and one way to show what went wrong.
//
// Every action runs through act(): the busy indicator is cleared whatever happens, and a failure becomes a
// readable message in the page: a model version gone (404) reloads the model list, a server that does not
// answer (stopped, restarting) or is not ready (503) is asked again every 2 s until it is back.

import { ApiError, ready } from "./api.js";
import { $ } from "./view.js";

export const state = {
  // {name, version, latentDim, imageShape, kind, samplers, classes, dataset}
  model: null,
  // the last grid: {seed, count, latents: Float32Array (count × latentDim)}
  samples: null,
  // the drawn digit's code (Float32Array), once encoded
  drawing: null,
};

let busy = 0;
let recover = async () => {};
let waiting = null;

/** `fn(reason)` reloads the models: reason is "gone" (a 404) or "back" (the server answers again). */
export function setRecovery(fn) { recover = fn; }

export function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text || "";
  box.className = kind;
  box.hidden = !text;
}

export function modelLabel(model = state.model) {
  return model ? `${model.name} version ${model.version}` : "the model";
}

/** Run `fn` as the action `what`; never throws: a failure is shown in the page. */
export async function act(what, fn) {
  busy += 1;
  $("busy").hidden = false;
  document.body.dataset.state = "busy";
  try {
    return await fn();
  } catch (error) {
    report(what, error);
    return undefined;
  } finally {
    busy -= 1;
    if (busy === 0) {
      $("busy").hidden = true;
      document.body.dataset.state = "idle";
    }
  }
}

export function report(what, error) {
  const text = (error && error.message) || String(error);
  if (error instanceof ApiError && error.status === 404 && state.model && error.path.startsWith("/v2/models/")) {
    showMessage(`${what}: ${text}. ${modelLabel()} is no longer served: the model list was reloaded, `
      + "pick a model from it.");
    recover("gone").catch((e) => report("Reloading the model list", e));
  } else if (error instanceof ApiError && (error.status === 0 || error.status === 503)) {
    showMessage(`${what}: ${text}. Asking the server again every 2 s…`);
    waitForServer();
  } else {
    showMessage(`${what}: ${text}`);
  }
}

function waitForServer() {
  if (waiting) return;
  waiting = setInterval(async () => {
    let up = false;
    try {
      up = await ready();
    } catch { /* an odd answer: ask again */ }
    if (!up) return;
    clearInterval(waiting);
    waiting = null;
    showMessage("The server answers again; the model list was reloaded.", "info");
    await act("Reloading the model list", () => recover("back"));
  }, 2000);
}
