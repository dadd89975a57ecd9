"""Scoring a trained run, a named model or an exported file on labeled data: the evaluation
folder it writes, and the notes on scored images the model trained or chose its epoch on."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import shards
from .config import DATA_OVERRIDES, Config, ConfigError, validate
from .data import DataError, ImageDataset, Split, load_data, read_split_listing, resolve_listing
from .distill import teacher_origin
from .evaluation import predict_probs, predict_split, write_predictions
from .export import load_torchscript, read_onnx_metadata
from .fer2013 import seen_counts, seen_label
from .duplicates import DIGESTS, SEEN_SPLITS, holding_part, read_digests
from .images import image_size
from .io import new_folder
from .models import DataConfig
from .report import write_report
from .runs import RunError, ended_early, read_record, slug, update_record, write_args
from .transforms import eval_transform
from .weights import sha256sum
from .zoo import LoadedRun, exported_format, fer2013_digests, load_run


def evaluate_run(run: str | Path, data: str | None = None, split: str = "test", tta: str | None = None,
                 name: str | None = None, device: str = "auto", console=None,
                 overrides: dict[str, Any] | None = None, checkpoint: str = "best") -> tuple[Path, dict[str, Any]]:
    """Score a trained run on another folder / CSV (or a split of its own data).

    ``overrides`` replaces the run's own data settings for the scored images (DATA_OVERRIDES:
    face cropping, class selection), e.g. ``{"faces": "crop"}`` for photos scored by a model
    trained on ready-cropped faces. ``checkpoint`` "last" scores a run's final epoch instead of
    the one its val split chose. Writes predictions.csv and the report files into
    ``RUN/eval/<name>/`` (never over an earlier evaluation) and returns (that folder, the report).
    """
    loaded = load_model(run, device, checkpoint)
    scored = score_run(loaded, data, split, tta, console, overrides=overrides)
    # a named model has no run directory: its evaluations go under runs/<name>/eval/; an exported
    # file's beside it, under eval/, named after it too (several files may share the folder)
    exported = (loaded.source or {}).get("kind") in EXPORT_KINDS
    home = loaded.run or (Path(run).parent if exported else Path("runs") / loaded.name)
    default = (f"{Path(run).name + '-' if exported else ''}{Path(scored.data).stem}-{scored.split}"
               f"{'-' + checkpoint if checkpoint != 'best' else ''}")
    folder = _new_eval_dir(home, name or default)  # taken, empty
    try:
        with new_folder(folder, "evaluation folder") as work:  # whole when it appears, or not at all
            write_predictions(work / "predictions.csv", scored.keys, scored.labels, scored.probs, loaded.classes)
            update_record(work, **{**run_record(loaded), "eval_split": scored.split, "eval_data": scored.data,
                                   "eval_tta": scored.tta, "eval_checkpoint": loaded.checkpoint,
                                   "eval_note": trained_on_note(loaded.label, scored),
                                   "eval_settings": scored.settings})
            write_args(work, {**scored.config.to_dict(), "data": scored.data})
            report = write_report(work, name=str(folder))
    except BaseException:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    return folder, report


EXPORT_KINDS = ("onnx", "torchscript")


def load_model(target: str | Path, device: str = "auto", checkpoint: str = "best") -> LoadedRun:
    """``zoo.load_run`` for anything ``ftkit evaluate`` and ``ftkit ensemble`` score: a run (its
    best or last checkpoint), a named model, or an ``.onnx`` / TorchScript file written by
    ``ftkit export`` (on the CPU, with the classes, preprocessing, face settings and TTA recorded
    in it), so that the file that is deployed can be scored as it is."""
    kind = exported_format(target)
    if kind is None:
        return load_run(target, device, checkpoint)
    path = Path(target)
    if not path.is_file():
        raise DataError(f"{kind} model {path} not found")
    if checkpoint != "best":
        raise ConfigError(f"{path} is an exported file, which holds one set of weights: the {checkpoint} checkpoint "
                          "is a run directory's")
    if device not in ("auto", "cpu"):
        raise ConfigError(f"{path} is scored on the CPU, as ftkit's {kind} runtime runs it; leave out --device {device}, "
                          "or score the run directory or named model it was exported from on the GPU")
    model, meta = (OnnxModel(path), read_onnx_metadata(path)) if kind == "onnx" else load_torchscript(path)
    config = Config(data="", backbone=meta.get("backbone") or Config().backbone, faces=meta.get("faces", "none"),
                    face_margin=meta.get("face_margin", 0.25), face_align=meta.get("face_align", False),
                    face_detector=meta.get("face_detector", "haar" if meta.get("faces", "none") != "none" else "auto"),
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


def seen_in_training(loaded: LoadedRun, keys: list[str], data: str, split: str, record: dict[str, Any],
                     digests: list[bytes | None] | None = None) -> dict[str, int]:
    """How many of the images ``keys`` (``split`` of ``data``) were in the run's train split (it
    learned from them) and in its val split (they chose its best epoch): the same file, by the
    run's own split listing, or a pixel copy of one, by the run's digests and the scored images'
    ``digests`` (when both were decoded). ``record`` is the run's run.json. A named model has
    neither: see ``seen_by_named_model``."""
    if loaded.run is None:
        return seen_by_named_model(loaded, keys, data, split, digests)
    where = [_listed_split(loaded, keys, data), _copied_split(loaded, digests)]
    counts = Counter(next((w[i] for w in where if w and w[i]), None) for i in range(len(keys)))
    # the val split chose the best epoch, and the last one of a run it stopped early; the last
    # epoch of a run that ran all its epochs was chosen by nothing
    chose = loaded.checkpoint == "best" or ended_early(record, loaded.config.epochs)
    return {name: counts[name] for name in SEEN_SPLITS if counts[name] and (name != "val" or chose)}


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
    return seen_by_entry((loaded.source or {}).get("entry") or {}, keys, data, split, digests)


def seen_by_entry(entry: dict[str, Any], keys: list[str], data: str, split: str,
                  digests: list[bytes | None] | None = None) -> dict[str, int]:
    """seen_by_named_model for a manifest entry (or a run.json record of one: ``fer2013_seen``,
    ``fer2013_digests``)."""
    seen = entry.get("fer2013_seen") or {}
    csv_splits = dict.fromkeys(keys, split) if Path(data).suffix.lower() == ".csv" else None  # not carved: split = Usage
    known = fer2013_digests(entry) if seen and digests else {}
    how = ("CSV Usage" if csv_splits else "file name") + (" or pixels" if known else "")
    return {seen_label(part, seen, how): n for part, n in seen_counts(keys, seen, csv_splits, digests, known).items()}


def seen_by_origins(record: dict[str, Any], keys: list[str], data: str, split: str,
                    digests: list[bytes | None] | None = None) -> dict[str, dict[str, int]]:
    """For a run (``record``: its run.json) started from or taught by named models whose manifests
    say which FER2013 parts they trained on and chose their epochs by (run.json keeps their
    ``fer2013_seen``): per model, "NAME (its start)" or "NAME (a teacher)", how many scored images
    are of those parts."""
    teachers = (record.get("distill") or {}).get("teachers") or []
    origins = [((record.get("weights") or {}).get("init"), "its start"), *((teacher_origin(t), "a teacher") for t in teachers)]
    counted = {f"{origin['name']} ({role})": seen_by_entry(origin, keys, data, split, digests)
               for origin, role in origins if origin and origin.get("fer2013_seen")}
    return {who: counts for who, counts in counted.items() if counts}


def trained_on_note(label: str, scored: Scored) -> str | None:
    """Why these scores are not held out, when some scored images are ones the run trained on
    or chose its best epoch by (the file, or a pixel copy of it); None when none are. The counts
    are by the run's own split ("train", "val") or, for a named model, by the FER2013 part they
    are marked as."""
    seen = scored.settings.get("seen_in_training") or {}
    origins = scored.settings.get("seen_by_origins") or {}
    if not seen and not origins:
        return None
    text = {"train": "in its training split", "val": "in its validation split, which chose its best epoch"}
    parts = [f"{n} {text[name]}" if name in text else f"{n} {name}" for name, n in seen.items()]
    how = " (the same files, or pixel copies of them)" if set(seen) & set(text) else ""
    said = [f"{label} had {' and '.join(parts)}{how}"] if seen else []
    said += [f"{who} had {' and '.join(f'{n} {part}' for part, n in counts.items())}" for who, counts in origins.items()]
    return f"of the {len(scored.keys)} images scored, {'; '.join(said)}"


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
        dataset = load_data(cfg, console=console, classes=loaded.classes, carve=False, only=split)
    else:
        key = data_key(cfg, loaded.classes, split)
        if key not in datasets:
            datasets[key] = load_data(cfg, console=console, classes=loaded.classes, carve=False, only=split)
        dataset = datasets[key]
    chosen = split if split in dataset.splits else ("all" if "all" in dataset.splits else None)
    if chosen is None:
        raise DataError(f"split {split!r} not found in {cfg.data}; it has: {', '.join(dataset.splits)}")
    loader = torch.utils.data.DataLoader(ImageDataset(dataset.splits[chosen], eval_transform(loaded.data_config)), batch_size=128)
    if progress:
        progress(total=len(dataset.splits[chosen].keys))
    probs, labels, _ = predict_probs(loaded.model, loader, loaded.device, tta or loaded.config.tta,
                                     progress=progress and (lambda n: progress(advance=n)))
    keys, digests = dataset.splits[chosen].keys, dataset.split_digests().get(chosen)
    record = read_record(loaded.run) if loaded.run is not None else {}
    settings = {"overridden": overrides, "class_map": dataset.class_map, "faces": dataset.faces,
                "whole_images": None if "faces" in overrides else whole_image_note(dataset.splits[chosen], cfg, loaded),
                "skipped": len(dataset.skipped),
                "seen_in_training": seen_in_training(loaded, keys, cfg.data, chosen, record, digests),
                "seen_by_origins": seen_by_origins(record, keys, cfg.data, chosen, digests)}
    return Scored(keys, labels, probs, chosen, cfg.data, tta or loaded.config.tta, cfg, settings)


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


def data_key(cfg: Config, classes: list[str], split: str) -> str:
    """What load_data's result depends on when scoring ``split``: those settings, the class
    order, and the split file by content (every run keeps its own copy of the same split.csv)."""
    settings = {f: getattr(cfg, f) for f in _SCORING_DATA_FIELDS} | {"scored split": split}
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
