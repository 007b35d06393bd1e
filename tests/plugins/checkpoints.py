"""Shared pytest fixtures: trained checkpoints (owned by the training work; other tests reuse them).

Each is a real `aegen-train` run on the embedded digits, tiny enough to take seconds on one core:
MLP (or conv), latent 8, hidden 64, one epoch on 2,000 images. Session-scoped: trained once per run.
Treat the returned directories as read-only; copy one before changing it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TINY: dict[str, object] = {"latent_dim": 8, "hidden_dim": 64, "epochs": 1, "limit": 2000, "batch_size": 64,
                           "seed": 0, "progress": False, "threads": 1}


def _train_tiny(tmp_path_factory: pytest.TempPathFactory, name: str, **overrides: object) -> Path:
    from training.train import TrainOptions, train

    out = tmp_path_factory.mktemp("checkpoints") / name
    return train(TrainOptions(**{**TINY, **overrides, "out": str(out)}))


@pytest.fixture(scope="session")
def vae_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MLP VAE (latent 8) checkpoint directory."""
    return _train_tiny(tmp_path_factory, "vae", kind="vae", arch="mlp")


@pytest.fixture(scope="session")
def ae_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MLP AE (latent 8) checkpoint directory."""
    return _train_tiny(tmp_path_factory, "ae", kind="ae", arch="mlp")


@pytest.fixture(scope="session")
def conv_vae_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny convolutional VAE (latent 8) checkpoint directory."""
    return _train_tiny(tmp_path_factory, "conv-vae", kind="vae", arch="conv")


@pytest.fixture(scope="session")
def flow_checkpoint(tmp_path_factory: pytest.TempPathFactory, vae_checkpoint: Path) -> Path:
    """The tiny VAE with a small latent flow fitted to it (`latent_flow.safetensors`, aegen-train --latent-flow)."""
    import shutil

    from training.latent_sampler import FlowOptions, fit_checkpoint_flow

    directory = tmp_path_factory.mktemp("flow") / "vae"
    shutil.copytree(vae_checkpoint, directory)
    fit_checkpoint_flow(directory, FlowOptions(epochs=4, hidden=32, couplings=4, threads=1))
    return directory
