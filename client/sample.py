"""aegen-sample: ask a running server for samples and write them as a PNG grid (and .npy on request).

    aegen-sample --target localhost:50051 -n 64 --seed 7 -o grid.png [--npy samples.npy] [--model digits-vae]

Prints the model, version, sampler and seed used, so the same grid can be asked for again. Without
--model it asks the server (AegenClient.default_model: its first VAE, else its first model). The shared
flags (client/flags.py) may also come from AEGEN_<FLAG> (AEGEN_TARGET, ...). matplotlib is needed here only (it is not a serving
dependency). Errors: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from client.client import AegenClient, NoModelsError
from client.flags import add_sampler_flag, add_server_flags
from protos.atomic import atomic_write_bytes
from protos.cli import OneLineParser, env, fail

PROG = "aegen-sample"


class SampleError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Write a grid of samples from an aegen server.",
                      epilog="--target, --model, --tls, --ca and --sampler may also come from AEGEN_TARGET, "
                             "AEGEN_MODEL, AEGEN_TLS, AEGEN_CA and AEGEN_SAMPLER.")
    add_server_flags(p, env)
    p.add_argument("-n", "--num-samples", type=int, default=64, help="how many samples (default 64)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the server draws one and prints it)")
    p.add_argument("--version", type=int, default=None, help="model version (default: the newest)")
    add_sampler_flag(p, env)
    p.add_argument("--temperature", type=float, default=None, help="scale of the seeds (default 1)")
    p.add_argument("-o", "--out", default="grid.png", help="PNG file to write (default grid.png)")
    p.add_argument("--npy", default=None, help="also write the samples (uint8, N×C×H×W) to this .npy file")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of each call in seconds (default 30)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (SampleError, NoModelsError, ValueError) as exc:
        return fail(PROG, exc)
    except grpc.RpcError as exc:
        return fail(PROG, f"{args.target}: {exc.code().name}: {exc.details()}")
    except OSError as exc:
        return fail(PROG, f"{exc.filename or ''}: {exc.strerror}")


def _run(args: argparse.Namespace) -> int:
    if args.num_samples < 1:
        raise SampleError(f"-n must be at least 1, got {args.num_samples}")
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise SampleError(f"--seed must be in 0..2^64-1, got {args.seed}")
    plt = _pyplot()
    root = Path(args.ca).read_bytes() if args.ca else None
    with AegenClient(args.target, tls=args.tls, root_certificates=root, timeout=args.timeout) as client:
        model = args.model or client.default_model()
        samples = client.generate(model, args.num_samples, seed=args.seed, version=args.version,
                                  temperature=args.temperature, sampler=args.sampler, dtype="uint8")
    _write_grid(plt, samples.images, Path(args.out),
                f"{samples.model_name} v{samples.model_version}, {samples.sampler}, seed {samples.seed}")
    if args.npy:
        buffer = io.BytesIO()
        np.save(buffer, samples.images, allow_pickle=False)
        atomic_write_bytes(args.npy, buffer.getvalue())
    print(f"model {samples.model_name} version {samples.model_version} sampler {samples.sampler} "
          f"seed {samples.seed}: {len(samples.images)} samples → {args.out}" + (f", {args.npy}" if args.npy else ""))
    return 0


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SampleError("matplotlib is needed to write PNGs: pip install matplotlib "
                          "(or `pip install aegen[train]`)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write_grid(plt, images: np.ndarray, out: Path, title: str) -> None:
    n, channels, height, width = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * height, cols * width, channels), np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * height:(r + 1) * height, c * width:(c + 1) * width] = image.transpose(1, 2, 0)
    fig, ax = plt.subplots(figsize=(max(3.0, cols * 0.5), max(3.0, rows * 0.5) + 0.4))
    ax.imshow(grid[..., 0] if channels == 1 else grid, cmap="gray" if channels == 1 else None, vmin=0, vmax=255)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())


if __name__ == "__main__":
    sys.exit(main())
