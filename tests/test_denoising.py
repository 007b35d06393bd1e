"""Denoising: a model trained with --corrupt restores corrupted digits, in PyTorch, through aegen-eval, and
through a real server's Reconstruct on the exported graphs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from client.client import AegenClient
from export.exporter import ExportConfig, export_checkpoint
from export.verify import VerifyConfig
from tests.plugins.server import TEST_FLAGS, start_aegen_server
from training import checkpoint as ckpt
from training.augment import Corruption, psnr
from training.data import to_unit_float
from training.evaluate import checkpoint_split, denoising_metrics, main
from training.train import TrainOptions, train

OPTIONS = TrainOptions(kind="ae", arch="mlp", latent_dim=16, hidden_dim=256, epochs=10, batch_size=64,
                       augment=False, progress=False, threads=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("denoise")
    return {name: train(dataclasses.replace(OPTIONS, out=str(root / name), corrupt=corrupt))
            for name, corrupt in (("clean", None), ("noise", "noise:0.4"), ("mask", "mask:0.4"))}


def _val(directory: Path, n: int = 500) -> np.ndarray:
    return to_unit_float(checkpoint_split(ckpt.read_config(directory)).val_images[:n])


@pytest.mark.parametrize("name, corrupt", [("noise", "noise:0.4"), ("mask", "mask:0.4")])
def test_a_denoising_model_restores_corrupted_digits_better_than_a_plain_one(models: dict[str, Path], name: str,
                                                                            corrupt: str) -> None:
    clean_images = _val(models[name])
    corruption = Corruption.parse(corrupt)
    denoiser = denoising_metrics(ckpt.load_model(models[name])[0], clean_images, corruption)
    plain = denoising_metrics(ckpt.load_model(models["clean"])[0], clean_images, corruption)
    assert denoiser["psnr_reconstructed"] > denoiser["psnr_corrupted"] + 3  # dB
    assert denoiser["psnr_reconstructed"] > plain["psnr_reconstructed"] + 1
    assert denoiser["examples"]["corrupted"].shape == (16, 1, 28, 28)


def test_the_server_reconstruct_denoises_with_such_a_model(models: dict[str, Path], tmp_path: Path) -> None:
    """The whole path: export the noise-trained AE, serve it, send noisy digits to Reconstruct (aegen.v1)."""
    export_checkpoint(ExportConfig(models["noise"], tmp_path / "repo", "denoiser", quality_samples=0, threads=1,
                                   progress=False, exporter="torchscript", verify=VerifyConfig(big_batch=0)),
                      log=lambda line: None)
    clean = _val(models["noise"])
    noisy = Corruption.parse("noise:0.4").apply(torch.from_numpy(clean), torch.Generator().manual_seed(1)).numpy()
    server = start_aegen_server(tmp_path / "repo", tmp_path, *TEST_FLAGS)
    try:
        with AegenClient(server.target) as client:
            restored = client.reconstruct("denoiser", noisy, dtype="float32")
    finally:
        assert server.stop() == 0
    assert restored.shape == noisy.shape
    clean_t = torch.from_numpy(clean)
    assert psnr(clean_t, torch.from_numpy(restored.copy())) > psnr(clean_t, torch.from_numpy(noisy)) + 3  # dB


def test_aegen_eval_reports_denoising_psnr(models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(models["mask"]), "--samples", "200", "--corrupt", "mask:0.4"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("denoising"))
    before, after = (float(v.split(" dB")[0]) for v in line.split("PSNR corrupted ")[1].split(" → reconstructed "))
    assert after > before
