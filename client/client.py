"""A small Python client of aegen.v1.GeneratorService that speaks numpy, and the client tools' one model default.

    from client import AegenClient
    with AegenClient("localhost:50051") as client:
        model = client.default_model()                        # the server's first VAE, else its first model
        samples = client.generate(model, 64, seed=7)          # samples.images: uint8 (64, 1, 28, 28)

Samplers and dtypes are named as protos/aegen/v1/names.py names them (`standard_normal`, also accepted as
`standard-normal`; `uint8`, `float32`). Errors arrive as grpc.RpcError (code() and details() say what was
wrong); an unknown sampler or dtype name is a ValueError, a server with no models a NoModelsError.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Self

import grpc
import numpy as np

from protos.aegen.v1 import generator_pb2 as pb
from protos.aegen.v1 import generator_pb2_grpc
from protos.aegen.v1.names import DTYPES, SAMPLER_NAMES, SAMPLERS, canonical

# The largest message gRPC can carry: the server enforces its own (smaller) limits with clear statuses.
MAX_MESSAGE_BYTES = 2**31 - 1
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
_NUMPY_DTYPES = {pb.DTYPE_UINT8: np.dtype(np.uint8), pb.DTYPE_FLOAT32: np.dtype("<f4")}


class NoModelsError(LookupError):
    """The server lists no models, so there is nothing to default to."""


def sampler_number(name: str) -> int:
    """`standard_normal` or `standard-normal` → SAMPLER_STANDARD_NORMAL; ValueError naming the choices."""
    return _lookup("sampler", SAMPLERS, name)


def dtype_number(name: str) -> int:
    """`uint8` → DTYPE_UINT8, `float32` → DTYPE_FLOAT32; ValueError naming the choices."""
    return _lookup("dtype", DTYPES, name)


def _lookup(what: str, table: dict[str, int], name: str) -> int:
    try:
        return table[canonical(name)]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; one of {', '.join(table)}") from None


@dataclass(frozen=True)
class Samples:
    images: np.ndarray  # (n, *image_shape), uint8 0..255 or float32 [0, 1]
    latents: np.ndarray | None  # (n, latent_dim) float32, when asked for
    model_name: str
    model_version: int
    sampler: str
    seed: int
    offset: int = 0  # position of these samples in a stream


@dataclass(frozen=True)
class Encoding:
    latents: np.ndarray  # (n, latent_dim) float32: z (AE) or the mean (VAE)
    log_variance: np.ndarray | None  # (n, latent_dim) float32 for a VAE
    model_name: str
    model_version: int


@dataclass(frozen=True)
class ModelSummary:
    name: str
    versions: tuple[int, ...]
    default_version: int
    kind: str
    latent_dim: int


def default_model_name(models: list[ModelSummary]) -> str:
    """The model every client tool uses when `--model` is absent: the first VAE listed (generating from
    N(0, I) is what a VAE is trained for), else the first model."""
    if not models:
        raise NoModelsError("the server has no models loaded")
    vaes = [m for m in models if m.kind == "vae"]
    return (vaes or models)[0].name


class AegenClient:
    def __init__(self, target: str, *, root_certificates: bytes | None = None, tls: bool = False,
                 timeout: float | None = None) -> None:
        """`tls` (or `root_certificates`, PEM) makes a TLS channel; `timeout` is every call's deadline."""
        if tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
        else:
            self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = generator_pb2_grpc.GeneratorServiceStub(self.channel)
        self.timeout = timeout

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def generate(self, model: str, n: int, *, seed: int | None = None, version: int | None = None,
                 temperature: float | None = None, sampler: str = "standard_normal", dtype: str = "uint8",
                 return_latents: bool = False) -> Samples:
        request = pb.GenerateSamplesRequest(
            model_name=model, model_version=version, num_samples=n, seed=seed, temperature=temperature,
            sampler=sampler_number(sampler), output_dtype=dtype_number(dtype), return_latents=return_latents)
        return _samples(self.stub.GenerateSamples(request, timeout=self.timeout))

    def stream(self, model: str, n: int, *, chunk: int = 0, seed: int | None = None, version: int | None = None,
               temperature: float | None = None, sampler: str = "standard_normal", dtype: str = "uint8",
               return_latents: bool = False) -> Iterator[Samples]:
        """Chunks of at most `chunk` samples (0: the server's batch size), in order."""
        request = pb.StreamSamplesRequest(
            model_name=model, model_version=version, num_samples=n, seed=seed, temperature=temperature,
            sampler=sampler_number(sampler), output_dtype=dtype_number(dtype), return_latents=return_latents,
            chunk_samples=chunk)
        for response in self.stub.StreamSamples(request, timeout=self.timeout):
            yield _samples(response)

    def encode(self, model: str, images: np.ndarray, *, version: int | None = None) -> Encoding:
        shape, dtype, data = _pack_images(images)
        response = self.stub.Encode(pb.EncodeRequest(model_name=model, model_version=version, shape=shape,
                                                     dtype=dtype, images=data), timeout=self.timeout)
        log_variance = _array(response.log_variance, np.dtype("<f4"), response.shape) if response.log_variance else None
        return Encoding(_array(response.latents, np.dtype("<f4"), response.shape), log_variance,
                        response.model_name, response.model_version)

    def reconstruct(self, model: str, images: np.ndarray, *, version: int | None = None,
                    dtype: str = "uint8") -> np.ndarray:
        shape, in_dtype, data = _pack_images(images)
        response = self.stub.Reconstruct(pb.ReconstructRequest(
            model_name=model, model_version=version, shape=shape, dtype=in_dtype, images=data,
            output_dtype=dtype_number(dtype)), timeout=self.timeout)
        return _array(response.images, _NUMPY_DTYPES[response.dtype], response.shape)

    def list_models(self) -> list[ModelSummary]:
        response = self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout)
        return [ModelSummary(m.name, tuple(m.versions), m.default_version, m.kind, m.latent_dim)
                for m in response.models]

    def default_model(self) -> str:
        """ListModels, then default_model_name(): what aegen-sample, aegen-loadtest and the demo use when
        no model is named. NoModelsError when the server lists none."""
        return default_model_name(self.list_models())

    def model_info(self, model: str, *, version: int | None = None) -> pb.GetModelInfoResponse:
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(model_name=model, model_version=version),
                                      timeout=self.timeout)


def _samples(response) -> Samples:
    latents = _array(response.latents, np.dtype("<f4"), response.latents_shape) if response.latents else None
    return Samples(_array(response.samples, _NUMPY_DTYPES[response.dtype], response.shape), latents,
                   response.model_name, response.model_version,
                   SAMPLER_NAMES.get(response.sampler, str(response.sampler)), response.seed, getattr(response, "offset", 0))


def _array(data: bytes, dtype: np.dtype, shape) -> np.ndarray:
    return np.frombuffer(data, dtype=dtype).reshape(tuple(shape))


def _pack_images(images: np.ndarray) -> tuple[list[int], int, bytes]:
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return list(images.shape), pb.DTYPE_UINT8, np.ascontiguousarray(images).tobytes()
    return list(images.shape), pb.DTYPE_FLOAT32, np.ascontiguousarray(images, dtype="<f4").tobytes()
