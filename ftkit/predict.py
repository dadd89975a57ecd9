"""Using a trained run: load its best model, score it on other data, predict single images."""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from . import shards
from .config import DATA_OVERRIDES, Config, ConfigError, validate
from .data import (DataError, ImageDataset, Split, image_files, load_data, read_image, read_split_listing,
                   refuse_archive, resolve_listing)
from .errors import UsageError
from .evaluation import predict_probs, predict_split, tta_probs, write_predictions
from .export import load_torchscript, read_onnx_metadata
from .faces import aligned_crop, centre_crop, detect_faces, square_crop
from .fer2013 import seen_counts, seen_label
from .duplicates import DIGESTS, SEEN_SPLITS, holding_part, read_digests
from .images import UNREADABLE, image_size, walk_files
from .io import atomic_write, new_folder, refuse_inside, temp_beside, write_json, write_text
from .models import DataConfig
from .report import write_report
from .runs import RunError, read_record, slug, update_record, write_args
from .transforms import eval_transform
from .weights import sha256sum
from .zoo import LoadedRun, exported_format, fer2013_digests, load_run


def evaluate_run(run: str | Path, data: str | None = None, split: str = "test", tta: str | None = None,
                 name: str | None = None, device: str = "auto", console=None,
                 overrides: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Score a trained run on another folder / CSV (or a split of its own data).

    ``overrides`` replaces the run's own data settings for the scored images (DATA_OVERRIDES:
    face cropping, class selection), e.g. ``{"faces": "crop"}`` for photos scored by a model
    trained on ready-cropped faces. Writes predictions.csv and the report files into
    ``RUN/eval/<name>/`` (never over an earlier evaluation) and returns (that folder, the report).
    """
    loaded = load_model(run, device)
    scored = score_run(loaded, data, split, tta, console, overrides=overrides)
    # a named model has no run directory: its evaluations go under runs/<name>/eval/; an exported
    # file's beside it, under eval/, named after it too (several files may share the folder)
    exported = (loaded.source or {}).get("kind") in EXPORT_KINDS
    home = loaded.run or (Path(run).parent if exported else Path("runs") / loaded.name)
    default = f"{Path(run).name + '-' if exported else ''}{Path(scored.data).stem}-{scored.split}"
    folder = _new_eval_dir(home, name or default)  # taken, empty
    try:
        with new_folder(folder, "evaluation folder") as work:  # whole when it appears, or not at all
            write_predictions(work / "predictions.csv", scored.keys, scored.labels, scored.probs, loaded.classes)
            update_record(work, **{**run_record(loaded), "eval_split": scored.split, "eval_data": scored.data,
                                   "eval_tta": scored.tta, "eval_note": trained_on_note(loaded.label, scored),
                                   "eval_settings": scored.settings})
            write_args(work, {**scored.config.to_dict(), "data": scored.data})
            report = write_report(work, name=str(folder))
    except BaseException:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    return folder, report


EXPORT_KINDS = ("onnx", "torchscript")


def load_model(target: str | Path, device: str = "auto") -> LoadedRun:
    """``zoo.load_run`` for anything ``ftkit evaluate`` and ``ftkit ensemble`` score: a run, a
    named model, or an ``.onnx`` / TorchScript file written by ``ftkit export`` (on the CPU, with
    the classes, preprocessing, face settings and TTA recorded in it), so that the file that is
    deployed can be scored as it is."""
    kind = exported_format(target)
    if kind is None:
        return load_run(target, device)
    path = Path(target)
    if not path.is_file():
        raise DataError(f"{kind} model {path} not found")
    if device not in ("auto", "cpu"):
        raise ConfigError(f"{path} is scored on the CPU, as ftkit's {kind} runtime runs it; leave out --device {device}, "
                          "or score the run directory or named model it was exported from on the GPU")
    model, meta = (OnnxModel(path), read_onnx_metadata(path)) if kind == "onnx" else load_torchscript(path)
    config = Config(data="", backbone=meta.get("backbone") or Config().backbone, faces=meta.get("faces", "none"),
                    face_margin=meta.get("face_margin", 0.25), face_align=meta.get("face_align", False),
                    tta=meta.get("tta", "none"))
    source = {"kind": kind, "name": str(path), "path": str(path), "sha256": sha256sum(path), "backbone": meta.get("backbone"),
              "classes": meta["classes"], "exported_from": meta.get("run"), "entry": {"backbone": meta.get("backbone")}}
    return LoadedRun(None, model, meta["classes"], export_data_config(meta), config, torch.device("cpu"), str(path), source)


class OnnxModel(torch.nn.Module):
    """An ONNX Runtime session (CPU) as a module: a float32 NCHW batch in, logits out."""

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        super().__init__()
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run(None, {"input": batch})[0])


def export_data_config(meta: dict[str, Any]) -> DataConfig:
    """The preprocessing that ``ftkit export`` records in a file."""
    return DataConfig(**{k: meta[k] for k in ("img_size", "channels", "grayscale", "mean", "std", "interpolation")})


def run_record(loaded: LoadedRun) -> dict[str, Any]:
    """run.json of a run directory; for a named model, what its manifest says about it."""
    if loaded.run is not None:
        return read_record(loaded.run)
    entry = (loaded.source or {}).get("entry") or {}
    return {"status": "finished", "backbone": entry.get("backbone"), "model": loaded.source,
            "best_epoch": entry.get("best_epoch"), "train_seconds": entry.get("train_seconds")}


def seen_in_training(loaded: LoadedRun, keys: list[str], data: str, split: str,
                     digests: list[bytes | None] | None = None) -> dict[str, int]:
    """How many of the images ``keys`` (``split`` of ``data``) were in the run's train split (it
    learned from them) and in its val split (they chose its best epoch): the same file, by the
    run's own split listing, or a pixel copy of one, by the run's digests and the scored images'
    ``digests`` (when both were decoded). A named model has neither: see ``seen_by_named_model``."""
    if loaded.run is None:
        return seen_by_named_model(loaded, keys, data, split, digests)
    where = [_listed_split(loaded, keys, data), _copied_split(loaded, digests)]
    counts = Counter(next((w[i] for w in where if w and w[i]), None) for i in range(len(keys)))
    return {name: counts[name] for name in SEEN_SPLITS if counts[name]}


def _listed_split(loaded: LoadedRun, keys: list[str], data: str) -> list[str | None] | None:
    """Per scored image, the split (train or val) of the run's that lists the same file."""
    listing = loaded.run / "split.csv"
    if not listing.is_file():
        return None
    own, given = Path(loaded.config.data), Path(data)
    if given.is_file() and not (own.is_file() and (own.samefile(given) or (
            own.stat().st_size == given.stat().st_size and sha256sum(own) == sha256sum(given)))):
        return None  # a CSV's keys are its file name and line: another CSV of that name is other images
    items = resolve_listing(read_split_listing(listing), Path(loaded.config.data))
    where = {os.path.abspath(key): name for name in SEEN_SPLITS for key, _ in items.get(name, [])}
    return [where.get(os.path.abspath(key)) for key in keys]


def _copied_split(loaded: LoadedRun, digests: list[bytes | None] | None) -> list[str | None] | None:
    """Per scored image, the split (train or val) of the run's that holds a pixel copy of it."""
    seen = read_digests(loaded.run / DIGESTS) if digests else {}
    return holding_part(digests, seen, SEEN_SPLITS) if seen else None


def far_larger(size: tuple[int, int] | list[int], side: int) -> bool:
    """An image (width, height) over twice a model's input side: a photo, not a face crop, when
    the model was trained on crops; what the whole-image notes of evaluate and predict count."""
    return min(size) > 2 * side


def whole_image_note(split: Split, cfg: Config, loaded: LoadedRun, sample: int = 16) -> str | None:
    """Said when the images scored are photos far larger than the model's input, scored whole
    because the model was trained without face cropping (a FER2013 model given photos of people);
    judged on the first ``sample`` images. None otherwise."""
    if cfg.faces != "none" or not len(split):
        return None
    side = loaded.data_config.img_size
    sizes = ([(img.shape[1], img.shape[0]) for img in split.images[:sample]] if split.images is not None
             else [size for size in map(image_size, split.keys[:sample]) if size])
    large = [size for size in sizes if far_larger(size, side)]
    if not sizes or len(large) * 2 < len(sizes):
        return None
    return (f"the images scored (e.g. {large[0][0]}x{large[0][1]}) are over twice {loaded.label}'s {side}-pixel input and "
            "were scored whole, as it was trained (no face cropping); for photos of people, add --faces crop")


def seen_by_named_model(loaded: LoadedRun, keys: list[str], data: str, split: str,
                        digests: list[bytes | None] | None = None) -> dict[str, int]:
    """For a named model whose manifest says which FER2013 parts it trained on and chose its
    epoch by (``fer2013_seen``: {"train": "Training", "val": "PublicTest"}): how many of the
    scored images are FER2013 images of those parts. A FER2013 CSV's split is its Usage; image
    folders written from FER2013 (``ftkit data convert``, the Kaggle image releases) name each
    file by it: ``Training_<id>``, ``PublicTest_<id>``. With the scored images' pixel ``digests``
    and the model's ``fer2013_digests``, a FER2013 image under another name is counted too."""
    entry = (loaded.source or {}).get("entry") or {}
    seen = entry.get("fer2013_seen") or {}
    csv_splits = dict.fromkeys(keys, split) if Path(data).suffix.lower() == ".csv" else None  # not carved: split = Usage
    known = fer2013_digests(entry) if seen and digests else {}
    how = ("CSV Usage" if csv_splits else "file name") + (" or pixels" if known else "")
    return {seen_label(part, seen, how): n for part, n in seen_counts(keys, seen, csv_splits, digests, known).items()}


def trained_on_note(label: str, scored: Scored) -> str | None:
    """Why these scores are not held out, when some scored images are ones the run trained on
    or chose its best epoch by (the file, or a pixel copy of it); None when none are. The counts
    are by the run's own split ("train", "val") or, for a named model, by the FER2013 part they
    are marked as."""
    seen = scored.settings.get("seen_in_training") or {}
    if not seen:
        return None
    text = {"train": "in its training split", "val": "in its validation split, which chose its best epoch"}
    parts = [f"{n} {text[name]}" if name in text else f"{n} {name}" for name, n in seen.items()]
    how = " (the same files, or pixel copies of them)" if set(seen) & set(text) else ""
    return f"of the {len(scored.keys)} images scored, {label} had {' and '.join(parts)}{how}"


@dataclass
class Scored:
    """A run's class probabilities on one split: ``probs[i]`` belongs to image ``keys[i]``."""

    keys: list[str]
    labels: np.ndarray
    probs: np.ndarray
    split: str
    data: str
    tta: str
    config: Config | None = None  # the run's config with the data settings the images were scored with
    settings: dict[str, Any] | None = None  # what was overridden, classes renamed, face-cropping counts


def score_run(loaded: LoadedRun, data: str | None = None, split: str = "test", tta: str | None = None,
              console=None, progress=None, datasets: dict | None = None,
              overrides: dict[str, Any] | None = None) -> Scored:
    """Class probabilities of a loaded run on ``split`` of ``data`` (default: its own data and split).

    ``progress(total=None, advance=None)`` is told the split's size once, then each batch's.
    ``datasets``, a dict the caller keeps, lets runs whose data settings and split file say the
    same thing share one decoded copy of the data (an ensemble decodes a 290 MB CSV once).
    ``overrides`` replaces data settings of the run (only DATA_OVERRIDES)."""
    if loaded.run is None and not data:
        raise DataError(f"{loaded.name} has no data of its own (a named model or an exported file): give the images to "
                        "score with --data")
    overrides = dict(overrides or {})
    other = sorted(set(overrides) - set(DATA_OVERRIDES))
    if other:
        raise ConfigError(f"scoring can replace only the data settings {', '.join(DATA_OVERRIDES)}; not {', '.join(other)}")
    if not data and not shards.source_exists(loaded.config.data):
        raise DataError(f"{loaded.name} trained on {loaded.config.data}, which is not there any more: if it moved, record "
                        f"its new place with ftkit finetune --resume {loaded.name} --data NEW_PLACE (a finished run too; "
                        "then its own split is scored again), or give other images to score with --data")
    # the data's absolute place, as a run records its own: the scores' record, predictions.csv and
    # report.html's thumbnails stay right when read from another folder
    if overrides.get("splits"):  # a listing of the scored images (a labels CSV): where it is, wherever read from
        overrides["splits"] = os.path.abspath(overrides["splits"])
    own = None if data else str(loaded.run / "split.csv")
    cfg = validate(replace(loaded.config, data=os.path.abspath(data) if data else loaded.config.data,
                           **{"splits": own, **overrides}))
    if overrides.get("face_align") and cfg.faces == "none":
        raise ConfigError("face_align levels the eyes of detected faces: give faces crop or require with it")
    if shards.shard_root(cfg.data):
        fixed = sorted(set(overrides) & set(_SHARD_FIXED))
        if fixed:
            raise ConfigError(f"{cfg.data} holds shards, whose {', '.join(fixed)} were fixed when they were written: "
                              "score the source folder instead, or write the shards with these settings")
        return _score_shards(loaded, cfg, split, tta, progress)
    if datasets is None:
        dataset = load_data(cfg, console=console, classes=loaded.classes, carve=False)
    else:
        key = data_key(cfg, loaded.classes)
        if key not in datasets:
            datasets[key] = load_data(cfg, console=console, classes=loaded.classes, carve=False)
        dataset = datasets[key]
    chosen = split if split in dataset.splits else ("all" if "all" in dataset.splits else None)
    if chosen is None:
        raise DataError(f"split {split!r} not found in {cfg.data}; it has: {', '.join(dataset.splits)}")
    loader = torch.utils.data.DataLoader(ImageDataset(dataset.splits[chosen], eval_transform(loaded.data_config)), batch_size=128)
    if progress:
        progress(total=len(dataset.splits[chosen].keys))
    probs, labels, _ = predict_probs(loaded.model, loader, loaded.device, tta or loaded.config.tta,
                                     progress=progress and (lambda n: progress(advance=n)))
    settings = {"overridden": overrides, "class_map": dataset.class_map, "faces": dataset.faces,
                "whole_images": None if "faces" in overrides else whole_image_note(dataset.splits[chosen], cfg, loaded),
                "skipped": len(dataset.skipped),
                "seen_in_training": seen_in_training(loaded, dataset.splits[chosen].keys, cfg.data, chosen,
                                                     dataset.split_digests().get(chosen))}
    return Scored(dataset.splits[chosen].keys, labels, probs, chosen, cfg.data, tta or loaded.config.tta, cfg, settings)


def _score_shards(loaded: LoadedRun, cfg: Config, split: str, tta: str | None, progress) -> Scored:
    """score_run on streamed shards: their split as written, labels in the model's class order."""
    dataset = shards.load_shards(replace(cfg, **{f: getattr(Config(), f) for f in _SHARD_FIXED}))
    unknown = [c for c in dataset.classes if c not in loaded.classes]
    if unknown:
        raise DataError(f"class(es) {', '.join(unknown)} in {cfg.data} are unknown to the model (it knows {', '.join(loaded.classes)})")
    if split not in dataset.splits:
        raise DataError(f"split {split!r} not found in {cfg.data}; it has: {', '.join(dataset.splits)}")
    chosen = dataset.splits[split]
    loader = torch.utils.data.DataLoader(shards.ShardStream(chosen, eval_transform(loaded.data_config)), batch_size=128)
    if progress:
        progress(total=len(chosen))
    probs, labels, _ = predict_split(loaded.model, loader, loaded.device, tta or loaded.config.tta,
                                     progress=progress and (lambda n: progress(advance=n)))
    to_model = np.array([loaded.classes.index(c) for c in dataset.classes])
    return Scored(chosen.keys, to_model[labels], probs, split, cfg.data, tta or loaded.config.tta, cfg,
                  {"overridden": {}, "class_map": {}, "faces": None, "skipped": 0})


# Fixed when shards are written: a model's own settings for them do not apply to shards.
_SHARD_FIXED = ("label_from", "splits", "classes", "drop_classes", "merge_classes", "faces", "shots", "folds", "group_by",
                "sampler", "head")

# The settings load_data reads when it carves no split (carve=False, as in scoring).
_SCORING_DATA_FIELDS = ("data", "splits", "strict", "label_from", "classes", "drop_classes", "merge_classes", "faces", "face_margin",
                        "face_align", "cache", "cache_mb")


def data_key(cfg: Config, classes: list[str]) -> str:
    """What load_data's result depends on when scoring: those settings, the class order, and
    the split file by content (every run keeps its own copy of the same split.csv)."""
    settings = {f: getattr(cfg, f) for f in _SCORING_DATA_FIELDS}
    if cfg.splits:
        settings["splits"] = sha256sum(cfg.splits)
    return json.dumps([settings, classes], sort_keys=True, default=str)


def _new_eval_dir(run: Path, name: str) -> Path:
    """A new folder under RUN/eval/ named after ``name`` made safe as one folder name
    (--name ../x must not write outside the run)."""
    name = slug(name)
    for i in range(1, 10_000):
        folder = run / "eval" / (name if i == 1 else f"{name}-{i}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise RunError(f"too many evaluations named {name} in {run}")


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
                 face_margin: float = 0.25, face_align: bool = False, tta: str = "none"):
        self.classes = classes
        self.data_config = data_config
        self.transform = eval_transform(data_config)
        self._forward = forward  # float32 NCHW numpy -> logits numpy
        self.name = name
        self.faces = faces  # the face setting the model was trained with
        self.face_margin = face_margin
        self.face_align = face_align  # level the eyes before cropping, as the model's training did
        self.tta = tta  # the test-time augmentation the model's own scores were measured with

    @classmethod
    def from_run(cls, run: str | Path, device: str = "auto") -> "Predictor":
        """A run directory or a named model (see ftkit.zoo)."""
        loaded = load_run(run, device)

        @torch.no_grad()
        def forward(x: np.ndarray) -> np.ndarray:
            return loaded.model(torch.from_numpy(x).to(loaded.device)).float().cpu().numpy()

        return cls(loaded.classes, loaded.data_config, forward, loaded.label, loaded.config.faces, loaded.config.face_margin,
                   loaded.config.face_align, loaded.config.tta)

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
                   meta.get("tta", "none"))

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


def regions(image: np.ndarray, faces: str, margin: float, align: bool = False) -> list[tuple[str, list[int] | None, np.ndarray]]:
    """(region, box, crop) triples to classify, region being "image" (the whole image), "face"
    or "centre" (``align``: each face turned so its eyes are level, see
    ``ftkit.faces.aligned_crop``).

    ``faces='crop'`` falls back to a centre crop (box None) when no face is found;
    ``faces='all'`` returns no region at all then.
    """
    if faces == "none":
        return [("image", None, image)]
    boxes = detect_faces(image)
    crop = aligned_crop if align else square_crop
    if faces == "all":
        return [("face", [b.x, b.y, b.w, b.h], crop(image, b, margin)) for b in boxes]
    if not boxes:
        return [("centre", None, centre_crop(image))]
    b = boxes[0]
    return [("face", [b.x, b.y, b.w, b.h], crop(image, b, margin))]


def classify_images(pred: Predictor, images: list[np.ndarray], faces: str, topk: int = 3, tta: str = "none"):
    """Per image, a list of detections: {region, box, top: [{class, probability}...], probabilities};
    region: "face", "image" (the whole image) or "centre" (a centre crop: no face was found)."""
    found = [regions(img, faces, pred.face_margin, pred.face_align) for img in images]
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


# --- video and camera --------------------------------------------------------------------

VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
# files that `ftkit predict MODEL FILE` reads as a video (as --video FILE), by their suffix
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}


def check_video_out(out: str | Path, source: str | None) -> None:
    """Refuse, before any frame is read, a video output OpenCV cannot write or one that would
    overwrite the input."""
    out = Path(out)
    if out.suffix.lower() not in VIDEO_CODECS:
        raise UsageError(f"--out {out.name}: the annotated video must end in " + " or ".join(VIDEO_CODECS))
    if source is not None and Path(source).exists() and out.exists() and out.samefile(source):
        raise UsageError(f"--out {out} is the input video; choose another file name")
    # an earlier annotated video (with its track beside it) is replaced; another video, or a
    # file of someone's where the track would go, is not
    track = out.with_suffix(".jsonl")
    if track.exists() and not _earlier_predictions(track):
        raise UsageError(f"--out {out}: its track would go to {track}, which exists and is not an earlier ftkit track: "
                         "nothing was written; choose another file name")
    if out.exists() and not track.is_file():
        raise UsageError(f"--out {out} exists and is not an annotated video ftkit wrote (it writes {track.name} beside "
                         "one): nothing was written; choose another file name, or delete it first")


def predict_video(pred: Predictor, source: str | int, out: str | Path | None, every: int = 1, topk: int = 3,
                  tta: str = "none", faces: str = "all", max_frames: int | None = None, progress=None,
                  on_frame=None, on_total=None) -> dict[str, Any]:
    """Classify the faces of every ``every``-th frame of a file or a camera (``source``).

    ``on_frame(row)`` gets each analysed frame's {frame, time_s, detections} as it comes;
    ``progress(n, row)`` is called once per frame (row: the latest analysed frame), and
    ``on_total(n)`` once with the number of frames to expect (None for a camera). With ``out``
    the annotated video is written beside as a temporary file and renamed when it is complete,
    and its JSONL track goes beside it. Ctrl-C ends the stream early (how a camera is stopped):
    what was read so far is kept and ``stopped`` is True."""
    import cv2

    if isinstance(source, str) and not Path(source).is_file():
        raise DataError(f"video {source} not found" if not Path(source).exists() else f"video {source} is not a file")
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # its warnings for an absent camera: ours says it
    try:
        capture = cv2.VideoCapture(source)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not capture.isOpened():
        raise DataError(f"cannot open camera {source}: no camera at that index" if isinstance(source, int)
                        else f"cannot open video {source}: a format OpenCV cannot decode (convert it to .mp4, e.g. with ffmpeg)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if isinstance(source, str) else 0
    total = min(count, max_frames) if count > 0 and max_frames else (count if count > 0 else max_frames)
    if on_total:
        on_total(total)
    writer, tmp, track, frames, detections, stopped = None, None, [], 0, [], False
    try:
        while max_frames is None or frames < max_frames:
            try:
                ok, bgr = capture.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                if frames % every == 0:
                    detections = classify_images(pred, [rgb], faces, topk, tta)[0]
                    track.append({"frame": frames, "time_s": round(frames / fps, 3), "detections": detections})
                    if on_frame:
                        on_frame(track[-1])
                if out:
                    if writer is None:
                        writer, tmp = _video_writer(Path(out), fps, rgb.shape[1], rgb.shape[0])
                    writer.write(cv2.cvtColor(draw_detections(rgb, detections), cv2.COLOR_RGB2BGR))
                frames += 1
                if progress:
                    progress(1, track[-1] if track else None)
            except KeyboardInterrupt:
                stopped = True
                break
        if writer is not None:
            writer.release()
            writer = None
            if frames:
                os.replace(tmp, out)
                tmp = None
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    if frames == 0:
        raise DataError(f"no frames could be read from {source}" + (" (stopped by Ctrl-C)" if stopped else ""))
    track_path = Path(out).with_suffix(".jsonl") if out else None
    if track_path:
        write_text(track_path, "".join(json.dumps(t) + "\n" for t in track))
    return {"frames": frames, "analysed": len(track), "fps": fps, "stopped": stopped,
            "video": str(out) if out else None, "track": str(track_path) if track_path else None, "track_rows": track}


def _video_writer(out: Path, fps: float, width: int, height: int):
    """An OpenCV writer into a new temporary file beside ``out`` (same suffix, so that OpenCV
    picks the same container), and that file's name."""
    import cv2

    tmp = str(temp_beside(out, ".tmp" + out.suffix))
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*VIDEO_CODECS[out.suffix.lower()]), fps, (width, height))
    if not writer.isOpened():
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"OpenCV cannot write the video {out}: no {out.suffix} encoder in this build")
    return writer, tmp


def video_summary(track: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """Per class, over every face classified in the analysed frames: how often it came out on
    top and its mean probability; and how many analysed frames had a face."""
    found = [d for t in track for d in t["detections"]]
    top = [d["top"][0]["class"] for d in found]
    per_class = {c: {"top": top.count(c), "share": top.count(c) / len(found) if found else 0.0,
                     "mean_probability": float(np.mean([d["probabilities"][c] for d in found])) if found else 0.0}
                 for c in classes}
    return {"analysed": len(track), "with_face": sum(bool(t["detections"]) for t in track), "faces": len(found),
            "per_class": per_class}


# The first columns of the predictions CSVs, before one probability column per class: what
# writes them and what recognises an earlier one (check_prediction_file) read them here.
IMAGE_COLUMNS = ("path", "face", "region", "box", "predicted", "probability", "error")
FRAME_COLUMNS = ("frame", "time_s", "face", "region", "box", "predicted", "probability")


def video_rows(track: list[dict[str, Any]], classes: list[str]):
    """Header, then one row per face of each analysed frame (a row with no class where none was found)."""
    yield [*FRAME_COLUMNS, *[f"p_{c}" for c in classes]]
    for t in track:
        if not t["detections"]:
            yield [t["frame"], t["time_s"], "", "", "", "", "", *[""] * len(classes)]
        for i, d in enumerate(t["detections"]):
            top = d["top"][0]
            yield [t["frame"], t["time_s"], i, d["region"], " ".join(map(str, d["box"])) if d["box"] else "", top["class"],
                   f"{top['probability']:.6f}", *[f"{d['probabilities'][c]:.6f}" for c in classes]]


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
