"""Shared pytest fixtures: an exported model repository (owned by the export work; other tests reuse them).

`model_repository` is a real export of the tiny trained checkpoints from tests/plugins/checkpoints.py:

    <repository>/digits-vae/1/   from vae_checkpoint (MLP VAE, latent 8)
    <repository>/digits-ae/1/    from ae_checkpoint  (MLP AE, latent 8)

each with encoder.onnx, decoder.onnx, decoder_uint8.onnx, latent_samplers.npz (gaussian + 10-component
mixture) and manifest.json, verified against PyTorch as `aegen-export` does. To stay fast it uses the
TorchScript exporter (the same graphs as dynamo's, ~25× quicker to produce; tests/test_export.py covers
the dynamo path), skips the 65,536 batch and the sample-quality report. Session-scoped: treat it as
read-only and copy a version directory before changing it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

MODELS = {"digits-vae": "vae_checkpoint", "digits-ae": "ae_checkpoint"}


def export_for_tests(checkpoint: Path, repository: Path, name: str, **overrides: object) -> Path:
    """One quick, fully verified export; returns the version directory."""
    from export.exporter import ExportConfig, export_checkpoint
    from export.verify import VerifyConfig

    options = {"quality_samples": 0, "threads": 1, "progress": False, "exporter": "torchscript",
               "verify": VerifyConfig(big_batch=0), **overrides}
    return export_checkpoint(ExportConfig(checkpoint, repository, name, **options), log=lambda line: None).path


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A model repository holding digits-vae and digits-ae, version 1 each, with fitted samplers."""
    repository = tmp_path_factory.mktemp("model-repository")
    for name, checkpoint_fixture in MODELS.items():
        export_for_tests(request.getfixturevalue(checkpoint_fixture), repository, name)
    return repository
