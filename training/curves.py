"""Training curves: the loss terms of every epoch, training and validation, as one PNG beside the checkpoint.

Reads the `history` rows aegen-train keeps in config.json, so a checkpoint's curves can be redrawn at any
time (`plot_curves(read_config(dir).history, dir / "curves.png")`). matplotlib's object API on the Agg
canvas, as training/grid.py: no pyplot, no display.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from protos.atomic import atomic_write_bytes

CURVES_FILE = "curves.png"

# (panel title, [(history key, legend label, sign)]): −ELBO is drawn so that every curve goes down.
PANELS = (
    ("reconstruction (nats/image)", [("train_reconstruction", "train", 1), ("val_reconstruction", "validation", 1)]),
    ("KL (nats/image)", [("train_kl", "train", 1), ("val_kl", "validation", 1)]),
    ("objective", [("train_loss", "train L + λ·KL", 1), ("val_elbo", "validation −ELBO", -1)]),
)


def plot_curves(history: list[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Draw the per-epoch loss terms in `history` to `path` (written atomically); returns the path.

    Panels whose terms are absent from the history (an AE has no KL) are left out."""
    panels = [(name, [(k, label, sign) for k, label, sign in curves if any(k in row for row in history)])
              for name, curves in PANELS]
    panels = [(name, curves) for name, curves in panels if curves and any(history)]
    if not panels:
        raise ValueError("no loss terms in the training history to plot")
    figure = Figure(figsize=(4.0 * len(panels), 3.2), dpi=100)
    FigureCanvasAgg(figure)
    for index, (name, curves) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for key, label, sign in curves:
            points = [(row["epoch"], sign * row[key]) for row in history if key in row]
            axes.plot([e for e, _ in points], [v for _, v in points], marker="." if len(points) < 40 else None,
                      label=label)
        axes.set_title(name, fontsize=10)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
