"""Shared fixtures for the dataset-format tests: the hand-made annotation files under fixtures/, tiny images
made on the fly where a reader must read an image's size, and RefCOCO's pickle written from JSON."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"


def make_image(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (120, 30, 200)).save(path)
    return path


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[[str, object], Path]:
    """Write a (malformed) annotation file into the test's folder and return its path."""

    def write(name: str, data: object) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
        return path

    return write


@pytest.fixture
def refcoco_dir(tmp_path: Path) -> Path:
    """A refcoco/ folder as the refer toolkit ships it: refs(unc).p (protocol 2, as Python 2 wrote it)
    and instances.json; image 25 has no size in instances.json, so its file exists to be measured."""
    folder = tmp_path / "refcoco"
    folder.mkdir()
    shutil.copy(FIXTURES / "refcoco" / "instances.json", folder / "instances.json")
    refs = json.loads((FIXTURES / "refcoco" / "refs_unc.json").read_text())
    with (folder / "refs(unc).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)
    return folder


@pytest.fixture
def coco_images(tmp_path: Path) -> Path:
    root = tmp_path / "train2014"
    make_image(root / "COCO_train2014_000000000025.jpg", 200, 100)
    return root
