"""Benchmark e: training and export, for the record. Images/s of `aegen-train` per model (one epoch on the
embedded digits, read from the checkpoint's history) and the wall time of `aegen-export`.

    python -m bench.train_export [--epochs 1] [--limit N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import PYTHON, RESULTS_DIR, fmt, machine_details, markdown_table, run_tool, write_result
from training.checkpoint import read_config

MODELS = (("vae", "mlp"), ("ae", "mlp"), ("vae", "conv"), ("ae", "conv"))


def _timed(argv: list[str], what: str) -> float:
    start = time.perf_counter()
    run_tool(argv, what)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> Path:
    details = machine_details()
    work = Path(tempfile.mkdtemp(prefix="aegen-bench-train-"))
    rows = []
    try:
        for kind, arch in MODELS:
            name = f"{kind}-{arch}"
            ckpt = work / "checkpoints" / name
            train_argv = [PYTHON, "-m", "training.train", "--kind", kind, "--arch", arch, "--latent-dim", "16",
                          "--epochs", str(args.epochs), "--out", str(ckpt), "--no-progress"]
            if args.limit:
                train_argv += ["--limit", str(args.limit)]
            print(f"  training {name} ...", file=sys.stderr, flush=True)
            train_s = _timed(train_argv, f"aegen-train {name}")
            history = read_config(ckpt).history
            images_per_s = sum(row["images_per_s"] for row in history) / len(history)
            print(f"  exporting {name} ...", file=sys.stderr, flush=True)
            export_s = _timed([PYTHON, "-m", "export.cli", str(ckpt), "--repository", str(work / "repository"),
                               "--name", name], f"aegen-export {name}")
            onnx_kib = sum(f.stat().st_size for f in (work / "repository" / name).rglob("*.onnx")) / 1024
            rows.append([f"{kind}, {arch}", args.epochs, fmt(images_per_s), fmt(train_s, 1), fmt(export_s, 1),
                         fmt(onnx_kib)])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown_table(["model (latent 16, hidden 512)", "epochs", "training images/s",
                            "aegen-train wall s (incl. start-up, validation)", "aegen-export wall s",
                            "ONNX files KiB"], rows)
    limit = f"at most {args.limit} training images" if args.limit else "the 9,000 training images"
    body = (f"`aegen-train` on the embedded digits ({limit}), CPU, torch's default thread count; images/s is "
            f"the training loop's own figure (mean over epochs). `aegen-export` wall time includes the process "
            f"start, the ONNX export of every graph, the checks and the fitted latent samplers.\n\n{table}")
    return write_result("train_export", "Benchmark e: training and export", body, details, args.out_dir)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, default=0, help="train on at most this many images (0: all)")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return p


def main(argv: list[str] | None = None) -> int:
    run(parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
