"""aegen-train end to end on the embedded digits, with tiny budgets (seconds per run on one core)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training import checkpoint as ckpt
from training.train import TrainError, TrainOptions, main, prepare_data, train, validate

ROOT = Path(__file__).resolve().parents[1]
TINY = TrainOptions(kind="vae", latent_dim=4, hidden_dim=32, epochs=1, limit=600, batch_size=50,
                    progress=False, threads=1)


def tiny(tmp_path: Path, name: str, **changes: object) -> TrainOptions:
    return dataclasses.replace(TINY, out=str(tmp_path / name), **changes)


def weights(directory: Path) -> bytes:
    return (directory / ckpt.WEIGHTS_FILE).read_bytes()


def run_cli(argv: list[str]) -> int:
    """main()'s exit code, whether it returns it or argparse exits with it (as the console script would)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_one_epoch_lowers_the_validation_loss_of_the_untrained_model(tmp_path: Path) -> None:
    options = tiny(tmp_path, "vae", limit=2000)
    split = prepare_data(options)
    torch.manual_seed(options.seed)  # train() builds its initial weights from this seed
    from training.models import build_model
    untrained = validate(build_model(options.model_config()), split.val_images, "bce", torch.device("cpu"))
    trained = ckpt.read_config(train(options)).metrics
    assert trained["val_reconstruction"] < 0.8 * untrained["val_reconstruction"]
    assert trained["val_elbo"] > untrained["val_elbo"]


def test_same_seed_gives_identical_weights_on_cpu(tmp_path: Path) -> None:
    a = train(tiny(tmp_path, "a"))
    b = train(tiny(tmp_path, "b"))
    c = train(tiny(tmp_path, "c", seed=1))
    assert weights(a) == weights(b)
    assert weights(a) != weights(c)


def test_resume_continues_epochs_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = train(tiny(tmp_path, "straight", epochs=3))
    first = train(tiny(tmp_path, "resumed", epochs=1))
    assert (first / ckpt.OPTIMIZER_FILE).is_file()
    resumed = train(tiny(tmp_path, "resumed", epochs=3, resume=True))
    config = ckpt.read_config(resumed)
    assert config.epochs == 3 and [row["epoch"] for row in config.history] == [1, 2, 3]
    # Optimiser state and the per-epoch seeds are restored, so stopping after epoch 1 changes nothing.
    assert weights(resumed) == weights(straight)
    validation = lambda rows: [{k: v for k, v in row.items() if k.startswith("val_")} for row in rows]
    assert validation(config.history) == validation(ckpt.read_config(straight).history)


def test_resume_refuses_a_different_model_and_leaves_the_checkpoint_alone(tmp_path: Path) -> None:
    out = train(tiny(tmp_path, "vae"))
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    with pytest.raises(TrainError, match="latent_dim|model"):
        train(tiny(tmp_path, "vae", epochs=2, latent_dim=6, resume=True))
    with pytest.raises(TrainError, match="already has 1 epochs"):
        train(tiny(tmp_path, "vae", epochs=1, resume=True))
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_checkpoint_records_settings_metrics_and_history(tmp_path: Path) -> None:
    out = train(tiny(tmp_path, "ae18", kind="ae", classes=(8, 1), epochs=2, kl_weight=3.0))
    config = ckpt.read_config(out)
    assert config.model.kind == "ae" and config.model.latent_dim == 4 and config.classes == (1, 8)
    assert config.dataset == "digits" and config.epochs == 2 and config.limit == 600 and config.seed == 0
    assert config.kl_weight == 0.0  # an AE has no KL term, whatever the flag said
    assert set(config.metrics) >= {"val_reconstruction", "train_loss"} and "val_elbo" not in config.metrics
    assert len(config.history) == 2 and config.history[1]["images_per_s"] > 0


def test_kl_warmup_is_applied_and_recorded(tmp_path: Path) -> None:
    config = ckpt.read_config(train(tiny(tmp_path, "warm", epochs=3, kl_weight=2.0, kl_warmup_epochs=2)))
    used = [row["kl_weight"] for row in config.history]  # λ at each epoch's last step
    assert 0.0 < used[0] < 1.0 < used[1] <= 2.0 and used[2] == 2.0


@pytest.mark.parametrize("loss", ["cbce", "mse"])
def test_other_reconstruction_losses_train(tmp_path: Path, loss: str) -> None:
    config = ckpt.read_config(train(tiny(tmp_path, loss, loss=loss)))
    assert config.loss == loss and np.isfinite(config.metrics["val_elbo"])


def test_conv_vae_checkpoint_decodes_seeds_to_images(conv_vae_checkpoint: Path) -> None:
    model, config = ckpt.load_model(conv_vae_checkpoint)
    assert config.model.arch == "conv" and not model.training
    with torch.no_grad():
        images = model.decode(torch.randn(5, config.model.latent_dim))
    assert images.shape == (5, 1, 28, 28) and 0.0 <= images.min() and images.max() <= 1.0


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be ≥ 1"),
    (["--kind", "gan"], "argument --kind: invalid choice"),
    (["--classes", "1,x"], "comma-separated class numbers"),
    (["--classes", "1,42"], "classes [42] do not exist"),
    (["--val-fraction", "1.5"], "--val-fraction must be in (0, 1)"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda"),
])
def test_cli_bad_flags_give_one_line_and_exit_code_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_cli([*argv, "--out", str(tmp_path / "x"), "--no-progress", "--limit", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cli_asking_for_cuda_without_one_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--device", "cuda", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err


def test_console_script_trains_and_reports_the_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "training.train", "--kind", "ae", "--latent-dim", "2", "--hidden-dim", "16",
         "--classes", "1,8", "--epochs", "1", "--limit", "300", "--out", str(out), "--threads", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"checkpoint {out}" in result.stdout and "val_reconstruction" in result.stdout
    assert "epoch 1" in result.stderr  # the progress bar and the epoch summary go to stderr
    assert ckpt.read_config(out).classes == (1, 8)


def test_demo_writes_a_sample_grid_and_reuses_a_matching_checkpoint(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from training.demo import DemoConfig, run

    config = DemoConfig(run_dir=str(tmp_path / "run"), out_dir=str(tmp_path / "out"), epochs=1, hidden_dim=32,
                        flow_epochs=1, plane_epochs=1)
    grid = run(config)
    for kind in ("vae", "ae"):  # the report's 2-D models of 1s and 8s, beside the run, for the explorer's plane
        plane = ckpt.read_config(tmp_path / f"demo-{kind}2-1-8")
        assert (plane.model.kind, plane.model.latent_dim, plane.classes) == (kind, 2, (1, 8))
    assert grid == tmp_path / "out" / "samples.png"
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and grid.stat().st_size > 10_000
    trained = weights(tmp_path / "run")
    out = capsys.readouterr().out
    assert "training a VAE" in out and "fitting the learned latent sampler" in out
    assert (tmp_path / "run" / "latent_flow.safetensors").is_file()
    assert ckpt.read_config(tmp_path / "run").model.arch == "conv"
    assert ckpt.read_config(tmp_path / "run").model.latent_dim == 8
    run(config)
    out = capsys.readouterr().out
    assert "reusing the trained VAE" in out and "fitting" not in out and "training the report's 2-D" not in out
    assert weights(tmp_path / "run") == trained
    run(DemoConfig(**{**config.__dict__, "epochs": 2}))  # a different budget does not reuse it
    assert "training a VAE" in capsys.readouterr().out


def test_cli_does_not_replace_an_existing_checkpoint_unless_asked(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = train(tiny(tmp_path, "kept"))
    before = weights(out)
    argv = ["--latent-dim", "4", "--hidden-dim", "32", "--limit", "600", "--batch-size", "50", "--seed", "5",
            "--epochs", "1", "--out", str(out), "--no-progress", "--threads", "1"]
    assert run_cli(argv) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert weights(out) == before
    assert run_cli([*argv, "--overwrite"]) == 0
    assert weights(out) != before and ckpt.read_config(out).seed == 5
