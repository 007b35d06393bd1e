"""`aegen-export`: a training checkpoint → a new, verified version in a model repository.

    aegen-export runs/vae16 --repository model-repository --name digits-vae [--fp16] [--opset 18]

Writes <repository>/<name>/<next version>/ (see export/repository.py): encoder.onnx, decoder.onnx,
decoder_uint8.onnx, optionally decoder_fp16.onnx and the int8 decoders (--int8), latent_samplers.npz and manifest.json, and prints what
verification measured and how valid the decoded samples of each sampler are. Any bad input or failed check:
one line on stderr, exit code 2, and nothing published.

Every flag has an environment variable: --repository is AEGEN_REPOSITORY, --data-dir AEGEN_DATA_DIR,
--threads AEGEN_THREADS, --opset AEGEN_EXPORT_OPSET.
"""

from __future__ import annotations

import sys
from pathlib import Path

from export.exporter import ExportConfig, export_checkpoint
from export.latent_samplers import SamplerFitError
from export.onnx_graphs import DEFAULT_OPSET, EXPORTERS, ExportError
from export.repository import ModelVersion, RepositoryError, list_versions, load_version
from export.verify import VerificationError, VerifyConfig
from protos.cli import USAGE_ERROR, OneLineParser, env, fail
from training.checkpoint import CheckpointError, weights_sha256
from training.data import DataError

EXIT_BAD_INPUT = USAGE_ERROR
PROG = "aegen-export"


def _env_int(name: str, default: int | None) -> int | None:
    value = env(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ExportError(f"environment variable {name} must be an integer, got {value!r}") from None


def parse_args(argv: list[str] | None) -> tuple[ExportConfig, bool]:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                      epilog="Environment: AEGEN_REPOSITORY, AEGEN_DATA_DIR, AEGEN_THREADS, AEGEN_EXPORT_OPSET.")
    p.add_argument("checkpoint", type=Path, help="checkpoint directory written by aegen-train")
    p.add_argument("--repository", type=Path, default=env("AEGEN_REPOSITORY"),
                   help="model repository directory (env AEGEN_REPOSITORY)")
    p.add_argument("--name", required=True, help="model name in the repository, e.g. digits-vae")
    p.add_argument("--fp16", action="store_true", help="also write decoder_fp16.onnx (fp16 inside, fp32 in/out)")
    p.add_argument("--int8", action="store_true",
                   help="also write decoder_int8.onnx and decoder_int8_uint8.onnx (int8 weights, dynamic "
                        "quantisation; aegen-serve --decoder-precision int8 serves them)")
    p.add_argument("--opset", type=int, default=_env_int("AEGEN_EXPORT_OPSET", DEFAULT_OPSET),
                   help=f"ONNX opset, 13..21 (default {DEFAULT_OPSET}; env AEGEN_EXPORT_OPSET)")
    p.add_argument("--exporter", choices=EXPORTERS, default="auto",
                   help="torch.onnx exporter: auto (dynamo, falling back to TorchScript), dynamo or torchscript")
    p.add_argument("--components", type=int, default=ExportConfig.components,
                   help=f"Gaussian mixture components (default {ExportConfig.components}, chosen in docs/report/TUNING.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of EM, verification and sample-quality seeds")
    p.add_argument("--data-dir", type=Path, default=env("AEGEN_DATA_DIR"),
                   help="IDX directory for mnist/fashion-mnist checkpoints (env AEGEN_DATA_DIR)")
    p.add_argument("--quality-samples", type=int, default=1000,
                   help="decoded images per sampler for the validity report; 0 skips it (default 1000)")
    p.add_argument("--figures", type=Path, default=None,
                   help="directory for samples_<sampler>.png grids of decoded seeds (default: none)")
    p.add_argument("--big-batch", type=int, default=VerifyConfig.big_batch,
                   help="batch size of the one full-size decoder run in verification; 0 skips it")
    p.add_argument("--threads", type=int, default=_env_int("AEGEN_THREADS", None),
                   help="CPU threads for torch and onnxruntime (env AEGEN_THREADS)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal anyway)")
    p.add_argument("--if-changed", action="store_true",
                   help="do nothing when the newest version was exported from these exact weights")
    a = p.parse_args(argv)
    if a.repository is None:
        p.error("--repository is required (or set AEGEN_REPOSITORY)")
    for flag, value, low in (("--components", a.components, 1), ("--quality-samples", a.quality_samples, 0),
                             ("--big-batch", a.big_batch, 0), ("--threads", a.threads or 1, 1)):
        if value < low:
            p.error(f"{flag} must be ≥ {low}, got {value}")
    return ExportConfig(checkpoint=a.checkpoint, repository=a.repository, name=a.name, fp16=a.fp16, int8=a.int8,
                        opset=a.opset, components=a.components, seed=a.seed, data_dir=a.data_dir,
                        quality_samples=a.quality_samples, figures=a.figures, threads=a.threads,
                        progress=not a.no_progress and sys.stderr.isatty(),
                        exporter=a.exporter,
                        verify=VerifyConfig(big_batch=a.big_batch)), a.if_changed


def already_exported(config: ExportConfig) -> ModelVersion | None:
    """The newest version of config.name, if it was exported from the same checkpoint weights."""
    if not (config.repository / config.name).is_dir() or not list_versions(config.repository, config.name):
        return None
    try:
        weights = weights_sha256(config.checkpoint)
    except OSError:
        return None  # the export proper reports the missing checkpoint in its own words
    newest = load_version(config.repository, config.name)
    return newest if newest.manifest.checkpoint_sha256 == weights else None


def main(argv: list[str] | None = None) -> int:
    expected = (CheckpointError, DataError, ExportError, VerificationError, SamplerFitError, RepositoryError)
    try:
        config, if_changed = parse_args(argv)
        if if_changed and (same := already_exported(config)) is not None:
            print(f"{PROG}: {same.path} was exported from these weights already; nothing to do")
            return 0
        export_checkpoint(config)
    except expected as exc:
        return fail(PROG, _one_line(exc))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was published", file=sys.stderr)
        return 130
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())
