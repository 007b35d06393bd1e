"""Fuzzing the Open Inference Protocol's HTTP/REST side, with hypothesis, over raw sockets.

Each input is one request written byte by byte (so that it may lie): a method, a path (every endpoint,
model names with encoded traversal, 3,000-character names, unknown versions, random paths and queries),
headers (content types, `Inference-Header-Content-Length` negative, past the body or not a number, a header
block over the server's limit, chunked bodies) and a body: a valid inference with one value replaced by
hostile JSON, binary sections shorter or longer than their `binary_data_size` says, absurd sizes, JSON
nested 100,000 deep, truncated JSON, bytes that are not UTF-8. It checks:

- no 5xx (a 503 is the readiness endpoints' deliberate answer while not ready, and the server is ready);
- every request is answered, none runs into the client's timeout;
- a header block over `header_limit` is 431, a body over `body_limit` is 413 (unless the path or method
  is refused first: 404, 405);
- an error that the API answers (JSON) names the problem in "error".
"""

from __future__ import annotations

import collections
import copy
import json
import math
import socket
import urllib.parse
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from bench.fuzz.grpc_fuzz import NAMES, VERSIONS

TIMEOUT_SECONDS = 30.0
METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "FOO")
ENDPOINTS = ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/stats", "/v2/repository/index",
             "/v2/models/{m}", "/v2/models/{m}/ready", "/v2/models/{m}/config", "/v2/models/{m}/stats",
             "/v2/models/{m}/infer", "/v2/models/{m}/versions/{v}", "/v2/models/{m}/versions/{v}/infer",
             "/v2/models/{m}/versions/{v}/config", "/", "/static/../../etc/passwd")
ODD_NAMES = ("..%2f..%2fetc%2fpasswd", "%2e%2e", "%00", "digits-vae%2F..", "%ff%fe", "digits-vae%20", "x" * 3000)
CONTENT_TYPES = ("application/json", "application/octet-stream", "text/plain", "multipart/form-data; boundary=x",
                 "application/json; charset=utf-16", "", "\x7f")
JSON_EXTREMES = (None, True, False, 0, -1, 2**31 - 1, 2**63 - 1, 2**64, -(2**63) - 1, 10**400, 0.5, -0.0,
                 math.nan, math.inf, -math.inf, "", "x" * 10_000, "FP32", [], {}, [[]], [None], [2**40, 2**40])

json_values = st.recursive(
    st.one_of(st.sampled_from(JSON_EXTREMES), st.integers(), st.floats(), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)


def _templates() -> list[dict]:
    seed = {"name": "SEED", "datatype": "UINT64", "shape": [2, 1], "data": [1, 2]}
    latents = {"name": "LATENTS", "datatype": "FP32", "shape": [1, 8], "data": [0.0] * 8}
    images = {"name": "IMAGES", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.5] * 784}
    return [{"inputs": [seed], "parameters": {"sampler": "gaussian"}},
            {"inputs": [seed, {"name": "TEMPERATURE", "datatype": "FP32", "shape": [1], "data": [0.5]}],
             "outputs": [{"name": "IMAGES"}, {"name": "LATENTS"}], "id": "x"},
            {"inputs": [latents], "parameters": {"binary_data_output": True}},
            {"inputs": [images]}]


PLACES = ("inputs", "inputs.0", "inputs.0.name", "inputs.0.datatype", "inputs.0.shape", "inputs.0.data",
          "inputs.0.parameters", "inputs.0.parameters.binary_data_size", "outputs", "outputs.0.parameters",
          "parameters", "parameters.timeout", "parameters.sampler", "parameters.binary_data_output", "id", "")


def _replace(document, place: str, value):
    """`document` with the value at the dotted `place` replaced (created where missing); "" replaces it all."""
    if not place:
        return value
    target = document
    *parents, last = place.split(".")
    for key in parents:
        key = int(key) if key.isdigit() else key
        if isinstance(target, list):
            if not target:
                target.append({})
            target = target[0]
        elif isinstance(target, dict):
            target = target.setdefault(key, {})
        if not isinstance(target, (dict, list)):
            return document
    if isinstance(target, dict):
        target[last] = value
    elif isinstance(target, list) and target:
        target[0] = value
    return document


@st.composite
def infer_bodies(draw) -> tuple[str, bytes, dict[str, str]]:
    """(kind, body, extra headers) of an inference request."""
    document = json.loads(json.dumps(draw(st.sampled_from(_templates()))))
    kind = draw(st.sampled_from(["valid", "replaced", "replaced", "binary", "nested", "truncated", "bytes"]))
    if kind == "nested":
        depth = draw(st.sampled_from([1000, 100_000]))
        return kind, b'{"inputs":' + b"[" * depth + b"]" * depth + b"}", {}
    if kind == "bytes":
        return kind, draw(st.sampled_from([b"\xff\xfe{}", b"\x00" * 10, b""]) | st.binary(max_size=64)), {}
    if kind == "replaced":
        for _ in range(draw(st.integers(1, 3))):
            # A copy: sampled values ([], {}) are shared objects that _replace would change in place.
            document = _replace(document, draw(st.sampled_from(PLACES)), copy.deepcopy(draw(json_values)))
    text = json.dumps(document).encode()  # NaN and Infinity as Python writes them (not strict JSON)
    if kind == "truncated":
        return kind, text[:draw(st.integers(0, max(len(text) - 1, 0)))], {}
    if kind != "binary" or not isinstance(document, dict) or not document.get("inputs"):
        return kind, text, {}
    tensor = document["inputs"][0]
    raw_size = draw(st.sampled_from([0, 1, 16, 32, 3136]))
    declared = draw(st.sampled_from([raw_size, raw_size + 1, max(raw_size - 1, 0), -1, 2**63, 2**64, "16", 1.5]))
    tensor.pop("data", None)
    tensor["parameters"] = {"binary_data_size": declared}
    header = json.dumps(document).encode()
    length = draw(st.sampled_from([len(header)] * 4 + [-1, 0, len(header) + raw_size + 1, 2**63, "x", " 3"]))
    return kind, header + bytes(raw_size), {"Inference-Header-Content-Length": str(length)}


def _path(template: str, model: str, version: str, query: str) -> str:
    path = template.replace("{m}", model).replace("{v}", version)
    return urllib.parse.quote(path + query, safe="/%?=&.-_~:")


@st.composite
def requests(draw, header_limit: int, body_limit: int) -> tuple[str, bytes]:
    """(what it is, the request's bytes)."""
    endpoint = draw(st.sampled_from(ENDPOINTS))
    model = draw(st.sampled_from(NAMES + ODD_NAMES))
    version = draw(st.sampled_from((*VERSIONS, "%2e%2e", "1%2f..")))
    query = draw(st.sampled_from(["", "", "?x=1", "?" + "a" * 5000, "?%zz"]))
    path = _path(endpoint, model, version, query) if draw(st.integers(0, 9)) else "/" + urllib.parse.quote(
        draw(st.text(max_size=30)), safe="/%")
    write = endpoint.endswith(("infer", "index"))
    method = "POST" if write and draw(st.integers(0, 4)) else draw(st.sampled_from(METHODS)) if (
        not draw(st.integers(0, 3))) else ("GET" if not write else "POST")
    kind, body, headers = draw(infer_bodies()) if write else ("none", b"", {})
    if endpoint.endswith("index") and write:
        kind, body = "index", draw(st.sampled_from([b"", b"{}", b'{"ready": true}', b'{"ready": 1}', b"[]",
                                                    b"{", b"\xff"]))
    headers = {"Content-Type": draw(st.sampled_from(CONTENT_TYPES)), **headers}
    extra = draw(st.sampled_from(["none"] * 6 + ["huge header", "many headers", "chunked", "expect", "oversized"]))
    if extra == "oversized" and write and method == "POST":  # a body past the limit, where one is read
        body = body + bytes(body_limit + 1)
    elif extra == "oversized":
        extra = "none"
    if extra == "huge header":
        headers["X-Big"] = "b" * (header_limit + 100)
    elif extra == "many headers":
        headers.update({f"X-{i}": "v" for i in range(200)})
    elif extra == "expect":
        headers["Expect"] = "100-continue"
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             *(f"{k}: {v}" for k, v in headers.items())]
    if extra == "chunked":
        lines.append("Transfer-Encoding: chunked")
        body = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n"
    return f"{method} {endpoint} {kind} {extra}", head + body


@dataclass
class HttpFuzzReport:
    statuses: collections.Counter = field(default_factory=collections.Counter)  # status → requests
    kinds: collections.Counter = field(default_factory=collections.Counter)  # body kind → requests
    violations: list[str] = field(default_factory=list)
    violation_count: int = 0

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def violate(self, text: str) -> None:
        self.violation_count += 1
        if len(self.violations) < 20:
            self.violations.append(text)


def send(host: str, port: int, data: bytes) -> tuple[str, bytes]:
    """Write `data`, read until the server closes: (status code or what went wrong, the response)."""
    received = b""
    with socket.create_connection((host, port), timeout=TIMEOUT_SECONDS) as sock:
        try:
            sock.sendall(data)  # no half-close: asyncio servers close a connection at its EOF
        except OSError:  # the server answered (413, 431) and closed before taking it all
            pass
        try:
            while chunk := sock.recv(1 << 16):
                received += chunk
        except TimeoutError:
            return "timeout", received
        except OSError:
            if not received:
                return "reset", received
    while received.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in received:  # 100 Continue, then the answer
        received = received.split(b"\r\n\r\n", 1)[1]
    if not received.startswith(b"HTTP/1.1 "):
        return "no answer", received
    return received[9:12].decode("ascii", "replace"), received


def check(what: str, data: bytes, status: str, response: bytes, header_limit: int, body_limit: int,
          report: HttpFuzzReport) -> None:
    report.statuses[status] += 1
    report.kinds[what.split()[2]] += 1
    shown = f"{what}: {data[:200]!r}... -> {response[:300]!r}"
    head_size = data.find(b"\r\n\r\n") + 4
    declared = next((int(line.split(b":")[1]) for line in data[:head_size].split(b"\r\n")
                     if line.lower().startswith(b"content-length:")), 0)
    if status in ("timeout", "no answer") or status.startswith("5"):
        report.violate(f"{status} for {shown}")
    elif status == "reset" and declared <= body_limit and head_size <= header_limit:
        report.violate(f"connection reset without an answer for {shown}")
    elif head_size > header_limit + 200 and status not in ("431", "reset"):
        report.violate(f"a {head_size}-byte header block answered {status}, not 431: {shown}")
    elif head_size <= header_limit and declared > body_limit and status not in ("413", "404", "405", "reset"):
        report.violate(f"a {declared}-byte body answered {status}, not 413: {shown}")
    elif status.startswith("4") and not data.startswith(b"HEAD ") and (
            b"application/json" in response.split(b"\r\n\r\n")[0]):
        try:
            error = json.loads(response.split(b"\r\n\r\n", 1)[1]).get("error")
        except (ValueError, AttributeError):
            error = None
        if not error:
            report.violate(f"{status} without an error message: {shown}")


def run(url: str, count: int, seed: int = 0, *, header_limit: int, body_limit: int,
        progress=None) -> HttpFuzzReport:
    """Send `count` fuzzed requests to the HTTP side at `url` (http://host:port)."""
    parsed = urllib.parse.urlsplit(url)
    report = HttpFuzzReport()

    @hypothesis_seed(seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(requests(header_limit, body_limit))
    def fuzz(drawn):
        what, data = drawn
        status, response = send(parsed.hostname, parsed.port, data)
        check(what, data, status, response, header_limit, body_limit, report)
        if progress is not None:
            progress(1)

    fuzz()
    return report
