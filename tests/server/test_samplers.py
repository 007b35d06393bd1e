"""server/core/samplers.py: drawing latents from a version's samplers, as the server does per request."""

from __future__ import annotations

import numpy as np
import pytest

from export.repository import LatentSamplers
from server.core.errors import InvalidRequest
from server.core.samplers import check_sampling, draw


def _samplers(d: int = 3, k: int = 4) -> LatentSamplers:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, d, d))
    weights = rng.random(k)
    return LatentSamplers(np.arange(d, dtype=float), np.eye(d) * 2, weights / weights.sum(),
                          rng.standard_normal((k, d)) * 5, a @ a.transpose(0, 2, 1) + np.eye(d))


def test_same_rng_seed_gives_the_same_latents_for_every_sampler() -> None:
    s = _samplers()
    for sampler in ("standard_normal", "gaussian", "mixture"):
        a = draw(s, sampler, np.random.default_rng(5), 64, 3, 0.7)
        b = draw(s, sampler, np.random.default_rng(5), 64, 3, 0.7)
        c = draw(s, sampler, np.random.default_rng(6), 64, 3, 0.7)
        assert a.dtype == np.float32 and a.shape == (64, 3)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_mixture_draws_what_generator_choice_then_normals_draw() -> None:
    """The mixture's randomness is Generator.choice(k, p=weights) then n×d normals: the bytes served so far."""
    s = _samplers()
    rng = np.random.Generator(np.random.PCG64(11))
    component = rng.choice(s.components, size=500, p=s.mixture_weights)
    eps = rng.standard_normal((500, 3))
    expected = np.stack([s.mixture_means[k] + eps[i] @ s.mixture_chols[k].T for i, k in enumerate(component)])
    got = draw(s, "mixture", np.random.Generator(np.random.PCG64(11)), 500, 3)
    np.testing.assert_allclose(got, expected.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_standard_normal_needs_no_fitted_samplers_but_the_others_do() -> None:
    assert draw(None, "standard_normal", np.random.default_rng(0), 10, 4).shape == (10, 4)
    with pytest.raises(InvalidRequest, match="not fitted"):
        draw(None, "mixture", np.random.default_rng(0), 10, 4)
    with pytest.raises(InvalidRequest, match="unknown sampler"):
        draw(_samplers(), "uniform", np.random.default_rng(0), 1, 3)


@pytest.mark.parametrize("sampler, temperature, message", [
    ("uniform", 1.0, "offers samplers"), ("gaussian", 0.0, "temperature"), ("gaussian", float("nan"), "temperature"),
    ("gaussian", float("inf"), "temperature"), ("gaussian", -1.0, "temperature"),
])
def test_bad_sampling_requests_are_invalid_requests(sampler, temperature, message) -> None:
    with pytest.raises(InvalidRequest, match=message):
        check_sampling(("standard_normal", "gaussian", "mixture"), sampler, temperature, "model m version 1")
