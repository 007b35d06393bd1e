"""Sample grids as PNGs: the picture a person looks at to judge generated digits.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global state).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from protos.atomic import atomic_write_bytes


class GridError(ValueError):
    """Images of an unusable shape or type, or labels that do not match the images."""


def _as_unit_images(images: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) or (N, H, W), uint8 or float in [0, 1] → float (N, H, W) in [0, 1]."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or len(images) == 0:
        raise GridError(f"expected images of shape (N, 1, H, W) or (N, H, W) with N ≥ 1, got {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise GridError(f"expected uint8 or float images, got {images.dtype}")
    return np.clip(images.astype(np.float32), 0.0, 1.0)


def save_grid(
    images: np.ndarray,
    path: str | Path,
    nrow: int = 8,
    labels: list[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write `images` as a grid with `nrow` images per row (white digits on black, as in MNIST).

    `labels`, one per image, are printed above each image (e.g. the classifier's verdict).
    The PNG is written atomically: a viewer never sees half a file.
    """
    pixels = _as_unit_images(images)
    if labels is not None and len(labels) != len(pixels):
        raise GridError(f"{len(labels)} labels for {len(pixels)} images")
    if nrow < 1:
        raise GridError(f"nrow must be ≥ 1, got {nrow}")
    cols = min(nrow, len(pixels))
    rows = math.ceil(len(pixels) / cols)
    cell_h = 0.9 if labels is None else 1.1  # inches per row; a label needs a little more height
    title_h = 0.4 if title else 0.0
    height = rows * cell_h + title_h
    fig = Figure(figsize=(cols * 0.9, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    # Fixed margins instead of tight_layout: the title gets its own band above the images.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1.0 - (title_h + 0.05) / height,
                        wspace=0.06, hspace=0.3 if labels is not None else 0.06)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(pixels):
            continue
        ax.imshow(pixels[i], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        if labels is not None:
            ax.set_title(labels[i], fontsize=7, pad=2)
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 - 0.08 / height, va="top")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
