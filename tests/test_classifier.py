"""The shipped digit classifier: the judge of every sample metric must itself be measured."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from training.classifier import (
    INFO_FILE,
    NEGATIVES,
    NOT_A_DIGIT,
    WEIGHTS_FILE,
    ClassifierError,
    gaussian_blur,
    load_classifier,
    main,
    predict,
    read_info,
)
from training.data import load_dataset, to_unit_float, train_val_split


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


@pytest.fixture(scope="module")
def validation():
    """The held-out split aegen-train uses by default (seed 0, 10 %): never seen by the classifier."""
    split = train_val_split(load_dataset("digits"), 0.1, seed=0)
    return torch.from_numpy(to_unit_float(split.val_images)), split.val_labels


def test_shipped_classifier_reaches_98_percent_on_validation_digits(classifier, validation):
    images, labels = validation
    accuracy = (predict(classifier, images).labels == labels).mean()
    assert accuracy >= 0.98


def test_shipped_classifier_calls_held_out_real_digits_valid(classifier, validation):
    images, _ = validation
    assert predict(classifier, images).valid.mean() >= 0.95


def test_shipped_classifier_still_reads_blurred_real_digits(classifier, validation):
    """A smooth digit is still a digit: the reject class must not be a sharpness detector."""
    images, labels = validation
    pred = predict(classifier, gaussian_blur(images, torch.full((len(images),), 1.0)))
    assert (pred.labels == labels).mean() >= 0.95
    assert pred.valid.mean() >= 0.85


def test_shipped_classifier_rejects_fresh_negatives(classifier, validation):
    images, labels = validation
    g = torch.Generator().manual_seed(987_654)  # neither the training nor the recorded measurement seed
    valid = {}
    for kind, make in NEGATIVES.items():
        pred = predict(classifier, make(300, g, digits=images, labels=torch.from_numpy(labels)).clamp(0, 1))
        valid[kind] = pred.valid.mean()
        assert (pred.labels == NOT_A_DIGIT).mean() >= 0.8, kind
    assert np.mean(list(valid.values())) <= 0.05
    assert max(valid.values()) <= 0.1, valid  # near 50/50 blends are the hardest: some are one digit


def test_recorded_accuracy_is_what_the_weights_give(classifier, validation):
    images, labels = validation
    recorded = read_info().metrics
    assert recorded["val_accuracy"] == pytest.approx((predict(classifier, images).labels == labels).mean(), abs=1e-9)
    assert recorded["val_validity_real"] >= 0.95 and recorded["negative_validity"] <= 0.05


def test_shipped_weights_stay_small():
    size = Path(str(__import__("training").__path__[0]), "assets", WEIGHTS_FILE).stat().st_size
    assert size < 2_000_000


def test_corrupt_weights_are_a_clear_error(tmp_path: Path):
    assets = Path(str(__import__("training").__path__[0]), "assets")
    shutil.copy(assets / INFO_FILE, tmp_path / INFO_FILE)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"\x80\x04K\x01." + b"not safetensors")  # a pickle, in fact
    with pytest.raises(ClassifierError, match="not a valid safetensors file"):
        load_classifier(tmp_path)


def test_images_of_the_wrong_shape_are_refused(classifier):
    with pytest.raises(ClassifierError, match=r"\(N, 1, 28, 28\)"):
        predict(classifier, np.zeros((4, 28, 28), dtype=np.float32))


def test_cli_reads_aegen_threads_and_refuses_a_bad_value_in_one_line(monkeypatch, capsys, tmp_path: Path):
    monkeypatch.setenv("AEGEN_THREADS", "two")
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path / "c")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == "python -m training.classifier: error: argument --threads: invalid int value: 'two'\n"
    assert not (tmp_path / "c").exists()
