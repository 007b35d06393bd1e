"""The model repository format: the contract between export (writes) and the server (reads).

Layout, after Triton's model repository:

    <repository>/<model-name>/<version>/      version: a positive integer, newest served by default
        manifest.json          Manifest as JSON (schema below, `format` = "aegen-model-repository/1")
        encoder.onnx           images (batch, 1, 28, 28) float32 → VAE: mean, log_variance; AE: latent
        decoder.onnx           latent (batch, latent_dim) float32 → images (batch, 1, 28, 28) float32 in [0, 1]
        decoder_uint8.onnx     latent → images uint8, round(x · 255) computed in the graph (half to even)
        decoder_fp16.onnx      optional: fp16 weights and arithmetic, float32 in and out (a drop-in for
                               decoder.onnx on GPUs)
        decoder_int8.onnx      optional: decoder.onnx dynamically quantised (int8 weights), float32 in and out
        decoder_int8_uint8.onnx  optional: the same with decoder_uint8's uint8 output (export/quantize.py)
        latent_samplers.npz    optional: the ex-post Gaussian and Gaussian mixture fitted to training latents
        latent_flow.onnx       optional: the learned sampler, a RealNVP flow fitted to the training latents
                               (training/latent_sampler.py): noise (batch, latent_dim) float32 ~ N(0, I) →
                               latent (batch, latent_dim) float32, to be fed to a decoder graph

A version is written into a hidden temporary directory (`.writing-*`) inside `<model-name>/` and renamed
to its integer name only when complete, so a reader never sees half a version; names starting with "." are
never versions. The loader checks the manifest against its schema and every file against its SHA-256.

This module is imported by the server: it must stay torch-free and onnx-free (stdlib + numpy only). It is
longer than most because it is the whole contract in one place: the schema, its checks, the atomic writer
and the verifying reader change together, and splitting them would let a writer and a reader drift apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

FORMAT = "aegen-model-repository/1"
MANIFEST_FILE = "manifest.json"
SAMPLERS_FILE = "latent_samplers.npz"
TEMP_PREFIX = ".writing-"
KINDS = ("ae", "vae")
BATCH = "batch"  # the name of the dynamic batch axis in every graph's shapes

# Graph keys → file names. Input and output names are fixed so that the server can rely on them.
GRAPH_FILES = {
    "encoder": "encoder.onnx",
    "decoder": "decoder.onnx",
    "decoder_uint8": "decoder_uint8.onnx",
    "decoder_fp16": "decoder_fp16.onnx",
    "decoder_int8": "decoder_int8.onnx",
    "decoder_int8_uint8": "decoder_int8_uint8.onnx",
    "latent_flow": "latent_flow.onnx",
}
REQUIRED_GRAPHS = ("encoder", "decoder", "decoder_uint8")
ENCODER_INPUT = "images"
VAE_ENCODER_OUTPUTS = ("mean", "log_variance")
AE_ENCODER_OUTPUTS = ("latent",)
DECODER_INPUT = "latent"
DECODER_OUTPUT = "images"
GRAPH_DTYPES = {"encoder": "float32", "decoder": "float32", "decoder_uint8": "uint8", "decoder_fp16": "float32",
                "decoder_int8": "float32", "decoder_int8_uint8": "uint8", "latent_flow": "float32"}
LATENT_FLOW_INPUT = "noise"  # ε ~ N(0, I), (batch, latent_dim): seeded like the standard_normal sampler's seeds
LATENT_FLOW_OUTPUT = "latent"  # the decoder's input
# Learned samplers: sampler name → the graph that turns N(0, I) noise into latents.
LEARNED_SAMPLERS = {"flow": "latent_flow"}

SAMPLERS = ("standard_normal", "gaussian", "mixture")
FITTED_SAMPLERS = ("gaussian", "mixture")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_VERSION_RE = re.compile(r"^[1-9][0-9]{0,17}$")


class RepositoryError(Exception):
    """A model repository entry is missing, malformed or inconsistent. The message names the file."""


# ---------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class GraphInfo:
    """One ONNX graph of a version: file name, SHA-256, and its input/output names → shapes."""

    file: str
    sha256: str
    inputs: dict[str, list]  # name → shape; BATCH marks the dynamic axis
    outputs: dict[str, list]
    dtype: str  # element type of the outputs: "float32" | "uint8" | "float16"


def expected_graph_io(
    key: str, kind: str, latent_dim: int, image_shape: tuple[int, int, int]
) -> tuple[dict[str, list], dict[str, list], str]:
    """The inputs, outputs and output dtype that graph `key` of such a model must have.

    One source of truth: the exporter names its graphs' inputs and outputs from this, and the loader
    refuses a manifest that disagrees with it."""
    images = [BATCH, *image_shape]
    latent = [BATCH, latent_dim]
    if key == "encoder":
        names = VAE_ENCODER_OUTPUTS if kind == "vae" else AE_ENCODER_OUTPUTS
        return {ENCODER_INPUT: images}, {n: list(latent) for n in names}, GRAPH_DTYPES[key]
    if key == "latent_flow":
        return {LATENT_FLOW_INPUT: list(latent)}, {LATENT_FLOW_OUTPUT: list(latent)}, GRAPH_DTYPES[key]
    if key in GRAPH_FILES:
        return {DECODER_INPUT: latent}, {DECODER_OUTPUT: images}, GRAPH_DTYPES[key]
    raise RepositoryError(f"unknown graph {key!r}; expected one of {sorted(GRAPH_FILES)}")


@dataclass(frozen=True)
class Manifest:
    """manifest.json: what a version holds, where it came from, and how it was verified."""

    name: str
    version: int
    kind: str  # "ae" | "vae"
    latent_dim: int
    image_shape: tuple[int, int, int]
    value_range: tuple[float, float]
    dataset: str
    classes: tuple[int, ...] | None
    graphs: dict[str, GraphInfo]
    samplers: tuple[str, ...]  # subset of SAMPLERS; fitted ones need latent_samplers.npz
    opset: int
    ir_version: int
    checkpoint_sha256: str
    library_versions: dict[str, str]
    training: dict  # the checkpoint's config and final metrics
    verification: dict  # what the export checked, and the measured differences
    created_at: str  # ISO 8601, UTC
    format: str = FORMAT
    samplers_sha256: str | None = None  # SHA-256 of latent_samplers.npz, when fitted samplers exist

    def to_json(self) -> str:
        _validate(self, "manifest")
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = MANIFEST_FILE) -> Manifest:
        """Parse and validate; raises RepositoryError naming `source` and what was expected."""
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise RepositoryError(f"{source}: not valid JSON ({exc})") from None
        manifest = _manifest_from_dict(raw, source)
        _validate(manifest, source)
        return manifest

    def graph_info(self, key: str) -> GraphInfo:
        if key not in self.graphs:
            raise RepositoryError(f"model {self.name} version {self.version} has no {key!r} graph")
        return self.graphs[key]


def _manifest_from_dict(raw: Any, source: str) -> Manifest:
    if not isinstance(raw, dict):
        raise RepositoryError(f"{source}: expected a JSON object")
    if raw.get("format") != FORMAT:
        raise RepositoryError(f"{source}: format is {raw.get('format')!r}, expected {FORMAT!r}")
    fields = {f.name: f for f in dataclasses.fields(Manifest)}
    unknown, missing = set(raw) - set(fields), {n for n, f in fields.items() if _required(f)} - set(raw)
    if unknown:
        raise RepositoryError(f"{source}: unknown keys {sorted(unknown)}")
    if missing:
        raise RepositoryError(f"{source}: missing keys {sorted(missing)}")
    graphs_raw = raw["graphs"]
    if not isinstance(graphs_raw, dict):
        raise RepositoryError(f"{source}: 'graphs' must be an object")
    graphs = {key: _graph_from_dict(key, g, source) for key, g in graphs_raw.items()}
    try:
        values = dict(raw, graphs=graphs)
        values["image_shape"] = tuple(_as_list(raw["image_shape"], "image_shape", source))
        values["value_range"] = tuple(_as_list(raw["value_range"], "value_range", source))
        values["samplers"] = tuple(_as_list(raw["samplers"], "samplers", source))
        if raw["classes"] is not None:
            values["classes"] = tuple(_as_list(raw["classes"], "classes", source))
        return Manifest(**values)
    except TypeError as exc:
        raise RepositoryError(f"{source}: {exc}") from None


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _as_list(value: Any, key: str, source: str) -> list:
    if not isinstance(value, list):
        raise RepositoryError(f"{source}: {key!r} must be a list, got {type(value).__name__}")
    return value


def _graph_from_dict(key: str, raw: Any, source: str) -> GraphInfo:
    names = {f.name for f in dataclasses.fields(GraphInfo)}
    if not isinstance(raw, dict) or set(raw) != names:
        raise RepositoryError(f"{source}: graphs.{key} must be an object with keys {sorted(names)}")
    return GraphInfo(**raw)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _validate(m: Manifest, source: str) -> None:
    """Check every field's type and the graphs against expected_graph_io; raise RepositoryError."""

    def check(ok: bool, what: str) -> None:
        if not ok:
            raise RepositoryError(f"{source}: {what}")

    check(m.format == FORMAT, f"format must be {FORMAT!r}")
    check(isinstance(m.name, str) and bool(_NAME_RE.match(m.name)), f"name {m.name!r} is not a valid model name")
    check(_is_int(m.version) and m.version >= 1, f"version must be a positive integer, got {m.version!r}")
    check(m.kind in KINDS, f"kind must be one of {KINDS}, got {m.kind!r}")
    check(_is_int(m.latent_dim) and 1 <= m.latent_dim <= 1024, f"latent_dim must be in 1..1024, got {m.latent_dim!r}")
    check(len(m.image_shape) == 3 and all(_is_int(d) and d >= 1 for d in m.image_shape),
          f"image_shape must be 3 positive integers, got {m.image_shape!r}")
    check(len(m.value_range) == 2 and all(_is_number(v) for v in m.value_range)
          and m.value_range[0] < m.value_range[1], f"value_range must be [low, high], got {m.value_range!r}")
    check(isinstance(m.dataset, str) and bool(m.dataset), "dataset must be a non-empty string")
    check(m.classes is None or all(_is_int(c) and c >= 0 for c in m.classes),
          f"classes must be null or a list of non-negative integers, got {m.classes!r}")
    check(all(s in SAMPLERS for s in m.samplers) and "standard_normal" in m.samplers
          and len(set(m.samplers)) == len(m.samplers),
          f"samplers must include 'standard_normal' and be drawn from {SAMPLERS}, got {m.samplers!r}")
    fitted = any(s in FITTED_SAMPLERS for s in m.samplers)
    check((m.samplers_sha256 is not None) == fitted,
          "samplers_sha256 must be given exactly when a fitted sampler (gaussian, mixture) is listed")
    check(m.samplers_sha256 is None or bool(_SHA_RE.match(str(m.samplers_sha256))),
          "samplers_sha256 must be 64 lowercase hex digits")
    check(_is_int(m.opset) and 7 <= m.opset <= 30, f"opset must be an integer in 7..30, got {m.opset!r}")
    check(_is_int(m.ir_version) and 3 <= m.ir_version <= 10,
          f"ir_version must be in 3..10 (onnxruntime 1.31 refuses newer), got {m.ir_version!r}")
    check(isinstance(m.checkpoint_sha256, str) and bool(_SHA_RE.match(m.checkpoint_sha256)),
          "checkpoint_sha256 must be 64 lowercase hex digits")
    check(isinstance(m.library_versions, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in m.library_versions.items()),
          "library_versions must map names to version strings")
    check(isinstance(m.training, dict), "training must be an object")
    check(isinstance(m.verification, dict), "verification must be an object")
    check(isinstance(m.created_at, str) and bool(m.created_at), "created_at must be a timestamp string")
    check(isinstance(m.graphs, dict), "graphs must be an object")
    missing = [k for k in REQUIRED_GRAPHS if k not in m.graphs]
    check(not missing, f"graphs {missing} are missing")
    for key, graph in m.graphs.items():
        _validate_graph(m, key, graph, source)


def _shapes(io: Any) -> Any:
    """Tuples and lists compare equal once normalised, so a manifest built in code matches its JSON."""
    if not isinstance(io, dict):
        return io
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in io.items()}


def _validate_graph(m: Manifest, key: str, g: GraphInfo, source: str) -> None:
    if key not in GRAPH_FILES:
        raise RepositoryError(f"{source}: unknown graph {key!r}; expected one of {sorted(GRAPH_FILES)}")
    if g.file != GRAPH_FILES[key]:
        raise RepositoryError(f"{source}: graphs.{key}.file must be {GRAPH_FILES[key]!r}, got {g.file!r}")
    if not (isinstance(g.sha256, str) and _SHA_RE.match(g.sha256)):
        raise RepositoryError(f"{source}: graphs.{key}.sha256 must be 64 lowercase hex digits")
    inputs, outputs, dtype = expected_graph_io(key, m.kind, m.latent_dim, tuple(m.image_shape))
    if (_shapes(g.inputs), _shapes(g.outputs), g.dtype) != (inputs, outputs, dtype):
        raise RepositoryError(
            f"{source}: graphs.{key} has inputs {g.inputs}, outputs {g.outputs}, dtype {g.dtype!r}; "
            f"a {m.kind} with latent_dim {m.latent_dim} needs inputs {inputs}, outputs {outputs}, dtype {dtype!r}")


# ------------------------------------------------------------------------------------------ latent samplers


@dataclass(frozen=True, eq=False)
class LatentSamplers:
    """Densities fitted to the training latents at export (float64), with their Cholesky factors.

    Ex-post density estimation (Ghosh et al., "From variational to deterministic autoencoders", ICLR 2020):
    sampling a density fitted to where the encoder actually puts the data, instead of the N(0, I) prior."""

    gaussian_mean: np.ndarray  # (d,)
    gaussian_cov: np.ndarray  # (d, d)
    mixture_weights: np.ndarray  # (k,)
    mixture_means: np.ndarray  # (k, d)
    mixture_covs: np.ndarray  # (k, d, d)
    gaussian_chol: np.ndarray = field(repr=False, default=None)  # (d, d) lower, L·Lᵀ = cov
    mixture_chols: np.ndarray = field(repr=False, default=None)  # (k, d, d)

    ARRAYS = ("gaussian_mean", "gaussian_cov", "mixture_weights", "mixture_means", "mixture_covs")

    def __post_init__(self) -> None:
        for name in self.ARRAYS:
            object.__setattr__(self, name, np.array(getattr(self, name), dtype=np.float64))
        _check_sampler_shapes(self)
        object.__setattr__(self, "gaussian_chol", _cholesky(self.gaussian_cov, "gaussian_cov"))
        object.__setattr__(self, "mixture_chols", np.stack(
            [_cholesky(c, f"mixture_covs[{i}]") for i, c in enumerate(self.mixture_covs)]))

    @property
    def latent_dim(self) -> int:
        return int(self.gaussian_mean.shape[0])

    @property
    def components(self) -> int:
        return int(self.mixture_weights.shape[0])


def _check_sampler_shapes(s: LatentSamplers) -> None:
    d, k = s.gaussian_mean.shape[0] if s.gaussian_mean.ndim == 1 else -1, s.mixture_weights.shape[0]
    expected = {"gaussian_mean": (d,), "gaussian_cov": (d, d), "mixture_weights": (k,),
                "mixture_means": (k, d), "mixture_covs": (k, d, d)}
    for name, shape in expected.items():
        arr = getattr(s, name)
        if d < 1 or k < 1 or arr.shape != shape:
            raise RepositoryError(f"{SAMPLERS_FILE}: {name} has shape {arr.shape}, expected {shape}")
        if not np.all(np.isfinite(arr)):
            raise RepositoryError(f"{SAMPLERS_FILE}: {name} holds non-finite values")
    if np.any(s.mixture_weights < 0) or abs(float(s.mixture_weights.sum()) - 1.0) > 1e-6:
        raise RepositoryError(f"{SAMPLERS_FILE}: mixture_weights must be non-negative and sum to 1")


def _cholesky(cov: np.ndarray, name: str) -> np.ndarray:
    if not np.allclose(cov, cov.T, rtol=1e-6, atol=1e-9):
        raise RepositoryError(f"{SAMPLERS_FILE}: {name} is not symmetric")
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise RepositoryError(f"{SAMPLERS_FILE}: {name} is not positive definite") from None


def write_samplers(path: Path, samplers: LatentSamplers) -> None:
    """np.savez of the five arrays (no object arrays, so loading needs no pickle)."""
    with open(path, "wb") as f:
        np.savez(f, **{name: getattr(samplers, name) for name in LatentSamplers.ARRAYS})
        f.flush()
        os.fsync(f.fileno())


def read_samplers(path: Path) -> LatentSamplers:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [n for n in LatentSamplers.ARRAYS if n not in npz.files]
            if missing:
                raise RepositoryError(f"{path}: missing arrays {missing}")
            arrays = {n: npz[n] for n in LatentSamplers.ARRAYS}
    except FileNotFoundError:
        raise RepositoryError(f"{path}: missing") from None
    except (ValueError, OSError, EOFError) as exc:  # not an npz, truncated, or holds pickled objects
        raise RepositoryError(f"{path}: not a valid latent sampler file ({exc})") from None
    try:
        return LatentSamplers(**arrays)
    except RepositoryError as exc:
        raise RepositoryError(f"{path}: {exc}") from None


# -------------------------------------------------------------------------------------------- versions


@dataclass(frozen=True)
class ModelVersion:
    """A complete, checked version directory."""

    name: str
    version: int
    path: Path
    manifest: Manifest

    def graph_path(self, key: str) -> Path:
        return self.path / self.manifest.graph_info(key).file

    def load_samplers(self) -> LatentSamplers | None:
        """The fitted samplers, or None when the version has none (standard_normal only)."""
        if self.manifest.samplers_sha256 is None:
            return None
        path = self.path / SAMPLERS_FILE
        _check_sha256(path, self.manifest.samplers_sha256)
        samplers = read_samplers(path)
        if samplers.latent_dim != self.manifest.latent_dim:
            raise RepositoryError(
                f"{path}: latent dimension {samplers.latent_dim}, manifest says {self.manifest.latent_dim}")
        return samplers


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_sha256(path: Path, expected: str) -> None:
    try:
        actual = file_sha256(path)
    except FileNotFoundError:
        raise RepositoryError(f"{path}: missing") from None
    except OSError as exc:
        raise RepositoryError(f"{path}: cannot be read ({exc.strerror})") from None
    if actual != expected:
        raise RepositoryError(
            f"{path}: SHA-256 {actual[:12]}… does not match the manifest's {expected[:12]}… "
            "(corrupted, replaced or swapped file)")


def _check_repository(repository: Path) -> Path:
    repository = Path(repository)
    if not repository.exists():
        raise RepositoryError(f"{repository}: no such model repository")
    if not repository.is_dir():
        raise RepositoryError(f"{repository}: is not a directory (expected a model repository)")
    return repository


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RepositoryError(f"model name {name!r} is invalid: use letters, digits, '.', '_', '-', "
                              "starting with a letter or digit")
    return name


def _numbered_dirs(model_dir: Path) -> list[int]:
    """Every directory with a version's name, complete or not (a hidden temp dir never has one)."""
    try:
        entries = list(os.scandir(model_dir))
    except FileNotFoundError:
        return []
    return sorted(int(e.name) for e in entries if _VERSION_RE.match(e.name) and e.is_dir())


def list_models(repository: Path) -> list[str]:
    """Model names holding at least one complete version, sorted."""
    repository = _check_repository(repository)
    names = [e.name for e in os.scandir(repository) if e.is_dir() and _NAME_RE.match(e.name)]
    return sorted(n for n in names if list_versions(repository, n))


def list_versions(repository: Path, name: str) -> list[int]:
    """Complete versions of a model, ascending: integer-named directories holding a manifest.json."""
    model_dir = _check_repository(repository) / _check_name(name)
    return [v for v in _numbered_dirs(model_dir) if (model_dir / str(v) / MANIFEST_FILE).is_file()]


def load_version(repository: Path, name: str, version: int | None = None) -> ModelVersion:
    """Read and check one version (None: the newest). Raises RepositoryError naming the offending file."""
    repository = _check_repository(repository)
    versions = list_versions(repository, name)
    if not versions:
        raise RepositoryError(f"{repository / name}: no versions of model {name!r}")
    if version is None:
        version = versions[-1]
    if version not in versions:
        raise RepositoryError(f"{repository / name}: no version {version} of model {name!r}; "
                              f"available: {versions}")
    path = repository / name / str(version)
    manifest_path = path / MANIFEST_FILE
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{manifest_path}: cannot be read ({exc})") from None
    manifest = Manifest.from_json(text, source=str(manifest_path))
    if (manifest.name, manifest.version) != (name, version):
        raise RepositoryError(f"{manifest_path}: describes {manifest.name} version {manifest.version}, "
                              f"but lies in {name}/{version}")
    for graph in manifest.graphs.values():
        _check_sha256(path / graph.file, graph.sha256)
    if manifest.samplers_sha256 is not None:
        _check_sha256(path / SAMPLERS_FILE, manifest.samplers_sha256)
    return ModelVersion(name, version, path, manifest)


class VersionWriter:
    """Write a new version atomically:

        with VersionWriter(repository, name) as w:
            ... write files into w.path ...
            version = w.commit(lambda v: manifest_with_version(v))

    w.path is a hidden temp directory inside <repository>/<name>/. commit() writes manifest.json, then
    renames the directory to the next free integer (retrying the next number if a concurrent writer took
    it). Leaving the block by an exception or without commit removes the temp directory. A killed writer
    leaves only a hidden `.writing-*` directory, which readers ignore."""

    def __init__(self, repository: Path, name: str) -> None:
        self.repository = Path(repository)
        self.name = _check_name(name)
        self.path: Path | None = None
        self._committed: ModelVersion | None = None
        self._created: list[Path] = []

    def __enter__(self) -> Self:
        if self.repository.exists() and not self.repository.is_dir():
            raise RepositoryError(f"{self.repository}: is not a directory (expected a model repository)")
        model_dir = self.repository / self.name
        # Directories made here are removed again if nothing gets published: a failed export leaves no trace.
        self._created = [p for p in [model_dir, *model_dir.parents] if not p.exists()]
        try:
            model_dir.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=model_dir))
        except OSError as exc:
            self._remove_created()
            raise RepositoryError(f"{model_dir}: cannot create a version directory ({exc.strerror})") from None
        os.chmod(self.path, 0o755)  # mkdtemp makes it 0700; a published version should be readable
        return self

    def commit(self, manifest: Manifest | Callable[[int], Manifest]) -> ModelVersion:
        """Publish the version; `manifest` is a Manifest (its version is replaced) or version → Manifest."""
        if self.path is None or self._committed is not None:
            raise RepositoryError("VersionWriter.commit: call it once, inside the `with` block")
        model_dir = self.path.parent
        for _ in range(1000):
            version = (_numbered_dirs(model_dir) or [0])[-1] + 1
            m = manifest(version) if callable(manifest) else dataclasses.replace(manifest, version=version)
            if (m.name, m.version) != (self.name, version):
                raise RepositoryError(f"manifest names {m.name} version {m.version}, "
                                      f"expected {self.name} version {version}")
            _write_synced(self.path / MANIFEST_FILE, m.to_json().encode("utf-8"))
            _fsync_tree(self.path)
            try:
                # rename() refuses a non-empty target: if another writer took this number, try the next.
                os.rename(self.path, model_dir / str(version))
            except OSError as exc:
                if (model_dir / str(version)).exists():
                    continue
                raise RepositoryError(f"{model_dir / str(version)}: cannot publish ({exc.strerror})") from None
            _fsync_dir(model_dir)
            self._committed = ModelVersion(self.name, version, model_dir / str(version), m)
            return self._committed
        raise RepositoryError(f"{model_dir}: could not find a free version number")

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._committed is None and self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self._remove_created()

    def _remove_created(self) -> None:
        for directory in self._created:  # innermost first; rmdir keeps anything another writer put there
            try:
                directory.rmdir()
            except OSError:
                break


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(directory: Path) -> None:
    for entry in os.scandir(directory):
        if entry.is_file():
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
