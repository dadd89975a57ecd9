"""Shared fixtures: tiny synthetic image folders in tmp_path and a tiny timm model.

No network, no GPU: every model is built with pretrained=False (or from a file made here).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("FTKIT_OFFLINE", "1")  # never reach for a model hub from the tests
os.environ["COLUMNS"] = "200"  # rich tables unwrapped, so tests can read whole names

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = "test_efficientnet"  # ~100k parameters, has group_matcher and get_classifier


def class_image(label: int, rng: np.random.Generator, size: int = 24) -> np.ndarray:
    """An RGB image whose class is easy to learn: a bright bar at a class-specific row."""
    img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    row = (label * size) // 4 + 2
    img[row:row + 3, :, :] = 230
    return img


def write_images(folder: Path, label: int, n: int, rng: np.random.Generator, fmt: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:03d}.{fmt}"
        Image.fromarray(class_image(label, rng)).save(path)
        paths.append(path)
    return paths


def write_split_folder(root: Path, sizes=(("train", 12), ("val", 4), ("test", 4)),
                       classes=("alpha", "beta", "gamma"), seed: int = 0) -> Path:
    """root/<split>/<class>/*.png with ``sizes`` images per class."""
    rng = np.random.default_rng(seed)
    for split, n in sizes:
        for label, c in enumerate(classes):
            write_images(root / split / c, label, n, rng)
    return root


@pytest.fixture
def classes() -> list[str]:
    return ["alpha", "beta", "gamma"]


@pytest.fixture
def split_folder(tmp_path, classes) -> Path:
    """DIR/train|val|test/<class>/*.png, 12/4/4 images per class."""
    return write_split_folder(tmp_path / "split_data", classes=classes)


@pytest.fixture
def flat_folder(tmp_path, classes) -> Path:
    """DIR/<class>/*.png, 20 images per class."""
    rng = np.random.default_rng(1)
    root = tmp_path / "flat_data"
    for label, c in enumerate(classes):
        write_images(root / c, label, 20, rng)
    return root


def tiny_config(data: Path, tmp_path: Path, **overrides):
    """A config that trains in a second or two on the CPU."""
    from ftkit.config import resolve

    settings = dict(
        data=str(data), backbone=TINY, pretrained=False, img_size=32, epochs=2, freeze_epochs=1,
        batch_size=8, lr=3e-3, workers=0, project=str(tmp_path / "runs"), augment="light",
    )
    settings.update(overrides)
    return resolve(None, **settings)


def interrupt_at_epoch(monkeypatch, epoch: int) -> None:
    """Make the training loop raise KeyboardInterrupt (a Ctrl-C) when epoch ``epoch`` begins."""
    import ftkit.train as train_mod

    real, calls = train_mod.train_one_epoch, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", interrupted)
