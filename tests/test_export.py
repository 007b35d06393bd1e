"""aegen-export: checkpoint → model repository version, read back through the server's loader
(export.repository.load_version) and run with onnxruntime against the PyTorch model it came from."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.cli import main
from export.exporter import ExportConfig, export_checkpoint
from export.onnx_graphs import uint8_tail
from export.repository import ModelVersion, list_versions, load_version
from export.verify import VerificationError, VerifyConfig, check_uint8_rounding, near_rounding_boundary
from tests.plugins.repository import export_for_tests
from training.checkpoint import load_model
from training.data import load_embedded_digits, to_unit_float

ROOT = Path(__file__).resolve().parent.parent
FAST_FLAGS = ["--exporter", "torchscript", "--big-batch", "0", "--quality-samples", "0", "--threads", "1"]


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _real_images(n: int) -> np.ndarray:
    return to_unit_float(load_embedded_digits().images[-n:])


@pytest.fixture(scope="module")
def conv_export(tmp_path_factory: pytest.TempPathFactory, conv_vae_checkpoint: Path) -> ModelVersion:
    """The default exporter path (dynamo) with --fp16, on the conv VAE: the one slow export of this file."""
    repository = tmp_path_factory.mktemp("conv-repository")
    version = export_checkpoint(ExportConfig(conv_vae_checkpoint, repository, "digits-conv-vae", fp16=True,
                                             quality_samples=0, threads=1, progress=False,
                                             verify=VerifyConfig(big_batch=0)), log=lambda line: None)
    return load_version(repository, "digits-conv-vae", version.version)


@pytest.mark.parametrize("batch", [1, 7, 333])
def test_dynamo_exported_graphs_match_pytorch_at_any_batch_size(conv_export: ModelVersion,
                                                                 conv_vae_checkpoint: Path, batch: int) -> None:
    model, _ = load_model(conv_vae_checkpoint)
    images = _real_images(batch)
    seeds = np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)
    with torch.no_grad():
        mean, log_var = (t.numpy() for t in model.encode(torch.from_numpy(images)))
        decoded = model.decode(torch.from_numpy(seeds)).numpy()
    got_mean, got_log_var = _session(conv_export.graph_path("encoder")).run(["mean", "log_variance"],
                                                                            {"images": images})
    (got_images,) = _session(conv_export.graph_path("decoder")).run(None, {"latent": seeds})
    (got_fp16,) = _session(conv_export.graph_path("decoder_fp16")).run(None, {"latent": seeds})
    assert np.abs(got_mean - mean).max() <= 1e-5 and np.abs(got_log_var - log_var).max() <= 1e-5
    assert got_images.shape == (batch, 1, 28, 28) and np.abs(got_images - decoded).max() <= 1e-5
    assert got_fp16.dtype == np.float32 and np.abs(got_fp16 - decoded).max() <= 5e-3


def test_dynamo_export_records_itself_in_manifest_and_graph_metadata(conv_export: ModelVersion) -> None:
    m = conv_export.manifest
    assert m.verification["exporter"] == ["dynamo"]
    assert set(m.graphs) == {"encoder", "decoder", "decoder_uint8", "decoder_fp16"}
    assert max(m.verification["decoder_fp16"][b]["max_abs_diff"] for b in ("1", "7", "1024")) <= 5e-3
    for key in m.graphs:
        proto = onnx.load(str(conv_export.graph_path(key)))
        onnx.checker.check_model(proto, full_check=True)
        props = {p.key: p.value for p in proto.metadata_props}
        assert (props["kind"], props["latent_dim"], props["aegen.graph"]) == ("vae", "8", key)
        assert proto.ir_version == m.ir_version <= 10
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("name, outputs", [("digits-vae", ["mean", "log_variance"]), ("digits-ae", ["latent"])])
def test_encoder_outputs_match_pytorch_for_vae_and_ae(model_repository: Path, name: str, outputs: list[str],
                                                      vae_checkpoint: Path, ae_checkpoint: Path) -> None:
    version = load_version(model_repository, name)
    model, _ = load_model(vae_checkpoint if name == "digits-vae" else ae_checkpoint)
    images = _real_images(50)
    session = _session(version.graph_path("encoder"))
    assert [o.name for o in session.get_outputs()] == outputs == list(version.manifest.graphs["encoder"].outputs)
    got = session.run(None, {"images": images})
    with torch.no_grad():
        want = model.encode(torch.from_numpy(images))
    for g, w in zip(got, want if isinstance(want, tuple) else (want,)):
        assert np.abs(g - w.numpy()).max() <= 1e-5


def test_uint8_graph_equals_the_float_graph_rounded(model_repository: Path) -> None:
    version = load_version(model_repository, "digits-vae")
    seeds = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    (floats,) = _session(version.graph_path("decoder")).run(None, {"latent": seeds})
    (pixels,) = _session(version.graph_path("decoder_uint8")).run(None, {"latent": seeds})
    assert pixels.dtype == np.uint8 and pixels.shape == floats.shape
    differs = pixels != np.rint(floats * np.float32(255)).astype(np.uint8)
    assert not np.any(differs & ~near_rounding_boundary(floats, 1e-4))
    assert len(np.unique(pixels)) > 100  # real images, not a constant that would pass trivially


def test_uint8_rounding_is_half_to_even_like_numpy() -> None:
    session = ort.InferenceSession(uint8_tail().SerializeToString(), providers=["CPUExecutionProvider"])
    # Floats whose product with 255 in float32 is exactly k + ½: the cases where rounding modes differ.
    candidates = np.nextafter(((np.arange(255) + 0.5) / 255).astype(np.float32)[:, None],
                              np.float32([0, 1])[None, :]).ravel()
    candidates = np.concatenate([candidates, ((np.arange(255) + 0.5) / 255).astype(np.float32)])
    ties = candidates[(candidates * np.float32(255)) % 1 == 0.5]
    (rounded,) = session.run(None, {"x": ties})
    assert len(ties) > 10
    assert np.all(rounded % 2 == 0)  # half to even: 0.5 → 0, 1.5 → 2, 2.5 → 2
    np.testing.assert_array_equal(rounded, np.rint(ties * np.float32(255)).astype(np.uint8))
    assert check_uint8_rounding(points=10_001)["exact_ties_checked"] >= len(np.unique(ties))


def test_decoder_takes_a_batch_of_65536(model_repository: Path) -> None:
    version = load_version(model_repository, "digits-vae")
    seeds = np.random.default_rng(1).standard_normal((65536, 8)).astype(np.float32)
    session = _session(version.graph_path("decoder_uint8"))
    (pixels,) = session.run(None, {"latent": seeds})
    assert pixels.shape == (65536, 1, 28, 28)
    rows = [0, 40_000, 65535]
    (alone,) = session.run(None, {"latent": seeds[rows]})
    (floats,) = _session(version.graph_path("decoder")).run(None, {"latent": seeds[rows]})
    assert not np.any((alone != pixels[rows]) & ~near_rounding_boundary(floats, 1e-4))


def test_exporting_twice_gives_versions_1_and_2(tmp_path: Path, ae_checkpoint: Path) -> None:
    first = export_for_tests(ae_checkpoint, tmp_path, "digits-ae")
    second = export_for_tests(ae_checkpoint, tmp_path, "digits-ae")
    assert (first.name, second.name) == ("1", "2")
    assert list_versions(tmp_path, "digits-ae") == [1, 2]
    a, b = load_version(tmp_path, "digits-ae", 1).manifest, load_version(tmp_path, "digits-ae", 2).manifest
    assert a.checkpoint_sha256 == b.checkpoint_sha256 and b.version == 2


def test_failed_verification_publishes_nothing(tmp_path: Path, vae_checkpoint: Path) -> None:
    repository = tmp_path / "repo"
    with pytest.raises(VerificationError, match="differs from PyTorch"):
        export_for_tests(vae_checkpoint, repository, "digits-vae", verify=VerifyConfig(atol=1e-12, big_batch=0))
    assert not repository.exists()


def test_cli_exports_a_version_and_reports_checks_validity_and_figures(tmp_path: Path,
                                                                       vae_checkpoint: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "export.cli", str(vae_checkpoint), "--repository",
                             str(tmp_path / "repo"), "--name", "cli-vae", *FAST_FLAGS, "--quality-samples", "200",
                             "--figures", str(tmp_path / "figures")],
                            check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "exported cli-vae version 1" in result.stdout
    assert "decoder_uint8  equal to round(fp32·255)" in result.stdout
    manifest = load_version(tmp_path / "repo", "cli-vae").manifest
    assert manifest.training["config"]["model"]["latent_dim"] == 8
    quality = manifest.verification["sample_quality"]
    for sampler in ("standard_normal", "gaussian", "mixture"):
        assert 0.0 <= quality[sampler]["validity"] <= 1.0
        assert f"{sampler} " in result.stdout
        png = tmp_path / "figures" / f"samples_{sampler}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _mismatched_checkpoint(tmp_path: Path, vae_checkpoint: Path) -> Path:
    copy = tmp_path / "mismatched"
    shutil.copytree(vae_checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"]["hidden_dim"] += 1
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def _unwritable(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes through permission bits; /proc refuses new directories even to root
        return Path("/proc/aegen-no-such-dir/repository")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return locked / "repository"


@pytest.mark.parametrize("case, message", [
    ("missing checkpoint", "no such checkpoint directory"),
    ("config disagrees with weights", "does not match config.json"),
    ("repository is a file", "is not a directory"),
    ("unwritable directory", "not writable"),
    ("invalid model name", "model name"),
    ("opset out of range", "opset 99 is not supported"),
    ("unknown flag", "unrecognized arguments"),
])
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(
        tmp_path: Path, vae_checkpoint: Path, capsys: pytest.CaptureFixture, case: str, message: str) -> None:
    checkpoint, repository, extra, name = vae_checkpoint, tmp_path / "repo", [], "digits-vae"
    if case == "missing checkpoint":
        checkpoint = tmp_path / "no-such-checkpoint"
    elif case == "config disagrees with weights":
        checkpoint = _mismatched_checkpoint(tmp_path, vae_checkpoint)
    elif case == "repository is a file":
        repository.write_text("not a directory")
    elif case == "unwritable directory":
        repository = _unwritable(tmp_path)
    elif case == "invalid model name":
        name = "../escape"
    elif case == "opset out of range":
        extra = ["--opset", "99"]
    elif case == "unknown flag":
        extra = ["--frobnicate"]
    before = sorted(p.name for p in tmp_path.iterdir())
    code = _exit_code([str(checkpoint), "--repository", str(repository), "--name", name, *FAST_FLAGS, *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("aegen-export: error:") and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (repository.is_dir() and any(repository.iterdir()))


def _exit_code(argv: list[str]) -> int:
    """main()'s return value, or the code of the SystemExit that argparse raises for bad flags."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_cli_missing_checkpoint_in_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "export.cli", str(tmp_path / "nothing"), "--repository",
                             str(tmp_path / "repo"), "--name", "m"], check=False, capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "Traceback" not in result.stderr
    assert not (tmp_path / "repo").exists()
