"""Your own images: `aegen-train --data` reads a folder of PNG/JPEG files or an .npz/.npy array."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import checkpoint as ckpt
from training.data import DataError, load_dataset, load_embedded_digits, load_images
from training.train import main


@pytest.fixture(scope="module")
def real() -> tuple[np.ndarray, np.ndarray]:
    ds = load_embedded_digits()
    keep = np.concatenate([np.flatnonzero(ds.labels == 1)[:30], np.flatnonzero(ds.labels == 8)[:30]])
    keep = np.random.default_rng(0).permutation(keep)
    return ds.images[keep], ds.labels[keep]


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Digits as PNG in `<label>/` sub-folders; every third one as a 56×56 RGB JPEG, to be converted back."""
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        if i % 3 == 0:
            Image.fromarray(image).resize((56, 56)).convert("RGB").save(folder / f"{i:03d}.JPG", quality=95)
        else:
            Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def test_a_folder_of_class_sub_folders_gives_greyscale_28x28_images_labelled_by_folder(
        tmp_path: Path, real: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = real
    ds = load_images(write_folder(tmp_path / "digits", images, labels))
    assert ds.images.shape == (60, 28, 28) and ds.images.dtype == np.uint8
    assert sorted(ds.labels.tolist()) == sorted(labels.tolist())
    assert ds.class_names[1] == "1" and ds.class_names[8] == "8"  # numeric folder names keep their number
    order = sorted(range(60), key=lambda i: (int(labels[i]), f"{i:03d}"))
    png = [j for j, i in enumerate(order) if i % 3]
    jpeg = [j for j, i in enumerate(order) if i % 3 == 0]
    expected = images[order].astype(np.int16)
    assert np.array_equal(ds.images[png], expected[png].astype(np.uint8))  # PNG: lossless
    assert np.abs(ds.images[jpeg].astype(np.int16) - expected[jpeg]).mean() < 6  # JPEG, resized twice


def test_named_sub_folders_are_numbered_in_sorted_order_and_a_flat_folder_has_one_class(
        tmp_path: Path, real: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = real
    for name, image in (("zebra", images[0]), ("apple", images[1]), ("apple", images[2])):
        (tmp_path / "named" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "named" / name / f"{int(image.sum())}.png")
    ds = load_images(tmp_path / "named")
    assert ds.class_names == ("apple", "zebra") and ds.labels.tolist() == [0, 0, 1]
    (tmp_path / "flat").mkdir()
    for i in range(3):
        Image.fromarray(images[i]).save(tmp_path / "flat" / f"{i}.png")
    flat = load_dataset("images", tmp_path / "flat")
    assert flat.labels.tolist() == [0, 0, 0] and np.array_equal(flat.images, images[:3])


def test_npz_and_npy_arrays_load_with_or_without_labels(tmp_path: Path, real: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = real
    np.savez_compressed(tmp_path / "d.npz", images=images, labels=labels)
    ds = load_images(tmp_path / "d.npz")
    assert np.array_equal(ds.images, images) and np.array_equal(ds.labels, labels)
    np.save(tmp_path / "d.npy", images[:, None].astype(np.float32) / 255.0)  # (N, 1, 28, 28) floats
    ds = load_images(tmp_path / "d.npy")
    assert np.array_equal(ds.images, images) and set(ds.labels.tolist()) == {0}


@pytest.mark.parametrize("make, message", [
    (lambda d: np.save(d / "x.npy", np.zeros((5, 32, 32), np.uint8)), "shape (5, 32, 32), expected (N, 28, 28)"),
    (lambda d: np.save(d / "x.npy", np.full((2, 28, 28), 3.0)), "float images must hold finite values in [0, 1]"),
    (lambda d: np.save(d / "x.npy", np.zeros((2, 28, 28), np.int32)), "int32, expected uint8"),
    (lambda d: np.savez(d / "x.npz", images=np.zeros((4, 28, 28), np.uint8), labels=np.zeros(3, np.int64)),
     "labels have shape (3,), expected (4,)"),
    (lambda d: np.savez(d / "x.npz", a=np.zeros((4, 28, 28)), b=np.zeros(4)), "expected an array named 'images'"),
    (lambda d: (d / "x.npy").write_bytes(b"not numpy at all"), "not a readable .npy array file"),
    (lambda d: (d / "x.npz").write_bytes(b"PK\x03\x04 truncated"), "not a readable .npz array file"),
    (lambda d: np.save(d / "x.npy", np.array([{"a": 1}], dtype=object)), "not a readable .npy array file"),
])
def test_unreadable_or_misshapen_arrays_are_refused_naming_the_file(tmp_path: Path, make, message: str) -> None:
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(DataError, match="^" + str(path).replace(".", r"\.")) as caught:
        load_images(path)
    assert message in str(caught.value)


def test_pickled_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    np.save(tmp_path / "evil.npy", np.array([Boom()], dtype=object), allow_pickle=True)
    with pytest.raises(DataError):
        load_images(tmp_path / "evil.npy")
    assert not marker.exists()
    assert pickle  # the module that would have run it is there; np.load(allow_pickle=False) refused it


def test_broken_images_and_odd_folders_are_refused_naming_the_file(tmp_path: Path,
                                                                  real: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = real
    (tmp_path / "bad" / "3").mkdir(parents=True)
    Image.fromarray(images[0]).save(tmp_path / "bad" / "3" / "ok.png")
    (tmp_path / "bad" / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"broken\.png: not a readable PNG/JPEG image"):
        load_images(tmp_path / "bad")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG/JPEG images"):
        load_images(tmp_path / "empty")
    (tmp_path / "mixed" / "1").mkdir(parents=True)
    Image.fromarray(images[0]).save(tmp_path / "mixed" / "top.png")
    Image.fromarray(images[1]).save(tmp_path / "mixed" / "1" / "a.png")
    with pytest.raises(DataError, match="both at its top level and in sub-folders"):
        load_images(tmp_path / "mixed")
    with pytest.raises(DataError, match="missing"):
        load_images(tmp_path / "nowhere.npz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="expected a folder of PNG/JPEG images or an .npz/.npy file"):
        load_images(tmp_path / "notes.txt")


def test_aegen_train_data_trains_on_a_folder_and_records_where_it_came_from(
        tmp_path: Path, real: tuple[np.ndarray, np.ndarray]) -> None:
    folder = write_folder(tmp_path / "mine", *real)
    out = tmp_path / "run"
    assert run_cli(["--data", str(folder), "--kind", "ae", "--latent-dim", "2", "--hidden-dim", "16",
                    "--epochs", "1", "--batch-size", "20", "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    config = ckpt.read_config(out)
    assert config.dataset == "images" and config.data_dir == str(folder)
    assert config.augment is False  # your own images are not augmented unless --augment says so
    assert np.isfinite(config.metrics["val_reconstruction"])


def test_aegen_train_data_with_a_bad_file_is_one_line_and_exit_2(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((3, 20, 20), np.uint8))
    code = run_cli(["--data", str(tmp_path / "wrong.npy"), "--epochs", "1", "--no-progress",
                    "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("aegen-train: error: ") and "wrong.npy: images have shape (3, 20, 20)" in err
    assert not (tmp_path / "run" / ckpt.CONFIG_FILE).exists()
