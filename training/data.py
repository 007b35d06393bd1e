"""Data sets of 28×28 grey images: the embedded MNIST digits, and IDX directories (MNIST, Fashion-MNIST).

Images are kept as uint8 (N, 28, 28) until the last moment; `to_unit_float` gives the float32
(N, 1, 28, 28) tensors in [0, 1] that the models take.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

EMBEDDED_DIGITS = "mnist_digits.npz"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("digits", "mnist", "fashion-mnist")
DIGIT_NAMES = tuple(str(d) for d in range(10))
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class DataError(Exception):
    """A data file is missing or malformed. The message names the file and what was expected."""


@dataclass(frozen=True)
class Dataset:
    name: str
    images: np.ndarray  # uint8 (N, 28, 28)
    labels: np.ndarray  # uint8 (N,)
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    """A deterministic train/validation split; images uint8 (N, 28, 28), labels int64."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray


def load_embedded_digits() -> Dataset:
    """The 10,000 real MNIST digits shipped in training/assets (see its README for provenance)."""
    with resources.files("training").joinpath("assets", EMBEDDED_DIGITS).open("rb") as f:
        with np.load(f, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
    return Dataset("digits", images, labels, DIGIT_NAMES)


def load_dataset(name: str = "digits", data_dir: str | Path | None = None, part: str = "train") -> Dataset:
    """Load a data set by name. `part` is "train" or "test" for IDX data sets; the embedded digits
    have a single part and ignore it. Raises DataError naming the file and what was expected."""
    if name == "digits":
        return load_embedded_digits()
    raise DataError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")


def filter_classes(ds: Dataset, classes: tuple[int, ...] | None) -> Dataset:
    if classes is None:
        return ds
    bad = [c for c in classes if not 0 <= c < len(ds.class_names)]
    if bad:
        raise DataError(f"classes {bad} do not exist in {ds.name} (0..{len(ds.class_names) - 1})")
    keep = np.isin(ds.labels, np.asarray(classes))
    return Dataset(ds.name, ds.images[keep], ds.labels[keep], ds.class_names)


def train_val_split(ds: Dataset, val_fraction: float = 0.1, seed: int = 0) -> Split:
    """Shuffle with a fixed seed, then cut: the same data, fraction and seed give the same split."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(ds.labels))
    n_val = max(1, int(round(len(order) * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    labels = ds.labels.astype(np.int64)
    return Split(ds.images[train], labels[train], ds.images[val], labels[val])


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) → float32 (N, 1, 28, 28) in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[:, None, :, :]
