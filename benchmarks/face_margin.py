"""How to crop faces for the shipped FER2013 models (ftkit.fer2013.FACE_MARGIN).

FER2013's images are ready-made 48x48 face crops; a photo's face must be cropped the way the
model expects. Two measurements, neither on a test split:

1. FER2013's own frame: OpenCV's face detector on FER2013 Training images (upscaled 4x); the
   margin that turns the detected box back into the whole image, (image side / box side - 1) / 2.
2. The shipped model with no training on the validation subjects of the taiwanese set (those
   that pick the epoch in benchmarks/transfer.py, never its test folds), faces cropped with
   each margin, classes matched by name.

    python benchmarks/face_margin.py
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from common import command_line, emit_row, extract_fer, machine
from transfer import SUBJECT, extract

from ftkit.crossval import fold_indices
from ftkit.data import ImageDataset, group_keys, grouped_split, load_data
from ftkit.evaluation import predict_probs, quick_metrics
from ftkit.faces import aligned_crop, centre_crop, detect_faces, square_crop
from ftkit.images import read_image
from ftkit.predict import load_run
from ftkit.progress import console
from ftkit.transforms import eval_transform
from ftkit.zoo import match_classes, resolve_config

SECTION = "Face margin for the shipped FER2013 models"
HEADER = ("| measurement | margin | images | result | machine | command |\n|---|---|---|---|---|---|")


def fer_frame(fer: Path, count: int) -> tuple[list[float], int]:
    """Per FER2013 Training image with a detected face: the margin that gives back the whole image."""
    files = sorted((fer / "train").glob("*/*.jpg"))
    random.Random(0).shuffle(files)
    margins = []
    for path in files[:count]:
        image = cv2.resize(read_image(path), (4 * 48, 4 * 48), interpolation=cv2.INTER_CUBIC)
        boxes = detect_faces(image)
        if boxes:
            margins.append((image.shape[0] / max(boxes[0].w, boxes[0].h) - 1) / 2)
    return margins, min(count, len(files))


def validation_subjects(work: Path):
    """The taiwanese images of every fold's validation subjects (benchmarks/transfer.py's protocol)."""
    full = load_data(resolve_config(None, data=str(extract(work)), cache="memory"), console=console, carve=False)
    pool = full.splits["all"]
    groups = group_keys(pool.keys, SUBJECT)
    chosen = []
    for test in fold_indices(pool.labels, 5, seed=0, groups=groups):
        rest = np.setdiff1d(np.arange(len(pool)), test)
        chosen.append(rest[grouped_split(pool.labels[rest], groups[rest], {"val": 0.15}, seed=0) == "val"])
    return full.classes, pool.subset(np.unique(np.concatenate(chosen)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--margins", type=float, nargs="+", default=[-0.2, -0.15, -0.1, -0.05, 0.0, 0.1, 0.25],
                        help="negative: inside the detector's box")
    parser.add_argument("--models", nargs="+", default=["fer2013-fast", "fer2013-best"])
    parser.add_argument("--fer-images", type=int, default=1500, help="FER2013 Training images to detect faces in (0: skip that measurement)")
    parser.add_argument("--align", action="store_true", help="level each face's eyes before cropping (ftkit's face_align)")
    parser.add_argument("--work", default="/tmp/ftkit-bench")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    work = Path(args.work)

    if args.fer_images:
        margins, tried = fer_frame(extract_fer(work), args.fer_images)
        if not margins:
            sys.exit("no face found in the FER2013 images tried")
        q1, median, q3 = np.percentile(margins, [25, 50, 75])
        emit_row(SECTION, HEADER, f"| FER2013's own frame (detector box -> whole image) | {median:.3f} (quartiles {q1:.3f}-{q3:.3f}) "
                 f"| {len(margins)} of {tried} with a face | - | {machine()} | `{command_line()}` |", write=not args.no_write)

    classes, split = validation_subjects(work)
    boxes = [detect_faces(image) for image in split.images]
    originals = list(split.images)
    crop, levelled = (aligned_crop, ", eyes levelled") if args.align else (square_crop, "")
    for name in args.models:
        loaded = load_run(name, device="cpu")
        order = match_classes(loaded.classes, classes)
        columns = [order[t] for t in range(len(classes))]
        for margin in args.margins:
            started = time.perf_counter()
            split.images = [crop(im, b[0], margin) if b else centre_crop(im) for im, b in zip(originals, boxes)]
            loader = torch.utils.data.DataLoader(ImageDataset(split, eval_transform(loaded.data_config)), batch_size=128)
            probs, labels, _ = predict_probs(loaded.model, loader, loaded.device, loaded.config.tta)
            m = quick_metrics(labels, probs[:, columns].argmax(1))
            emit_row(SECTION, HEADER, f"| {name}, no training, taiwanese validation subjects{levelled} | {margin:g} | {len(labels)} "
                     f"| accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} ({time.perf_counter() - started:.0f} s) "
                     f"| {machine()} | `{command_line()}` |", write=not args.no_write)
    console.print(f"faces found in {sum(bool(b) for b in boxes)} of {len(boxes)} taiwanese images (the rest centre-cropped)")


if __name__ == "__main__":
    main()
