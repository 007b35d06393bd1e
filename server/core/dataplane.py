"""The data plane: every operation a protocol exposes, in protocol-neutral terms.

Protocol adapters (server/protocols/) decode a request into these calls' arguments, await the call, and
encode what it returns; errors are server/core/errors.py types, which each adapter maps to its statuses in
one table. Defaults (the server-drawn seed), limits, stream chunking and Reconstruct's composition of encode
and decode are decided here, once, for every protocol.

    generate     seeds → images (and their latents)      reconstruct  images → codes → images
    stream       a long generate, in chunks               decode       caller-given latents → images
    encode       images → latent codes                    models, model, ready
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from server.core.batches import Decoded
from server.core.errors import InvalidRequest
from server.core.models import Encoded, LoadedModel, ModelInfo
from server.core.registry import ModelRegistry, VersionState
from server.core.settings import CoreSettings
from server.core.stats import VersionStats

DEFAULT_SAMPLER = "standard_normal"
DEFAULT_DTYPE = "uint8"
OUTPUT_DTYPES = ("uint8", "float32")


@dataclass(slots=True)
class Generated:
    """Images decoded from a seed's latents (or a chunk of them, rows offset.. of the stream)."""

    model: ModelInfo
    images: np.ndarray  # (n, *image_shape), uint8 or float32
    latents: np.ndarray  # (n, latent_dim) float32
    sampler: str
    seed: int
    offset: int = 0


@dataclass(frozen=True)
class EncodedImages:
    model: ModelInfo
    latents: np.ndarray  # (n, d) float32: z for an AE, the mean for a VAE
    log_variance: np.ndarray | None  # (n, d) float32 for a VAE


@dataclass(frozen=True)
class DecodedImages:
    model: ModelInfo
    images: np.ndarray  # (n, *image_shape) in the asked dtype


@dataclass(frozen=True)
class PackedImages:
    """Images as they arrive on the wire: shape [n, *image_shape], dtype uint8 (0..255) or float32 ([0, 1])."""

    shape: tuple[int, ...]
    dtype: str
    data: bytes | memoryview


class DataPlane:
    """The core's one entry point for protocols; it owns no transport and no metrics library."""

    def __init__(self, registry: ModelRegistry, settings: CoreSettings) -> None:
        self.registry = registry
        self.settings = settings

    # ----------------------------------------------------------------------------------- what is served

    def ready(self) -> bool:
        return bool(self.registry.models())

    def models(self) -> list[ModelInfo]:
        return [m.info for m in self.registry.models()]

    def model(self, name: str, version: int | None = None) -> ModelInfo:
        return self.registry.resolve(name, version).info

    def versions(self, name: str) -> list[ModelInfo]:
        """Every served version of `name`, oldest first; ModelNotFound when none is."""
        self.registry.resolve(name)
        return [m.info for m in self.registry.versions(name)]

    def states(self) -> list[VersionState]:
        """Every version the registry knows of, with READY / UNAVAILABLE / LOADING and the reason."""
        return self.registry.states()

    def statistics(self, name: str, version: int | None = None) -> list[tuple[ModelInfo, VersionStats]]:
        """Statistics of one served version, or of every served version of `name` when version is None."""
        models = self.registry.versions(name) if version is None else [self.registry.resolve(name, version)]
        if not models:
            self.registry.resolve(name)  # raises ModelNotFound with the loaded names
        return [(m.info, m.stats) for m in models]

    def model_label(self, name: str) -> str:
        """`name` if it is a loaded model, else "": metrics labels must not grow with what clients send."""
        return name if self.registry.is_loaded(name) else ""

    # ------------------------------------------------------------------------------------- generation

    async def generate(self, name: str, version: int | None, n: int, *, seed: int | None = None,
                       sampler: str = DEFAULT_SAMPLER, temperature: float = 1.0, dtype: str = DEFAULT_DTYPE,
                       deadline: float | None = None) -> Generated:
        """n samples drawn from `seed` (a server-drawn one when None); `deadline` is time.monotonic()."""
        model = self.registry.resolve(name, version)
        seed = draw_seed() if seed is None else seed
        decoded = await self._generate_rows(model, n, seed, 0, sampler, temperature, dtype, deadline)
        return Generated(model.info, decoded.images, decoded.latents, sampler, seed)

    async def generate_per_seed(self, name: str, version: int | None, seeds: np.ndarray, *,
                                sampler: str = DEFAULT_SAMPLER, temperature: float = 1.0,
                                dtype: str = DEFAULT_DTYPE, deadline: float | None = None) -> Generated:
        """One sample per seed: row i is row 0 of seeds[i], i.e. what generate(seed=seeds[i], n=1) gives."""
        model = self.registry.resolve(name, version)
        seeds = np.ascontiguousarray(seeds, np.uint64).reshape(-1)
        if len(seeds) == 1:  # one seed as an int: the batch builds its arrays with the other requests'
            decoded = await self._generate_rows(model, 1, int(seeds[0]), 0, sampler, temperature, dtype, deadline)
        else:
            decoded = await self._generate_rows(model, len(seeds), seeds, np.zeros(len(seeds), np.uint64), sampler,
                                                temperature, dtype, deadline)
        return Generated(model.info, decoded.images, decoded.latents, sampler, int(seeds[0]) if len(seeds) else 0)

    async def _generate_rows(self, model: LoadedModel, n: int, seeds: np.ndarray | int, rows: np.ndarray | int,
                             sampler: str, temperature: float, dtype: str, deadline: float | None) -> Decoded:
        """n samples (LoadedModel.generate's seeds and rows), counted in the version's statistics and the
        generated-samples metric. (The statistics' begin/end written out, not `with stats.request()`: its
        generator costs more than the rest of this function, on every call.)"""
        _check_dtype(dtype)
        stats = model.stats
        started = stats.begin()
        try:
            decoded = await model.generate(n, seeds, rows, sampler, temperature, dtype, deadline)
        except Exception:
            stats.failed(started)
            raise
        stats.succeeded(started)
        self.registry.observer.samples_generated(model.name, n)
        return decoded

    async def latents_per_seed(self, name: str, version: int | None, seeds: np.ndarray, *,
                               sampler: str = DEFAULT_SAMPLER, temperature: float = 1.0) -> np.ndarray:
        """The latents generate_per_seed would decode, without decoding them (on a worker thread)."""
        model = self.registry.resolve(name, version)
        seeds = np.ascontiguousarray(seeds, np.uint64).reshape(-1)
        model.check_count(len(seeds))
        model.check_sampling(sampler, temperature)
        with model.stats.request():
            return await asyncio.to_thread(model.draw, (sampler, temperature), seeds, np.zeros(len(seeds), np.uint64))

    async def stream(self, name: str, version: int | None, n: int, *, chunk: int = 0, seed: int | None = None,
                     sampler: str = DEFAULT_SAMPLER, temperature: float = 1.0, dtype: str = DEFAULT_DTYPE,
                     deadline: float | None = None) -> AsyncIterator[Generated]:
        """n samples in chunks of `chunk` (0: the batch size): rows 0..n-1 of the seed, as generate(seed, n).

        The next chunk is queued once this one is decoded, while this one is being sent (so at most two are
        held); a consumer that stops early cancels the queued chunk."""
        model = self.registry.resolve(name, version)
        limit = self.settings.max_samples_per_stream
        if not 1 <= n <= limit:
            raise InvalidRequest(f"num_samples must be in 1..{limit}, got {n}")
        if chunk < 0:
            raise InvalidRequest(f"chunk_samples must be >= 0, got {chunk}")
        chunk = min(chunk or self.settings.max_batch_size, self.settings.max_samples_per_request)
        seed = draw_seed() if seed is None else seed
        _check_dtype(dtype)
        model.check_sampling(sampler, temperature)
        info = model.info

        def submit(offset: int) -> asyncio.Future:
            return model.generate(min(chunk, n - offset), seed, offset, sampler, temperature, dtype, deadline)

        offset, pending = 0, submit(0)
        try:
            while pending is not None:
                decoded: Decoded = await pending
                count = decoded.images.shape[0]
                pending = submit(offset + count) if offset + count < n else None
                self.registry.observer.samples_generated(model.name, count)
                yield Generated(info, decoded.images, decoded.latents, sampler, seed, offset)
                offset += count
        finally:
            if pending is not None:
                pending.cancel()  # the client went away: the batcher drops the queued chunk

    # ---------------------------------------------------------------------------------- codes and images

    async def encode(self, name: str, version: int | None, images: PackedImages) -> EncodedImages:
        model = self.registry.resolve(name, version)
        with model.stats.request():
            encoded: Encoded = await asyncio.to_thread(model.encode, _unpack(model, images))
        return EncodedImages(model.info, encoded.latents, encoded.log_variance)

    async def reconstruct(self, name: str, version: int | None, images: PackedImages, *,
                          dtype: str = DEFAULT_DTYPE, deadline: float | None = None) -> DecodedImages:
        """Encode, then decode the codes (a VAE's means) through the batcher, like seeds: same queue bound."""
        model = self.registry.resolve(name, version)
        _check_dtype(dtype)
        with model.stats.request():
            pixels = _unpack(model, images)
            encoded: Encoded = await asyncio.to_thread(model.encode, pixels)
            decoded = await model.submit_latents(len(pixels), lambda: encoded.latents, dtype, deadline)
        return DecodedImages(model.info, decoded.images)

    async def decode(self, name: str, version: int | None, latents: np.ndarray, *, dtype: str = DEFAULT_DTYPE,
                     deadline: float | None = None) -> DecodedImages:
        """Caller-given latents (n, latent_dim) → images, batched with everything else."""
        model = self.registry.resolve(name, version)
        _check_dtype(dtype)
        with model.stats.request():
            d = model.manifest.latent_dim
            if latents.ndim != 2 or latents.shape[1] != d:
                raise InvalidRequest(f"latents must have shape [N, {d}] for model {model.name}, "
                                     f"got {list(latents.shape)}")
            model.check_count(latents.shape[0])
            latents = np.ascontiguousarray(latents, dtype=np.float32)
            if not np.isfinite(latents).all():
                raise InvalidRequest("latents must be finite (no NaN or infinity)")
            decoded = await model.submit_latents(latents.shape[0], lambda: latents, dtype, deadline)
        return DecodedImages(model.info, decoded.images)


# Seeds are not secrets (every answer carries its own): a generator seeded once from the OS, not a getrandom()
# system call per request (~5-17 µs each on this VM, the largest single cost of a one-sample call's own work).
_SEEDS = random.Random(secrets.randbits(256))


def draw_seed() -> int:
    """The seed of a request that brings none: 64 random bits, returned to the caller with the samples."""
    return _SEEDS.getrandbits(64)


def _check_dtype(dtype: str) -> None:
    if dtype not in OUTPUT_DTYPES:
        raise InvalidRequest(f"output dtype must be one of {', '.join(OUTPUT_DTYPES)}, got {dtype!r}")


def _unpack(model: LoadedModel, images: PackedImages) -> np.ndarray:
    if images.dtype not in OUTPUT_DTYPES:
        raise InvalidRequest(f"images dtype must be one of {', '.join(OUTPUT_DTYPES)}, got {images.dtype!r}")
    return model.check_images(tuple(images.shape), images.dtype, images.data)


__all__ = ["DEFAULT_DTYPE", "DEFAULT_SAMPLER", "DataPlane", "DecodedImages", "EncodedImages", "Generated",
           "ModelInfo", "PackedImages", "draw_seed"]
