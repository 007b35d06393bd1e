"""The learned latent sampler: a RealNVP flow fitted to training latents, saved beside the checkpoint and exported
as the version's latent_flow graph (noise → latent), verified against PyTorch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.exporter import ExportConfig, export_checkpoint
from export.repository import LATENT_FLOW_INPUT, LATENT_FLOW_OUTPUT, LEARNED_SAMPLERS, load_version
from export.verify import VerifyConfig
from training import checkpoint as ckpt
from training.latent_sampler import (
    FLOW_FILE,
    FlowError,
    FlowOptions,
    LatentFlow,
    load_flow,
    main,
    mean_log_likelihood,
    train_flow,
)

QUICK = FlowOptions(epochs=4, hidden=32, couplings=4, threads=1)


def two_moons(n: int, seed: int = 0) -> np.ndarray:
    """A curved 2-D density no single Gaussian fits: what a flow is for."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    return (np.stack([x, y], 1) + 0.05 * rng.standard_normal((n, 2))).astype(np.float32)


def gaussian_log_likelihood(z: np.ndarray) -> float:
    mean, cov = z.mean(0), np.cov(z, rowvar=False)
    d = z - mean
    inv = np.linalg.inv(cov)
    return float(np.mean(-0.5 * (np.einsum("ni,ij,nj->n", d, inv, d) + np.log(np.linalg.det(cov))
                                 + z.shape[1] * np.log(2 * np.pi))))


def test_an_untrained_flow_is_the_identity_on_standardised_latents() -> None:
    flow = LatentFlow(3, couplings=4, hidden=8, mean=torch.tensor([1.0, 2.0, 3.0]), std=torch.tensor([2.0, 1, 1]))
    noise = torch.randn(5, 3)
    assert torch.allclose(flow(noise), flow.mean + flow.std * noise)


def test_sampling_inverts_scoring(tmp_path: Path) -> None:
    flow = train_flow(two_moons(512), QUICK)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = flow(noise)
        x = (z - flow.mean) / flow.std
        for coupling in flow.couplings:
            x, _ = coupling.to_noise(x)
    assert torch.allclose(x, noise, atol=1e-5)


def test_the_flow_fits_a_curved_density_better_than_a_gaussian_and_its_samples_follow_it() -> None:
    train, held_out = two_moons(2000, seed=0), two_moons(1000, seed=1)
    flow = train_flow(train, FlowOptions(epochs=60, threads=1))
    assert mean_log_likelihood(flow, held_out) > gaussian_log_likelihood(held_out) + 0.3
    with torch.no_grad():
        samples = flow(torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))).numpy()
    # The moons' hole: a Gaussian puts a lot of mass near (0.5, 0.25), where the data has almost none.
    near_hole = lambda z: float((np.linalg.norm(z - [0.5, 0.25], axis=1) < 0.2).mean())
    assert near_hole(samples) < 0.5 * near_hole(np.random.default_rng(0).multivariate_normal(
        train.mean(0), np.cov(train, rowvar=False), 2000))


def test_fitting_is_deterministic_for_a_seed() -> None:
    z = two_moons(300)
    a, b, c = train_flow(z, QUICK), train_flow(z, QUICK), train_flow(z, FlowOptions(**{**QUICK.__dict__, "seed": 1}))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values(), strict=True))


def test_bad_latents_are_refused() -> None:
    with pytest.raises(FlowError, match="need a"):
        train_flow(np.zeros((3, 2), np.float32))
    z = two_moons(100)
    z[5, 1] = np.nan
    with pytest.raises(FlowError, match="non-finite"):
        train_flow(z)


def test_the_saved_flow_is_tied_to_its_checkpoint_and_loads_back(flow_checkpoint: Path, tmp_path: Path) -> None:
    flow, metadata = load_flow(flow_checkpoint / FLOW_FILE)
    assert metadata["checkpoint_sha256"] == ckpt.weights_sha256(flow_checkpoint)
    assert int(metadata["latent_dim"]) == ckpt.read_config(flow_checkpoint).model.latent_dim == flow.latent_dim
    assert np.isfinite(float(metadata["train_mean_log_likelihood"]))
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(FlowError, match="broken.safetensors: not a valid safetensors file"):
        load_flow(tmp_path / "broken.safetensors")
    with pytest.raises(FlowError, match="missing"):
        load_flow(tmp_path / "none.safetensors")


def _export(checkpoint: Path, repository: Path, log: list[str]) -> Path:
    version = export_checkpoint(ExportConfig(checkpoint, repository, "flowed", quality_samples=200, threads=1,
                                             progress=False, exporter="torchscript",
                                             verify=VerifyConfig(big_batch=0)), log=log.append)
    return version.path


def test_the_export_ships_the_flow_as_a_verified_noise_to_latent_graph(flow_checkpoint: Path, tmp_path: Path) -> None:
    log: list[str] = []
    path = _export(flow_checkpoint, tmp_path / "repo", log)
    version = load_version(tmp_path / "repo", "flowed")  # the server's loader accepts it
    manifest = json.loads((path / "manifest.json").read_text())
    d = version.manifest.latent_dim
    graph = manifest["graphs"]["latent_flow"]
    assert graph["file"] == "latent_flow.onnx" and graph["dtype"] == "float32"
    assert graph["inputs"] == {LATENT_FLOW_INPUT: ["batch", d]} and graph["outputs"] == {LATENT_FLOW_OUTPUT: ["batch", d]}
    assert manifest["verification"]["learned_samplers"] == LEARNED_SAMPLERS == {"flow": "latent_flow"}
    assert "flow" in manifest["verification"]["sample_quality"]
    assert any(line.strip().startswith("latent_flow") for line in log)
    flow, _ = load_flow(flow_checkpoint / FLOW_FILE)
    noise = np.random.default_rng(3).standard_normal((33, d)).astype(np.float32)
    session = ort.InferenceSession(str(path / "latent_flow.onnx"), providers=["CPUExecutionProvider"])
    (latents,) = session.run(None, {LATENT_FLOW_INPUT: noise})
    with torch.no_grad():
        np.testing.assert_allclose(latents, flow(torch.from_numpy(noise)).numpy(), atol=1e-4)


def test_a_flow_fitted_to_other_weights_is_left_out_of_the_export(flow_checkpoint: Path, tmp_path: Path,
                                                                  ae_checkpoint: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(ae_checkpoint, other)
    shutil.copy(flow_checkpoint / FLOW_FILE, other / FLOW_FILE)  # a flow of the VAE, beside the AE
    log: list[str] = []
    path = _export(other, tmp_path / "repo", log)
    assert "latent_flow" not in json.loads((path / "manifest.json").read_text())["graphs"]
    assert any("fitted to other weights" in line for line in log)


def test_fit_flow_cli_reports_bad_checkpoints_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("aegen-fit-flow: error: ") and "nowhere" in err
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path), "--epochs", "0"])
    assert exited.value.code == 2
