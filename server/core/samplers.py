"""Seeds → latents: drawing from a model version's latent samplers at serving time.

The model repository's format module (export/repository.py) describes and verifies the fitted densities on
disk (`LatentSamplers`); this module draws from them:

    standard_normal: temperature·ε
    gaussian:        mean + temperature·L·ε
    mixture:         a component k drawn by weight, then mean_k + temperature·L_k·ε
    flow:            the version's latent_flow graph (a RealNVP flow fitted to the training latents) applied
                     to temperature·ε

with ε ~ N(0, I) and L·Lᵀ the covariance. Every row's randomness is addressed by (seed, row) through the
counter-based Philox4x32-10 generator (philox.py): block 0 of the row gives the mixture's component uniform,
blocks 1.. its normals. So row r of `GenerateSamples(seed, n)` is the same for every n > r, a stream is the
same rows as one big request, an Open Inference Protocol request with seeds [s0, s1, …] gets row 0 of each
seed (what `GenerateSamples(seed=s_i, num_samples=1)` returns), and none of it depends on batching. A whole
batch of seeds is drawn with a few array operations: no generator object per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from export.repository import FITTED_SAMPLERS, LEARNED_SAMPLERS, SAMPLERS, LatentSamplers
from server.core import philox
from server.core.errors import InvalidRequest


def check_sampling(offered: tuple[str, ...], sampler: str, temperature: float, what: str) -> None:
    """InvalidRequest unless `sampler` is one of `offered` (the manifest's) and the temperature is usable."""
    if sampler not in offered:
        raise InvalidRequest(f"{what} offers samplers {', '.join(offered)}; not {sampler}")
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise InvalidRequest(f"temperature must be finite and > 0, got {temperature}")


def draw(samplers: LatentSamplers | None, sampler: str, seeds: np.ndarray, rows: np.ndarray, latent_dim: int,
         temperature: float = 1.0, flow: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Latents (float32, (n, latent_dim)) of rows `rows` of seeds `seeds` (both (n,) uint64) from `sampler`;
    `flow` runs the version's latent_flow graph (float32 noise → latents) for the learned sampler."""
    if sampler not in (*SAMPLERS, *LEARNED_SAMPLERS):
        raise InvalidRequest(f"unknown sampler {sampler!r}; expected one of {', '.join((*SAMPLERS, *LEARNED_SAMPLERS))}")
    if sampler in ("standard_normal", "flow"):
        eps = philox.normals(seeds, rows, latent_dim)
        eps *= temperature
        if sampler == "standard_normal":
            return eps.astype(np.float32)
        if flow is None:
            raise InvalidRequest("sampler 'flow' is not offered: this model version has no latent_flow graph")
        return np.ascontiguousarray(flow(eps.astype(np.float32)), np.float32)
    if samplers is None:
        raise InvalidRequest(f"sampler {sampler!r} was not fitted for this model")
    eps = philox.normals(seeds, rows, samplers.latent_dim)
    if sampler == "gaussian":
        return (samplers.gaussian_mean + temperature * eps @ samplers.gaussian_chol.T).astype(np.float32)
    component = choose_components(samplers.mixture_weights, philox.uniforms(seeds, rows, 1)[:, 0])
    return mixture_latents(samplers, component, eps, temperature)


def seed_rows(seed: int, first: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(seeds, rows) for rows first..first+n of one seed's sequence."""
    return np.full(n, seed, np.uint64), np.arange(first, first + n, dtype=np.uint64)


def choose_components(weights: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Component index per uniform in [0, 1): the inverse of the weights' cumulative distribution."""
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return cdf.searchsorted(uniforms, side="right")


def mixture_latents(samplers: LatentSamplers, component: np.ndarray, eps: np.ndarray,
                    temperature: float) -> np.ndarray:
    z = np.empty(eps.shape)
    for k in range(samplers.components):  # per component, not a gather of (n, d, d) factors: memory O(n·d)
        rows = component == k
        z[rows] = samplers.mixture_means[k] + temperature * eps[rows] @ samplers.mixture_chols[k].T
    return z.astype(np.float32)


__all__ = ["FITTED_SAMPLERS", "SAMPLERS", "check_sampling", "choose_components", "draw", "mixture_latents",
           "seed_rows"]
