"""The explorer's static files: the held-out digits are what training.explorer_digits builds from the data
set, and every file under server/ui/static ships in the package (pyproject's package-data)."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path

import numpy as np
from PIL import Image

from server.ui import STATIC
from training import explorer_digits

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_digits_are_the_validation_splits_they_claim_to_be():
    sheet, description = explorer_digits.build()
    shipped = json.loads((STATIC / "digits.json").read_text())
    assert shipped == description
    np.testing.assert_array_equal(np.asarray(Image.open(STATIC / "digits.png")), sheet)
    from training.data import filter_classes, load_embedded_digits, train_val_split

    split = train_val_split(filter_classes(load_embedded_digits(), (1, 8)), 0.1, seed=0)
    tiles = shipped["sets"]["1,8"]
    side = shipped["tile"]
    first = tiles[0]
    r, c = divmod(first, shipped["columns"])
    np.testing.assert_array_equal(sheet[r * side:(r + 1) * side, c * side:(c + 1) * side], split.val_images[0])
    assert [shipped["labels"][t] for t in tiles] == split.val_labels.tolist()
    assert len(shipped["sets"]["all"]) == 1000


def test_every_static_file_is_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["server"]
    files = [p.relative_to(STATIC.parents[1]).as_posix() for p in STATIC.rglob("*") if p.is_file()]
    assert "ui/static/js/app.js" in files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert missing == []
