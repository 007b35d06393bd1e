"""Seeds → latents: drawing from a model version's latent samplers at serving time.

The model repository's format module (export/repository.py) describes and verifies the fitted densities on
disk (`LatentSamplers`); this module draws from them:

    standard_normal: temperature·ε
    gaussian:        mean + temperature·L·ε
    mixture:         a component k drawn by weight, then mean_k + temperature·L_k·ε

with ε ~ N(0, I) and L·Lᵀ the covariance. A request's randomness is one numpy Generator(PCG64(seed)): for a
mixture, n uniforms choose the components (as `Generator.choice` with weights does), then the n×d normals.
The same seed gives the same latents whether the request is batched with others or alone.
"""

from __future__ import annotations

import math

import numpy as np

from export.repository import FITTED_SAMPLERS, SAMPLERS, LatentSamplers
from server.core.errors import InvalidRequest


def check_sampling(offered: tuple[str, ...], sampler: str, temperature: float, what: str) -> None:
    """InvalidRequest unless `sampler` is one of `offered` (the manifest's) and the temperature is usable."""
    if sampler not in offered:
        raise InvalidRequest(f"{what} offers samplers {', '.join(offered)}; not {sampler}")
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise InvalidRequest(f"temperature must be finite and > 0, got {temperature}")


def draw(samplers: LatentSamplers | None, sampler: str, rng: np.random.Generator, n: int, latent_dim: int,
         temperature: float = 1.0) -> np.ndarray:
    """n latents (float32, (n, latent_dim)) from `sampler`, using `rng`; checked arguments assumed."""
    if sampler not in SAMPLERS:
        raise InvalidRequest(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if sampler == "standard_normal":
        return (temperature * rng.standard_normal((n, latent_dim))).astype(np.float32)
    if samplers is None:
        raise InvalidRequest(f"sampler {sampler!r} was not fitted for this model")
    if sampler == "gaussian":
        eps = rng.standard_normal((n, samplers.latent_dim))
        return (samplers.gaussian_mean + temperature * eps @ samplers.gaussian_chol.T).astype(np.float32)
    component = choose_components(samplers.mixture_weights, rng.random(n))
    eps = rng.standard_normal((n, samplers.latent_dim))
    return mixture_latents(samplers, component, eps, temperature)


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


__all__ = ["FITTED_SAMPLERS", "SAMPLERS", "check_sampling", "choose_components", "draw", "mixture_latents"]
