"""A synthetic expression data set: cartoon faces whose brows, eyes and mouth encode the
seven FER2013 classes, with random position, scale, rotation, brightness and noise.

It is the embedded default behind ``ftkit demo`` and ``ftkit data synth``: small enough to
train on in minutes on a CPU, varied enough that a model has to learn the features.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .io import new_folder

FER_CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
_DRAW = 256  # drawing resolution; images are downsampled for smooth edges

# Per class: brow tilt (inner end up > 0), brow height, eye shape, mouth shape.
_FACES = {
    "angry": dict(brow_tilt=-14, brow_lift=0, eyes="narrow", mouth="tight"),
    "disgust": dict(brow_tilt=-6, brow_lift=0, eyes="squint", mouth="sneer"),
    "fear": dict(brow_tilt=10, brow_lift=10, eyes="wide", mouth="grimace"),
    "happy": dict(brow_tilt=0, brow_lift=2, eyes="smile", mouth="smile"),
    "neutral": dict(brow_tilt=0, brow_lift=0, eyes="dot", mouth="flat"),
    "sad": dict(brow_tilt=14, brow_lift=2, eyes="dot", mouth="frown"),
    "surprise": dict(brow_tilt=0, brow_lift=18, eyes="wide", mouth="open"),
}


def _brows(img, cx, cy, tilt, lift, ink):
    for side in (-1, 1):
        inner = (cx + side * 14, cy - 42 - lift - tilt)
        outer = (cx + side * 50, cy - 42 - lift + tilt // 2)
        cv2.line(img, inner, outer, ink, 7, cv2.LINE_AA)


def _eyes(img, cx, cy, shape, ink, rng):
    for side in (-1, 1):
        centre = (cx + side * 32, cy - 18)
        if shape == "wide":
            cv2.circle(img, centre, 15, ink, 4, cv2.LINE_AA)
            cv2.circle(img, centre, 5, ink, -1, cv2.LINE_AA)
        elif shape == "narrow":
            cv2.ellipse(img, centre, (15, 4), 0, 0, 360, ink, -1, cv2.LINE_AA)
        elif shape == "smile":
            cv2.ellipse(img, (centre[0], centre[1] + 5), (14, 10), 0, 180, 360, ink, 5, cv2.LINE_AA)
        elif shape == "squint" and side == 1:
            cv2.line(img, (centre[0] - 14, centre[1]), (centre[0] + 14, centre[1] - 4), ink, 5, cv2.LINE_AA)
        else:
            cv2.circle(img, centre, 8 + int(rng.integers(0, 3)), ink, -1, cv2.LINE_AA)


def _mouth(img, cx, cy, shape, ink):
    my = cy + 45
    if shape == "smile":
        cv2.ellipse(img, (cx, my - 12), (40, 24), 0, 10, 170, ink, 7, cv2.LINE_AA)
    elif shape == "frown":
        cv2.ellipse(img, (cx, my + 16), (36, 20), 0, 195, 345, ink, 7, cv2.LINE_AA)
    elif shape == "open":
        cv2.ellipse(img, (cx, my + 2), (18, 26), 0, 0, 360, ink, -1, cv2.LINE_AA)
    elif shape == "grimace":
        cv2.rectangle(img, (cx - 36, my - 10), (cx + 36, my + 12), ink, 5, cv2.LINE_AA)
        cv2.line(img, (cx - 36, my + 1), (cx + 36, my + 1), ink, 3, cv2.LINE_AA)
    elif shape == "sneer":
        pts = np.array([[cx - 34, my + 8], [cx - 12, my], [cx + 8, my + 4], [cx + 34, my - 14]], np.int32)
        cv2.polylines(img, [pts], False, ink, 7, cv2.LINE_AA)
    elif shape == "tight":
        cv2.line(img, (cx - 28, my + 6), (cx + 28, my + 6), ink, 9, cv2.LINE_AA)
    else:
        cv2.line(img, (cx - 32, my), (cx + 32, my), ink, 6, cv2.LINE_AA)


def draw_face(label: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One randomised cartoon face of class ``label`` as an RGB uint8 (size, size, 3) array."""
    spec = _FACES[label]
    bg = int(rng.integers(20, 120))
    img = np.full((_DRAW, _DRAW, 3), bg, np.uint8)
    skin = tuple(int(v) for v in rng.integers(150, 235, size=3))
    ink = tuple(int(v) for v in rng.integers(0, 60, size=3))
    c = _DRAW // 2
    cv2.ellipse(img, (c, c), (84, 102), 0, 0, 360, skin, -1, cv2.LINE_AA)
    _brows(img, c, c, spec["brow_tilt"], spec["brow_lift"], ink)
    _eyes(img, c, c, spec["eyes"], ink, rng)
    _mouth(img, c, c, spec["mouth"], ink)
    scale = rng.uniform(0.65, 1.0)
    shift = rng.uniform(-0.12, 0.12, size=2) * _DRAW
    warp = cv2.getRotationMatrix2D((c, c), rng.uniform(-15, 15), scale)
    warp[:, 2] += shift
    img = cv2.warpAffine(img, warp, (_DRAW, _DRAW), borderMode=cv2.BORDER_CONSTANT, borderValue=(bg, bg, bg))
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    img = img * rng.uniform(0.6, 1.3) + rng.normal(0, rng.uniform(2, 12), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_synthetic(dest: str | Path, per_class: dict[str, int] | None = None, size: int = 64, seed: int = 0) -> Path:
    """Write DEST/{train,val,test}/<class>/NNNN.png; returns DEST.

    ``per_class`` maps split name to images per class (default 80/30/30; a split of 0 is not
    written). DEST must be new or empty; it appears only when complete (the set is written
    beside it and renamed), so an interrupted run never leaves a partial set to be reused.
    """
    per_class = per_class or {"train": 80, "val": 30, "test": 30}
    rng = np.random.default_rng(seed)
    with new_folder(dest, "folder for the synthetic set (a second set over the first would mix them)") as work:
        for split, n in per_class.items():
            if n == 0:
                continue  # no empty split folders: a loader would take them for a split without images
            for label in FER_CLASSES:
                folder = work / split / label
                folder.mkdir(parents=True)
                for i in range(n):
                    cv2.imwrite(str(folder / f"{split}_{i:04d}.png"), cv2.cvtColor(draw_face(label, rng, size), cv2.COLOR_RGB2BGR))
    return Path(dest)
