"""Loaded model versions: sessions, sampling checks, image checks, encoding.

A model version is read through export/repository.py (the repository's format module, which verifies
every file's SHA-256), gets one onnxruntime session per graph and is warmed up at every batch-size bucket
(`load_model`); registry.py decides which versions are served and swaps them in.

Protocols do not call this module directly: server/core/dataplane.py is the core's one entry point.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from export.repository import (
    LATENT_FLOW_INPUT,
    LATENT_FLOW_OUTPUT,
    LEARNED_SAMPLERS,
    LatentSamplers,
    Manifest,
    ModelVersion,
    RepositoryError,
    load_version,
)
from server.core import samplers as latent_samplers
from server.core.batcher import Batcher, BatchObserver
from server.core.batches import Decoded, LatentSource, SeededRows
from server.core.errors import InvalidRequest, ModelLoadError, ModelNotFound
from server.core.runner import DecoderRunner, Device, GraphRunner
from server.core.settings import MAX_IMAGE_ELEMENTS, CoreSettings
from server.core.stats import VersionStats

log = logging.getLogger("aegen.server.models")

OUTPUT_DTYPES = {"uint8": "decoder_uint8", "float32": "decoder"}  # response dtype → graph key
INT8_OUTPUT_DTYPES = {"uint8": "decoder_int8_uint8", "float32": "decoder_int8"}  # --decoder-precision int8


class ModelObserver(Protocol):
    """What telemetry hears of the registry (server/telemetry/metrics.py provides it); on the event loop."""

    def model_loaded(self, name: str, version: int, device: str, execution_provider: str) -> None: ...
    def model_unloaded(self, name: str, version: int) -> None: ...
    def samples_generated(self, model: str, n: int) -> None: ...
    def batch_observer(self, model: str, device: str) -> BatchObserver | None: ...


class _NullModelObserver:
    def model_loaded(self, name: str, version: int, device: str, execution_provider: str) -> None:
        pass

    def model_unloaded(self, name: str, version: int) -> None:
        pass

    def samples_generated(self, model: str, n: int) -> None:
        pass

    def batch_observer(self, model: str, device: str) -> None:
        return None


@dataclass(frozen=True)
class ModelInfo:
    """A served model version, as every protocol describes it."""

    name: str
    version: int
    manifest: Manifest
    device: str
    execution_provider: str

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def latent_dim(self) -> int:
        return self.manifest.latent_dim

    @functools.cached_property
    def samplers(self) -> tuple[str, ...]:
        """The samplers this version offers: the manifest's fitted ones, and a learned one per graph it has."""
        return offered_samplers(self.manifest)


def offered_samplers(manifest: Manifest) -> tuple[str, ...]:
    learned = tuple(name for name, graph in LEARNED_SAMPLERS.items() if graph in manifest.graphs)
    return (*manifest.samplers, *learned)


@dataclass(frozen=True)
class Encoded:
    latents: np.ndarray  # (n, d) float32: z for an AE, the mean for a VAE
    log_variance: np.ndarray | None  # (n, d) float32 for a VAE


@dataclass(eq=False)
class LoadedModel:
    """One model version with its sessions (and, once active, its batcher)."""

    version: ModelVersion
    samplers: LatentSamplers | None
    encoder: GraphRunner
    decoders: dict[str, DecoderRunner]  # by output dtype: "uint8", "float32"
    max_samples: int
    flow: GraphRunner | None = None  # the learned sampler's graph (noise → latent), when the version has one
    batcher: Batcher | None = field(default=None)
    stats: VersionStats = field(default_factory=VersionStats)

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def number(self) -> int:
        return self.version.version

    @property
    def manifest(self):
        return self.version.manifest

    @property
    def device(self) -> str:
        return self.decoders["float32"].device

    @property
    def execution_provider(self) -> str:
        return self.decoders["float32"].execution_provider

    @functools.cached_property
    def info(self) -> ModelInfo:
        return ModelInfo(self.name, self.number, self.manifest, self.device, self.execution_provider)

    def generate(self, n: int, seeds: np.ndarray | int, rows: np.ndarray | int, sampler: str, temperature: float,
                 dtype: str, deadline: float | None = None) -> asyncio.Future:
        """Queue n samples, one per (seed, row) pair of the arrays `seeds` and `rows`, or rows rows..rows+n-1
        of the one seed `seeds` (both ints); resolves to batches.Decoded. The latents are drawn on the
        inference thread, for all the requests of a batch at once (`draw`, samplers.py)."""
        self.check_count(n)
        self.check_sampling(sampler, temperature)
        return self.submit_latents(n, SeededRows((sampler, temperature), seeds, rows), dtype, deadline)

    def draw(self, key: tuple[str, float], seeds: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The batcher's draw function: latents of (seed, row) pairs for the sampler key (sampler, temperature)."""
        sampler, temperature = key
        return latent_samplers.draw(self.samplers, sampler, seeds, rows, self.manifest.latent_dim, temperature,
                                    flow=self._run_flow)

    def _run_flow(self, noise: np.ndarray) -> np.ndarray:
        return self.flow.run({LATENT_FLOW_INPUT: noise})[LATENT_FLOW_OUTPUT]

    def submit_latents(self, n: int, source: LatentSource, dtype: str,
                       deadline: float | None = None) -> asyncio.Future:
        if self.batcher is None:
            raise ModelNotFound(f"model {self.name} version {self.number} is not serving")
        return self.batcher.submit(n, source, dtype, deadline)

    def check_sampling(self, sampler: str, temperature: float) -> None:
        latent_samplers.check_sampling(self.info.samplers, sampler, temperature,
                                       f"model {self.name} version {self.number}")

    def check_images(self, shape: tuple[int, ...], dtype: str, data: bytes) -> np.ndarray:
        """Packed images (uint8 0..255 or float32 [0, 1]) → float32 (n, *image_shape); InvalidRequest if wrong."""
        expected = tuple(self.manifest.image_shape)
        if len(shape) != 1 + len(expected) or tuple(shape[1:]) != expected:
            raise InvalidRequest(f"images must have shape [N, {', '.join(map(str, expected))}], got {list(shape)}")
        n = shape[0]
        self.check_count(n)
        itemsize = {"uint8": 1, "float32": 4}[dtype]
        size = n * math.prod(expected) * itemsize
        if len(data) != size:
            raise InvalidRequest(f"images hold {len(data)} bytes; shape {list(shape)} in {dtype} needs {size}")
        images = np.frombuffer(data, dtype="<f4" if dtype == "float32" else np.uint8).reshape(n, *expected)
        if dtype == "uint8":
            return images.astype(np.float32) * np.float32(1 / 255)
        return images.astype(np.float32)  # a writable, native-endian copy

    def encode(self, images: np.ndarray) -> Encoded:
        """Blocking: run it on a worker thread."""
        info = self.manifest.graphs["encoder"]
        outputs = self.encoder.run({next(iter(info.inputs)): images})
        names = list(info.outputs)
        log_variance = outputs[names[1]] if len(names) > 1 else None
        return Encoded(np.ascontiguousarray(outputs[names[0]], np.float32), log_variance)

    def check_count(self, n: int) -> None:
        if not 1 <= n <= self.max_samples:
            raise InvalidRequest(f"number of samples must be in 1..{self.max_samples}, got {n}")


def load_model(repository: Path, name: str, version: int, device: Device, config: CoreSettings) -> LoadedModel:
    """Read, verify, open and warm up one version. Blocking (seconds); raises ModelLoadError."""
    try:
        model_version = load_version(repository, name, version)
        samplers = model_version.load_samplers()
    except RepositoryError as exc:
        raise ModelLoadError(str(exc)) from None
    manifest = model_version.manifest
    if math.prod(manifest.image_shape) > MAX_IMAGE_ELEMENTS:
        raise ModelLoadError(f"{model_version.path}: images of {list(manifest.image_shape)} exceed the "
                             f"{MAX_IMAGE_ELEMENTS} pixels the message size limit is sized for")
    encoder = GraphRunner(model_version.graph_path("encoder"), device)
    flow_graph = LEARNED_SAMPLERS["flow"]
    flow = GraphRunner(model_version.graph_path(flow_graph), device) if flow_graph in manifest.graphs else None
    decoders = {
        dtype: DecoderRunner(model_version.graph_path(key), device, manifest.latent_dim,
                             tuple(manifest.image_shape), np.dtype(dtype), config.max_batch_size)
        for dtype, key in decoder_graphs(manifest, config.decoder_precision, str(model_version.path)).items()
    }
    try:
        for decoder in decoders.values():
            decoder.warm_up()
        encoder.run({encoder.input_names[0]: np.zeros((1, *manifest.image_shape), np.float32)})
        if flow is not None:
            flow.run({LATENT_FLOW_INPUT: np.zeros((1, manifest.latent_dim), np.float32)})
    except Exception as exc:  # noqa: BLE001 - a graph that loads but cannot run is refused like a corrupt one
        raise ModelLoadError(f"{model_version.path}: warm-up failed ({exc})") from None
    return LoadedModel(model_version, samplers, encoder, decoders, config.max_samples_per_request, flow)


def decoder_graphs(manifest: Manifest, precision: str, where: str) -> dict[str, str]:
    """Response dtype → the graph that decodes it: the int8 ones when asked for and the version has them."""
    if precision == "int8":
        if all(key in manifest.graphs for key in INT8_OUTPUT_DTYPES.values()):
            return INT8_OUTPUT_DTYPES
        log.warning("--decoder-precision int8: this version has no int8 decoders (aegen-export --int8); "
                    "serving its float32 ones", extra={"version": where})
    return OUTPUT_DTYPES


__all__ = ["Decoded", "Encoded", "LoadedModel", "ModelInfo", "ModelObserver", "load_model"]
