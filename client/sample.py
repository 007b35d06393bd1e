"""aegen-sample: ask a running server for samples and write them as a PNG grid (and .npy on request).

    aegen-sample --target localhost:50051 -n 64 --seed 7 -o grid.png [--npy samples.npy] [--model digits-vae]

Prints the model, version and seed used, so the same grid can be asked for again. matplotlib is needed
here only (it is not a serving dependency). Errors: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from server.client import SAMPLERS, AegenClient


class SampleError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aegen-sample", description="Write a grid of samples from an aegen server.")
    p.add_argument("--target", default=os.environ.get("AEGEN_TARGET", "localhost:50051"),
                   help="server address HOST:PORT [env AEGEN_TARGET]")
    p.add_argument("-n", "--num-samples", type=int, default=64, help="how many samples (default 64)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the server draws one and prints it)")
    p.add_argument("--model", default=None, help="model name (default: the first VAE the server lists, else its first model)")
    p.add_argument("--version", type=int, default=None, help="model version (default: the newest)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="standard_normal")
    p.add_argument("--temperature", type=float, default=None, help="scale of the seeds (default 1)")
    p.add_argument("-o", "--out", default="grid.png", help="PNG file to write (default grid.png)")
    p.add_argument("--npy", default=None, help="also write the samples (uint8, N×C×H×W) to this .npy file")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system root certificates)")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of each call in seconds (default 30)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except SampleError as exc:
        print(f"aegen-sample: error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"aegen-sample: error: {args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"aegen-sample: error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.num_samples < 1:
        raise SampleError(f"-n must be at least 1, got {args.num_samples}")
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise SampleError(f"--seed must be in 0..2^64-1, got {args.seed}")
    plt = _pyplot()
    with AegenClient(args.target, tls=args.tls, timeout=args.timeout) as client:
        model = args.model or _first_model(client)
        samples = client.generate(model, args.num_samples, seed=args.seed, version=args.version,
                                  temperature=args.temperature, sampler=args.sampler, dtype="uint8")
    _write_grid(plt, samples.images, Path(args.out),
                f"{samples.model_name} v{samples.model_version}, {samples.sampler}, seed {samples.seed}")
    if args.npy:
        _write_atomic(Path(args.npy), lambda f: np.save(f, samples.images, allow_pickle=False))
    print(f"model {samples.model_name} version {samples.model_version} sampler {samples.sampler} "
          f"seed {samples.seed}: {len(samples.images)} samples → {args.out}" + (f", {args.npy}" if args.npy else ""))
    return 0


def _first_model(client: AegenClient) -> str:
    models = client.list_models()
    if not models:
        raise SampleError("the server has no models loaded")
    vaes = [m for m in models if m.kind == "vae"]  # generating from N(0, I) is what a VAE is trained for
    return (vaes or models)[0].name


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
    _write_atomic(out, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise



if __name__ == "__main__":
    sys.exit(main())
