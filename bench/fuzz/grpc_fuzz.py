"""Structure-aware fuzzing of every aegen.v1 and Open Inference Protocol gRPC method, with hypothesis.

Each input is one call: a method of either service, and request bytes drawn from that method's request
descriptor (messages.py, with hints that reach past the first checks: real model and tensor names, shapes
and raw contents of matching size), sent as they are, or truncated, flipped, extended or random. For every
call it checks:

- the status is never INTERNAL, UNKNOWN or DATA_LOSS, and the server answers (no UNAVAILABLE, no call
  running into the client's deadline);
- bytes that do not parse as the request message are INVALID_ARGUMENT with a message;
- a ModelStreamInfer answer's error message never says "internal".

`run(target, inputs, seed)` returns a `FuzzReport`: calls per method and status, violations (the first
few, with their inputs), inputs per kind. Seeded and derandomized: the same seed sends the same inputs.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from bench.fuzz.messages import DIMS, message, mutated, payload
from protos.aegen.v1 import generator_pb2 as aegen_pb
from protos.inference import grpc_service_pb2 as oip_pb

FORBIDDEN = {"INTERNAL", "UNKNOWN", "DATA_LOSS", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
CALL_TIMEOUT_SECONDS = 30.0  # a call still running after this counts as a hang
MODELS = ("digits-vae", "digits-ae")
OIP_NAMES = (*MODELS, *(f"{m}.{role}" for m in MODELS for role in ("decoder", "encoder")))
NAMES = (*OIP_NAMES, "", "nope", "digits-vae/../digits-ae", "%2e%2e", "x" * 3000, "digits-vae.flow")
TENSORS = ("SEED", "TEMPERATURE", "LATENTS", "IMAGES", "IMAGES_FP32", "LOG_VARIANCE", "seed", "")
DATATYPES = ("UINT64", "FP32", "UINT8", "INT64", "FP16", "FP64", "BOOL", "BYTES", "BF16", "", "fp32", "FP32 ")
ITEMSIZE = {"UINT64": 8, "INT64": 8, "FP64": 8, "FP32": 4, "FP16": 2, "UINT8": 1, "BOOL": 1}
VERSIONS = ("", "1", "2", "0", "-1", "99999999999999999999", "1.0", "x")
UNIMPLEMENTED = {"RepositoryModelLoad", "RepositoryModelUnload", "SystemSharedMemoryStatus",
                 "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus",
                 "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister", "TraceSetting", "LogSettings"}
SAMPLER_KEYS = ("sampler", "timeout", "binary_data_output", "priority", "", "x" * 300)


def _shapes() -> st.SearchStrategy[list[int]]:
    n = st.integers(0, 80)
    plausible = st.one_of(n.map(lambda k: [k, 1]), n.map(lambda k: [k, 8]), n.map(lambda k: [k, 1, 28, 28]),
                          n.map(lambda k: [k, 784]), st.just([1]), st.just([]))
    return st.one_of(plausible, st.lists(st.sampled_from(DIMS), max_size=5), st.just([1] * 300))


HINTS = {
    "model_name": st.sampled_from(NAMES),
    "name": st.sampled_from((*NAMES, *TENSORS)),
    "version": st.sampled_from(VERSIONS),
    "model_version": {FieldDescriptor.TYPE_INT64: st.sampled_from((1, 2, 0, -1, 2**63 - 1)),
                      FieldDescriptor.TYPE_STRING: st.sampled_from(VERSIONS)},
    "num_samples": st.one_of(st.integers(0, 80), st.sampled_from((2**31 - 1, -1, 65537))),
    "chunk_samples": st.one_of(st.integers(0, 80), st.sampled_from((2**31 - 1, -1))),
    "datatype": st.sampled_from(DATATYPES),
    "shape": _shapes(),
    "string_param": st.sampled_from(("standard_normal", "gaussian", "mixture", "flow", "", "nope")),
    "parameters.key": st.sampled_from(SAMPLER_KEYS),
    "temperature": st.sampled_from((1.0, 0.0, -1.0, math.nan, math.inf, 1e30)),
}


@st.composite
def _fitted(draw, messages: st.SearchStrategy, kind: str):
    """Messages whose byte fields match their declared shapes about half the time (to reach the core)."""
    request = draw(messages)
    if not draw(st.booleans()):
        return request
    if kind == "infer":
        raw = []
        for tensor in request.inputs:
            count = math.prod(tensor.shape) if all(d >= 0 for d in tensor.shape) else -1
            size = count * ITEMSIZE.get(tensor.datatype, 1)
            raw.append(bytes(size) if 0 <= size <= 1 << 20 else b"")
        del request.raw_input_contents[:]
        request.raw_input_contents.extend(raw)
    else:  # Encode / Reconstruct: images of shape × dtype
        count = math.prod(request.shape) if all(d >= 0 for d in request.shape) else -1
        itemsize = 4 if request.dtype == aegen_pb.DTYPE_FLOAT32 else 1
        if 0 <= count * itemsize <= 1 << 20:
            request.images = draw(st.sampled_from([bytes(count * itemsize), b"\x7f" * (count * itemsize)]))
    return request


@dataclass(frozen=True)
class Method:
    service: str
    name: str
    request: type
    kind: str  # unary, server_stream, bidi

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


def methods() -> list[Method]:
    found = []
    for module, service in ((aegen_pb, "GeneratorService"), (oip_pb, "GRPCInferenceService")):
        descriptor = module.DESCRIPTOR.services_by_name[service]
        for m in descriptor.methods:
            kind = "bidi" if m.client_streaming else "server_stream" if m.server_streaming else "unary"
            found.append(Method(descriptor.full_name, m.name, getattr(module, m.input_type.name), kind))
    return found


def _templates(method: Method) -> list:
    """Valid requests of `method` (on the served digits-vae), for `mutated`."""
    a, o = aegen_pb, oip_pb
    vae = "digits-vae"
    images = {"shape": [2, 1, 28, 28], "dtype": a.DTYPE_UINT8, "images": bytes(2 * 784)}
    seeds = o.ModelInferRequest.InferInputTensor(name="SEED", datatype="UINT64", shape=[2, 1])
    latents = o.ModelInferRequest.InferInputTensor(name="LATENTS", datatype="FP32", shape=[2, 8])
    pixels = o.ModelInferRequest.InferInputTensor(name="IMAGES", datatype="FP32", shape=[2, 1, 28, 28])
    infer = [o.ModelInferRequest(model_name=vae, inputs=[seeds], raw_input_contents=[bytes(16)]),
             o.ModelInferRequest(model_name=vae + ".decoder", inputs=[latents], raw_input_contents=[bytes(64)]),
             o.ModelInferRequest(model_name=vae + ".encoder", inputs=[pixels],
                                 raw_input_contents=[bytes(4 * 2 * 784)])]
    infer[0].parameters["sampler"].string_param = "mixture"
    by_name = {
        "GenerateSamples": [a.GenerateSamplesRequest(model_name=vae, num_samples=3, seed=7)],
        "StreamSamples": [a.StreamSamplesRequest(model_name=vae, num_samples=5, chunk_samples=2, seed=7)],
        "Encode": [a.EncodeRequest(model_name=vae, **images)],
        "Reconstruct": [a.ReconstructRequest(model_name=vae, **images)],
        "GetModelInfo": [a.GetModelInfoRequest(model_name=vae)],
        "ModelInfer": infer, "ModelStreamInfer": infer,
    }
    if method.name in by_name:
        return by_name[method.name]
    request = method.request()
    for key in ("name", "model_name"):
        if key in method.request.DESCRIPTOR.fields_by_name:
            setattr(request, key, vae)
    return [request]


def _requests(method: Method) -> st.SearchStrategy:
    """Messages drawn from the descriptor alone, or valid ones with a few fields changed."""
    messages = message(method.request.DESCRIPTOR, HINTS)
    if method.name in ("ModelInfer", "ModelStreamInfer"):
        messages = _fitted(messages, "infer")
    elif method.name in ("Encode", "Reconstruct"):
        messages = _fitted(messages, "images")
    return st.one_of(messages, mutated(_templates(method), HINTS))


def inputs(all_methods: list[Method]) -> st.SearchStrategy:
    """(method, [(kind, bytes), ...]): one request, or one to four for the bidirectional stream. The
    methods aegen does not implement are drawn a tenth as often as the others."""
    choices = [st.tuples(st.just(m), st.lists(payload(_requests(m)), min_size=1,
                                              max_size=4 if m.kind == "bidi" else 1)) for m in all_methods]
    weighted = [i for i, m in enumerate(all_methods) for _ in range(1 if m.name in UNIMPLEMENTED else 10)]
    return st.sampled_from(weighted).flatmap(choices.__getitem__)


@dataclass
class FuzzReport:
    calls: collections.Counter = field(default_factory=collections.Counter)  # (method, status) → calls
    kinds: collections.Counter = field(default_factory=collections.Counter)  # how the bytes were made
    violations: list[str] = field(default_factory=list)
    violation_count: int = 0

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def statuses(self) -> collections.Counter:
        out: collections.Counter = collections.Counter()
        for (_, status), n in self.calls.items():
            out[status] += n
        return out

    def violate(self, text: str) -> None:
        self.violation_count += 1
        if len(self.violations) < 20:
            self.violations.append(text)


def _parses(request: type, data: bytes) -> bool:
    try:
        request.FromString(data)
    except (DecodeError, RecursionError, ValueError):
        return False
    return True


def call(channel: grpc.Channel, method: Method, sent: list[tuple[str, bytes]], report: FuzzReport) -> None:
    """Make one call and check its properties."""
    stream_errors: list[str] = []
    try:
        if method.kind == "unary":
            channel.unary_unary(method.path)(sent[0][1], timeout=CALL_TIMEOUT_SECONDS)
        elif method.kind == "server_stream":
            for _ in channel.unary_stream(method.path)(sent[0][1], timeout=CALL_TIMEOUT_SECONDS):
                pass
        else:
            for reply in channel.stream_stream(method.path)(iter([d for _, d in sent]),
                                                            timeout=CALL_TIMEOUT_SECONDS):
                stream_errors.append(oip_pb.ModelStreamInferResponse.FromString(reply).error_message)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
    report.calls[(method.name, code.name)] += 1
    for kind, _ in sent:
        report.kinds[kind] += 1
    shown = f"{method.name} {[(k, d[:120]) for k, d in sent]!r}"
    if code.name in FORBIDDEN:
        report.violate(f"{code.name} ({details[:200]}) for {shown}")
    unparsable = [d for _, d in sent if not _parses(method.request, d)]
    # gRPC refuses a message over the server's size limit before anything parses it.
    too_large = code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details
    if method.kind != "bidi" and unparsable and not too_large and not (
            code == grpc.StatusCode.INVALID_ARGUMENT and details):
        report.violate(f"unparsable bytes answered {code.name} ({details[:200]}) for {shown}")
    if method.kind == "bidi":
        bad = [e for e in stream_errors if "internal" in e.lower()]
        invalid = [e for e in stream_errors if e.startswith("INVALID_ARGUMENT")]
        if bad:
            report.violate(f"stream error {bad[0][:200]!r} for {shown}")
        if code == grpc.StatusCode.OK and len(invalid) < len(unparsable):
            report.violate(f"{len(unparsable)} unparsable stream messages, {len(invalid)} INVALID_ARGUMENT "
                           f"answers for {shown}")


def run(target: str, count: int, seed: int = 0, progress=None) -> FuzzReport:
    """Send `count` fuzzed calls to the server at `target`; the report of what was answered."""
    report = FuzzReport()
    all_methods = methods()
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 256 << 20)]
    with grpc.insecure_channel(target, options=options) as channel:
        @hypothesis_seed(seed)
        @settings(max_examples=count, database=None, deadline=None, derandomize=False,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
        @given(inputs(all_methods))
        def fuzz(drawn):
            method, sent = drawn
            call(channel, method, sent, report)
            if progress is not None:
                progress(1)

        fuzz()
    return report
