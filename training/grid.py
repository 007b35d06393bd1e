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

from training.atomic import atomic_write_bytes


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
    cell = 0.9 if labels is None else 1.1
    fig = Figure(figsize=(cols * 0.9, rows * cell + (0.4 if title else 0.0)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(pixels):
            continue
        ax.imshow(pixels[i], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        if labels is not None:
            ax.set_title(labels[i], fontsize=7, pad=2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(pad=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
