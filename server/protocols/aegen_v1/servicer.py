"""aegen.v1.GeneratorService over the data plane: decode the request, call the core, encode the reply.

Sampler and dtype names come from the proto (protos/aegen/v1/names.py); core errors become statuses in
server/protocols/grpc_calls.py. Large replies are built as wire bytes (wire.py) so the images are copied once.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import grpc
import numpy as np

from protos.aegen.v1 import generator_pb2 as pb
from protos.aegen.v1 import generator_pb2_grpc
from protos.aegen.v1.names import DTYPE_NAMES, DTYPES, SAMPLER_NAMES, SAMPLERS
from server.core.admission import Admission
from server.core.dataplane import DEFAULT_DTYPE, DEFAULT_SAMPLER, DataPlane, Generated, PackedImages
from server.core.errors import InvalidRequest
from server.protocols.grpc_calls import Call, CallObserver, add_service, rpc
from server.protocols.wire import append_bytes_fields, serialize_response, with_bytes_fields

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GeneratorService"].full_name


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    def __init__(self, plane: DataPlane, calls: CallObserver, admission: Admission | None = None) -> None:
        self.plane = plane
        self.calls = calls
        self.admission = admission

    @rpc
    async def GenerateSamples(self, request: pb.GenerateSamplesRequest, context, call: Call):
        name, version = _model(request, call, self.plane)
        generated = await self.plane.generate(
            name, version, request.num_samples, seed=request.seed if request.HasField("seed") else None,
            sampler=_sampler(request.sampler), temperature=_temperature(request),
            dtype=_dtype(request.output_dtype, "output_dtype"), deadline=call.deadline)
        return _samples_reply(pb.GenerateSamplesResponse, generated, request.return_latents)

    @rpc
    async def StreamSamples(self, request: pb.StreamSamplesRequest, context, call: Call) -> AsyncIterator[bytes]:
        """Yields each chunk as StreamSamplesResponse wire bytes."""
        name, version = _model(request, call, self.plane)
        chunks = self.plane.stream(
            name, version, request.num_samples, chunk=request.chunk_samples,
            seed=request.seed if request.HasField("seed") else None, sampler=_sampler(request.sampler),
            temperature=_temperature(request), dtype=_dtype(request.output_dtype, "output_dtype"),
            deadline=call.deadline)
        try:
            async for generated in chunks:
                yield _samples_reply(pb.StreamSamplesResponse, generated, request.return_latents,
                                     offset=generated.offset)
        finally:
            await chunks.aclose()

    @rpc
    async def Encode(self, request: pb.EncodeRequest, context, call: Call):
        name, version = _model(request, call, self.plane)
        encoded = await self.plane.encode(name, version, _images(request))
        return pb.EncodeResponse(
            shape=encoded.latents.shape, latents=encoded.latents.tobytes(),
            log_variance=b"" if encoded.log_variance is None else encoded.log_variance.tobytes(),
            model_name=encoded.model.name, model_version=encoded.model.version)

    @rpc
    async def Reconstruct(self, request: pb.ReconstructRequest, context, call: Call):
        name, version = _model(request, call, self.plane)
        dtype = _dtype(request.output_dtype, "output_dtype")
        decoded = await self.plane.reconstruct(name, version, _images(request), dtype=dtype,
                                               deadline=call.deadline)
        head = pb.ReconstructResponse(shape=decoded.images.shape, dtype=DTYPES[dtype],
                                      model_name=decoded.model.name, model_version=decoded.model.version)
        return with_bytes_fields(head, images=decoded.images)

    @rpc
    async def ListModels(self, request: pb.ListModelsRequest, context, call: Call):
        return pb.ListModelsResponse(models=[
            pb.ModelSummary(name=m.name, versions=[v.version for v in self.plane.versions(m.name)],
                            default_version=m.version, kind=m.kind, latent_dim=m.latent_dim)
            for m in self.plane.models()])

    @rpc
    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context, call: Call):
        name, version = _model(request, call, self.plane)
        model = self.plane.model(name, version)
        return pb.GetModelInfoResponse(
            model_name=model.name, model_version=model.version, kind=model.kind, latent_dim=model.latent_dim,
            samplers=[SAMPLERS[s] for s in model.samplers], device=model.device,
            execution_provider=model.execution_provider, manifest_json=model.manifest.to_json())


def add_to_server(servicer: GeneratorServicer, server: grpc.aio.Server) -> None:
    """Register the service like the generated add_GeneratorServiceServicer_to_server, but with
    `serialize_response` as every method's serializer, so that handlers may answer with prebuilt wire bytes,
    and a request deserializer that answers unparsable bytes INVALID_ARGUMENT (grpc_calls.add_service)."""
    add_service(server, pb.DESCRIPTOR.services_by_name["GeneratorService"], pb,
                lambda method: getattr(servicer, method.name), serialize_response)


def _model(request, call: Call, plane: DataPlane) -> tuple[str, int | None]:
    call.model = plane.model_label(request.model_name)
    if not request.model_name:
        raise InvalidRequest("model_name is required; ListModels lists the loaded models")
    return request.model_name, request.model_version if request.HasField("model_version") else None


def _samples_reply(message, generated: Generated, return_latents: bool, **fields) -> bytes:
    """The reply's wire bytes: the fields every answer of this shape, model and sampler shares (serialized once,
    cached), the request's own (seed, a stream's offset), then the payloads. Records may come in any order."""
    images, latents, model = generated.images, generated.latents, generated.model
    common = _common_fields(message, images.shape, DTYPES["uint8" if images.dtype == np.uint8 else "float32"],
                            latents.shape if return_latents else (), model.name, model.version,
                            SAMPLERS[generated.sampler])
    own = message(seed=generated.seed, **fields).SerializeToString()
    return append_bytes_fields(message, [common, own],
                               {"samples": images, "latents": latents if return_latents else b""})


@functools.lru_cache(maxsize=256)
def _common_fields(message, shape: tuple[int, ...], dtype: int, latents_shape: tuple[int, ...], model_name: str,
                   model_version: int, sampler: int) -> bytes:
    return message(shape=shape, dtype=dtype, latents_shape=latents_shape, model_name=model_name,
                   model_version=model_version, sampler=sampler).SerializeToString()


def _images(request) -> PackedImages:
    return PackedImages(tuple(request.shape), _dtype(request.dtype, "dtype"), request.images)


def _sampler(value: int) -> str:
    if value == pb.SAMPLER_UNSPECIFIED:
        return DEFAULT_SAMPLER
    if value not in SAMPLER_NAMES:
        raise InvalidRequest(f"unknown sampler {value}; expected one of {', '.join(pb.Sampler.keys())}")
    return SAMPLER_NAMES[value]


def _dtype(value: int, field: str) -> str:
    if value == pb.DTYPE_UNSPECIFIED:
        return DEFAULT_DTYPE
    if value not in DTYPE_NAMES:
        raise InvalidRequest(f"unknown {field} {value}; expected DTYPE_UINT8 or DTYPE_FLOAT32")
    return DTYPE_NAMES[value]


def _temperature(request) -> float:
    return float(request.temperature) if request.HasField("temperature") else 1.0
