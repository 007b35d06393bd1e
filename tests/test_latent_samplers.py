"""Ex-post latent samplers: the fits (export/latent_samplers.py) and the server drawing from them
(server/core/samplers.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.latent_samplers import SamplerFitError, fit_gaussian, fit_mixture, fit_samplers, mixture_moments
from export.repository import load_version
from server.core.samplers import draw, seed_rows


def _clusters(seed: int = 0, n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated 2-d clusters of different sizes and shapes; returns (points, true means)."""
    rng = np.random.default_rng(seed)
    means = np.array([[-6.0, 0.0], [0.0, 6.0], [6.0, -2.0]])
    scales = [np.array([[1.0, 0.0], [0.6, 0.4]]), np.eye(2) * 0.5, np.array([[0.3, 0.0], [0.0, 1.2]])]
    sizes = [n // 2, n // 3, n - n // 2 - n // 3]
    points = [m + rng.standard_normal((s, 2)) @ a.T for m, a, s in zip(means, scales, sizes)]
    return np.concatenate(points), means


@pytest.mark.parametrize("name", ["digits-vae", "digits-ae"])
def test_mixture_samples_have_the_fitted_mean_and_covariance(model_repository: Path, name: str) -> None:
    samplers = load_version(model_repository, name).load_samplers()
    mean, cov = mixture_moments(samplers)
    z = draw(samplers, "mixture", *seed_rows(0, 0, 200_000), samplers.latent_dim).astype(np.float64)
    scale = np.sqrt(np.diag(cov)).max()
    assert np.abs(z.mean(axis=0) - mean).max() < 0.02 * scale
    assert np.abs(np.cov(z.T) - cov).max() < 0.03 * scale**2


def test_gaussian_samples_have_the_fitted_mean_and_covariance(model_repository: Path) -> None:
    samplers = load_version(model_repository, "digits-vae").load_samplers()
    z = draw(samplers, "gaussian", *seed_rows(1, 0, 200_000), samplers.latent_dim).astype(np.float64)
    scale = np.sqrt(np.diag(samplers.gaussian_cov)).max()
    assert np.abs(z.mean(axis=0) - samplers.gaussian_mean).max() < 0.02 * scale
    assert np.abs(np.cov(z.T) - samplers.gaussian_cov).max() < 0.03 * scale**2


def test_both_fits_agree_on_the_overall_mean_and_covariance(model_repository: Path) -> None:
    # EM at a fixed point matches the data's first two moments, as the single Gaussian does exactly.
    samplers = load_version(model_repository, "digits-vae").load_samplers()
    mean, cov = mixture_moments(samplers)
    scale = np.sqrt(np.diag(samplers.gaussian_cov)).max()
    assert np.abs(mean - samplers.gaussian_mean).max() < 1e-3 * scale
    assert np.abs(cov - samplers.gaussian_cov).max() < 1e-2 * scale**2


def test_temperature_scales_the_spread_around_the_mean(model_repository: Path) -> None:
    samplers = load_version(model_repository, "digits-vae").load_samplers()
    full = draw(samplers, "gaussian", *seed_rows(2, 0, 50_000), samplers.latent_dim, 1.0)
    half = draw(samplers, "gaussian", *seed_rows(2, 0, 50_000), samplers.latent_dim, 0.5)
    np.testing.assert_allclose(half - samplers.gaussian_mean, 0.5 * (full - samplers.gaussian_mean), atol=1e-5)


def test_gaussian_fit_is_the_sample_mean_and_covariance() -> None:
    points, _ = _clusters()
    mean, cov = fit_gaussian(points)
    np.testing.assert_allclose(mean, points.mean(axis=0))
    np.testing.assert_allclose(cov, np.cov(points.T, bias=True) + 1e-6 * np.eye(2))


def test_em_recovers_well_separated_clusters() -> None:
    points, true_means = _clusters()
    fit = fit_mixture(points, components=3, seed=0)
    assert fit.converged
    order = np.argsort(fit.means[:, 0])
    np.testing.assert_allclose(fit.means[order], true_means, atol=0.15)
    np.testing.assert_allclose(fit.weights[order], [1 / 2, 1 / 3, 1 / 6], atol=0.01)


def test_fit_is_deterministic_given_the_seed() -> None:
    points, _ = _clusters(seed=3)
    a, b = fit_samplers(points, components=4, seed=7)[0], fit_samplers(points, components=4, seed=7)[0]
    np.testing.assert_array_equal(a.mixture_means, b.mixture_means)
    np.testing.assert_array_equal(a.mixture_covs, b.mixture_covs)


def test_collapsed_latents_still_give_positive_definite_samplers() -> None:
    # A VAE with posterior collapse, or an unused latent dimension: all latents (nearly) equal.
    latents = np.zeros((200, 4))
    latents[:, 0] = np.random.default_rng(0).standard_normal(200)
    samplers, _ = fit_samplers(latents, components=10)
    assert np.all(np.linalg.eigvalsh(samplers.mixture_covs) > 0)
    assert np.isfinite(draw(samplers, "mixture", *seed_rows(0, 0, 100), samplers.latent_dim)).all()


def test_too_few_or_non_finite_latents_are_refused() -> None:
    with pytest.raises(SamplerFitError, match="at least 20"):
        fit_mixture(np.zeros((5, 2)), components=10)
    with pytest.raises(SamplerFitError, match="non-finite"):
        fit_gaussian(np.array([[0.0, np.nan], [1.0, 1.0]]))
