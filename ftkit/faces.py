"""Faces: find them offline and crop them square with a margin, so the model sees the face
and not the whole frame.

The detector is OpenCV's Haar cascade (it ships inside ``opencv-python-headless<5``): the
frontal "default" cascade first, the "alt2" cascade as a fallback for the faces it misses.
It found more faces than MediaPipe's BlazeFace models on the frames of
``benchmarks/faces.py`` (BENCHMARKS.md), though at ~50x their CPU time per frame.
Detected boxes are cached on disk per file (path, size and mtime), so a second run does
not detect again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .config import MIN_FACE_MARGIN
from .errors import UsageError
from .images import DataError, image_files, read_image
from .io import holds_files, new_folder, refuse_inside, write_json


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h


@functools.lru_cache(maxsize=None)
def _cascade(name: str) -> cv2.CascadeClassifier:
    if not hasattr(cv2, "CascadeClassifier"):
        raise UsageError("this OpenCV has no CascadeClassifier (OpenCV 5); install opencv-python-headless<5")
    path = os.path.join(cv2.data.haarcascades, f"haarcascade_{name}.xml")
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise UsageError(f"cannot load the OpenCV cascade {path}")
    return cascade


def detect_faces(image: np.ndarray, min_size: float = 0.06) -> list[Box]:
    """Faces in an RGB image, largest first. ``min_size`` is the smallest face side as a
    fraction of the image's shorter side (small values find small faces, and more false ones).

    Detections far less certain than the surest one (cascade weight below a quarter of
    it) are dropped first, so that a large false detection does not win over a real face.
    """
    gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image)
    side = max(20, int(min(gray.shape) * min_size))
    for name in ("frontalface_default", "frontalface_alt2"):
        found, _, weights = _cascade(name).detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(side, side), outputRejectLevels=True)
        if len(found):
            weights = np.asarray(weights, dtype=float).ravel()
            sure = [Box(*map(int, b)) for b, w in zip(found, weights) if w >= 0.25 * weights.max()]
            return sorted(sure, key=lambda b: -b.area)
    return []


def square_crop(image: np.ndarray, box: Box, margin: float) -> np.ndarray:
    """The box grown by ``margin`` (a fraction of its side) on every side, squared around its
    centre; parts outside the image are filled by replicating the border. A negative margin
    (above -0.5) crops inside the box."""
    side = max(1, int(round(max(box.w, box.h) * (1 + 2 * margin))))
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    pad = max(0, -x0, -y0, x0 + side - image.shape[1], y0 + side - image.shape[0])
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    return np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side])


# Where OpenCV's frontal-face box puts the eyes: medians over the 257 faces of every third image
# of the posed taiwanese set (../shared/data) in which both eyes were found, no labels used.
# The eyes are 0.41 of the box's side apart, their midpoint at 0.40 of its height (quartiles
# 0.39-0.44 and 0.40-0.41).
EYE_SPAN, EYE_HEIGHT = 0.41, 0.40


def find_eyes(image: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray] | None:
    """The centres (x, y) of the image-left and image-right eye inside a face box, or None
    when the eye cascade does not find one eye in each half of the box's upper 60 %."""
    x0, y0 = max(box.x, 0), max(box.y, 0)
    roi = image[y0:box.y + int(box.h * 0.6), x0:box.x + box.w]  # only this part is made gray, once per face
    if roi.size == 0:
        return None
    if roi.ndim == 3:
        roi = cv2.cvtColor(roi, cv2.COLOR_RGB2GRAY)
    found = _cascade("eye").detectMultiScale(cv2.equalizeHist(roi), scaleFactor=1.05, minNeighbors=3,
                                             minSize=(max(8, box.w // 10),) * 2, maxSize=(box.w // 3,) * 2)
    centres = [np.array([x0 + x + w / 2, y0 + y + h / 2, w * h]) for x, y, w, h in found]
    middle = box.x + box.w / 2
    left = [c for c in centres if c[0] < middle]
    right = [c for c in centres if c[0] >= middle]
    if not left or not right:
        return None
    return max(left, key=lambda c: c[2])[:2], max(right, key=lambda c: c[2])[:2]


def aligned_crop(image: np.ndarray, box: Box, margin: float) -> np.ndarray:
    """Like ``square_crop``, but the face is first turned so that its eyes are level, and the
    square is placed and sized from the eyes (where the detector's box puts them on average),
    so that every face has its eyes at the same place. Falls back to ``square_crop`` when the
    eyes are not found, or when they are tilted more than 30 degrees or implausibly far apart."""
    eyes = find_eyes(image, box)
    if eyes is None:
        return square_crop(image, box, margin)
    left, right = eyes
    dx, dy = right - left
    span = float(np.hypot(dx, dy))
    if abs(np.degrees(np.arctan2(dy, dx))) > 30 or not 0.25 < span / max(box.w, box.h) < 0.6:
        return square_crop(image, box, margin)
    cos, sin = dx / span, dy / span
    face = span / EYE_SPAN  # the side of the box these eyes imply
    side = max(1, int(round(face * (1 + 2 * margin))))
    rotate = np.array([[cos, -sin], [sin, cos]])
    centre = (left + right) / 2 + rotate @ np.array([0.0, (0.5 - EYE_HEIGHT) * face])
    to_source = np.hstack([rotate, (centre - rotate @ np.array([side / 2, side / 2]))[:, None]])
    return cv2.warpAffine(image, to_source, (side, side), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def centre_crop(image: np.ndarray) -> np.ndarray:
    """The largest centred square: the fallback when no face is found."""
    h, w = image.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side])


# --- the on-disk box cache ---------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("FTKIT_CACHE", Path.home() / ".cache" / "ftkit")) / "faces"


def _cache_key(path: str) -> str:
    stat = os.stat(path)
    ident = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha1(ident.encode()).hexdigest()


class BoxCache:
    """Detected boxes per file, in one JSON file per folder of images (written atomically)."""

    def __init__(self, root: Path | None = None):
        self.root = root or cache_dir()
        self._loaded: dict[Path, dict] = {}
        self._dirty: set[Path] = set()

    def _file(self, path: str) -> Path:
        folder = hashlib.sha1(os.path.dirname(os.path.abspath(path)).encode()).hexdigest()[:16]
        return self.root / f"{folder}.json"

    def _table(self, path: str) -> dict:
        file = self._file(path)
        if file not in self._loaded:
            try:
                self._loaded[file] = json.loads(file.read_text()) if file.is_file() else {}
            except (json.JSONDecodeError, UnicodeDecodeError):  # a damaged cache is only a cache: detect again
                self._loaded[file] = {}
        return self._loaded[file]

    def boxes(self, path: str, image: np.ndarray) -> list[Box]:
        """Cached boxes of the file at ``path``, detecting (and caching) them on a miss."""
        table, key = self._table(path), _cache_key(path)
        if key not in table:
            table[key] = [[b.x, b.y, b.w, b.h] for b in detect_faces(image)]
            self._dirty.add(self._file(path))
        return [Box(*b) for b in table[key]]

    def save(self) -> None:
        for file in self._dirty:
            write_json(file, self._loaded[file])
        self._dirty.clear()


@dataclass
class FaceStats:
    found: int = 0  # images where a face was found and cropped
    fallback: list[str] | None = None  # images cropped in the centre (no face found)
    skipped: list[str] | None = None  # images left out (no face, --faces require)

    def to_dict(self) -> dict:
        return {"found": self.found, "fallback": len(self.fallback or []), "skipped": len(self.skipped or []),
                "fallback_files": self.fallback or [], "skipped_files": self.skipped or []}


def crop_faces(keys: list[str], images: list[np.ndarray], mode: str, margin: float,
               cache: BoxCache | None = None, progress=None, align: bool = False) -> tuple[list[np.ndarray | None], FaceStats]:
    """Crop the largest face of every image (``align``: level its eyes first). With
    ``mode='require'`` an image without a face becomes None (to be left out); otherwise it
    falls back to a centre crop."""
    stats = FaceStats(0, [], [])
    out: list[np.ndarray | None] = []
    crop = aligned_crop if align else square_crop
    for key, image in zip(keys, images):
        boxes = cache.boxes(key, image) if cache and os.path.isfile(key) else detect_faces(image)
        if boxes:
            out.append(crop(image, boxes[0], margin))
            stats.found += 1
        elif mode == "require":
            out.append(None)
            stats.skipped.append(key)
        else:
            out.append(centre_crop(image))
            stats.fallback.append(key)
        if progress:
            progress(1)
    if cache:
        cache.save()
    return out, stats


@dataclass
class FolderCrops:
    stats: FaceStats  # faces found, centre-cropped, left out
    unreadable: dict[str, str]  # file -> why it could not be read (it is left out)
    written: int  # crops written


def crop_folder(src: str | Path, dst: str | Path, margin: float = 0.25, require: bool = False,
                size: int = 0, progress=None, align: bool = False, on_total=None) -> FolderCrops:
    """Crop the largest face of every image under ``src`` into the same tree under ``dst``
    (PNG). ``size`` > 0 resizes crops to size x size; ``align`` levels the eyes first.
    ``on_total(n)`` is told the number of images once, ``progress(1)`` after each."""

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DataError(f"{src} is not a folder")
    refuse_inside(dst, [src], "the crop folder")
    if not margin > MIN_FACE_MARGIN or size < 0:
        raise DataError(f"--margin must be above {MIN_FACE_MARGIN:g} and --size 0 or more, got margin {margin}, size {size}")
    if holds_files(dst):
        raise DataError(f"{dst} already holds files; give an empty or new folder")
    files = image_files(src)
    if not files:
        raise DataError(f"no images under {src}")
    targets = crop_names([p.relative_to(src) for p in files])
    if on_total:
        on_total(len(files))
    cache, stats, unreadable, written = BoxCache(), FaceStats(0, [], []), {}, 0
    try:
        with new_folder(dst, "folder for the crops") as work:  # dst appears only when complete
            for path, target in zip(files, targets):
                try:
                    image = read_image(path)
                except DataError as exc:
                    unreadable[str(path)] = str(exc)
                else:
                    crops, one = crop_faces([str(path)], [image], "require" if require else "crop", margin, cache, align=align)
                    stats.found += one.found
                    stats.fallback += one.fallback
                    stats.skipped += one.skipped
                    if crops[0] is not None:
                        crop = cv2.resize(crops[0], (size, size), interpolation=cv2.INTER_AREA) if size else crops[0]
                        ok, png = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
                        (work / target).parent.mkdir(parents=True, exist_ok=True)
                        (work / target).write_bytes(png.tobytes())
                        written += 1
                if progress:
                    progress(1)
    finally:
        cache.save()  # the faces found so far: an interrupted run starts again without detecting them anew
    return FolderCrops(stats, unreadable, written)


def crop_names(files: list[Path]) -> list[Path]:
    """The PNG name of each crop: its source's path with a .png suffix, or, where two sources
    differ only by their suffix (a.jpg and a.png), the whole source name (a.jpg.png, a.png.png),
    so that no crop overwrites another."""
    stems = Counter(f.with_suffix("") for f in files)
    return [f.with_suffix(".png") if stems[f.with_suffix("")] == 1 else f.with_name(f.name + ".png") for f in files]
