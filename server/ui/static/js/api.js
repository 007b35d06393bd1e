// The server's public REST API (the Open Inference Protocol's HTTP side, docs/oip.md), as this page uses it.
// Every call goes to this page's own origin; nothing else is contacted.
//
// infer() sends inputs with Triton's binary-tensor extension: a JSON header of Inference-Header-Content-Length
// bytes, then each input's raw little-endian bytes; it asks for binary outputs and reads them the same way.

const TIMEOUT_MS = 30000;
const TYPED = {
  UINT8: Uint8Array, FP32: Float32Array, UINT64: BigUint64Array, INT64: BigInt64Array, INT32: Int32Array,
};

export class ApiError extends Error {
  // status 0: the server did not answer at all (stopped, restarting, unreachable)
  constructor(message, status, path) {
    super(message);
    this.status = status;
    this.path = path;
  }
}

const listeners = [];
export function onCall(listener) { listeners.push(listener); }  // (method, path, status, ms) after each call

async function call(method, path, body, headers = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  const started = performance.now();
  let response;
  try {
    response = await fetch(path, { method, body, headers, signal: controller.signal, cache: "no-store" });
  } catch (error) {
    const why = error.name === "AbortError" ? `no answer within ${TIMEOUT_MS / 1000} s`
      : "the server does not answer (stopped or restarting?)";
    listeners.forEach((f) => f(method, path, "—", performance.now() - started));
    throw new ApiError(`${method} ${path}: ${why}`, 0, path);
  } finally {
    clearTimeout(timer);
  }
  listeners.forEach((f) => f(method, path, response.status, performance.now() - started));
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = (await response.json()).error || detail;
    } catch { /* not JSON: keep the status text */ }
    throw new ApiError(`${method} ${path}: ${response.status} ${detail}`, response.status, path);
  }
  return response;
}

export async function getJSON(path) {
  return (await call("GET", path)).json();
}

export async function ready() {
  try {
    await call("GET", "/v2/health/ready");
    return true;
  } catch (error) {
    if (error.status === 0 || error.status === 503) return false;
    throw error;
  }
}

/** Every READY model version: [{name, version, state}] (POST /v2/repository/index {"ready": true}). */
export async function repositoryIndex() {
  const response = await call("POST", "/v2/repository/index", JSON.stringify({ ready: true }),
    { "Content-Type": "application/json" });
  return response.json();
}

export function modelPath(name, version) {
  const base = `/v2/models/${encodeURIComponent(name)}`;
  return version ? `${base}/versions/${encodeURIComponent(version)}` : base;
}

export const metadata = (name, version) => getJSON(modelPath(name, version));
export const config = (name, version) => getJSON(`${modelPath(name, version)}/config`);

/**
 * POST .../infer. inputs: [{name, datatype, shape, data: TypedArray}]; outputs: names to return;
 * parameters: request parameters (e.g. {sampler: "mixture"}). Returns {NAME: {datatype, shape, data}}.
 */
export async function infer(name, version, inputs, { outputs = [], parameters = {} } = {}) {
  const header = {
    inputs: inputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape,
      parameters: { binary_data_size: t.data.byteLength } })),
    outputs: outputs.map((o) => ({ name: o, parameters: { binary_data: true } })),
    parameters,
  };
  const head = new TextEncoder().encode(JSON.stringify(header));
  const body = new Uint8Array(head.byteLength + inputs.reduce((n, t) => n + t.data.byteLength, 0));
  body.set(head, 0);
  let offset = head.byteLength;
  for (const t of inputs) {
    body.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), offset);
    offset += t.data.byteLength;
  }
  const response = await call("POST", `${modelPath(name, version)}/infer`, body, {
    "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": String(head.byteLength),
  });
  return parseInferResponse(response.headers.get("Inference-Header-Content-Length"),
    new Uint8Array(await response.arrayBuffer()));
}

function parseInferResponse(headerLength, bytes) {
  const length = headerLength === null ? bytes.byteLength : Number(headerLength);
  const reply = JSON.parse(new TextDecoder().decode(bytes.subarray(0, length)));
  const result = {};
  let offset = length;
  for (const output of reply.outputs || []) {
    const Typed = TYPED[output.datatype];
    if (!Typed) throw new ApiError(`output ${output.name}: datatype ${output.datatype} not handled here`, 200);
    let data;
    const size = output.parameters && output.parameters.binary_data_size;
    if (size !== undefined) {
      data = new Typed(bytes.slice(offset, offset + size).buffer);  // a copy: aligned for any element size
      offset += size;
    } else {
      data = Typed.from(output.data.flat(Infinity), (v) => (Typed === BigUint64Array ? BigInt(v) : v));
    }
    result[output.name] = { datatype: output.datatype, shape: output.shape, data };
  }
  return result;
}
