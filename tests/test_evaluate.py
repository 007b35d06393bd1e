"""aegen-eval and the sample metrics: each metric separates what it should separate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.classifier import load_classifier
from training.data import load_dataset, to_unit_float, train_val_split
from training.evaluate import EvalError, frechet_distance, main, mixture_log_density, sample_metrics


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


@pytest.fixture(scope="module")
def real_val() -> np.ndarray:
    return to_unit_float(train_val_split(load_dataset("digits"), 0.1, seed=0).val_images)


def test_real_digits_score_high_inception_and_full_coverage(classifier, real_val):
    m = sample_metrics(real_val, real_val, classifier)
    assert m["inception_score"] > 8
    assert m["coverage"] > 0.98
    assert m["validity"] >= 0.95
    assert m["fcd"] < 1e-3  # a set against itself


def test_a_constant_image_scores_inception_one_and_no_coverage(classifier, real_val):
    constant = np.full((500, 1, 28, 28), 0.3, dtype=np.float32)
    m = sample_metrics(constant, real_val, classifier)
    assert m["inception_score"] == pytest.approx(1.0, abs=1e-6)
    assert m["coverage"] == 0.0
    assert m["validity"] == 0.0


def test_fcd_is_small_between_real_halves_and_large_against_noise(classifier, real_val):
    half_a, half_b = real_val[::2], real_val[1::2]
    noise = np.random.default_rng(0).random((500, 1, 28, 28), dtype=np.float32)
    real_vs_real = sample_metrics(half_a, half_b, classifier)["fcd"]
    real_vs_noise = sample_metrics(noise, half_b, classifier)["fcd"]
    assert real_vs_real < 0.05 * real_vs_noise


def test_frechet_distance_of_two_gaussians_matches_closed_form():
    """N(0, I) against N(m, 4I) in 3-D: ‖m‖² + tr(I + 4I − 2·2I) = ‖m‖² + 3, up to sampling error."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((200_000, 3))
    b = 2 * rng.standard_normal((200_000, 3)) + np.array([1.0, 2.0, 0.0])
    assert frechet_distance(a, b) == pytest.approx(5.0 + 3.0, rel=0.02)


def test_mixture_log_density_matches_the_gaussians_it_mixes():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 3))
    a = rng.normal(size=(3, 3))
    covs = np.stack([np.eye(3), a @ a.T + 0.5 * np.eye(3)])
    means = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])

    def gaussian(mean, cov):  # the textbook density, by determinant and inverse
        d = z - mean
        quad = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
        return np.exp(-0.5 * quad) / np.sqrt((2 * np.pi) ** 3 * np.linalg.det(cov))

    expected = np.log(0.3 * gaussian(means[0], covs[0]) + 0.7 * gaussian(means[1], covs[1]))
    np.testing.assert_allclose(mixture_log_density(np.array([0.3, 0.7]), means, covs, z), expected, rtol=1e-10)
    far = mixture_log_density(np.array([1.0]), means[:1], covs[:1], np.full((1, 3), 60.0))
    assert np.isfinite(far).all() and far[0] < -5000  # log-sum-exp: no underflow to -inf


def test_sample_metrics_refuse_images_outside_unit_range(classifier, real_val):
    with pytest.raises(EvalError, match=r"\[0, 1\]"):
        sample_metrics(real_val * 255, real_val, classifier)
    with pytest.raises(EvalError, match=r"\(N, 1, 28, 28\)"):
        sample_metrics(torch.zeros(3, 784), real_val, classifier)


def test_aegen_eval_writes_json_and_prints_table(vae_checkpoint: Path, tmp_path: Path, capsys):
    out = tmp_path / "eval.json"
    assert main([str(vae_checkpoint), "--samples", "400", "--fitted", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["sampling"]) == {"N(0,1)", "fitted", "real (training)"}
    for row in result["sampling"].values():
        assert 0 <= row["validity"] <= 1 and 0 <= row["coverage"] <= 1 and 1 <= row["inception_score"] <= 10
    assert result["reconstruction"]["val_elbo"] < 0 < result["reconstruction"]["val_kl"]
    printed = capsys.readouterr().out
    assert "N(0,1)" in printed and "not Inception FID" in printed


def test_aegen_eval_on_an_autoencoder_has_no_elbo(ae_checkpoint: Path, capsys):
    assert main([str(ae_checkpoint), "--samples", "200"]) == 0
    assert "elbo" not in capsys.readouterr().out


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors
        return int(exc.code)


@pytest.mark.parametrize("args", [["/nonexistent/checkpoint"], ["{ckpt}", "--samples", "1"], ["{ckpt}", "--bogus"],
                                  ["{ckpt}", "--corrupt", "blur:1"], ["{ckpt}", "--threads", "two"]])
def test_bad_input_is_one_line_on_stderr_and_exit_2(vae_checkpoint: Path, capsys, args):
    assert _exit_code([a.format(ckpt=vae_checkpoint) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aegen-eval: error:") and err.count("\n") == 1
