"""Faces as they come: detection, alignment and the shipped models on pictures made from the
faces in ../shared/data. Nothing here is tuned on a test split; the making is kept simple and
its settings are the constants below, so that it is not tuned to itself either.

1. Detection (``--part detect``): faces placed into 640x480 pictures (``--picture`` makes larger
   ones, as a phone photo or a 1080p frame is, where RetinaFace looks twice) over scikit-image
   backgrounds, 0-3 per picture, at a random place, side and tilt (up to +-30 degrees), some
   pictures blurred, some dimmed, with drawn clutter. The faces (``--faces-from``) are FER2013
   PublicTest's (tight 48x48 grayscale crops: the pasted square is the true box), the posed
   set's (256x256 colour heads: the face is about three quarters of the square), or both, taken
   in turn. A face is found when a detected box matches it (centre within 0.35 of its side, side
   0.5-2x); a detection that matches no face is a false positive, and those on the one background
   with an animal's face (scikit-image's cat, a sixth of the pictures) are counted apart too. CPU
   milliseconds per picture, batch 1, per detector, side by side in one run.
2. Accuracy (``--part accuracy``): the shipped models, without training, on the validation
   subjects of the posed taiwanese set (benchmarks/face_margin.py's; never a test fold), each
   image upright and turned by a random angle (up to +-30 degrees), cropped by each detector,
   with and without eye alignment. ``recovered`` is the share of the accuracy lost to the turn
   that alignment wins back.
3. What costs accuracy (``--part conditions``): the same validation images, each placed alone into
   a 640x480 picture under one condition at a time (CONDITIONS: small, tilted, blurred, dimmed, then
   all of them as benchmarks/transfer.py --placed makes its pictures), found by RetinaFace and
   cropped at the model's margin, with and without the eyes levelled; the same draws under each.
4. Several faces (``--part several``): in the real images here (the posed set, and a sample of
   FER2013 Training), how many hold more than one detected face; where some do, the shipped
   model's accuracy on them when the largest face is taken against the one nearest the centre.
5. ``--part calibrate``: the mapping of RetinaFace's box onto the frontal cascade's
   (ftkit.faces.RF_TO_HAAR_*): medians over the faces both find in every third posed image.

    python benchmarks/faces_wild.py --part detect
    python benchmarks/faces_wild.py --part detect --picture 1920x1080 --detectors retinaface --fine-sides 1920 0
    python benchmarks/faces_wild.py --part accuracy
    python benchmarks/faces_wild.py --part conditions
    python benchmarks/faces_wild.py --part conditions --models RUN_DIR --face-margin -0.1   # a run trained on FER2013
    python benchmarks/faces_wild.py --part several
    python benchmarks/faces_wild.py --part calibrate --no-write
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from common import command_line, emit_row, extract_fer, machine
from face_margin import validation_subjects
from faces import CAT, backgrounds
from transfer import extract

from ftkit.data import ImageDataset, load_data
from ftkit.evaluation import predict_probs, quick_metrics
from ftkit.faces import RetinaFace, aligned_crop, centre_crop, detector, face_crop, square_crop
from ftkit.fer2013 import FACE_MARGIN
from ftkit.images import image_files, read_image
from ftkit.predict import load_run
from ftkit.progress import console
from ftkit.transforms import eval_transform
from ftkit.zoo import SHIPPED, SHIPPED_DIR, match_classes, read_models, resolve_config

PICTURE = (640, 480)  # width, height (--picture makes larger ones: a phone photo's, a 1080p frame's)
FACES_PER_PICTURE = (0, 1, 1, 2, 3)  # drawn uniformly: a fifth of the pictures have none
SIDE = (48, 200)  # face side in pixels
TILT = 30  # degrees, either way
BLUR, DIM = 0.3, 0.3  # shares of pictures blurred (Gaussian sigma 1-2.5), dimmed (x 0.25-0.5)
CLUTTER = 6  # drawn shapes per picture
BATCH1 = 200  # faces timed one at a time
DETECTORS = ("haar", "retinaface")
FACES_FROM = {"both": "FER2013 and posed, in turn", "fer": "FER2013 PublicTest crops", "posed": "posed heads"}
DETECT_HEADER = ("| detector | faces | pictures | placed faces | found | false positives per 100 pictures (of them on the cat's face) | pictures with no face: "
                 "any detection | ms per picture (CPU, batch 1) | machine | command |\n|---|---|---|---|---|---|---|---|---|---|")
ACCURACY_HEADER = ("| model | detector | images | upright: accuracy, macro-F1 | upright, eyes levelled | turned | turned, eyes "
                   "levelled | recovered | ms per face: detect + align / classify at batch 1 / classify in batches of 128 "
                   "| machine | command |\n|---|---|---|---|---|---|---|---|---|---|---|")
SEVERAL_HEADER = ("| images | detector | scored | with several faces | accuracy of fer2013-fast on those: largest face / most central face "
                  "| machine | command |\n|---|---|---|---|---|---|---|")
CONDITIONS_HEADER = ("| model | condition | images | faces found | accuracy, macro-F1 (eyes levelled) | not levelled "
                     "| machine | command |\n|---|---|---|---|---|---|---|---|")
FER_SAMPLE = 5000  # FER2013 Training images drawn for --part several
LARGE = (200, 201)  # the side of a face placed large
CONDITIONS = {  # --part conditions: one way a face comes at a time (None: the image as it is, not placed)
    "the posed image itself": None,
    "placed, upright, 200 px": dict(sides=LARGE, turn=0, blur=0, dim=0),
    f"placed, {SIDE[0]}-{SIDE[1]} px": dict(sides=SIDE, turn=0, blur=0, dim=0),
    f"placed, 200 px, tilted up to {TILT} degrees": dict(sides=LARGE, turn=TILT, blur=0, dim=0),
    "placed, 200 px, blurred (sigma 1-2.5)": dict(sides=LARGE, turn=0, blur=1, dim=0),
    "placed, 200 px, dimmed (x 0.25-0.5)": dict(sides=LARGE, turn=0, blur=0, dim=1),
    "placed as transfer.py --placed places them (all of these)": dict(sides=SIDE, turn=TILT, blur=BLUR, dim=DIM),
}


def tilt(image: np.ndarray, degrees: float, border=cv2.BORDER_REFLECT) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0), (w, h), borderMode=border)


def make_pictures(faces: list[Path], count: int, seed: int, size: tuple[int, int] = PICTURE
                  ) -> list[tuple[np.ndarray, list[tuple[float, float, float]], int]]:
    """(picture, [(centre x, centre y, side)] of its faces, its background's index in backgrounds()),
    pictures ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    pictures, next_face = [], 0
    for _ in range(count):
        picture, which = cluttered_background(rng, size)
        truths = []
        for _ in range(int(rng.choice(FACES_PER_PICTURE))):
            truth = place_face(picture, read_image(faces[next_face % len(faces)]), rng, truths)  # RGB, gray replicated
            next_face += 1
            truths += [truth] if truth else []
        pictures.append((blurred_or_dimmed(picture, rng), truths, which))
    return pictures


def cluttered_background(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """One of backgrounds() at ``size`` (width, height), with drawn shapes; and which it is."""
    width, height = size
    pool = backgrounds()
    which = int(rng.integers(len(pool)))
    picture = cv2.resize(pool[which], size, interpolation=cv2.INTER_LINEAR)
    for _ in range(CLUTTER):  # shapes with edges and contrast, as a room or a street has
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < 0.5:
            cv2.ellipse(picture, centre, (int(rng.integers(10, 80)), int(rng.integers(10, 80))), float(rng.uniform(0, 180)),
                        0, 360, colour, -1)
        else:
            cv2.rectangle(picture, centre, (centre[0] + int(rng.integers(10, 120)), centre[1] + int(rng.integers(10, 120))),
                          colour, int(rng.choice([-1, 3])))
    return picture, which


def place_face(picture: np.ndarray, face: np.ndarray, rng: np.random.Generator,
               others: list[tuple[float, float, float]], sides: tuple[int, int] = SIDE,
               turn: float = TILT) -> tuple[float, float, float] | None:
    """Paste ``face`` into ``picture`` at a random side (in ``sides``), tilt (up to ``turn`` degrees
    either way) and place that overlaps none of ``others``; its (centre x, centre y, side), or None
    when no such place was found."""
    height, width = picture.shape[:2]
    side = int(rng.integers(*sides))
    face = tilt(cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC), float(rng.uniform(-turn, turn)))
    mask = np.zeros((side, side), np.uint8)
    cv2.ellipse(mask, (side // 2, side // 2), (side // 2 - 1, side // 2 - 1), 0, 0, 360, 255, -1)  # no square corners
    for _ in range(20):  # a place that overlaps no face placed before
        x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        if all(abs(x + side / 2 - cx) > (side + s) / 2 or abs(y + side / 2 - cy) > (side + s) / 2 for cx, cy, s in others):
            break
    else:
        return None
    region = picture[y:y + side, x:x + side]
    region[mask > 0] = face[mask > 0]
    return x + side / 2, y + side / 2, side


def blurred_or_dimmed(picture: np.ndarray, rng: np.random.Generator, blur: float = BLUR, dim: float = DIM) -> np.ndarray:
    """``picture`` blurred with chance ``blur``, then dimmed with chance ``dim``."""
    if rng.random() < blur:
        picture = cv2.GaussianBlur(picture, (0, 0), float(rng.uniform(1, 2.5)))
    if rng.random() < dim:
        picture = (picture * rng.uniform(0.25, 0.5)).astype(np.uint8)
    return picture


def placed_set(source: Path, target: Path, seed: int = 0) -> Path:
    """Every image of a labeled folder placed alone into a picture (as ``make_pictures`` makes
    them), under the same relative path in ``target``: a set of faces as they come, labels and
    file names (so subjects) kept. Written once; a complete set is reused."""
    if (target / ".complete").is_file():
        return target
    rng = np.random.default_rng(seed)
    for path in image_files(source):
        picture, _ = cluttered_background(rng, PICTURE)
        place_face(picture, read_image(path), rng, [])
        out = target / path.relative_to(source).with_suffix(".jpg")  # the name keeps its subject
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), cv2.cvtColor(blurred_or_dimmed(picture, rng), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    (target / ".complete").write_text("ok\n")
    return target


def matched(box, truth) -> bool:
    cx, cy, side = truth
    off = np.hypot(box.x + box.w / 2 - cx, box.y + box.h / 2 - cy)
    return off <= 0.35 * side and 0.5 * side <= max(box.w, box.h) <= 2 * side


def score_detector(detect, pictures) -> dict:
    detect(pictures[0][0])  # the first call loads the model: not timed
    found = placed = false = on_cat = empty_hit = empty = 0
    times = []
    for picture, truths, which in pictures:
        started = time.process_time()
        boxes = detect(picture)
        times.append(time.process_time() - started)
        left = list(truths)
        for box in boxes:
            hit = next((t for t in left if matched(box, t)), None)
            if hit is None:
                false += 1
                on_cat += which == CAT
            else:
                left.remove(hit)
        placed += len(truths)
        found += len(truths) - len(left)
        empty += not truths
        empty_hit += not truths and bool(boxes)
    return {"placed": placed, "found": found, "false": false, "on_cat": on_cat, "empty": empty, "empty_hit": empty_hit,
            "ms": 1000 * float(np.mean(times))}


def face_files(which: str, count: int, work: Path, seed: int) -> list[Path]:
    """``count`` face images drawn from FER2013 PublicTest, the posed set, or both in turn."""
    rng = np.random.default_rng(seed)
    pools = {"fer": lambda: sorted((extract_fer(work) / "val").rglob("*.jpg")), "posed": lambda: image_files(extract(work))}
    drawn = []
    for name in (("fer", "posed") if which == "both" else (which,)):
        files = pools[name]()
        drawn.append([files[i] for i in rng.choice(len(files), min(len(files), count), replace=False)])
    return [f for group in zip(*drawn) for f in group][:count]


def detect_part(args) -> None:
    faces = face_files(args.faces_from, 3 * args.pictures, Path(args.work), args.seed)
    pictures = make_pictures(faces, args.pictures, args.seed, args.picture)
    default = RetinaFace().settings
    chosen = {"haar": detector("haar")} if "haar" in args.detectors else {}
    for side, fine in itertools.product(args.max_sides, args.fine_sides) if "retinaface" in args.detectors else ():
        for score in args.scores:  # the default (RetinaFace's own) first
            name = (f"retinaface, score {score:g}" + (f", frames shrunk to {side} px" if side != default["max_side"] else "")
                    + (f", second look at up to {fine} px" if fine and fine != default["fine_side"] else "")
                    + (", no second look" if not fine else ""))
            chosen[name + (" (default)" if (score, side, fine) == (default["score"], default["max_side"], default["fine_side"]) else "")] = \
                RetinaFace(score=score, max_side=side, fine_side=fine, threads=1)
    where = FACES_FROM[args.faces_from] + ("" if args.picture == PICTURE else f", in {args.picture[0]}x{args.picture[1]} pictures")
    for name, detect in chosen.items():
        r = score_detector(detect, pictures)
        emit_row("Face detectors on faces placed into pictures", DETECT_HEADER,
                 f"| {name} | {where} | {len(pictures)} | {r['placed']} | {r['found'] / r['placed']:.1%} ({r['found']}) "
                 f"| {100 * r['false'] / len(pictures):.1f} ({100 * r['on_cat'] / len(pictures):.1f}) | {r['empty_hit']} of {r['empty']} | {r['ms']:.1f} | {machine()} "
                 f"| `{command_line()}` |", write=not args.no_write, key=2)


def one_thread(name: str):
    """The detector ``name`` on one thread, as the classifier runs here (onnxruntime takes a thread
    per core by default, and CPU time counts every thread)."""
    return RetinaFace(threads=1) if name == "retinaface" else detector(name)


def crops(images, angles, name: str, align: bool) -> tuple[list[np.ndarray], float]:
    """Each image turned by its angle, cropped to its largest face; and the ms per image that took."""
    detect, crop = one_thread(name), aligned_crop if align else square_crop
    out, started = [], time.process_time()
    for image, angle in zip(images, angles):
        turned = tilt(image, angle) if angle else image
        boxes = detect(turned)
        out.append(crop(turned, boxes[0], 0.0) if boxes else centre_crop(turned))
    return out, 1000 * (time.process_time() - started) / len(images)


def accuracy_part(args) -> None:
    classes, split = validation_subjects(Path(args.work))
    originals = list(split.images)
    angles = np.random.default_rng(args.seed).uniform(-TILT, TILT, len(originals))
    for model in args.models:
        loaded = load_run(model, device="cpu")
        transform = eval_transform(loaded.data_config)
        metrics = scorer(loaded, classes, split)

        def one_at_a_time(images) -> float:
            """ms per face classified alone (its preprocessing included, as the detector's is), as a
            photo or a video frame with one face is."""
            with torch.inference_mode():
                loaded.model(transform(images[0])[None])  # warm-up
                started = time.process_time()
                for image in images[:BATCH1]:
                    loaded.model(transform(image)[None])
            return 1000 * (time.process_time() - started) / len(images[:BATCH1])

        for name in DETECTORS:
            upright, _ = metrics(crops(originals, np.zeros(len(originals)), name, align=False)[0])
            upright_levelled, _ = metrics(crops(originals, np.zeros(len(originals)), name, align=True)[0])
            turned, _ = metrics(crops(originals, angles, name, align=False)[0])
            images, detect_ms = crops(originals, angles, name, align=True)
            levelled, classify_ms = metrics(images)
            alone_ms = one_at_a_time(images)
            lost = upright["accuracy"] - turned["accuracy"]
            recovered = f"{(levelled['accuracy'] - turned['accuracy']) / lost:.0%}" if lost > 0 else "nothing lost"
            cell = lambda m: f"{m['accuracy']:.4f}, {m['macro_f1']:.4f}"  # noqa: E731
            emit_row("Shipped models on turned faces, with and without eye alignment", ACCURACY_HEADER,
                     f"| {model} | {name} | {len(originals)} | {cell(upright)} | {cell(upright_levelled)} | {cell(turned)} "
                     f"| {cell(levelled)} | {recovered} "
                     f"| {detect_ms:.1f} / {alone_ms:.1f} / {classify_ms:.1f} | {machine()} | `{command_line()}` |", write=not args.no_write, key=2)


def scorer(loaded, classes: list[str], split):
    """A function from ``split``'s images, replaced by the ones given, to the model's
    (accuracy and macro-F1, ms per image in batches of 128), its classes matched to ``classes``."""
    order = match_classes(loaded.classes, classes)
    columns = [order[t] for t in range(len(classes))]
    transform = eval_transform(loaded.data_config)

    def metrics(images: list[np.ndarray]) -> tuple[dict[str, float], float]:
        split.images = images
        started = time.process_time()
        loader = torch.utils.data.DataLoader(ImageDataset(split, transform), batch_size=128)
        probs, labels, _ = predict_probs(loaded.model, loader, loaded.device, "none")
        return quick_metrics(labels, probs[:, columns].argmax(1)), 1000 * (time.process_time() - started) / len(images)

    return metrics


def conditions_part(args) -> None:
    """Each validation image placed alone into a picture under one condition at a time (CONDITIONS),
    found by RetinaFace once and cropped as each model's manifest says, with and without the eyes
    levelled."""
    classes, split = validation_subjects(Path(args.work))
    originals = list(split.images)
    detect = one_thread("retinaface")
    models = {model: load_run(model, device="cpu") for model in args.models}
    scorers = {model: scorer(loaded, classes, split) for model, loaded in models.items()}
    margins = {model: loaded.config.face_margin if args.face_margin is None else args.face_margin
               for model, loaded in models.items()}
    for condition, settings in CONDITIONS.items():
        rng = np.random.default_rng(args.seed)  # the same places and draws under every condition
        found, levelled, upright = 0, {m: [] for m in models}, {m: [] for m in models}
        for image in originals:
            if settings is not None:
                picture, _ = cluttered_background(rng, PICTURE)
                place_face(picture, image, rng, [], sides=settings["sides"], turn=settings["turn"])
                image = blurred_or_dimmed(picture, rng, blur=settings["blur"], dim=settings["dim"])
            boxes = detect(image)
            found += bool(boxes)
            for model, margin in margins.items():
                levelled[model].append(face_crop(image, boxes[0], margin, align=True) if boxes else centre_crop(image))
                upright[model].append(face_crop(image, boxes[0], margin, align=False) if boxes else centre_crop(image))
        for model, metrics in scorers.items():
            cell = lambda images: "{accuracy:.4f}, {macro_f1:.4f}".format(**metrics(images)[0])  # noqa: E731
            emit_row("What costs accuracy in faces as they come", CONDITIONS_HEADER,
                     f"| {model} | {condition} | {len(originals)} | {found} | {cell(levelled[model])} | {cell(upright[model])} "
                     f"| {machine()} | `{command_line()}` |", write=not args.no_write, key=2)


def central(boxes, image: np.ndarray):
    h, w = image.shape[:2]
    return min(boxes, key=lambda b: np.hypot(b.x + b.w / 2 - w / 2, b.y + b.h / 2 - h / 2))


def several_part(args) -> None:
    work = Path(args.work)
    fer = sorted((extract_fer(work) / "train").rglob("*.jpg"))
    fer = [fer[i] for i in np.random.default_rng(args.seed).choice(len(fer), FER_SAMPLE, replace=False)]
    posed = load_data(resolve_config(None, data=str(extract(work)), cache="memory"), console=console, carve=False)
    posed = posed.splits["all"], posed.classes
    sets = {f"posed set, all {len(posed[0].keys):,}": {Path(k): posed[1][y] for k, y in zip(posed[0].keys, posed[0].labels)},
            f"FER2013 Training, {FER_SAMPLE:,} drawn": {f: f.parent.name for f in fer}}
    loaded = load_run("fer2013-fast", device="cpu")
    transform = eval_transform(loaded.data_config)
    crop = aligned_crop if loaded.config.face_align else square_crop  # as predict crops for the model
    for label, files in sets.items():
        for name in DETECTORS:
            detect, picks = one_thread(name), {"largest": 0, "central": 0}
            several = []
            for path in files:
                image = read_image(path)
                boxes = detect(image)
                if len(boxes) > 1:
                    several.append((path, image, boxes))
            for path, image, boxes in several:
                truth = match_classes(loaded.classes, [files[path]])
                for pick, box in (("largest", boxes[0]), ("central", central(boxes, image))):
                    with torch.inference_mode():
                        x = transform(crop(image, box, loaded.config.face_margin))[None]
                        picks[pick] += int(loaded.model(x).argmax()) == truth[0]
            accuracy = (f"{picks['largest'] / len(several):.3f} / {picks['central'] / len(several):.3f}" if several
                        else "none to choose between")
            emit_row("Images with several faces: the largest or the most central", SEVERAL_HEADER,
                     f"| {label} | {name} | {len(files):,} | {len(several)} | {accuracy} | {machine()} | `{command_line()}` |",
                     write=not args.no_write, key=2)


def calibrate_part(args) -> None:
    haar, rf = detector("haar"), detector("retinaface")
    side, dx, dy = [], [], []
    for path in image_files(extract(Path(args.work)))[::3]:
        image = read_image(path)
        h, r = haar(image), rf(image)
        if h and r:  # RetinaFace's boxes as they come out of the network: undo the mapping
            from ftkit.faces import RF_TO_HAAR_DX, RF_TO_HAAR_DY, RF_TO_HAAR_SIDE

            raw = r[0].w / RF_TO_HAAR_SIDE
            rcx = r[0].x + r[0].w / 2 - RF_TO_HAAR_DX * raw
            rcy = r[0].y + r[0].h / 2 - RF_TO_HAAR_DY * raw
            side.append(h[0].w / raw)
            dx.append((h[0].x + h[0].w / 2 - rcx) / raw)
            dy.append((h[0].y + h[0].h / 2 - rcy) / raw)
    print(f"{len(side)} faces: side {np.median(side):.3f} (quartiles {np.percentile(side, 25):.3f}-{np.percentile(side, 75):.3f}), "
          f"dx {np.median(dx):.3f}, dy {np.median(dy):.3f}")


def picture_size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    if not (width.isdigit() and height.isdigit()) or min(int(width), int(height)) <= SIDE[1]:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, both above {SIDE[1]} (the largest face), got {text!r}")
    return int(width), int(height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["detect", "accuracy", "conditions", "several", "calibrate"], required=True)
    parser.add_argument("--pictures", type=int, default=300)
    parser.add_argument("--faces-from", choices=["both", "fer", "posed"], default="both",
                        help="the faces placed into the pictures (--part detect)")
    parser.add_argument("--scores", type=float, nargs="+", default=[0.6, 0.8], help="RetinaFace confidence thresholds to measure")
    parser.add_argument("--max-sides", type=int, nargs="+", default=[640],
                        help="RetinaFace's max_side settings to measure (frames larger are shrunk to it)")
    parser.add_argument("--fine-sides", type=int, nargs="+", default=[1920],
                        help="RetinaFace's fine_side settings to measure (the second look at large frames; 0: none)")
    parser.add_argument("--detectors", nargs="+", choices=DETECTORS, default=list(DETECTORS))
    parser.add_argument("--picture", type=picture_size, default=PICTURE, help="WIDTHxHEIGHT of the pictures (--part detect)")
    parser.add_argument("--models", nargs="+", default=list(read_models(SHIPPED_DIR / SHIPPED)),
                        help="named models or run directories (--part accuracy, conditions; default: every shipped model)")
    parser.add_argument("--face-margin", type=float,
                        help="crop every model's faces at this margin (--part conditions; default: each model's own; "
                             f"a run trained on FER2013's crops wants {FACE_MARGIN}, as the shipped models)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/ftkit-bench")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)  # batch-1 CPU costs, comparable between the detectors and the classifier
    {"detect": detect_part, "accuracy": accuracy_part, "conditions": conditions_part, "several": several_part,
     "calibrate": calibrate_part}[args.part](args)


if __name__ == "__main__":
    main()
