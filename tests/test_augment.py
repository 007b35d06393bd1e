"""Augmentation, corruption (denoising), the residual conv body, the learning-rate schedule and the curves PNG."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training import checkpoint as ckpt
from training.augment import Augmentation, Corruption, psnr, random_affine
from training.data import load_embedded_digits
from training.train import TrainOptions, learning_rate_at, main, train

TINY = TrainOptions(kind="vae", latent_dim=4, hidden_dim=32, epochs=1, limit=400, batch_size=50,
                    progress=False, threads=1)


def digits(n: int = 16) -> torch.Tensor:
    return torch.from_numpy(load_embedded_digits().images[:n]).unsqueeze(1).float() / 255.0


def tiny(tmp_path: Path, name: str, **changes: object) -> TrainOptions:
    return dataclasses.replace(TINY, out=str(tmp_path / name), **changes)


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) → (B, 2): the ink's mean (row, column)."""
    rows = torch.arange(x.shape[2], dtype=torch.float32)
    mass = x.sum(dim=(1, 2, 3))
    return torch.stack([(x.sum(dim=(1, 3)) * rows).sum(1) / mass, (x.sum(dim=(1, 2)) * rows).sum(1) / mass], 1)


def test_random_affine_is_reproducible_from_the_generator_seed() -> None:
    x = digits()
    a = random_affine(x, torch.Generator().manual_seed(3))
    b = random_affine(x, torch.Generator().manual_seed(3))
    c = random_affine(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_random_affine_with_zero_ranges_is_the_identity() -> None:
    x = digits()
    y = random_affine(x, torch.Generator().manual_seed(0), Augmentation(shift_px=0, degrees=0, scale=0))
    assert torch.allclose(x, y, atol=1e-5)


def test_random_affine_moves_digits_by_at_most_the_shift_and_keeps_their_ink() -> None:
    x = digits(64)
    y = random_affine(x, torch.Generator().manual_seed(0), Augmentation(shift_px=2, degrees=0, scale=0))
    moved = (centre_of_mass(y) - centre_of_mass(x)).abs()
    assert moved.max() <= 2.05  # a digit near the border may lose a little ink, never move further
    assert moved.mean() > 0.5  # uniform in ±2 px: mean |shift| is 1 px per axis
    ink = y.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert ink.min() > 0.95
    rotated = random_affine(x, torch.Generator().manual_seed(0), Augmentation(shift_px=0, degrees=10, scale=0))
    assert not torch.allclose(rotated, x, atol=0.05)
    assert (rotated.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))).min() > 0.95


@pytest.mark.parametrize("text", ["noise", "noise:", "noise:x", "noise:-1", "mask:1", "mask:0", "blur:0.3", ""])
def test_corruption_rejects_malformed_specs(text: str) -> None:
    with pytest.raises(ValueError):
        Corruption.parse(text)


def test_noise_and_mask_corruptions_do_what_they_say() -> None:
    x = digits(64)
    noisy = Corruption.parse("noise:0.3").apply(x, torch.Generator().manual_seed(0))
    assert noisy.min() >= 0 and noisy.max() <= 1
    # E|N(0, 0.3²)| = 0.24; on the black background (most pixels) clipping at 0 removes the negative half
    assert 0.1 < float((noisy - x).abs().mean()) < 0.2
    masked = Corruption.parse("mask:0.25").apply(x, torch.Generator().manual_seed(0))
    dropped = float(((masked == 0) & (x > 0)).sum() / (x > 0).sum())
    assert 0.22 < dropped < 0.28
    assert torch.all((masked == 0) | (masked == x))
    assert psnr(x, x) == float("inf") and 5 < psnr(x, noisy) < 20


def test_augmentation_is_on_by_default_for_digits_and_deterministic(tmp_path: Path) -> None:
    a = train(tiny(tmp_path, "a"))
    b = train(tiny(tmp_path, "b"))
    plain = train(tiny(tmp_path, "plain", augment=False))
    assert ckpt.read_config(a).augment is True and ckpt.read_config(plain).augment is False
    assert (a / ckpt.WEIGHTS_FILE).read_bytes() == (b / ckpt.WEIGHTS_FILE).read_bytes()
    assert (a / ckpt.WEIGHTS_FILE).read_bytes() != (plain / ckpt.WEIGHTS_FILE).read_bytes()


def test_resumed_augmented_run_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    straight = train(tiny(tmp_path, "straight", epochs=2, corrupt="mask:0.2"))
    train(tiny(tmp_path, "resumed", epochs=1, corrupt="mask:0.2"))
    resumed = train(tiny(tmp_path, "resumed", epochs=2, corrupt="mask:0.2", resume=True))
    assert (straight / ckpt.WEIGHTS_FILE).read_bytes() == (resumed / ckpt.WEIGHTS_FILE).read_bytes()


def test_cosine_schedule_falls_from_lr_to_zero() -> None:
    options = dataclasses.replace(TINY, epochs=10, lr=1e-3, lr_schedule="cosine")
    assert learning_rate_at(0, options) == pytest.approx(1e-3)
    assert learning_rate_at(5, options) == pytest.approx(5e-4)
    assert learning_rate_at(10, options) == pytest.approx(0, abs=1e-12)
    assert learning_rate_at(5, dataclasses.replace(options, lr_schedule="constant")) == 1e-3


def test_resconv_vae_trains_and_its_checkpoint_loads(tmp_path: Path) -> None:
    out = train(tiny(tmp_path, "res", arch="resconv", limit=200))
    model, config = ckpt.load_model(out)
    assert config.model.arch == "resconv"
    assert any(type(m).__name__ == "ResidualBlock" for m in model.modules())
    with torch.no_grad():
        images = model.decode(torch.randn(3, 4))
    assert images.shape == (3, 1, 28, 28)


def test_a_checkpoint_written_before_the_new_keys_still_loads(tmp_path: Path) -> None:
    out = train(tiny(tmp_path, "old", augment=False))
    raw = json.loads((out / ckpt.CONFIG_FILE).read_text())
    for key in ("augment", "corrupt", "lr_schedule", "data_dir"):
        del raw[key]
    (out / ckpt.CONFIG_FILE).write_text(json.dumps(raw))
    _, config = ckpt.load_model(out)
    assert config.augment is False and config.corrupt is None and config.lr_schedule == "constant"


def test_denoising_ae_is_trained_on_corrupted_inputs(tmp_path: Path) -> None:
    clean = train(tiny(tmp_path, "clean", kind="ae"))
    noisy = train(tiny(tmp_path, "noisy", kind="ae", corrupt="noise:0.3"))
    assert ckpt.read_config(noisy).corrupt == "noise:0.3"
    assert ckpt.read_config(clean).corrupt is None
    assert (clean / ckpt.WEIGHTS_FILE).read_bytes() != (noisy / ckpt.WEIGHTS_FILE).read_bytes()


def test_every_run_writes_its_training_curves_beside_the_checkpoint(tmp_path: Path) -> None:
    out = train(tiny(tmp_path, "curves", epochs=2))
    png = (out / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("argv, message", [
    (["--corrupt", "blur:1"], "--corrupt: expected noise:SIGMA or mask:P"),
    (["--corrupt", "mask:1.5"], "--corrupt: mask probability must be in (0, 1)"),
    (["--lr-schedule", "step"], "argument --lr-schedule: invalid choice"),
    (["--data", "x.npy", "--dataset", "mnist"], "cannot be combined with --dataset mnist"),
])
def test_bad_new_flags_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              argv: list[str], message: str) -> None:
    code = run_cli([*argv, "--out", str(tmp_path / "x"), "--epochs", "1", "--limit", "100", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("aegen-train: error: ") and message in err
    assert not (tmp_path / "x" / ckpt.CONFIG_FILE).exists()


def test_no_augment_flag_turns_augmentation_off(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    assert run_cli(["--no-augment", "--latent-dim", "2", "--hidden-dim", "16", "--epochs", "1", "--limit", "100",
                    "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    assert ckpt.read_config(out).augment is False
    assert np.isfinite(ckpt.read_config(out).metrics["val_elbo"])
