"""The data sets: IDX directories (good and corrupt), Fashion-MNIST, class filtering and the split.

IDX files are written here byte by byte from the IDX specification (not with our reader's code), from
real embedded digits, so the reader is checked against the format rather than against itself.
"""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.data import (
    FASHION_MNIST_DIR,
    DataError,
    filter_classes,
    load_dataset,
    read_idx,
    train_val_split,
)
from training.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """IDX: 0x00 0x00, type, number of dimensions, each dimension as a big-endian uint32, the data."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    data = idx_bytes(array.astype(np.uint8))
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def idx_dir(tmp_path: Path, digits) -> Path:
    """An MNIST-style directory: gzipped train files, raw t10k files, from 600 + 200 real digits."""
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", digits.images[:600], compress=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", digits.labels[:600], compress=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", digits.images[600:800], compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", digits.labels[600:800], compress=False)
    return tmp_path


def test_idx_directory_gives_back_the_images_and_labels_written_gzipped(idx_dir: Path, digits) -> None:
    ds = load_dataset("mnist", idx_dir, part="train")
    assert ds.images.shape == (600, 28, 28) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images, digits.images[:600])
    np.testing.assert_array_equal(ds.labels, digits.labels[:600])


def test_idx_directory_reads_raw_test_part(idx_dir: Path, digits) -> None:
    ds = load_dataset("mnist", idx_dir, part="test")
    np.testing.assert_array_equal(ds.images, digits.images[600:800])
    np.testing.assert_array_equal(ds.labels, digits.labels[600:800])


def test_missing_labels_file_is_named(idx_dir: Path) -> None:
    (idx_dir / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.*missing"):
        load_dataset("mnist", idx_dir)


def test_truncated_raw_images_are_refused_not_shortened(idx_dir: Path) -> None:
    path = idx_dir / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: 156700 bytes of data, expected 156800.*truncated"):
        load_dataset("mnist", idx_dir, part="test")


def test_truncated_gzip_is_refused(idx_dir: Path) -> None:
    path = idx_dir / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: truncated or corrupt gzip"):
        load_dataset("mnist", idx_dir)


def test_trailing_bytes_are_refused(tmp_path: Path, digits) -> None:
    path = tmp_path / "extra"
    path.write_bytes(idx_bytes(digits.labels[:10]) + b"\x00")
    with pytest.raises(DataError, match="11 bytes of data, expected 10.*trailing"):
        read_idx(path, ndim=1)


def test_wrong_magic_is_refused(idx_dir: Path) -> None:
    path = idx_dir / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"PK\x03\x04" + path.read_bytes()[4:])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: not an IDX file"):
        load_dataset("mnist", idx_dir, part="test")


def test_non_byte_type_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "floats"
    path.write_bytes(idx_bytes(np.zeros((2, 28, 28), np.float32), type_code=0x0D))
    with pytest.raises(DataError, match="type code 0x0d, expected 0x08"):
        read_idx(path, ndim=3)


def test_labels_file_in_place_of_images_is_refused(idx_dir: Path, digits) -> None:
    write_idx(idx_dir / "t10k-images-idx3-ubyte", digits.labels[:200], compress=False)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: 1 dimensions, expected 3"):
        load_dataset("mnist", idx_dir, part="test")


def test_images_of_another_size_are_refused(idx_dir: Path) -> None:
    write_idx(idx_dir / "t10k-images-idx3-ubyte", np.zeros((200, 32, 32), np.uint8), compress=False)
    with pytest.raises(DataError, match="images are 32×32, expected 28×28"):
        load_dataset("mnist", idx_dir, part="test")


def test_label_count_mismatch_names_both_files(idx_dir: Path, digits) -> None:
    write_idx(idx_dir / "t10k-labels-idx1-ubyte", digits.labels[:199], compress=False)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: 199 labels, expected 200.*t10k-images-idx3-ubyte"):
        load_dataset("mnist", idx_dir, part="test")


def test_out_of_range_label_is_refused(idx_dir: Path) -> None:
    write_idx(idx_dir / "t10k-labels-idx1-ubyte", np.full(200, 10, np.uint8), compress=False)
    with pytest.raises(DataError, match="label 10 out of range"):
        load_dataset("mnist", idx_dir, part="test")


def test_mnist_without_a_directory_says_to_pass_data_dir() -> None:
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("mnist")


def test_cli_reports_a_truncated_file_in_one_line_with_exit_code_2(idx_dir: Path, tmp_path: Path) -> None:
    path = idx_dir / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-500])
    out = tmp_path / "never-written"
    result = subprocess.run(
        [sys.executable, "-m", "training.train", "--dataset", "mnist", "--data-dir", str(idx_dir),
         "--out", str(out), "--epochs", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aegen-train: error: ") and "train-images-idx3-ubyte.gz" in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("corrupt", ["missing", "count"])
def test_cli_leaves_an_existing_checkpoint_untouched_when_data_is_bad(
    corrupt: str, idx_dir: Path, vae_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "ckpt"
    out.mkdir()
    for f in vae_checkpoint.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    if corrupt == "missing":
        (idx_dir / "train-images-idx3-ubyte.gz").unlink()
    else:
        write_idx(idx_dir / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8), compress=True)
    # --overwrite: even a run allowed to replace the checkpoint must not touch it before its data is good.
    rc = train_main(["--dataset", "mnist", "--data-dir", str(idx_dir), "--out", str(out), "--epochs", "1",
                     "--latent-dim", "8", "--hidden-dim", "64", "--no-progress", "--overwrite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "train-" in err[0]
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_cli_trains_from_an_idx_directory(idx_dir: Path, tmp_path: Path) -> None:
    from training.checkpoint import read_config

    out = tmp_path / "mnist-ae"
    rc = train_main(["--dataset", "mnist", "--data-dir", str(idx_dir), "--kind", "ae", "--latent-dim", "4",
                     "--hidden-dim", "32", "--epochs", "1", "--out", str(out), "--no-progress", "--threads", "1"])
    assert rc == 0
    config = read_config(out)
    assert config.dataset == "mnist" and config.epochs == 1 and config.metrics["val_reconstruction"] > 0


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_loads_with_standard_shapes() -> None:
    train = load_dataset("fashion-mnist", part="train")
    test = load_dataset("fashion-mnist", part="test")
    assert train.images.shape == (60000, 28, 28) and train.labels.shape == (60000,)
    assert test.images.shape == (10000, 28, 28) and test.labels.shape == (10000,)
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class.
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.class_names[9] == "Ankle boot"
    assert 0 < train.images.mean() < 255


def test_embedded_digits_have_the_documented_class_counts(digits) -> None:
    assert digits.images.shape == (10000, 28, 28)
    assert np.bincount(digits.labels).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


def test_class_filter_keeps_only_those_classes(digits) -> None:
    ones_and_eights = filter_classes(digits, (1, 8))
    assert set(np.unique(ones_and_eights.labels)) == {1, 8}
    assert len(ones_and_eights.labels) == 1127 + 944
    with pytest.raises(DataError, match="classes \\[12\\] do not exist"):
        filter_classes(digits, (1, 12))


def test_split_is_deterministic_disjoint_and_complete(digits) -> None:
    a = train_val_split(digits, 0.1, seed=3)
    b = train_val_split(digits, 0.1, seed=3)
    c = train_val_split(digits, 0.1, seed=4)
    np.testing.assert_array_equal(a.val_images, b.val_images)
    assert not np.array_equal(a.val_images, c.val_images)
    assert len(a.val_labels) == 1000 and len(a.train_labels) == 9000
    # Every image lands in exactly one part: compare the multisets of (label, pixel sum) fingerprints.
    fingerprint = lambda imgs, labels: sorted(zip(labels.tolist(), imgs.reshape(len(imgs), -1).sum(1).tolist()))
    both = fingerprint(np.concatenate([a.train_images, a.val_images]), np.concatenate([a.train_labels, a.val_labels]))
    assert both == fingerprint(digits.images, digits.labels.astype(np.int64))
