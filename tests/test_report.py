"""aegen-report end to end on a small budget: real training, real PNGs, a table with every row."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from training.report import main
from training.report_writing import GRID, SCATTER_PX

ROWS = ("AE · N(0, I) seeds", "AE · fitted Gaussian seeds", "VAE · N(0, I) seeds", "VAE · fitted Gaussian seeds",
        "real training images", "AE 2-D · N(0, I) seeds", "VAE 2-D · N(0, I) seeds")
GRIDS = ("samples_ae_normal.png", "samples_ae_fitted.png", "samples_vae_normal.png", "samples_vae_fitted.png",
         "samples_real.png", "samples_ae2_normal.png", "samples_vae2_normal.png")
SMALL = ["--epochs", "1", "--epochs-2d", "1", "--limit", "600", "--samples", "300", "--arch", "mlp", "--hidden-dim", "64",
         "--recipe-epochs", "1", "--recipe-arch", "conv", "--flow-epochs", "1", "--denoise-epochs", "1",
         "--mixture-components", "5", "--threads", "1", "--no-progress"]
RECIPE_ROWS = ("VAE conv 8 · N(0, I) seeds", "VAE conv 8 · fitted Gaussian seeds", "VAE conv 8 · 5-component mixture seeds",
               "VAE conv 8 · flow (RealNVP) seeds")


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    assert main(["--out", str(root / "report"), "--runs", str(root / "runs"), *SMALL]) == 0
    return root


def test_report_writes_latent_scatters_of_the_expected_size(report: Path):
    for name in ("latent_ae2.png", "latent_vae2.png"):
        assert png_size(report / "report" / name) == (SCATTER_PX, SCATTER_PX)


def test_report_writes_every_sample_grid_eight_wide(report: Path):
    for name in GRIDS:
        width, height = png_size(report / "report" / name)
        assert width == GRID * 90 and height > width  # 8 columns of 0.9 in at 100 dpi, labelled rows


def test_report_table_has_every_row_with_four_numbers(report: Path):
    text = (report / "report" / "README.md").read_text()
    for row in ROWS + RECIPE_ROWS:
        line = next((ln for ln in text.splitlines() if ln.startswith(f"| {row} |")), None)
        assert line is not None, f"row {row!r} missing"
        assert len(re.findall(r"\| -?\d+\.\d+ ", line)) == 4
    assert "not** the Inception FID" in text
    for name in GRIDS[:5] + ("latent_ae2.png", "latent_vae2.png"):
        assert name in text


def test_report_metrics_json_agrees_with_the_table(report: Path):
    metrics = json.loads((report / "report" / "metrics.json").read_text())
    text = (report / "report" / "README.md").read_text()
    vae = metrics["rows"]["VAE · N(0, I) seeds"]
    assert f"| VAE · N(0, I) seeds | {vae['validity']:.3f} | {vae['coverage']:.3f} |" in text
    assert metrics["models"]["vae"]["val_elbo"] < 0


def test_rerun_reuses_checkpoints_trained_with_the_same_options(report: Path):
    weights = sorted((report / "runs").glob("*/model.safetensors"))
    assert len(weights) == 7  # 2-D AE and VAE, AE and VAE, the recipe's VAE, two denoising AEs
    before = {p: p.stat().st_mtime_ns for p in weights}
    assert main(["--out", str(report / "again"), "--runs", str(report / "runs"), *SMALL]) == 0
    assert {p: p.stat().st_mtime_ns for p in weights} == before
    first = json.loads((report / "report" / "metrics.json").read_text())["rows"]
    second = json.loads((report / "again" / "metrics.json").read_text())["rows"]
    assert first == second  # same checkpoints, same seeds: the same numbers


def test_bad_budget_is_one_line_and_exit_2(tmp_path: Path, capsys):
    assert main(["--out", str(tmp_path / "r"), "--runs", str(tmp_path / "runs"), "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aegen-report: error:") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_report_shows_denoising_psnr_and_grids(report: Path):
    metrics = json.loads((report / "report" / "metrics.json").read_text())
    text = (report / "report" / "README.md").read_text()
    assert set(metrics["denoising"]) == {"noise:0.3", "mask:0.25"}
    for spec, m in metrics["denoising"].items():
        assert f"| {spec} | {m['psnr_corrupted']:.2f} | **{m['psnr_reconstructed']:.2f}** |" in text
        width, height = png_size(report / "report" / m["figure"])
        assert width == GRID * 90 and height > 2 * 90  # clean, corrupted and denoised rows


def test_report_embeds_the_training_curves_of_its_models(report: Path):
    text = (report / "report" / "README.md").read_text()
    embedded = re.findall(r"!\[[^\]]*training curves\]\((curves_[\w.-]+\.png)\)", text)
    assert len(embedded) == 5
    for name in embedded:
        png_size(report / "report" / name)


def test_report_checks_issue_12_targets_and_shows_the_prior_hole(report: Path):
    metrics = json.loads((report / "report" / "metrics.json").read_text())
    text = (report / "report" / "README.md").read_text()
    rows = metrics["recipe"]["rows"]
    best = max(rows.values(), key=lambda m: m["validity"])
    holds = "yes" if best["validity"] >= 0.96 else "**no**"
    assert f"| best sampler's validity ≥ 0.96 | {best['validity']:.3f} | {holds} |" in text
    hole = metrics["recipe"]["prior_hole"]
    assert len(hole["validity_by_decile"]) == 10 and 0 <= hole["outside_share"] <= 1
    assert "![validity of N(0, I) seeds by aggregate-posterior density](prior_hole.png)" in text
    assert png_size(report / "report" / "prior_hole.png") == (600, 360)
    assert "### What each change bought" in text
