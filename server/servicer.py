"""aegen.v1.GeneratorService: requests in, core calls, replies out. Errors become statuses here, once."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
from prometheus_client import Counter

from protos.aegen.v1 import generator_pb2 as pb
from protos.aegen.v1 import generator_pb2_grpc
from server.batcher import Decoded
from server.config import ServerConfig
from server.core.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    QueueFull,
    ServerError,
    ShuttingDown,
)
from server.metrics import ServerMetrics
from server.models import LoadedModel, ModelRegistry
from server.wire import serialize_response, with_bytes_fields

log = logging.getLogger("aegen.server.servicer")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GeneratorService"].full_name

STATUS = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
}
SAMPLER_NAMES = {
    pb.SAMPLER_UNSPECIFIED: "standard_normal",
    pb.SAMPLER_STANDARD_NORMAL: "standard_normal",
    pb.SAMPLER_GAUSSIAN: "gaussian",
    pb.SAMPLER_MIXTURE: "mixture",
}
SAMPLER_ENUMS = {"standard_normal": pb.SAMPLER_STANDARD_NORMAL, "gaussian": pb.SAMPLER_GAUSSIAN,
                 "mixture": pb.SAMPLER_MIXTURE}
DTYPE_NAMES = {pb.DTYPE_UNSPECIFIED: "uint8", pb.DTYPE_UINT8: "uint8", pb.DTYPE_FLOAT32: "float32"}
DTYPE_ENUMS = {"uint8": pb.DTYPE_UINT8, "float32": pb.DTYPE_FLOAT32}


class _Call:
    """What the metrics of one call need to know beyond its method: which model served it."""

    __slots__ = ("model",)

    def __init__(self) -> None:
        self.model = ""


def _status_of(exc: BaseException) -> grpc.StatusCode:
    for kind, code in STATUS.items():
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _unary(method):
    """Wrap a unary handler: metrics, and our errors → their status (unexpected ones → INTERNAL, logged)."""

    @functools.wraps(method)
    async def handler(self: GeneratorServicer, request, context: grpc.aio.ServicerContext):
        call, code, started = _Call(), grpc.StatusCode.OK, time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            return await method(self, request, context, call)
        except ServerError as exc:
            code = _status_of(exc)
            await context.abort(code, str(exc))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unexpected error", extra={"method": method.__name__})
            await context.abort(code, "internal error; the server log has the details")
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe_request(method.__name__, call.model, code.name, time.perf_counter() - started)

    return handler


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    def __init__(self, registry: ModelRegistry, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self._generated_counters: dict[str, Counter] = {}

    def _generated(self, model: str) -> Counter:
        # labels() takes a lock and hashes its arguments on every call: once per model is enough.
        counter = self._generated_counters.get(model)
        if counter is None:
            counter = self._generated_counters[model] = self.metrics.samples_generated.labels(model)
        return counter

    @_unary
    async def GenerateSamples(self, request: pb.GenerateSamplesRequest, context, call: _Call):
        model = self._resolve(request, call)
        seed = request.seed if request.HasField("seed") else secrets.randbits(64)
        sampler = _sampler_name(request.sampler)
        dtype = _dtype_name(request.output_dtype, "output_dtype")
        future = model.generate(request.num_samples, seed, sampler, _temperature(request), dtype,
                                _deadline(context))
        decoded = await future
        self._generated(model.name).inc(request.num_samples)
        head = pb.GenerateSamplesResponse(
            shape=decoded.images.shape, dtype=DTYPE_ENUMS[dtype],
            latents_shape=decoded.latents.shape if request.return_latents else (),
            model_name=model.name, model_version=model.number, sampler=SAMPLER_ENUMS[sampler], seed=seed)
        latents = _latents_if(decoded, request.return_latents)
        return with_bytes_fields(head, samples=decoded.images, latents=latents)

    async def StreamSamples(self, request: pb.StreamSamplesRequest, context) -> AsyncIterator[bytes]:
        """Yields each chunk as StreamSamplesResponse wire bytes."""
        call, code, started = _Call(), grpc.StatusCode.OK, time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            async for chunk in self._stream(request, context, call):
                yield chunk
        except ServerError as exc:
            code = _status_of(exc)
            await context.abort(code, str(exc))
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unexpected error", extra={"method": "StreamSamples"})
            await context.abort(code, "internal error; the server log has the details")
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe_request("StreamSamples", call.model, code.name, time.perf_counter() - started)

    async def _stream(self, request: pb.StreamSamplesRequest, context, call: _Call):
        model = self._resolve(request, call)
        total = request.num_samples
        if not 1 <= total <= self.config.max_samples_per_stream:
            raise InvalidRequest(f"num_samples must be in 1..{self.config.max_samples_per_stream}, got {total}")
        if request.chunk_samples < 0:
            raise InvalidRequest(f"chunk_samples must be >= 0, got {request.chunk_samples}")
        chunk = min(request.chunk_samples or self.config.max_batch_size, self.config.max_samples_per_request)
        seed = request.seed if request.HasField("seed") else secrets.randbits(64)
        sampler, temperature = _sampler_name(request.sampler), _temperature(request)
        dtype = _dtype_name(request.output_dtype, "output_dtype")
        model.check_sampling(sampler, temperature)
        rng = np.random.Generator(np.random.PCG64(seed))  # one generator for the whole stream, drawn chunk by chunk

        def submit(offset: int):
            n = min(chunk, total - offset)
            return model.submit_latents(n, model.latent_source(sampler, rng, n, temperature), dtype,
                                        _deadline(context))

        # The next chunk is queued once this one is decoded (so the generator is drawn in order), while
        # this one is being sent.
        offset, pending = 0, submit(0)
        try:
            while pending is not None:
                decoded = await pending
                n = decoded.images.shape[0]
                pending = submit(offset + n) if offset + n < total else None
                self._generated(model.name).inc(n)
                head = pb.StreamSamplesResponse(
                    shape=decoded.images.shape, dtype=DTYPE_ENUMS[dtype],
                    latents_shape=decoded.latents.shape if request.return_latents else (), offset=offset,
                    model_name=model.name, model_version=model.number, sampler=SAMPLER_ENUMS[sampler],
                    seed=seed)
                yield with_bytes_fields(head, samples=decoded.images,
                                        latents=_latents_if(decoded, request.return_latents))
                offset += n
        finally:
            if pending is not None:
                pending.cancel()  # the client went away: the batcher drops the queued chunk

    @_unary
    async def Encode(self, request: pb.EncodeRequest, context, call: _Call):
        model = self._resolve(request, call)
        images = model.check_images(tuple(request.shape), _dtype_name(request.dtype, "dtype"), request.images)
        encoded = await asyncio.to_thread(model.encode, images)
        return pb.EncodeResponse(
            shape=encoded.latents.shape, latents=encoded.latents.tobytes(),
            log_variance=b"" if encoded.log_variance is None else encoded.log_variance.tobytes(),
            model_name=model.name, model_version=model.number)

    @_unary
    async def Reconstruct(self, request: pb.ReconstructRequest, context, call: _Call):
        model = self._resolve(request, call)
        images = model.check_images(tuple(request.shape), _dtype_name(request.dtype, "dtype"), request.images)
        dtype = _dtype_name(request.output_dtype, "output_dtype")
        encoded = await asyncio.to_thread(model.encode, images)
        # The code is decoded through the batcher, like seeds: same sessions, same queue bound.
        decoded = await model.submit_latents(len(images), lambda: encoded.latents, dtype, _deadline(context))
        head = pb.ReconstructResponse(shape=decoded.images.shape, dtype=DTYPE_ENUMS[dtype],
                                      model_name=model.name, model_version=model.number)
        return with_bytes_fields(head, images=decoded.images)

    @_unary
    async def ListModels(self, request: pb.ListModelsRequest, context, call: _Call):
        return pb.ListModelsResponse(models=[
            pb.ModelSummary(name=m.name, versions=[m.number], default_version=m.number, kind=m.manifest.kind,
                            latent_dim=m.manifest.latent_dim)
            for m in self.registry.models()])

    @_unary
    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context, call: _Call):
        model = self._resolve(request, call)
        return pb.GetModelInfoResponse(
            model_name=model.name, model_version=model.number, kind=model.manifest.kind,
            latent_dim=model.manifest.latent_dim, samplers=[SAMPLER_ENUMS[s] for s in model.manifest.samplers],
            device=model.device, execution_provider=model.execution_provider,
            manifest_json=model.manifest.to_json())

    def _resolve(self, request, call: _Call) -> LoadedModel:
        version = request.model_version if request.HasField("model_version") else None
        model = self.registry.resolve(request.model_name, version)
        call.model = model.name
        return model


def add_to_server(servicer: GeneratorServicer, server: grpc.aio.Server) -> None:
    """Register the service like the generated add_GeneratorServiceServicer_to_server, but with
    `serialize_response` as every method's serializer, so that handlers may answer with prebuilt wire bytes."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GeneratorService"].methods:
        request = getattr(pb, method.input_type.name)
        kind = (grpc.unary_stream_rpc_method_handler if method.server_streaming
                else grpc.unary_unary_rpc_method_handler)
        handlers[method.name] = kind(getattr(servicer, method.name), request_deserializer=request.FromString,
                                     response_serializer=serialize_response)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _sampler_name(value: int) -> str:
    if value not in SAMPLER_NAMES:
        raise InvalidRequest(f"unknown sampler {value}; expected one of {', '.join(pb.Sampler.keys())}")
    return SAMPLER_NAMES[value]


def _dtype_name(value: int, field: str) -> str:
    if value not in DTYPE_NAMES:
        raise InvalidRequest(f"unknown {field} {value}; expected DTYPE_UINT8 or DTYPE_FLOAT32")
    return DTYPE_NAMES[value]


def _temperature(request) -> float:
    return float(request.temperature) if request.HasField("temperature") else 1.0


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _latents_if(decoded: Decoded, asked: bool) -> np.ndarray | bytes:
    return decoded.latents if asked else b""
