"""aegen-export --int8: the dynamically quantised decoders, verified against float32 and served when asked for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from client.client import AegenClient
from export.quantize import INT8_ATOL, verify_int8
from export.repository import load_version
from export.verify import VerificationError
from server.core.samplers import draw, seed_rows
from tests.plugins.repository import export_for_tests
from tests.plugins.server import start_aegen_server

NAME = "digits-int8"


@pytest.fixture(scope="module")
def int8_repository(tmp_path_factory: pytest.TempPathFactory, vae_checkpoint: Path) -> Path:
    repository = tmp_path_factory.mktemp("int8-repository")
    export_for_tests(vae_checkpoint, repository, NAME, int8=True)
    return repository


def _decode(path: Path, latents: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: latents})[0]


def test_int8_decoders_are_quantised_and_verified_against_fp32(int8_repository):
    version = load_version(int8_repository, NAME)
    graphs = version.manifest.graphs
    assert graphs["decoder_int8"].dtype == "float32" and graphs["decoder_int8_uint8"].dtype == "uint8"
    ops = {node.op_type for node in onnx.load(version.graph_path("decoder_int8")).graph.node}
    assert "MatMulInteger" in ops  # the weights really are int8
    report = json.loads((version.path / "manifest.json").read_text())["verification"]["decoder_int8"]
    assert 0 < report["max_abs_diff"] <= INT8_ATOL and report["samples"] == 4096
    latents = np.random.default_rng(1).standard_normal((64, version.manifest.latent_dim)).astype(np.float32)
    fp32, int8 = _decode(version.graph_path("decoder"), latents), _decode(version.graph_path("decoder_int8"), latents)
    assert 0 < np.abs(int8 - fp32).max() <= INT8_ATOL
    uint8 = _decode(version.graph_path("decoder_int8_uint8"), latents)
    assert uint8.dtype == np.uint8 and np.array_equal(uint8, np.clip(np.rint(int8 * 255), 0, 255).astype(np.uint8))


def test_a_quantisation_off_by_more_than_the_tolerance_is_refused(int8_repository):
    version = load_version(int8_repository, NAME)
    graphs = {key: version.graph_path(key).read_bytes()
              for key in ("decoder", "decoder_uint8", "decoder_int8", "decoder_int8_uint8")}
    with pytest.raises(VerificationError, match="decoder_int8: differs from the float32 decoder"):
        verify_int8(graphs, version.manifest.latent_dim, samples=256, atol=1e-6)


def test_the_server_decodes_with_the_int8_graphs_only_when_asked(int8_repository, tmp_path):
    version = load_version(int8_repository, NAME)
    latents = draw(None, "standard_normal", *seed_rows(11, 0, 20), version.manifest.latent_dim)
    expected = {key: _decode(version.graph_path(key), latents) for key in ("decoder_uint8", "decoder_int8_uint8")}
    assert not np.array_equal(expected["decoder_uint8"], expected["decoder_int8_uint8"])
    for flags, key in (((), "decoder_uint8"), (("--decoder-precision", "int8"), "decoder_int8_uint8")):
        server = start_aegen_server(int8_repository, tmp_path, *flags)
        try:
            with AegenClient(server.target, timeout=60) as client:
                samples = client.generate(NAME, 20, seed=11)
        finally:
            server.stop()
        assert samples.images.tobytes() == expected[key].tobytes(), key
