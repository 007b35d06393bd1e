"""Checkpoint → a verified, published model repository version.

Everything is built and verified in memory first; only then is the version written through
export.repository.VersionWriter, so a failure at any step leaves nothing visible in the repository.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm import tqdm

from export.latent_samplers import MixtureFit, fit_samplers, preview_latents
from export.onnx_graphs import (
    DEFAULT_OPSET,
    ExportedGraph,
    ExportError,
    build_graphs,
    build_latent_flow_graph,
    default_opset,
    graph_io,
)
from export.quantize import verify_int8
from export.repository import (
    GRAPH_FILES,
    LATENT_FLOW_INPUT,
    LEARNED_SAMPLERS,
    SAMPLERS,
    SAMPLERS_FILE,
    GraphInfo,
    LatentSamplers,
    Manifest,
    ModelVersion,
    RepositoryError,
    VersionWriter,
    file_sha256,
    load_version,
    write_samplers,
)
from export.verify import VerifyConfig, verify_graphs, verify_latent_flow
from training.checkpoint import CheckpointConfig, load_model, weights_sha256
from training.data import filter_classes, load_dataset, to_unit_float, train_val_split
from training.grid import save_grid
from training.latent_sampler import FLOW_FILE, FlowError, LatentFlow, load_flow
from training.models import VAE, AutoEncoder

Log = Callable[[str], None]


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path
    repository: Path
    name: str
    fp16: bool = False
    int8: bool = False  # also decoder_int8 and decoder_int8_uint8 (export/quantize.py)
    opset: int = DEFAULT_OPSET
    components: int = 40  # mixture components: 40 beat 5, 10 and 20 on every latent-8 model (docs/report/TUNING.md)
    seed: int = 0  # EM initialisation, verification seeds, validity seeds
    data_dir: Path | None = None  # IDX directory for mnist / fashion-mnist checkpoints
    quality_samples: int = 1000  # images per sampler for the validity report; 0 skips it
    figures: Path | None = None  # directory for samples_<sampler>.png grids (decoded by decoder_uint8)
    threads: int | None = None  # torch and onnxruntime CPU threads; None leaves torch's default
    progress: bool = True
    exporter: str = "auto"  # "auto" (dynamo, else TorchScript) | "dynamo" | "torchscript"
    # The learned sampler: <checkpoint>/latent_flow.safetensors (aegen-train --latent-flow) becomes
    # latent_flow.onnx when it was fitted to these very weights; without it the version has no flow graph.
    latent_flow: bool = True
    verify: VerifyConfig = field(default_factory=VerifyConfig)


def export_checkpoint(config: ExportConfig, log: Log = print) -> ModelVersion:
    """Export, verify, fit samplers, publish. Raises CheckpointError, DataError, ExportError,
    VerificationError, SamplerFitError or RepositoryError; on any of them nothing is published."""
    # Bad input fails here, before the progress bar, so that the error is the only line on stderr.
    check_destination(config.repository, config.name)
    model, checkpoint = load_model(config.checkpoint)
    checkpoint_sha = weights_sha256(config.checkpoint)
    train_images, val_images = _split(checkpoint, config.data_dir)
    threads = config.threads or torch.get_num_threads()
    verify_config = dataclasses.replace(config.verify, threads=threads, seed=config.seed)
    # leave=False: a failure mid-way erases the bar, leaving the one-line error alone on stderr.
    flow = _checkpoint_flow(config, checkpoint_sha, log)
    with _torch_threads(config.threads), tqdm(total=5, desc="export", unit="step", disable=not config.progress,
                                             file=sys.stderr, leave=False) as bar:
        bar.set_postfix_str("ONNX graphs")
        graphs = build_graphs(model, checkpoint.model, config.opset, config.fp16,
                              metadata={"model_name": config.name, "checkpoint_sha256": checkpoint_sha},
                              exporter=config.exporter, int8=config.int8)
        serialized = {key: graph.proto.SerializeToString() for key, graph in graphs.items()}
        bar.update()
        bar.set_postfix_str("verification")
        verification = verify_graphs(serialized, model, val_images, verify_config)
        if config.int8:
            verification["decoder_int8"] = verify_int8(serialized, checkpoint.model.latent_dim, config.seed,
                                                       threads=threads)
        if flow is not None:
            flow_module, flow_metadata = flow
            graphs["latent_flow"] = build_latent_flow_graph(
                flow_module, checkpoint.model, config.opset, exporter=config.exporter,
                metadata={"model_name": config.name, "checkpoint_sha256": checkpoint_sha})
            serialized["latent_flow"] = graphs["latent_flow"].proto.SerializeToString()
            verification["latent_flow"] = {**verify_latent_flow(serialized["latent_flow"], flow_module, verify_config),
                                           "fit": {k: v for k, v in flow_metadata.items() if k != "format"}}
            verification["learned_samplers"] = dict(LEARNED_SAMPLERS)
        verification["exporter"] = sorted({g.exporter for g in graphs.values()})
        bar.update()
        bar.set_postfix_str("latent samplers")
        latents = encode_latents(model, train_images)
        samplers, mixture = fit_samplers(latents, components=config.components, seed=config.seed)
        verification["latent_samplers"] = _sampler_report(latents, mixture)
        bar.update()
        bar.set_postfix_str("sample quality")
        quality = sample_quality(serialized["decoder"], samplers, val_images, checkpoint,
                                 config.quality_samples, config.seed, threads, serialized.get("latent_flow"))
        verification["sample_quality"] = quality
        if config.figures is not None:
            figures = sampler_figures(serialized["decoder_uint8"], samplers, config.figures, quality,
                                      config.seed, threads, serialized.get("latent_flow"))
        bar.update()
        bar.set_postfix_str("publish")
        version = _publish(config, checkpoint, checkpoint_sha, graphs, serialized, samplers, verification)
        bar.update()
    _log_report(log, version, verification)
    if config.figures is not None:
        log(f"  figures: {', '.join(str(p) for p in figures)}")
    return version


def check_destination(repository: Path, name: str) -> None:
    """Fail before the slow work if the version could not be written anyway."""
    VersionWriter(repository, name)  # validates the model name
    if repository.exists() and not repository.is_dir():
        raise RepositoryError(f"{repository}: is not a directory (expected a model repository)")
    existing = next(p for p in [repository / name, *(repository / name).parents] if p.exists())
    if not existing.is_dir():
        raise RepositoryError(f"{existing}: is not a directory")
    try:  # a real probe, not os.access: root passes os.access on read-only file systems too
        os.rmdir(tempfile.mkdtemp(prefix=".aegen-probe-", dir=existing))
    except OSError as exc:
        raise RepositoryError(f"{existing}: not writable ({exc.strerror})") from None


def _checkpoint_flow(config: ExportConfig, checkpoint_sha: str, log: Log) -> tuple[LatentFlow, dict] | None:
    """The learned sampler saved beside the checkpoint, if there is one fitted to these weights."""
    path = config.checkpoint / FLOW_FILE
    if not config.latent_flow or not path.exists():
        return None
    try:
        flow, metadata = load_flow(path)
    except FlowError as exc:
        raise ExportError(str(exc)) from None
    if metadata.get("checkpoint_sha256") != checkpoint_sha:
        log(f"  {path}: fitted to other weights (the checkpoint changed since); no latent_flow graph exported — "
            f"refit it with python -m training.latent_sampler {config.checkpoint}")
        return None
    return flow, metadata


def _split(checkpoint: CheckpointConfig, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint's own training and validation images, split as training split them."""
    if data_dir is None and checkpoint.dataset == "images":
        data_dir = checkpoint.data_dir  # your own images: where aegen-train read them
    dataset = filter_classes(load_dataset(checkpoint.dataset, data_dir, "train"), checkpoint.classes)
    split = train_val_split(dataset, checkpoint.val_fraction, checkpoint.seed)
    return to_unit_float(split.train_images), to_unit_float(split.val_images)


@torch.no_grad()
def encode_latents(model: AutoEncoder, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The training latents: z for an AE, the posterior means M for a VAE (float64 (n, d))."""
    chunks = []
    for start in range(0, len(images), batch_size):
        code = model.encode(torch.from_numpy(images[start:start + batch_size]))
        chunks.append((code[0] if isinstance(model, VAE) else code).numpy())
    return np.concatenate(chunks).astype(np.float64)


def _sampler_report(latents: np.ndarray, mixture: MixtureFit) -> dict:
    return {"fitted_on": len(latents), "components": len(mixture.weights),
            "em_iterations": mixture.iterations, "em_converged": mixture.converged,
            "mean_log_likelihood": round(mixture.mean_log_likelihood, 6),
            "weights": [round(float(w), 6) for w in mixture.weights]}


def sample_quality(decoder: bytes, samplers: LatentSamplers, val_images: np.ndarray,
                   checkpoint: CheckpointConfig, samples: int, seed: int, threads: int,
                   latent_flow: bytes | None = None) -> dict:
    """Validity etc. (training.evaluate.sample_metrics) of images decoded by the exported decoder from each
    sampler's seeds, drawn exactly as the server draws them. Skipped, with the reason, when it cannot run."""
    if samples <= 0:
        return {"skipped": "disabled (--quality-samples 0)"}
    if checkpoint.dataset not in ("digits", "mnist"):
        return {"skipped": f"the digit classifier does not judge {checkpoint.dataset} images"}
    try:
        from training.evaluate import load_classifier, sample_metrics
        classifier = load_classifier()
    except Exception as exc:  # noqa: BLE001 — the report is optional; a missing classifier must not block
        return {"skipped": f"classifier unavailable ({type(exc).__name__}: {str(exc).strip()[:200]})"}
    report: dict = {"samples": samples, "seed": seed}
    for sampler, images in decode_sampler_seeds(decoder, samplers, samples, seed, threads, latent_flow).items():
        metrics = sample_metrics(np.clip(images, 0.0, 1.0), val_images, classifier=classifier)
        report[sampler] = {k: round(float(v), 6) for k, v in metrics.items()}
    return report


def decode_sampler_seeds(decoder: bytes, samplers: LatentSamplers, samples: int, seed: int,
                         threads: int, latent_flow: bytes | None = None) -> dict[str, np.ndarray]:
    """n images per sampler through an exported decoder graph (latents from `preview_latents`; the flow's
    from its own exported graph fed N(0, I) noise, as the server will feed it)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(decoder, options, providers=["CPUExecutionProvider"])
    images = {}
    for sampler in SAMPLERS:
        latents = preview_latents(samplers, sampler, np.random.default_rng(seed), samples)
        (images[sampler],) = session.run(None, {session.get_inputs()[0].name: latents})
    if latent_flow is not None:
        flow = ort.InferenceSession(latent_flow, options, providers=["CPUExecutionProvider"])
        noise = np.random.default_rng(seed).standard_normal((samples, samplers.latent_dim)).astype(np.float32)
        (latents,) = flow.run(None, {LATENT_FLOW_INPUT: noise})
        for sampler in LEARNED_SAMPLERS:
            (images[sampler],) = session.run(None, {session.get_inputs()[0].name: latents})
    return images


def sampler_figures(decoder_uint8: bytes, samplers: LatentSamplers, directory: Path, quality: dict,
                    seed: int, threads: int, latent_flow: bytes | None = None) -> list[Path]:
    """samples_<sampler>.png: 64 images per sampler, titled with their validity when it was measured."""
    paths = []
    for sampler, images in decode_sampler_seeds(decoder_uint8, samplers, 64, seed, threads, latent_flow).items():
        title = f"{sampler} seeds"
        if sampler in quality:
            title += f" (validity {quality[sampler]['validity']:.2f} over {quality['samples']})"
        try:
            paths.append(save_grid(images, directory / f"samples_{sampler}.png", nrow=8, title=title))
        except OSError as exc:
            raise ExportError(f"{directory}: cannot write the sample figures ({exc.strerror})") from None
    return paths


def _publish(config: ExportConfig, checkpoint: CheckpointConfig, checkpoint_sha: str,
             graphs: dict[str, ExportedGraph], serialized: dict[str, bytes], samplers: LatentSamplers,
             verification: dict) -> ModelVersion:
    protos = [g.proto for g in graphs.values()]
    with VersionWriter(config.repository, config.name) as writer:
        infos = {}
        for key, data in serialized.items():
            path = writer.path / GRAPH_FILES[key]
            path.write_bytes(data)
            inputs, outputs, dtype = graph_io(graphs[key].proto)
            infos[key] = GraphInfo(GRAPH_FILES[key], file_sha256(path), inputs, outputs, dtype)
        write_samplers(writer.path / SAMPLERS_FILE, samplers)
        manifest = Manifest(
            name=config.name, version=1, kind=checkpoint.model.kind, latent_dim=checkpoint.model.latent_dim,
            image_shape=checkpoint.model.image_shape, value_range=(0.0, 1.0), dataset=checkpoint.dataset,
            classes=checkpoint.classes, graphs=infos, samplers=SAMPLERS,
            opset=max(default_opset(p) for p in protos), ir_version=max(p.ir_version for p in protos),
            checkpoint_sha256=checkpoint_sha, library_versions=library_versions(),
            training=_training_record(checkpoint, config.checkpoint), verification=verification,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            samplers_sha256=file_sha256(writer.path / SAMPLERS_FILE))
        committed = writer.commit(manifest)
    return load_version(config.repository, config.name, committed.version)  # read back as the server will


def _training_record(checkpoint: CheckpointConfig, directory: Path) -> dict:
    config = dataclasses.asdict(checkpoint)
    metrics, history = config.pop("metrics"), config.pop("history")
    return {"checkpoint": str(directory), "config": config, "metrics": metrics, "epochs_trained": len(history)}


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": ort.__version__, "numpy": np.__version__}
    try:
        import onnxscript
        versions["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    return versions


def _log_report(log: Log, version: ModelVersion, verification: dict) -> None:
    m = version.manifest
    log(f"exported {m.name} version {m.version} ({m.kind}, latent {m.latent_dim}) to {version.path}")
    log(f"  graphs: {', '.join(sorted(m.graphs))}; opset {m.opset}, IR {m.ir_version}; "
        f"exporter {'/'.join(verification['exporter'])}")
    for key in ("encoder", "decoder", "decoder_fp16"):
        if key in verification:
            worst = max(_worst(v["max_abs_diff"]) for v in verification[key].values())
            log(f"  {key:<14} max |onnxruntime − torch| {worst:.2e} at batches {verification['batch_sizes']}")
    if "decoder_int8" in verification:
        q = verification["decoder_int8"]
        log(f"  decoder_int8   max |int8 − fp32| {q['max_abs_diff']:.2e} ({q['max_grey_levels']} grey level(s) in "
            f"uint8, {q['pixels_changed']:.2%} of pixels) over {q['samples']} latents")
    near = sum(v["differ_near_boundary"] for v in verification["decoder_uint8"].values())
    log(f"  decoder_uint8  equal to round(fp32·255) (half to even); {near} pixel(s) differ within "
        f"{verification['tolerances']['uint8_boundary_margin']:g} of a rounding boundary")
    if "latent_flow" in verification:
        flow = verification["latent_flow"]
        worst = max(v["max_abs_diff"] for k, v in flow.items() if k.isdigit())
        log(f"  latent_flow    max |onnxruntime − torch| {worst:.2e}; RealNVP, {flow['fit'].get('couplings')} "
            f"couplings fitted on {flow['fit'].get('fitted_on')} training latents (sampler 'flow')")
    fit = verification["latent_samplers"]
    log(f"  samplers: gaussian + {fit['components']}-component mixture on {fit['fitted_on']} training latents "
        f"(EM {fit['em_iterations']} iterations, converged {fit['em_converged']})")
    quality = verification["sample_quality"]
    if "skipped" in quality:
        log(f"  sample quality: skipped, {quality['skipped']}")
        return
    log(f"  sample quality of {quality['samples']} decoded seeds per sampler:")
    log(f"    {'sampler':<16}{'validity':>9}{'coverage':>9}{'FCD':>9}{'IS':>7}")
    for sampler in [*SAMPLERS, *(s for s in LEARNED_SAMPLERS if s in quality)]:
        q = quality[sampler]
        log(f"    {sampler:<16}{q['validity']:>9.3f}{q['coverage']:>9.3f}{q['fcd']:>9.2f}{q['inception_score']:>7.2f}")


def _worst(diffs: float | dict) -> float:
    return max(diffs.values()) if isinstance(diffs, dict) else diffs


class _torch_threads:
    """Set torch's CPU threads for the export, and put the caller's setting back afterwards."""

    def __init__(self, threads: int | None) -> None:
        self.threads, self.previous = threads, torch.get_num_threads()

    def __enter__(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.previous)


__all__ = [
    "ExportConfig",
    "ExportError",
    "check_destination",
    "encode_latents",
    "export_checkpoint",
    "library_versions",
    "sample_quality",
]
