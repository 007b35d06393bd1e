"""server/core/samplers.py and philox.py: drawing latents per (seed, row), as the server does per request."""

from __future__ import annotations

import numpy as np
import pytest

from export.repository import LatentSamplers
from server.core import philox
from server.core.errors import InvalidRequest
from server.core.samplers import check_sampling, choose_components, draw, seed_rows


def _samplers(d: int = 3, k: int = 4) -> LatentSamplers:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, d, d))
    weights = rng.random(k)
    return LatentSamplers(np.arange(d, dtype=float), np.eye(d) * 2, weights / weights.sum(),
                          rng.standard_normal((k, d)) * 5, a @ a.transpose(0, 2, 1) + np.eye(d))


@pytest.mark.parametrize("counter, key, expected", [  # Random123's known-answer vectors for philox4x32_10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_matches_the_reference_vectors(counter, key, expected) -> None:
    words = philox.philox4x32(tuple(np.array([w], np.uint64) for w in counter),
                              tuple(np.array([w], np.uint64) for w in key))
    assert tuple(int(w[0]) for w in words) == expected
    # The packed path, with the vector in the middle lane of three (its neighbours must not leak into it).
    packed = philox.philox4x32_packed(tuple(w << 64 | 0xFFFFFFFF for w in counter),
                                      tuple(w << 64 | 0x12345678 | 0xFFFFFFFF << 128 for w in key), lanes=3)
    assert tuple(int(lanes[1]) for lanes in philox.unpack(packed, 3)) == expected


def test_normals_are_standard_normal_and_independent_across_dimensions() -> None:
    z = philox.normals(np.arange(40_000, dtype=np.uint64), np.zeros(40_000, np.uint64), 7)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert np.abs(np.corrcoef(z.T) - np.eye(7)).max() < 0.03
    assert abs(np.mean(z**4) - 3) < 0.1  # Gaussian kurtosis: the Box-Muller pairs are right


def test_same_seed_same_latents_for_every_sampler_and_different_seeds_differ() -> None:
    s = _samplers()
    for sampler in ("standard_normal", "gaussian", "mixture"):
        a = draw(s, sampler, *seed_rows(5, 0, 64), 3, 0.7)
        b = draw(s, sampler, *seed_rows(5, 0, 64), 3, 0.7)
        c = draw(s, sampler, *seed_rows(6, 0, 64), 3, 0.7)
        assert a.dtype == np.float32 and a.shape == (64, 3)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_a_row_depends_only_on_its_seed_and_index() -> None:
    """Row r of a seed is the same in a request of any size, and row 0 of seed s alone is row i of a
    per-seed batch that has s at position i: batching and request size change nothing."""
    s = _samplers()
    for sampler in ("standard_normal", "gaussian", "mixture"):
        long = draw(s, sampler, *seed_rows(9, 0, 100), 3)
        np.testing.assert_array_equal(draw(s, sampler, *seed_rows(9, 40, 10), 3), long[40:50])
        seeds = np.array([3, 2**64 - 1, 9, 0], np.uint64)
        batch = draw(s, sampler, seeds, np.zeros(4, np.uint64), 3)
        for i, seed in enumerate(seeds):
            np.testing.assert_array_equal(batch[i], draw(s, sampler, *seed_rows(int(seed), 0, 1), 3)[0])


def test_mixture_components_follow_the_weights() -> None:
    s = _samplers()
    u = philox.uniforms(np.arange(100_000, dtype=np.uint64), np.zeros(100_000, np.uint64), 1)[:, 0]
    counts = np.bincount(choose_components(s.mixture_weights, u), minlength=s.components) / 100_000
    np.testing.assert_allclose(counts, s.mixture_weights, atol=0.01)


def test_standard_normal_needs_no_fitted_samplers_but_the_others_do() -> None:
    assert draw(None, "standard_normal", *seed_rows(0, 0, 10), 4).shape == (10, 4)
    with pytest.raises(InvalidRequest, match="not fitted"):
        draw(None, "mixture", *seed_rows(0, 0, 10), 4)
    with pytest.raises(InvalidRequest, match="unknown sampler"):
        draw(_samplers(), "uniform", *seed_rows(0, 0, 1), 3)


@pytest.mark.parametrize("sampler, temperature, message", [
    ("uniform", 1.0, "offers samplers"), ("gaussian", 0.0, "temperature"), ("gaussian", float("nan"), "temperature"),
    ("gaussian", float("inf"), "temperature"), ("gaussian", -1.0, "temperature"),
])
def test_bad_sampling_requests_are_invalid_requests(sampler, temperature, message) -> None:
    with pytest.raises(InvalidRequest, match=message):
        check_sampling(("standard_normal", "gaussian", "mixture"), sampler, temperature, "model m version 1")


def test_the_packed_path_for_a_few_rows_gives_the_numpy_bytes() -> None:
    rng = np.random.default_rng(1)
    seeds = rng.integers(0, 2**64 - 1, 100, dtype=np.uint64, endpoint=True)
    rows = rng.integers(0, 2**64 - 1, 100, dtype=np.uint64, endpoint=True)
    seeds[:2], rows[:2] = 2**64 - 1, 2**64 - 1  # every bit of a lane set
    together = philox.uniforms(seeds, rows, 5, first_block=1)  # 500 blocks: numpy
    in_parts = np.concatenate([philox.uniforms(seeds[i:i + k], rows[i:i + k], 5, first_block=1)
                               for i, k in ((0, 1), (1, 3), (4, 16), (20, 76), (96, 4))])  # <= 380 blocks: packed
    assert together.shape == (100, 20)
    np.testing.assert_array_equal(together, in_parts)
