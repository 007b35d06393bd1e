"""Data sets of 28×28 grey images: the embedded MNIST digits, IDX directories (MNIST, Fashion-MNIST), and
your own images (`images`): a folder of PNG/JPEG files or an .npz/.npy array.

Images are kept as uint8 (N, 28, 28) until the last moment; `to_unit_float` gives the float32
(N, 1, 28, 28) tensors in [0, 1] that the models take.
"""

from __future__ import annotations

import gzip
import math
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

EMBEDDED_DIGITS = "mnist_digits.npz"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("digits", "mnist", "fashion-mnist", "images")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npz", ".npy")
PARTS = {"train": "train", "test": "t10k"}  # part → IDX file prefix
IMAGE_SIDE = 28
IDX_UBYTE = 0x08  # the IDX type code for unsigned bytes, the only one MNIST-style data sets use
GZIP_MAGIC = b"\x1f\x8b"
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
    asset = resources.files("training").joinpath("assets", EMBEDDED_DIGITS)
    with asset.open("rb") as f, np.load(f, allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    return Dataset("digits", images, labels, DIGIT_NAMES)


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped if it starts with the gzip magic (so `.gz` or not, both work)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: truncated or corrupt gzip data ({exc})") from None


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with `ndim` dimensions (gzip or raw).

    IDX: two zero bytes, a type byte (0x08 = uint8), the number of dimensions, each dimension as a
    big-endian uint32, then the data in row-major order. Anything else, or a data size that does not
    match the header, is a DataError: a short file must never become a silently smaller array.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0:2] != b"\x00\x00":
        raise DataError(f"{path}: not an IDX file (expected magic 00 00 08 {ndim:02x}, got {data[:4].hex(' ')})")
    if data[2] != IDX_UBYTE:
        raise DataError(f"{path}: IDX type code 0x{data[2]:02x}, expected 0x08 (unsigned bytes)")
    if data[3] != ndim:
        raise DataError(f"{path}: {data[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header ({len(data)} bytes, expected at least {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape)
    if len(data) - header != expected:
        raise DataError(
            f"{path}: {len(data) - header} bytes of data, expected {expected} for shape {shape}"
            + (" (truncated)" if len(data) - header < expected else " (trailing bytes)")
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _idx_file(directory: Path, prefix: str, what: str, ndim: int) -> Path:
    """`train-images-idx3-ubyte`, with or without `.gz`: the standard names MNIST is distributed under."""
    stem = f"{prefix}-{what}-idx{ndim}-ubyte"
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory / stem}[.gz]: missing (expected the standard IDX file names)")


def load_idx_dataset(name: str, directory: str | Path, part: str = "train") -> Dataset:
    """An MNIST-style directory: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."""
    if part not in PARTS:
        raise DataError(f"unknown part {part!r}; expected one of {', '.join(PARTS)}")
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such data directory for {name}")
    images_path = _idx_file(directory, PARTS[part], "images", 3)
    labels_path = _idx_file(directory, PARTS[part], "labels", 1)
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{images_path}: images are {images.shape[1]}×{images.shape[2]}, "
                        f"expected {IMAGE_SIDE}×{IMAGE_SIDE}")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels, expected {len(images)} "
                        f"(the number of images in {images_path.name})")
    names = FASHION_NAMES if name == "fashion-mnist" else DIGIT_NAMES
    if len(labels) and int(labels.max()) >= len(names):
        raise DataError(f"{labels_path}: label {int(labels.max())} out of range, expected 0..{len(names) - 1}")
    return Dataset(name, images, labels, names)


def _labels_from_folders(names: list[str]) -> tuple[dict[str, int], tuple[str, ...]]:
    """Sub-folder names → labels: `0`…`9`-style integer names keep their number (so a folder of digits gets
    the digit classifier's labels), any other names are numbered in sorted order."""
    if all(name.isdigit() and int(name) < 256 for name in names):
        top = max(int(name) for name in names)
        return {name: int(name) for name in names}, tuple(str(i) for i in range(top + 1))
    ordered = sorted(names)
    if len(ordered) > 256:
        raise DataError(f"{len(ordered)} sub-folders (classes), at most 256 are supported")
    return {name: i for i, name in enumerate(ordered)}, tuple(ordered)


def _read_image(path: Path) -> np.ndarray:
    """One PNG/JPEG file as uint8 (28, 28): converted to greyscale, resized if it is not 28×28."""
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib; only this reader needs it

    try:
        with Image.open(path) as image:
            grey = image.convert("L")
            if grey.size != (IMAGE_SIDE, IMAGE_SIDE):
                grey = grey.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.LANCZOS)
            return np.asarray(grey, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable PNG/JPEG image ({exc})") from None


def load_image_folder(directory: str | Path) -> Dataset:
    """Every .png/.jpg/.jpeg file in `directory`, or in its sub-folders (one per class, the folder name
    the label); not both. Files are read in sorted order, so the same folder gives the same data set."""
    directory = Path(directory)
    top = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    nested = {f.name: sorted(p for p in f.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
              for f in folders}
    nested = {name: files for name, files in nested.items() if files}
    if top and nested:
        raise DataError(f"{directory}: has images both at its top level and in sub-folders "
                        f"({', '.join(sorted(nested))}); put every image in a class sub-folder, or none")
    if not top and not nested:
        raise DataError(f"{directory}: no PNG/JPEG images ({', '.join(IMAGE_SUFFIXES)}) in it or its sub-folders")
    if top:
        paths, labels, names = top, [0] * len(top), ("images",)
    else:
        index, names = _labels_from_folders(list(nested))
        paths = [p for name in nested for p in nested[name]]
        labels = [index[name] for name in nested for _ in nested[name]]
    images = np.stack([_read_image(p) for p in paths])
    return Dataset("images", images, np.asarray(labels, dtype=np.uint8), names)


def _as_uint8_images(array: np.ndarray, source: str) -> np.ndarray:
    """(N, 28, 28) or (N, 1, 28, 28), uint8 or float in [0, 1] → uint8 (N, 28, 28)."""
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE) or len(array) == 0:
        raise DataError(f"{source}: images have shape {array.shape}, expected (N, {IMAGE_SIDE}, {IMAGE_SIDE}) "
                        f"or (N, 1, {IMAGE_SIDE}, {IMAGE_SIDE}) with N ≥ 1")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
            raise DataError(f"{source}: float images must hold finite values in [0, 1]")
        return np.rint(array * 255).astype(np.uint8)
    raise DataError(f"{source}: images are {array.dtype}, expected uint8 or float in [0, 1]")


def load_image_array(path: str | Path) -> Dataset:
    """An .npy of images, or an .npz with `images` (or its only array) and optionally `labels`."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)  # never unpickle: an object array is refused
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable {path.suffix} array file ({exc})") from None
    labels = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.files)
            key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DataError(f"{path}: expected an array named 'images' (and optionally 'labels'), got {keys}")
            try:
                images = loaded[key]
                labels = loaded["labels"] if "labels" in keys else None
            except (ValueError, OSError, zipfile.BadZipFile, zlib.error) as exc:
                raise DataError(f"{path}: cannot read its arrays ({exc})") from None
    else:
        images = loaded
    images = _as_uint8_images(images, str(path))
    if labels is None:
        return Dataset("images", images, np.zeros(len(images), dtype=np.uint8), ("images",))
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{path}: labels have shape {labels.shape}, expected ({len(images)},) "
                        f"(one per image)")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 255:
        raise DataError(f"{path}: labels must be integers in 0..255, got {labels.dtype} "
                        f"in {labels.min()}..{labels.max()}")
    return Dataset("images", images, labels.astype(np.uint8), tuple(str(i) for i in range(int(labels.max()) + 1)))


def load_images(path: str | Path) -> Dataset:
    """Your own images: a folder of PNG/JPEG files, or an .npz/.npy array file."""
    path = Path(path)
    if path.is_dir():
        return load_image_folder(path)
    if path.suffix.lower() in ARRAY_SUFFIXES:
        return load_image_array(path)
    if not path.exists():
        raise DataError(f"{path}: missing (expected a folder of PNG/JPEG images or an .npz/.npy file)")
    raise DataError(f"{path}: expected a folder of PNG/JPEG images or an .npz/.npy file")


def default_data_dir(name: str) -> Path | None:
    return FASHION_MNIST_DIR if name == "fashion-mnist" else None


def load_dataset(name: str = "digits", data_dir: str | Path | None = None, part: str = "train") -> Dataset:
    """Load a data set by name. `part` is "train" or "test" for IDX data sets; the embedded digits
    have a single part and ignore it. Raises DataError naming the file and what was expected."""
    if name == "digits":
        return load_embedded_digits()
    if name == "images":
        if data_dir is None:
            raise DataError("the images data set needs a path: a folder of PNG/JPEG images or an .npz/.npy file")
        return load_images(data_dir)
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    directory = data_dir if data_dir is not None else default_data_dir(name)
    if directory is None:
        raise DataError(f"{name} has no default directory: pass --data-dir with the IDX files "
                        f"(train-images-idx3-ubyte.gz, ...)")
    return load_idx_dataset(name, directory, part)


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
    n_val = max(1, round(len(order) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    labels = ds.labels.astype(np.int64)
    return Split(ds.images[train], labels[train], ds.images[val], labels[val])


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) → float32 (N, 1, 28, 28) in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[:, None, :, :]
