"""Ex-post density estimation: fit densities to the training latents so that decoding their samples gives
images that look like the data (Ghosh et al., "From Variational to Deterministic Autoencoders", ICLR 2020,
section 4; pythae's GaussianMixtureSampler does the same with scikit-learn).

An AE's latent space has no prior, and a VAE's aggregate posterior rarely matches N(0, I) exactly, so seeds
drawn from a density fitted to where the encoder actually puts the training data decode to more valid
images. Two densities are fitted: one full-covariance Gaussian, and a mixture of k full-covariance Gaussians
fitted by EM (Dempster, Laird & Rubin 1977; Bishop, PRML §9.2.2). numpy only, deterministic given the seed.
The server draws from them at serving time (server/core/samplers.py); `preview_latents` here draws the
export's own sample figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.repository import LatentSamplers

# Added to every covariance's diagonal, as scikit-learn's reg_covar: keeps a component that collapses onto a
# few points (or a latent dimension the encoder never uses) positive definite.
COV_FLOOR = 1e-6


class SamplerFitError(Exception):
    """The latents cannot support the requested fit (too few points, non-finite values)."""


@dataclass(frozen=True)
class MixtureFit:
    weights: np.ndarray  # (k,)
    means: np.ndarray  # (k, d)
    covs: np.ndarray  # (k, d, d)
    mean_log_likelihood: float  # per training latent, at the end of EM
    iterations: int
    converged: bool


def fit_gaussian(latents: np.ndarray, cov_floor: float = COV_FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood mean and full covariance (divided by n), with the diagonal floor."""
    z = _checked(latents, minimum=2)
    mean = z.mean(axis=0)
    centred = z - mean
    cov = centred.T @ centred / len(z) + cov_floor * np.eye(z.shape[1])
    return mean, cov


def fit_mixture(
    latents: np.ndarray,
    components: int = 10,
    seed: int = 0,
    max_iterations: int = 150,
    tolerance: float = 1e-4,
    cov_floor: float = COV_FLOOR,
) -> MixtureFit:
    """EM for a full-covariance Gaussian mixture, initialised by k-means++ and a few Lloyd steps.

    Stops when the mean log-likelihood improves by less than `tolerance` (scikit-learn's criterion)."""
    z = _checked(latents, minimum=2 * components)
    rng = np.random.default_rng(seed)
    resp = _kmeans_responsibilities(z, components, rng)
    previous, converged, iterations = -np.inf, False, 0
    for iterations in range(1, max_iterations + 1):
        weights, means, covs = _m_step(z, resp, cov_floor)
        log_resp, log_likelihood = _e_step(z, weights, means, covs)
        resp = np.exp(log_resp)
        converged = log_likelihood - previous < tolerance
        if converged:
            break
        previous = log_likelihood
    weights, means, covs = _m_step(z, resp, cov_floor)
    order = np.argsort(-weights, kind="stable")  # heaviest first: a stable, readable order
    return MixtureFit(weights[order] / weights.sum(), means[order], covs[order],
                      float(log_likelihood), iterations, bool(converged))


def fit_samplers(latents: np.ndarray, components: int = 10, seed: int = 0) -> tuple[LatentSamplers, MixtureFit]:
    """Both densities, packed as the repository stores them, and the EM details for the manifest."""
    mean, cov = fit_gaussian(latents)
    mixture = fit_mixture(latents, components=components, seed=seed)
    return LatentSamplers(mean, cov, mixture.weights, mixture.means, mixture.covs), mixture


def mixture_moments(samplers: LatentSamplers) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the whole mixture: Σ wₖμₖ and Σ wₖ(Σₖ + μₖμₖᵀ) − μμᵀ."""
    w, mu, cov = samplers.mixture_weights, samplers.mixture_means, samplers.mixture_covs
    mean = w @ mu
    second = np.einsum("k,kij->ij", w, cov + np.einsum("ki,kj->kij", mu, mu))
    return mean, second - np.outer(mean, mean)


def _checked(latents: np.ndarray, minimum: int) -> np.ndarray:
    z = np.asarray(latents, dtype=np.float64)
    if z.ndim != 2:
        raise SamplerFitError(f"latents must be a (n, d) array, got shape {z.shape}")
    if len(z) < minimum:
        raise SamplerFitError(f"need at least {minimum} training latents to fit the samplers, got {len(z)}")
    if not np.all(np.isfinite(z)):
        raise SamplerFitError("the training latents hold non-finite values")
    return z


def _kmeans_responsibilities(z: np.ndarray, k: int, rng: np.random.Generator, steps: int = 10) -> np.ndarray:
    """Hard assignments from k-means++ seeding (Arthur & Vassilvitskii 2007) refined by Lloyd steps."""
    centres = [z[rng.integers(len(z))]]
    closest = ((z - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = closest.sum()
        index = rng.choice(len(z), p=closest / total) if total > 0 else rng.integers(len(z))
        centres.append(z[index])
        closest = np.minimum(closest, ((z - z[index]) ** 2).sum(axis=1))
    centres = np.stack(centres)
    for _ in range(steps):
        labels = _nearest(z, centres)
        for j in range(k):
            if np.any(labels == j):  # an empty cluster keeps its centre
                centres[j] = z[labels == j].mean(axis=0)
    resp = np.zeros((len(z), k))
    resp[np.arange(len(z)), _nearest(z, centres)] = 1.0
    return resp


def _nearest(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    distances = (z**2).sum(1)[:, None] - 2 * z @ centres.T + (centres**2).sum(1)[None, :]
    return distances.argmin(axis=1)


def _m_step(z: np.ndarray, resp: np.ndarray, cov_floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps  # an empty component must not divide by 0
    means = resp.T @ z / counts[:, None]
    covs = np.empty((len(counts), z.shape[1], z.shape[1]))
    for j in range(len(counts)):
        centred = z - means[j]
        covs[j] = (resp[:, j, None] * centred).T @ centred / counts[j] + cov_floor * np.eye(z.shape[1])
    return counts / len(z), means, covs


def _e_step(z: np.ndarray, weights: np.ndarray, means: np.ndarray, covs: np.ndarray) -> tuple[np.ndarray, float]:
    """Log responsibilities and the mean log-likelihood, via Cholesky factors (log N stays finite)."""
    n, d = z.shape
    log_prob = np.empty((n, len(weights)))
    for j in range(len(weights)):
        chol = np.linalg.cholesky(covs[j])
        whitening = np.linalg.inv(chol)  # d×d once, then one matmul: far cheaper than n triangular solves
        solved = (z - means[j]) @ whitening.T  # rows L⁻¹(z − μ): squared norm = Mahalanobis distance
        log_det = 2.0 * np.log(np.diag(chol)).sum()
        log_prob[:, j] = -0.5 * (d * np.log(2 * np.pi) + log_det + (solved**2).sum(axis=1))
    weighted = log_prob + np.log(np.maximum(weights, np.finfo(np.float64).tiny))
    top = weighted.max(axis=1, keepdims=True)  # log-sum-exp, shifted so that exp never overflows
    log_norm = (top + np.log(np.exp(weighted - top).sum(axis=1, keepdims=True)))[:, 0]
    return weighted - log_norm[:, None], float(log_norm.mean())


def preview_latents(samplers: LatentSamplers, sampler: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """n latents from a sampler for the export's figures (float32); the server's draws are its own."""
    d = samplers.latent_dim
    if sampler == "standard_normal":
        return rng.standard_normal((n, d)).astype(np.float32)
    if sampler == "gaussian":
        return rng.multivariate_normal(samplers.gaussian_mean, samplers.gaussian_cov, n).astype(np.float32)
    counts = rng.multinomial(n, samplers.mixture_weights)
    parts = [rng.multivariate_normal(samplers.mixture_means[k], samplers.mixture_covs[k], c)
             for k, c in enumerate(counts) if c]
    return rng.permutation(np.concatenate(parts)).astype(np.float32)
