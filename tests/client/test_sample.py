"""aegen-sample against a real server: a PNG grid, the same samples as the client library, clear errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from client.client import AegenClient
from tests.plugins.server import ROOT, free_port


def _sample(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client.sample", *args], cwd=ROOT, check=False, capture_output=True,
                          text=True, timeout=120)


def test_sample_cli_writes_a_png_grid_and_the_samples_of_the_seed(aegen_server, tmp_path):
    result = _sample("--target", aegen_server.target, "-n", "16", "--seed", "7", "-o", str(tmp_path / "grid.png"),
                     "--npy", str(tmp_path / "samples.npy"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with AegenClient(aegen_server.target) as client:
        expected = client.generate("digits-vae", 16, seed=7)
    assert np.array_equal(np.load(tmp_path / "samples.npy", allow_pickle=False), expected.images)
    assert f"model digits-vae version {expected.model_version}" in result.stdout and "seed 7" in result.stdout


def test_sample_cli_reports_an_unreachable_server_in_one_line(tmp_path):
    result = _sample("--target", f"127.0.0.1:{free_port()}", "--timeout", "2", "-o", str(tmp_path / "grid.png"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "UNAVAILABLE" in result.stderr
    assert not (tmp_path / "grid.png").exists()


def test_sample_cli_accepts_both_sampler_spellings_and_prints_the_underscore_one(aegen_server, tmp_path):
    result = _sample("--target", aegen_server.target, "-n", "4", "--seed", "3", "--sampler", "standard-normal",
                     "-o", str(tmp_path / "grid.png"))
    assert result.returncode == 0, result.stderr
    assert "sampler standard_normal" in result.stdout
