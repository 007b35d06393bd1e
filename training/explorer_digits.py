"""The held-out digits the latent explorer encodes: server/ui/static/digits.png and digits.json.

    python -m training.explorer_digits                  # rewrites server/ui/static/digits.{png,json}

The browser page (server/ui/, docs/explorer.md) draws the codes of validation images over a 2-D model's
latent plane. It gets those codes the way any client would, by sending the images to the server's
`<model>.encoder` over the Open Inference Protocol, so the images themselves ship with the page as a static
sprite sheet: 28×28 grey tiles, `columns` per row, white digits on black. Which images:

- `all`: the validation split of the embedded digits, as `aegen-train` cuts it for a model of every class
  (train_val_split(digits, 0.1, seed 0): 1,000 images);
- `1,8`: the validation split of a model trained on digits 1 and 8 only (the report's 2-D models and make
  demo's digits18-*: filter_classes, then the same split), so none of them was seen in training.

Both sets index into one sheet (an image in both appears once). The PNG is written here, in the training
stage that owns the data; the server only serves the files, and a test checks they equal what this builds.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

from protos.atomic import atomic_write_bytes
from training.data import Dataset, filter_classes, load_embedded_digits, train_val_split

OUT = Path(__file__).resolve().parents[1] / "server" / "ui" / "static"
COLUMNS = 40
TILE = 28
PAIRS = ((1, 8),)  # class subsets with a validation set of their own (the report's 2-D models)
SPLIT = {"val_fraction": 0.1, "seed": 0}  # aegen-train's defaults


def validation_indices(classes: tuple[int, ...] | None) -> np.ndarray:
    """Indices into the embedded digits of the validation split of a model trained on `classes`."""
    digits = load_embedded_digits()
    # aegen-train's own cut (filter_classes, then train_val_split), applied to the images' indices
    indexed = filter_classes(Dataset("digits", np.arange(len(digits.labels)), digits.labels, digits.class_names),
                             classes)
    return train_val_split(indexed, **SPLIT).val_images


def build() -> tuple[np.ndarray, dict]:
    """(sheet uint8 (rows·28, columns·28), description) — the sheet's tiles and each set's tile numbers."""
    digits = load_embedded_digits()
    sets = {"all": validation_indices(None)}
    sets.update({",".join(map(str, pair)): validation_indices(pair) for pair in PAIRS})
    order: list[int] = []  # tile → index into the embedded digits
    for indices in sets.values():
        seen = set(order)
        order += [int(i) for i in indices if int(i) not in seen]
    tile_of = {image: tile for tile, image in enumerate(order)}
    rows = -(-len(order) // COLUMNS)
    sheet = np.zeros((rows * TILE, COLUMNS * TILE), np.uint8)
    for tile, image in enumerate(order):
        r, c = divmod(tile, COLUMNS)
        sheet[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = digits.images[image]
    description = {
        "tile": TILE, "columns": COLUMNS, "count": len(order),
        "labels": [int(digits.labels[i]) for i in order],
        "sets": {name: [tile_of[int(i)] for i in indices] for name, indices in sets.items()},
        "source": "validation splits of training/assets/mnist_digits.npz (train_val_split, 0.1, seed 0), "
                  "written by python -m training.explorer_digits",
    }
    return sheet, description


def png_bytes(gray: np.ndarray) -> bytes:
    """A greyscale 8-bit PNG, no metadata (the same pixels give the same bytes)."""
    height, width = gray.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + gray[y].tobytes() for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write(out: Path = OUT) -> tuple[Path, Path]:
    sheet, description = build()
    png, meta = out / "digits.png", out / "digits.json"
    atomic_write_bytes(png, png_bytes(sheet))
    atomic_write_bytes(meta, (json.dumps(description, separators=(",", ":")) + "\n").encode())
    return png, meta


def main() -> int:
    png, meta = write()
    print(f"wrote {png} ({png.stat().st_size} bytes) and {meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

