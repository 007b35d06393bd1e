"""The model repository format (export/repository.py): what the server's loader accepts and refuses, and the
atomic version writer. Versions under test are copies of the real exported `model_repository`."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.repository import (
    FORMAT,
    MANIFEST_FILE,
    SAMPLERS_FILE,
    LatentSamplers,
    Manifest,
    RepositoryError,
    VersionWriter,
    list_models,
    list_versions,
    load_version,
    read_samplers,
    write_samplers,
)


@pytest.fixture
def repository(tmp_path: Path, model_repository: Path) -> Path:
    """A private, writable copy of the shared repository's digits-vae."""
    shutil.copytree(model_repository / "digits-vae", tmp_path / "repo" / "digits-vae")
    return tmp_path / "repo"


def _manifest_text(repository: Path) -> str:
    return (repository / "digits-vae" / "1" / MANIFEST_FILE).read_text()


def test_model_repository_fixture_holds_both_models_at_version_1(model_repository: Path) -> None:
    assert list_models(model_repository) == ["digits-ae", "digits-vae"]
    assert list_versions(model_repository, "digits-vae") == [1]
    assert load_version(model_repository, "digits-ae").manifest.kind == "ae"
    assert load_version(model_repository, "digits-vae").manifest.kind == "vae"


def test_manifest_records_hashes_versions_and_graph_io(model_repository: Path) -> None:
    m = load_version(model_repository, "digits-vae").manifest
    assert m.format == FORMAT and m.version == 1 and m.latent_dim == 8
    assert set(m.graphs) == {"encoder", "decoder", "decoder_uint8"}
    assert m.graphs["encoder"].outputs == {"mean": ["batch", 8], "log_variance": ["batch", 8]}
    assert m.graphs["decoder_uint8"].dtype == "uint8"
    assert len(m.checkpoint_sha256) == 64 and m.ir_version <= 10
    assert {"torch", "onnx", "onnxruntime", "numpy"} <= set(m.library_versions)
    assert m.samplers == ("standard_normal", "gaussian", "mixture")


def test_manifest_round_trips_through_json(model_repository: Path) -> None:
    m = load_version(model_repository, "digits-ae").manifest
    assert Manifest.from_json(m.to_json(), "again") == m


def test_corrupted_graph_is_refused_naming_the_file(repository: Path) -> None:
    path = repository / "digits-vae" / "1" / "decoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RepositoryError, match=r"decoder\.onnx: SHA-256"):
        load_version(repository, "digits-vae")


def test_swapped_graphs_are_refused_naming_the_file(repository: Path) -> None:
    version = repository / "digits-vae" / "1"
    (version / "encoder.onnx").rename(version / "tmp")
    (version / "decoder.onnx").rename(version / "encoder.onnx")
    (version / "tmp").rename(version / "decoder.onnx")
    with pytest.raises(RepositoryError, match=r"encoder\.onnx: SHA-256 .* swapped"):
        load_version(repository, "digits-vae")


def test_missing_graph_is_refused_naming_the_file(repository: Path) -> None:
    (repository / "digits-vae" / "1" / "decoder_uint8.onnx").unlink()
    with pytest.raises(RepositoryError, match=r"decoder_uint8\.onnx: missing"):
        load_version(repository, "digits-vae")


def test_corrupted_sampler_file_is_refused(repository: Path) -> None:
    (repository / "digits-vae" / "1" / SAMPLERS_FILE).write_bytes(b"not an npz")
    with pytest.raises(RepositoryError, match=SAMPLERS_FILE):
        load_version(repository, "digits-vae")


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw.update(kind="gan"), "kind must be one of"),
    (lambda raw: raw.update(ir_version=14), "ir_version must be in"),
    (lambda raw: raw.update(extra=1), "unknown keys"),
    (lambda raw: raw.pop("checkpoint_sha256"), "missing keys"),
    (lambda raw: raw.update(format="aegen-model-repository/0"), "format is"),
    (lambda raw: raw["graphs"]["decoder"].update(sha256="xyz"), "sha256 must be 64"),
    (lambda raw: raw["graphs"]["decoder"]["inputs"].update(latent=["batch", 9]), "graphs.decoder has inputs"),
    (lambda raw: raw["graphs"].pop("decoder_uint8"), "missing"),
    (lambda raw: raw.update(samplers=["gaussian"]), "samplers must include"),
])
def test_manifest_breaking_the_schema_is_refused_naming_manifest_json(repository: Path, change, message) -> None:
    raw = json.loads(_manifest_text(repository))
    change(raw)
    (repository / "digits-vae" / "1" / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(RepositoryError, match=message) as info:
        load_version(repository, "digits-vae")
    assert MANIFEST_FILE in str(info.value)


def test_manifest_that_is_not_json_is_refused(repository: Path) -> None:
    (repository / "digits-vae" / "1" / MANIFEST_FILE).write_text("{ not json")
    with pytest.raises(RepositoryError, match=r"manifest\.json: not valid JSON"):
        load_version(repository, "digits-vae")


def test_version_directory_copied_under_another_number_is_refused(repository: Path) -> None:
    shutil.copytree(repository / "digits-vae" / "1", repository / "digits-vae" / "2")
    with pytest.raises(RepositoryError, match="describes digits-vae version 1, but lies in digits-vae/2"):
        load_version(repository, "digits-vae")
    assert load_version(repository, "digits-vae", 1).version == 1


def test_unknown_version_and_model_are_refused(repository: Path) -> None:
    with pytest.raises(RepositoryError, match=r"no version 7 .* available: \[1\]"):
        load_version(repository, "digits-vae", 7)
    with pytest.raises(RepositoryError, match="no versions of model 'digits-gan'"):
        load_version(repository, "digits-gan")


def test_repository_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(RepositoryError, match="is not a directory"):
        list_models(tmp_path / "file")
    with pytest.raises(RepositoryError, match="is not a directory"), VersionWriter(tmp_path / "file", "m"):
        pass


def _republish(repository: Path, name: str, source: Path) -> int:
    """Publish a copy of an existing version through VersionWriter, as the exporter would."""
    manifest = load_version(source.parent.parent, source.parent.name, int(source.name)).manifest
    with VersionWriter(repository, name) as writer:
        for entry in source.iterdir():
            if entry.name != MANIFEST_FILE:
                shutil.copy(entry, writer.path / entry.name)
        return writer.commit(lambda v: dataclasses.replace(manifest, name=name, version=v)).version


def test_writing_twice_gives_versions_1_and_2_and_newest_is_default(repository: Path, tmp_path: Path) -> None:
    source = repository / "digits-vae" / "1"
    assert _republish(tmp_path / "new", "m", source) == 1
    assert _republish(tmp_path / "new", "m", source) == 2
    assert list_versions(tmp_path / "new", "m") == [1, 2]
    assert load_version(tmp_path / "new", "m").version == 2


def test_exception_inside_version_writer_leaves_nothing(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    with pytest.raises(RuntimeError, match="boom"), VersionWriter(repository, "m") as writer:
        (writer.path / "decoder.onnx").write_bytes(b"half a graph")
        raise RuntimeError("boom")
    assert not repository.exists()  # not even the directories the writer made


def test_writer_left_without_commit_publishes_nothing(repository: Path) -> None:
    with VersionWriter(repository, "digits-vae") as writer:
        (writer.path / "decoder.onnx").write_bytes(b"x")
    assert list_versions(repository, "digits-vae") == [1]
    assert sorted(p.name for p in (repository / "digits-vae").iterdir()) == ["1"]


def test_killed_writer_leaves_only_an_ignored_temp_dir(repository: Path, tmp_path: Path) -> None:
    # What a kill -9 during an export leaves behind: a hidden temp dir, even one holding a manifest.
    leftover = repository / "digits-vae" / ".writing-killed"
    shutil.copytree(repository / "digits-vae" / "1", leftover)
    (repository / "digits-vae" / "2").mkdir()  # an integer-named directory without a manifest: incomplete
    assert list_versions(repository, "digits-vae") == [1]
    assert load_version(repository, "digits-vae").version == 1
    assert _republish(repository, "digits-vae", repository / "digits-vae" / "1") == 3  # never reuses "2"


def test_concurrent_writer_taking_the_number_makes_commit_use_the_next(repository: Path) -> None:
    source = repository / "digits-vae" / "1"
    manifest = load_version(repository, "digits-vae").manifest
    raced = []

    def manifest_for(version: int) -> Manifest:
        if not raced:  # another exporter publishes this very number between our choice and our rename
            shutil.copytree(source, repository / "digits-vae" / str(version))
            raced.append(version)
        return dataclasses.replace(manifest, version=version)

    with VersionWriter(repository, "digits-vae") as writer:
        for entry in source.iterdir():
            shutil.copy(entry, writer.path / entry.name)
        committed = writer.commit(manifest_for)
    assert raced == [2] and committed.version == 3
    assert list_versions(repository, "digits-vae") == [1, 2, 3]


def test_invalid_model_names_are_refused(tmp_path: Path) -> None:
    for name in [".hidden", "a/b", "..", ""]:
        with pytest.raises(RepositoryError, match="model name"):
            VersionWriter(tmp_path, name)


def _samplers(d: int = 3, k: int = 2) -> LatentSamplers:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, d, d))
    return LatentSamplers(np.arange(d, dtype=float), np.eye(d) * 2, np.full(k, 1 / k),
                          rng.standard_normal((k, d)), a @ a.transpose(0, 2, 1) + np.eye(d))


def test_samplers_round_trip_through_npz(tmp_path: Path) -> None:
    write_samplers(tmp_path / SAMPLERS_FILE, _samplers())
    loaded = read_samplers(tmp_path / SAMPLERS_FILE)
    for name in LatentSamplers.ARRAYS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(_samplers(), name))
    np.testing.assert_allclose(loaded.gaussian_chol @ loaded.gaussian_chol.T, loaded.gaussian_cov)


def test_sampler_file_holding_pickled_objects_is_refused(tmp_path: Path) -> None:
    arrays = {name: getattr(_samplers(), name) for name in LatentSamplers.ARRAYS}
    arrays["gaussian_mean"] = np.array([{"evil": 1}], dtype=object)
    np.savez(tmp_path / SAMPLERS_FILE, **arrays)
    with pytest.raises(RepositoryError, match=SAMPLERS_FILE):
        read_samplers(tmp_path / SAMPLERS_FILE)


def test_samplers_that_are_not_a_density_are_refused() -> None:
    s = _samplers()
    with pytest.raises(RepositoryError, match="sum to 1"):
        dataclasses.replace(s, mixture_weights=np.array([0.7, 0.7]))
    with pytest.raises(RepositoryError, match="positive definite"):
        dataclasses.replace(s, gaussian_cov=-np.eye(3))


def test_format_module_imports_neither_torch_nor_onnx() -> None:
    code = ("import sys, export, export.repository; "
            "bad = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            cwd=Path(__file__).parent.parent, env={**os.environ, "PYTHONPATH": "."})
    assert result.returncode == 0, result.stderr
