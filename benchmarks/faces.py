"""Face detectors on the same film-sized frames: how many faces each finds, how many it
invents, and how fast. Decides which detector `--faces crop` should use.

Frames are 720x576 (a PAL film frame) over natural backgrounds from scikit-image:
- "FER2013 faces": a FER2013 PublicTest face (48x48, tightly cropped) upscaled to a random
  side of 72-288 px and pasted at a random place; the paste is the true box.
- "astronaut": scikit-image's astronaut photo scaled 0.25-1.1x at a random place (a face
  with its head and shoulders around it; true box measured once by eye, as in the tests).
- "no face": the backgrounds alone; any detection there is a false one. The cat photo among
  the backgrounds is counted apart: a cat's face is a hard negative, not a blank one.
A face counts as found when the largest detected box (the one `--faces crop` uses) has its
centre within 0.35 of the true side from the true centre and a side 0.5-2x the true side.

Detectors: ftkit's Haar cascades (`ftkit.faces.detect_faces`), and MediaPipe's BlazeFace
models run by mediapipe's Tasks API. The models are not in current mediapipe wheels; they are
read from the mediapipe 0.10.21 wheel (download only), given with --blazeface-wheel. mediapipe
needs `opencv-contrib-python`, which installs over the same `cv2` package as ftkit's
`opencv-python-headless` (and is OpenCV 5, without Haar cascades, unless pinned), so the
comparison runs in an environment of its own, with ftkit on the path:

    python -m venv /tmp/mpvenv
    /tmp/mpvenv/bin/pip install mediapipe "opencv-contrib-python<5" scikit-image pyyaml pillow
    pip download --no-deps mediapipe==0.10.21 -d /tmp/mp
    PYTHONPATH=. /tmp/mpvenv/bin/python benchmarks/faces.py \
        --blazeface-wheel /tmp/mp/mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl

Without --blazeface-wheel it measures the Haar cascades alone, in ftkit's own environment.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
from common import command_line, emit_row, extract_fer, machine
from skimage import data as skimage_data

from ftkit.faces import detect_faces

FRAME = (576, 720)
ASTRONAUT_FACE = (177, 66, 95)  # x, y, side in the astronaut photo (as in tests/test_faces.py)
BLAZEFACE_MODELS = ("face_detection_short_range", "face_detection_full_range_sparse")
HEADER = ("| detector | frames | FER2013 faces found | astronaut found | no-face frames with a false face: textures and objects "
          "| the same: cat photo | median CPU ms per frame | machine | command |\n|---|---|---|---|---|---|---|---|---|")


@functools.lru_cache(maxsize=1)  # read once; callers resize (copy) one before drawing on it
def backgrounds() -> tuple[np.ndarray, ...]:
    images = [skimage_data.brick(), skimage_data.grass(), skimage_data.gravel(), skimage_data.rocket(),
              skimage_data.coffee(), skimage_data.chelsea()]
    return tuple(cv2.cvtColor(im, cv2.COLOR_GRAY2RGB) if im.ndim == 2 else im for im in images)


CAT = 5  # index of skimage's chelsea in backgrounds()


def background(rng: np.random.Generator, pool: tuple[np.ndarray, ...]) -> tuple[np.ndarray, int]:
    which = int(rng.integers(len(pool)))
    return cv2.resize(pool[which], FRAME[::-1], interpolation=cv2.INTER_LINEAR), which


def paste(frame: np.ndarray, patch: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    h, w = patch.shape[:2]
    y, x = int(rng.integers(0, FRAME[0] - h + 1)), int(rng.integers(0, FRAME[1] - w + 1))
    frame[y:y + h, x:x + w] = patch
    return x, y


def make_frames(fer_files: list[Path], n_astronaut: int, n_empty: int, seed: int):
    """(set name, frame, true box or None) triples."""
    rng = np.random.default_rng(seed)
    pool = backgrounds()
    frames = []
    for path in fer_files:
        side = int(rng.integers(72, 289))
        face = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2RGB)
        frame, _ = background(rng, pool)
        x, y = paste(frame, cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC), rng)
        frames.append(("fer", frame, (x, y, side)))
    photo = skimage_data.astronaut()
    for _ in range(n_astronaut):
        scale = float(rng.uniform(0.25, 1.1))
        frame, _ = background(rng, pool)
        x, y = paste(frame, cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), rng)
        fx, fy, side = ASTRONAUT_FACE
        frames.append(("astronaut", frame, (x + fx * scale, y + fy * scale, side * scale)))
    for _ in range(n_empty):
        frame, which = background(rng, pool)
        frames.append(("cat" if which == CAT else "empty", frame, None))
    return frames


def matches(box: tuple[float, float, float, float], truth: tuple[float, float, float]) -> bool:
    x, y, w, h = box
    tx, ty, side = truth
    centre_off = np.hypot(x + w / 2 - (tx + side / 2), y + h / 2 - (ty + side / 2))
    return centre_off <= 0.35 * side and 0.5 * side <= max(w, h) <= 2 * side


def haar(frame: np.ndarray) -> list[tuple[int, int, int, int]]:
    return [(b.x, b.y, b.w, b.h) for b in detect_faces(frame, "haar")]


def blazeface(model: Path):
    os.environ.setdefault("GLOG_minloglevel", "2")
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    detector = vision.FaceDetector.create_from_options(
        vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(model))))

    def detect(frame: np.ndarray) -> list[tuple[int, int, int, int]]:
        found = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame)))
        boxes = [(d.bounding_box.origin_x, d.bounding_box.origin_y, d.bounding_box.width, d.bounding_box.height)
                 for d in found.detections]
        return sorted(boxes, key=lambda b: -b[2] * b[3])

    return detect


def extract_models(wheel: Path, into: Path) -> dict[str, Path]:
    into.mkdir(parents=True, exist_ok=True)
    out = {}
    with zipfile.ZipFile(wheel) as zf:
        for name in BLAZEFACE_MODELS:
            target = into / f"{name}.tflite"
            target.write_bytes(zf.read(f"mediapipe/modules/face_detection/{name}.tflite"))
            out[f"BlazeFace {name.replace('face_detection_', '')} (mediapipe Tasks)"] = target
    return out


def evaluate(detect, frames) -> dict:
    found = {"fer": 0, "astronaut": 0}
    totals = {"fer": 0, "astronaut": 0}
    false_frames, times = {"empty": [0, 0], "cat": [0, 0]}, []
    for kind, frame, truth in frames:
        started = time.process_time()  # CPU time of all threads: not inflated by other work on the machine
        boxes = detect(frame)
        times.append(time.process_time() - started)
        if truth is None:
            false_frames[kind][0] += bool(boxes)
            false_frames[kind][1] += 1
        else:
            totals[kind] += 1
            found[kind] += bool(boxes) and matches(boxes[0], truth)
    return {"found": found, "totals": totals, "false_frames": false_frames, "ms": 1000 * float(np.median(times))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/ftkit-bench")
    parser.add_argument("--fer", type=int, default=400, help="FER2013 PublicTest faces to paste (drawn with the seed)")
    parser.add_argument("--astronaut", type=int, default=100)
    parser.add_argument("--empty", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blazeface-wheel", type=Path, help="a downloaded mediapipe 0.10.21 wheel (see above)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    cv2.setNumThreads(1)
    files = sorted((extract_fer(Path(args.work)) / "val").rglob("*.jpg"))
    chosen = [files[i] for i in np.random.default_rng(args.seed).choice(len(files), args.fer, replace=False)]
    frames = make_frames(chosen, args.astronaut, args.empty, args.seed)
    detectors = {"Haar cascades, default then alt2 (ftkit)": haar}
    if args.blazeface_wheel:
        for name, model in extract_models(args.blazeface_wheel, Path(args.work) / "blazeface").items():
            detectors[name] = blazeface(model)
    for name, detect in detectors.items():
        r = evaluate(detect, frames)
        fer, ast = r["found"], r["totals"]
        row = (f"| {name} | {len(frames)} | {fer['fer'] / ast['fer']:.1%} ({fer['fer']}/{ast['fer']}) "
               f"| {fer['astronaut'] / ast['astronaut']:.1%} ({fer['astronaut']}/{ast['astronaut']}) "
               f"| {'/'.join(map(str, r['false_frames']['empty']))} | {'/'.join(map(str, r['false_frames']['cat']))} "
               f"| {r['ms']:.1f} | {machine()} | `{command_line()}` |")
        emit_row("Face detectors on film-sized frames", HEADER, row, write=not args.no_write)


if __name__ == "__main__":
    main()
