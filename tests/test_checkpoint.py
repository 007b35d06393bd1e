"""The checkpoint format: save → load is exact, and nothing on disk can make loading run code."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from training import checkpoint as ckpt
from training.checkpoint import CheckpointConfig, CheckpointError, ModelConfig
from training.models import build_model


class WritesMarker:
    """Unpickling this object creates the marker file: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def copy_checkpoint(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_save_then_load_gives_identical_outputs(kind: str, arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = CheckpointConfig(model=ModelConfig(kind=kind, arch=arch, latent_dim=6, hidden_dim=40))
    model = build_model(config.model).eval()
    ckpt.save_checkpoint(tmp_path, model.state_dict(), config)
    loaded, loaded_config = ckpt.load_model(tmp_path)
    assert loaded_config == config and not loaded.training
    x, z = torch.rand(7, 1, 28, 28), torch.randn(7, 6)
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), model.decode(z))
        for ours, theirs in zip(loaded(x), model(x)):
            assert (ours is None and theirs is None) or torch.equal(ours, theirs)


def test_the_payload_used_below_does_run_code_when_unpickled(tmp_path: Path) -> None:
    # The control for the refusal tests: unpickling the payload really writes the marker.
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(WritesMarker(marker)))
    assert marker.exists()


def test_a_pickle_named_model_safetensors_is_refused_without_running(vae_checkpoint: Path, tmp_path: Path) -> None:
    directory = copy_checkpoint(vae_checkpoint, tmp_path)
    marker = tmp_path / "pwned"
    (directory / ckpt.WEIGHTS_FILE).write_bytes(pickle.dumps({"encoder.0.weight": WritesMarker(marker)}))
    with pytest.raises(CheckpointError, match="model.safetensors: not a valid safetensors file"):
        ckpt.load_model(directory)
    assert not marker.exists()


def test_a_torch_save_file_renamed_to_safetensors_is_refused_without_running(
    vae_checkpoint: Path, tmp_path: Path,
) -> None:
    directory = copy_checkpoint(vae_checkpoint, tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"state": WritesMarker(marker)}, directory / ckpt.WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        ckpt.load_model(directory)
    assert not marker.exists()


def test_a_pickled_optimizer_state_is_refused_on_resume_without_running(
    vae_checkpoint: Path, tmp_path: Path,
) -> None:
    from training.train import TrainOptions, train

    directory = copy_checkpoint(vae_checkpoint, tmp_path)
    marker = tmp_path / "pwned"
    (directory / ckpt.OPTIMIZER_FILE).write_bytes(pickle.dumps(WritesMarker(marker)))
    config = ckpt.read_config(directory)
    options = TrainOptions(kind="vae", latent_dim=8, hidden_dim=64, epochs=2, limit=config.limit,
                           batch_size=config.batch_size, out=str(directory), resume=True, progress=False)
    with pytest.raises(CheckpointError, match="optimizer.safetensors: not a valid safetensors file"):
        train(options)
    assert not marker.exists()


def test_weights_that_do_not_fit_the_config_are_refused(vae_checkpoint: Path, tmp_path: Path) -> None:
    directory = copy_checkpoint(vae_checkpoint, tmp_path)
    raw = json.loads((directory / ckpt.CONFIG_FILE).read_text())
    raw["model"]["latent_dim"] = 12
    (directory / ckpt.CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="does not match config.json"):
        ckpt.load_model(directory)


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw.update(format="aegen-checkpoint/0"), "format is 'aegen-checkpoint/0'"),
    (lambda raw: raw.update(surprise=1), "unknown keys \\['surprise'\\]"),
    (lambda raw: raw["model"].update(kind="gan"), "model kind must be one of"),
    (lambda raw: raw["model"].update(latent_dim=0), "latent_dim must be an integer"),
])
def test_malformed_config_json_is_refused_naming_the_file(edit, message: str, vae_checkpoint: Path,
                                                          tmp_path: Path) -> None:
    directory = copy_checkpoint(vae_checkpoint, tmp_path)
    raw = json.loads((directory / ckpt.CONFIG_FILE).read_text())
    edit(raw)
    (directory / ckpt.CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=f"config.json: {message}"):
        ckpt.load_model(directory)


def test_missing_files_are_named(vae_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        ckpt.load_model(tmp_path / "nowhere")
    directory = copy_checkpoint(vae_checkpoint, tmp_path)
    (directory / ckpt.WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: missing"):
        ckpt.load_model(directory)


def test_checkpoint_directory_holds_only_safetensors_json_and_curves(vae_checkpoint: Path) -> None:
    names = sorted(p.name for p in vae_checkpoint.iterdir())
    # no temp files left; curves.png is aegen-train's picture of the history, not part of the format
    assert names == sorted([ckpt.CONFIG_FILE, ckpt.OPTIMIZER_FILE, ckpt.WEIGHTS_FILE, "curves.png"])
    assert (vae_checkpoint / ckpt.WEIGHTS_FILE).read_bytes()[8:9] == b"{"  # safetensors: u64 length, JSON header
    config = ckpt.read_config(vae_checkpoint)
    assert config.epochs == 1 and config.model.latent_dim == 8 and "val_elbo" in config.metrics


def test_resume_from_weights_of_another_model_is_a_checkpoint_error(vae_checkpoint: Path, ae_checkpoint: Path,
                                                                    tmp_path: Path) -> None:
    from training.train import TrainOptions, train

    directory = copy_checkpoint(vae_checkpoint, tmp_path)
    shutil.copyfile(ae_checkpoint / ckpt.WEIGHTS_FILE, directory / ckpt.WEIGHTS_FILE)  # AE: no log-variance outputs
    config = ckpt.read_config(directory)
    options = TrainOptions(kind="vae", latent_dim=8, hidden_dim=64, epochs=2, limit=config.limit,
                           batch_size=config.batch_size, out=str(directory), resume=True, progress=False)
    with pytest.raises(CheckpointError, match="model.safetensors: does not match its config.json"):
        train(options)
