"""Predicting with a trained run, a named model or an exported file: images and folders, the
faces in them, annotated copies and the predictions files. Videos are in video.py, scoring on
labeled data in scoring.py."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from .data import DataError, image_files, read_image, refuse_archive
from .errors import UsageError
from .evaluation import tta_probs
from .export import load_torchscript, read_onnx_metadata
from .faces import centre_crop, detect_faces, face_crop
from .images import UNREADABLE, walk_files
from .io import atomic_write, refuse_inside, write_json, write_text
from .models import DataConfig
from .scoring import Scored, data_key, evaluate_run, score_run  # noqa: F401 (re-exported: ftkit.predict's API)
from .scoring import OnnxModel, export_data_config, far_larger
from .transforms import eval_transform
from .zoo import exported_format, load_run


def expand_paths(paths: list[str]) -> list[Path]:
    """Image files from a mix of files and folders (recursively), in a stable order. Video
    files in the folders are not images: they are named (a warning, or the error when the
    folders hold nothing else), with how to classify one."""
    found: list[Path] = []
    videos: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += image_files(p)
            videos += sorted(v for v in walk_files(p) if v.suffix.lower() in VIDEO_EXTENSIONS and v.is_file())
        elif p.is_file():
            refuse_archive(p, "the folder of images it holds")
            found.append(p)
        else:
            raise DataError(f"{p} does not exist")
    hint = (f"{len(videos)} video file(s) in the folder(s) given are not read with images (e.g. {videos[0]}): classify "
            f"each one alone, ftkit predict MODEL {videos[0]}") if videos else ""
    if not found:
        raise DataError(f"no image files found in {', '.join(paths)}" + (f"; {hint}" if hint else ""))
    if hint:
        warnings.warn(hint, stacklevel=2)
    return found


# --- one interface over a PyTorch run and an exported ONNX model -------------------------


class Predictor:
    """Class probabilities for RGB uint8 images, from a run directory or an ONNX file."""

    def __init__(self, classes: list[str], data_config: DataConfig, forward, name: str, faces: str = "none",
                 face_margin: float = 0.25, face_align: bool = False, tta: str = "none", face_detector: str = "auto"):
        self.classes = classes
        self.data_config = data_config
        self.transform = eval_transform(data_config)
        self._forward = forward  # float32 NCHW numpy -> logits numpy
        self.name = name
        self.faces = faces  # the face setting the model was trained with
        self.face_margin = face_margin
        self.face_align = face_align  # level the eyes before cropping, as the model's training did
        self.tta = tta  # the test-time augmentation the model's own scores were measured with
        self.face_detector = face_detector  # auto, retinaface or haar (the detector of its training, when it cropped faces)

    @classmethod
    def from_run(cls, run: str | Path, device: str = "auto") -> "Predictor":
        """A run directory or a named model (see ftkit.zoo)."""
        loaded = load_run(run, device)

        @torch.no_grad()
        def forward(x: np.ndarray) -> np.ndarray:
            return loaded.model(torch.from_numpy(x).to(loaded.device)).float().cpu().numpy()

        return cls(loaded.classes, loaded.data_config, forward, loaded.label, loaded.config.faces, loaded.config.face_margin,
                   loaded.config.face_align, loaded.config.tta, loaded.config.face_detector)

    @classmethod
    def from_onnx(cls, path: str | Path) -> "Predictor":
        model = OnnxModel(path)
        return cls._from_export(read_onnx_metadata(path), lambda x: model(torch.from_numpy(x)).numpy(), path)

    @classmethod
    def from_torchscript(cls, path: str | Path) -> "Predictor":
        model, meta = load_torchscript(path)

        @torch.no_grad()
        def forward(x: np.ndarray) -> np.ndarray:
            return model(torch.from_numpy(x)).float().numpy()

        return cls._from_export(meta, forward, path)

    @classmethod
    def _from_export(cls, meta: dict[str, Any], forward, path: str | Path) -> "Predictor":
        """The classes, preprocessing and face settings that ``ftkit export`` records in a file."""
        return cls(meta["classes"], export_data_config(meta), forward, str(path),
                   meta.get("faces", "none"), meta.get("face_margin", 0.25), meta.get("face_align", False),
                   meta.get("tta", "none"), meta.get("face_detector", "haar" if meta.get("faces", "none") != "none" else "auto"))

    def probs(self, images: list[np.ndarray], tta: str = "none", batch_size: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.stack([self.transform(img) for img in images[i:i + batch_size]]).float()
            p = tta_probs(lambda v: torch.from_numpy(self._forward(np.ascontiguousarray(v.numpy()))), x, tta)
            out.append(p.double().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))


def open_predictor(target: str | Path, device: str = "auto") -> Predictor:
    """A run directory, a named model (``ftkit weights list``), or an ``.onnx`` or TorchScript
    (``.ts``, ``.pt``) file written by ``ftkit export``."""
    kind = exported_format(target)
    if kind is None:
        return Predictor.from_run(target, device)
    if not Path(target).is_file():
        raise DataError(f"{kind} model {target} not found")
    return Predictor.from_onnx(target) if kind == "onnx" else Predictor.from_torchscript(target)


# --- faces in, predictions out -----------------------------------------------------------


def regions(image: np.ndarray, faces: str, margin: float, align: bool = False,
            detector_name: str = "auto") -> list[tuple[str, list[int] | None, np.ndarray]]:
    """(region, box, crop) triples to classify, region being "image" (the whole image), "face"
    or "centre" (``align``: each face turned so its eyes are level, see
    ``ftkit.faces.aligned_crop``).

    ``faces='crop'`` falls back to a centre crop (box None) when no face is found;
    ``faces='all'`` returns no region at all then.
    """
    if faces == "none":
        return [("image", None, image)]
    boxes = detect_faces(image, detector_name)
    if faces == "all":
        return [("face", [b.x, b.y, b.w, b.h], face_crop(image, b, margin, align)) for b in boxes]
    if not boxes:
        return [("centre", None, centre_crop(image))]
    b = boxes[0]
    return [("face", [b.x, b.y, b.w, b.h], face_crop(image, b, margin, align))]


def classify_images(pred: Predictor, images: list[np.ndarray], faces: str, topk: int = 3, tta: str = "none"):
    """Per image, a list of detections: {region, box, top: [{class, probability}...], probabilities};
    region: "face", "image" (the whole image) or "centre" (a centre crop: no face was found)."""
    found = [regions(img, faces, pred.face_margin, pred.face_align, pred.face_detector) for img in images]
    crops = [crop for per in found for _, _, crop in per]
    probs = pred.probs(crops, tta)
    k = min(max(topk, 1), len(pred.classes))  # the best class is always listed: every output names it
    out, i = [], 0
    for per in found:
        detections = []
        for region, box, _ in per:
            p = probs[i]
            i += 1
            order = np.argsort(-p)[:k]
            detections.append({"region": region, "box": box,
                               "top": [{"class": pred.classes[j], "probability": float(p[j])} for j in order],
                               "probabilities": {c: float(v) for c, v in zip(pred.classes, p)}})
        out.append(detections)
    return out


def whole_image_hint(pred: Predictor, results: list[dict[str, Any]], faces: str | None) -> str | None:
    """When the model's own setting (no face cropping) had large photos classified whole: how to
    classify the faces in them instead. None when --faces was given or no image is large."""
    if faces is not None or pred.faces in ("crop", "require"):
        return None
    side = pred.data_config.img_size
    large = sum(1 for r in results if "size" in r and far_larger(r["size"], side))
    if not large:
        return None
    return (f"{large} image(s) over twice the model's {side}-pixel input were classified whole, as {pred.name} was "
            "trained (no face cropping); to classify the faces in photos, add --faces crop (the largest face) or "
            "--faces all")


def predict_paths(pred: Predictor, paths: list[str], topk: int = 3, tta: str | None = None, faces: str | None = None,
                  annotate_dir: str | Path | None = None, chunk: int = 64, progress=None,
                  on_total=None) -> list[dict[str, Any]]:
    """One result per image: {path, detections} or {path, error} for an unreadable file.

    Images are read, classified and annotated ``chunk`` at a time, so a folder of any size
    needs the memory of one chunk; ``on_total(n)`` is told the number of files once, and
    ``progress(n)`` is called after each chunk. ``tta`` None: the model's own (``pred.tta``)."""
    faces = faces or ("crop" if pred.faces in ("crop", "require") else "none")
    tta = tta or pred.tta
    if annotate_dir:
        refuse_inside(annotate_dir, paths, "--annotate folder")
    files = expand_paths(paths)
    names = annotated_names([str(f) for f in files])  # from the inputs alone: the same run, the same names
    if annotate_dir:
        check_annotate_dir(annotate_dir, names)
    if on_total:
        on_total(len(files))
    results = []
    for start in range(0, len(files), chunk):
        good, images = [], []
        for f, name in zip(files[start:start + chunk], names[start:start + chunk]):
            try:
                images.append(read_image(f))
                good.append(({"path": str(f), "size": [images[-1].shape[1], images[-1].shape[0]]}, name))
                results.append(good[-1][0])
            except DataError as exc:
                results.append({"path": str(f), "error": str(exc)})
        for (r, name), image, detections in zip(good, images, classify_images(pred, images, faces, topk, tta)):
            r["detections"] = detections
            if annotate_dir:
                r["annotated"] = str(Path(annotate_dir) / name)
                _write_annotated(Path(r["annotated"]), image, detections)
        if progress:
            progress(len(files[start:start + chunk]))
    return results


def annotated_names(paths: list[str]) -> list[str]:
    """One output file name per input: its stem, with -2, -3... where stems repeat (a/1.jpg and
    b/1.jpg must not overwrite each other)."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png")
    return names


def draw_detections(image: np.ndarray, detections: list[dict[str, Any]]) -> np.ndarray:
    """A copy of ``image`` with each box and its top class and probability drawn."""
    import cv2

    canvas = np.ascontiguousarray(image.copy())
    scale = max(0.4, min(image.shape[:2]) / 500)
    for d in detections:
        top = d["top"][0]
        label = f"{top['class']} {top['probability']:.2f}"
        x, y, w, h = d["box"] or (0, 0, image.shape[1] - 1, image.shape[0] - 1)
        cv2.rectangle(canvas, (x, y), (x + w, y + h), (0, 220, 0), max(1, int(2 * scale)))
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = max(th + 4, y)
        cv2.rectangle(canvas, (x, ty - th - 4), (x + tw + 4, ty), (0, 220, 0), -1)
        cv2.putText(canvas, label, (x + 2, ty - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


ANNOTATED_BY = ("Software", "ftkit predict --annotate")  # a PNG text chunk that marks the images it writes


def check_annotate_dir(folder: str | Path, names: list[str]) -> None:
    """Refuse, before any image is written, an --annotate folder where a file of one of the
    output names is not an annotated image ftkit wrote (an earlier run's are replaced)."""
    for name in names:
        path = Path(folder) / name
        if path.exists() and not _annotated_by_ftkit(path):
            raise UsageError(f"--annotate {folder}: {path} exists and is not an annotated image ftkit wrote: nothing was "
                             "written; give another folder, or move that file")


def _annotated_by_ftkit(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get(ANNOTATED_BY[0]) == ANNOTATED_BY[1]
    except UNREADABLE:
        return False


def _write_annotated(path: Path, image: np.ndarray, detections) -> None:
    marked = PngImagePlugin.PngInfo()
    marked.add_text(*ANNOTATED_BY)
    atomic_write(path, lambda f: Image.fromarray(draw_detections(image, detections)).save(f, format="PNG", pnginfo=marked),
                 mode="wb")


# --- prediction files --------------------------------------------------------------------

# files that `ftkit predict MODEL FILE` reads as a video (as --video FILE), by their suffix
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}


# The first columns of the predictions CSVs, before one probability column per class: what
# writes them and what recognises an earlier one (check_prediction_file) read them here.
IMAGE_COLUMNS = ("path", "face", "region", "box", "predicted", "probability", "error")
FRAME_COLUMNS = ("frame", "time_s", "face", "region", "box", "predicted", "probability")


PREDICTION_FILES = (".csv", ".json", ".jsonl")


def _prediction_kind(path: Path) -> str:
    """The suffix that says how predictions are written to ``path``; refused when unknown."""
    suffix = path.suffix.lower()
    if suffix not in PREDICTION_FILES:
        raise UsageError(f"--output must end in {', '.join(PREDICTION_FILES)}, got {path.name}")
    return suffix


def check_prediction_file(path: str | Path) -> None:
    """Refuse, before any work is done, an --output name of an unknown kind, or one that would
    replace a file that is not an earlier predictions file of ftkit's (`--output fer2013.csv`
    must not overwrite the data set)."""
    path = Path(path)
    _prediction_kind(path)
    if path.exists() and not _earlier_predictions(path):
        raise UsageError(f"--output {path} exists and is not an earlier ftkit predictions file: nothing was written; "
                         "give another name, or delete it first")


def _earlier_predictions(path: Path) -> bool:
    """Whether ``path`` begins as ftkit writes predictions: the CSV header of images or video
    frames, or JSON/JSONL records with detections (an empty one is an earlier run's too)."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(4096).decode("utf-8", errors="replace")
    if path.suffix.lower() == ".csv":
        return head.startswith(tuple(",".join(columns) + "," for columns in (IMAGE_COLUMNS, FRAME_COLUMNS)))
    return head.strip() in ("", "[]") or '"detections"' in head


def write_prediction_file(path: Path, records: list[dict[str, Any]], rows) -> None:
    """Write predictions as JSON or JSONL (``records``, one per image or analysed frame) or
    as CSV (``rows``, header first), by the file's suffix. Whether an existing file may be
    replaced was decided before the work, by ``check_prediction_file``."""
    suffix = _prediction_kind(path)
    if suffix == ".json":
        write_json(path, records)
    elif suffix == ".jsonl":
        write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    else:
        atomic_write(path, lambda f: csv.writer(f).writerows(rows))


def prediction_rows(results: list[dict[str, Any]], classes: list[str]):
    """Header, then one row per detection (or per unreadable file)."""
    yield [*IMAGE_COLUMNS, *[f"p_{c}" for c in classes]]
    for r in results:
        if "error" in r:
            yield [r["path"], "", "", "", "", "", r["error"], *[""] * len(classes)]
            continue
        if not r["detections"]:
            yield [r["path"], "", "", "", "", "", "no face found", *[""] * len(classes)]
        for i, d in enumerate(r["detections"]):
            top = d["top"][0]
            box = " ".join(map(str, d["box"])) if d["box"] else ""
            yield [r["path"], i, d["region"], box, top["class"], f"{top['probability']:.6f}", "",
                   *[f"{d['probabilities'][c]:.6f}" for c in classes]]
