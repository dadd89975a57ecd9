"""Data: find labeled images, split them, decode them once, and serve them to the model.

Supported sources
- ``DIR/train/<class>/*`` with optional ``DIR/val/`` and ``DIR/test/`` (a missing val split
  is carved out of train, stratified by class);
- a flat ``DIR/<class>/*``, split into train/val/test stratified by class;
- a FER2013 Kaggle CSV (see :mod:`ftkit.fer2013`);
- a ``split.csv`` written by an earlier run (``--splits``), to reuse its exact split.

Every source ends up as a :class:`DataSplits`: class names plus, per split, a list of keys
(file paths or CSV row ids) and integer labels, with decoded uint8 images when cached.
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image

from . import fer2013
from .config import Config, suggest, validate
from .duplicates import Duplicates, copies_note, find_duplicates, pixel_digest
from .faces import BoxCache, crop_faces
from .images import (  # noqa: F401 (re-exported)
    IMAGE_EXTENSIONS, UNREADABLE, DataError, dangling_link, decode_all, has_images, image_files, not_data, read_image, refuse_archive,
    verify_image, walk_files,
)
from .io import atomic_write
from .progress import progress_bar

SPLITS = ("train", "val", "test")


# --- the data set in memory --------------------------------------------------------------


@dataclass
class Split:
    keys: list[str]  # file paths (or CSV row ids) in a fixed order
    labels: np.ndarray  # integer class index per key
    images: list[np.ndarray] | None = None  # decoded RGB uint8 images when cached
    shards: list[tuple[str, int]] | None = None  # WebDataset tar files and their image counts, when streamed from shards

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, index: Iterable[int]) -> "Split":
        index = list(index)
        images = [self.images[i] for i in index] if self.images is not None else None
        return Split([self.keys[i] for i in index], self.labels[index], images)

    def counts(self, n_classes: int) -> list[int]:
        return np.bincount(self.labels, minlength=n_classes).tolist()


@dataclass
class DataSplits:
    classes: list[str]  # class names; index = label
    splits: dict[str, Split]  # "train", "val" and optionally "test"
    source: str  # folders | flat | csv | splits-file
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file or row, reason)
    class_map: dict[str, str] = field(default_factory=dict)  # original -> kept class name
    faces: dict | None = None  # face-cropping counts (found / fallback / skipped), when cropping
    notes: list[str] = field(default_factory=list)  # what the data layer decided, for the run record
    csv_splits: dict[str, str] | None = None  # a FER2013 CSV's rows: the split each was read into (its Usage)
    digests: dict[str, bytes] | None = None  # key -> pixel digest of its decoded image (before face cropping), when cached

    def split_digests(self) -> dict[str, list[bytes]]:
        """Per split, the pixel digests of its images (when they were taken: decoded data)."""
        return {name: [self.digests[k] for k in split.keys] for name, split in self.splits.items()} if self.digests else {}

    @property
    def eval_split(self) -> str:
        """The split a finished run reports on: test when there is one, otherwise val."""
        return "test" if "test" in self.splits else "val"

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            name: dict(zip(self.classes, split.counts(len(self.classes))))
            for name, split in self.splits.items()
        }

    def classes_without_images(self, name: str) -> list[str]:
        """The classes of which split ``name`` holds no image."""
        return [c for c, n in self.summary()[name].items() if n == 0]


class ImageDataset(torch.utils.data.Dataset):
    """Serves (tensor, label) pairs, from the in-memory cache or decoding each file on demand."""

    def __init__(self, split: Split, transform: Callable[[np.ndarray], torch.Tensor]):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def image(self, i: int) -> np.ndarray:
        if self.split.images is not None:
            return self.split.images[i]
        return read_image(self.split.keys[i])

    def __getitem__(self, i: int):
        return self.transform(self.image(i)), int(self.split.labels[i])


# --- discovering labeled folders ---------------------------------------------------------


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not not_data(Path(p.name)))


def _scan_class_folders(root: Path, skipped: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Map class name -> sorted image paths under ``root/<class>/`` (recursively)."""
    skipped += [(str(p), why) for p in sorted(root.iterdir()) if not not_data(Path(p.name)) and (why := dangling_link(p))]
    found: dict[str, list[str]] = {}
    for class_dir in _class_dirs(root):
        images = []
        for path in sorted(walk_files(class_dir)):
            if reason := _not_an_image(path):
                skipped.append((str(path), reason))
            else:
                images.append(str(path))
        found[class_dir.name] = images
    return found


def _not_an_image(path: Path) -> str | None:
    """Why a file found in a data folder is left out (a dangling link, another kind of file), or None."""
    if broken := dangling_link(path):
        return broken
    return None if path.suffix.lower() in IMAGE_EXTENSIONS else "not an image file"


def _scan_labeled_files(root: Path, pattern: str, skipped: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Map class name -> sorted image paths under ``root`` (recursively), the class being the
    first group (or the match) of ``pattern`` searched in each path relative to ``root``."""
    regex = re.compile(pattern)
    found: dict[str, list[str]] = {}
    for path in sorted(walk_files(root)):
        relative = path.relative_to(root)
        if reason := _not_an_image(path):
            skipped.append((str(path), reason))
            continue
        match = regex.search(relative.as_posix())
        label = first_group(match) if match else None
        if not label:
            raise DataError(f"--label-from {pattern!r} finds no class in {relative.as_posix()} (under {root}): every image "
                            "needs one; widen the pattern, or move the file out of the data folder")
        found.setdefault(label, []).append(str(path))
    return found


def detect_layout(root: Path, labeled: bool = False) -> str:
    """'folders' when root has a train/ folder, 'flat' when it has class folders (or, with
    ``labeled``, images whose names carry their class)."""
    if not root.exists():
        raise DataError(f"data folder {root} does not exist: give a folder of class folders or a FER2013 CSV")
    if not root.is_dir():
        refuse_archive(root, "the folder of class folders it holds")
        single = " (one image: `ftkit predict MODEL FILE` classifies it)" if root.suffix.lower() in IMAGE_EXTENSIONS else ""
        raise DataError(f"{root} is not a folder or a .csv file: give the folder of class folders{single}")

    def is_run(d: Path) -> bool:
        return (d / "args.yaml").is_file() and (d / "run.json").is_file()

    runs = [d.name for d in _class_dirs(root) if is_run(d)]
    if is_run(root) or runs:
        what = "is an ftkit run directory" if is_run(root) else f"holds ftkit run directories ({', '.join(runs[:2])}...)"
        raise DataError(f"{root} {what}, not data: give --data the image folder (or CSV) the runs trained on")
    if (root / "train").is_dir():
        beside = [d.name for d in _class_dirs(root) if d.name not in SPLITS and has_images(d)]
        if beside:  # class folders put next to train/ instead of inside it
            warnings.warn(f"{root} has train/, so only its {', '.join(s + '/' for s in SPLITS)} folders are read; the images "
                          f"in {', '.join(b + '/' for b in beside[:5])}{' ...' if len(beside) > 5 else ''} beside them are "
                          "left out (move them into train/<class>/ to train on them)", stacklevel=2)
        return "folders"
    top = {d.name for d in _class_dirs(root)}
    if top and top <= set(SPLITS):  # val/ and/or test/ only: scored as they are, never trained on
        return "folders"
    if labeled:
        return "flat"
    if not _class_dirs(root):
        raise DataError(f"{root} has no class folders: expected {root}/<class>/*.jpg or {root}/train/<class>/*.jpg, or "
                        "--label-from REGEX when the file names carry the class")
    return "flat"


# --- splits ------------------------------------------------------------------------------


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Assign each index to a split name, per class, deterministically under ``seed``.

    ``fractions`` maps split names (other than 'train') to fractions of each class. A class
    with at least len(fractions)+1 images gets at least one image in every split.
    """
    rng = np.random.default_rng(seed)
    out = np.full(len(labels), "train", dtype=object)
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        index = index[rng.permutation(len(index))]
        start = 0
        for name, frac in fractions.items():
            if frac <= 0:
                continue
            n = int(round(frac * len(index)))
            if len(index) > len(fractions):
                n = max(n, 1)
            out[index[start:start + n]] = name
            start += n
    return out


def first_group(match: re.Match) -> str | None:
    """What a --group-by or --label-from pattern names in a path: its first group, or the
    whole match when it has no group."""
    return match.group(1) if match.re.groups else match.group(0)


def group_keys(keys: list[str], pattern: str) -> np.ndarray:
    """The group of every key: the regex's first group (or whole match) searched in the path."""
    regex = re.compile(pattern)
    out = []
    for key in keys:
        m = regex.search(key)
        if m is None:
            raise DataError(f"--group-by {pattern!r} does not match {key}; every file needs a group")
        out.append(first_group(m))
    return np.array(out, dtype=object)


def grouped_split(labels: np.ndarray, groups: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Like :func:`stratified_split`, but whole groups move together (a subject, a clip).

    Groups are stratified by their most common label, then assigned split by split.
    """
    names, inverse = np.unique(groups, return_inverse=True)
    majority = np.array([np.bincount(labels[inverse == g]).argmax() for g in range(len(names))])
    where_group = stratified_split(majority, fractions, seed)
    return where_group[inverse]


def near_duplicate_hint(keys: list[str]) -> str | None:
    """A warning when file names look like numbered frames of several clips (name_0001.jpg),
    whose near-identical frames would leak across a random split."""
    prefixes = Counter(re.sub(r"[\W_]*\d+$", "", Path(k).stem) for k in keys)
    clips = [p for p, n in prefixes.items() if p and n >= 3]
    if len(clips) >= 2 and sum(prefixes[p] for p in clips) >= len(keys) / 2:
        example = ", ".join(sorted(clips)[:3])
        return (f"file names look like numbered frames of {len(clips)} clips (e.g. {example}); near-identical "
                "frames may land on both sides of the split: consider --group-by, e.g. --group-by '([^/]+?)_?\\d+\\.\\w+$'")
    return None


def _split_from_listing(items: list[tuple[str, str]], classes: list[str]) -> Split:
    index = {c: i for i, c in enumerate(classes)}
    return Split([p for p, _ in items], np.array([index[c] for _, c in items], dtype=np.int64))


def write_split_listing(data: DataSplits, path: Path, root: str | Path | None = None) -> None:
    """Write split.csv (path, class, split): the exact split, reusable with --splits. Files inside
    the data folder ``root`` are written relative to it, so that the listing (and the run holding
    it) works from any working directory and after the run directory moves."""

    write_listing({name: [(key, data.classes[label]) for key, label in zip(split.keys, split.labels)]
                   for name, split in data.splits.items()}, path, root)


def write_listing(items: dict[str, list[tuple[str, str]]], path: str | Path, root: str | Path | None = None) -> None:
    """Write split -> [(key, class)] as a split listing (path, class, split), paths inside the
    data folder ``root`` relative to it."""
    base = Path(os.path.abspath(root)) if root and Path(root).is_dir() else None

    def relative(key: str) -> str:
        if base is None:
            return key
        file = Path(os.path.abspath(key))
        return file.relative_to(base).as_posix() if base in file.parents else key

    def rows():
        yield ["path", "class", "split"]
        for name, listed in items.items():
            for key, cls in listed:
                yield [relative(key), cls, name]

    atomic_write(path, lambda f: csv.writer(f).writerows(rows()), mode="w")


# The columns of a split listing, by role: the header names each takes (case aside)
LISTING_COLUMNS = {"path": ("path", "file", "filename", "file_name", "image"), "class": ("class", "label"), "split": ("split",)}


def read_split_listing(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A run's split.csv (path,class,split), or a listing of one's own: path and class columns
    (named as LISTING_COLUMNS allows, in any case), with a split column or without one (every
    row "all": ftkit carves the splits, as for a flat folder); other columns (a subject, a
    source) are left aside. Spaces around a class or split are not part of it."""
    if not path.is_file():
        raise DataError(f"split listing {path} not found (it is the split.csv of an earlier run, or a CSV of your own "
                        "with path and class columns)")
    out: dict[str, list[tuple[str, str]]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, skipinitialspace=True)  # "path, class" and "a.jpg, happy" as written by hand
        fields = reader.fieldnames or []
        column = {role: next((f for name in names for f in fields if f.strip().lower() == name), None)  # path before file
                  for role, names in LISTING_COLUMNS.items()}
        if column["path"] is None or column["class"] is None:
            raise DataError(f"{path}: expected a header with path (or file, filename, image) and class (or label) "
                            "columns, and split if the listing decides the splits (a run's split.csv: path,class,split); "
                            f"got {','.join(fields)}")
        seen: dict[str, str] = {}
        for line, row in enumerate(reader, 2):
            key, cls = row[column["path"]] or "", (row[column["class"]] or "").strip()
            name = ((row[column["split"]] or "").strip() if column["split"] else "") or "all"
            if not key or not cls:
                raise DataError(f"{path}, line {line}: an empty {'path' if not key else column['class']}; every row names an "
                                "image and its class")
            if name not in SPLITS and name != "all":
                raise DataError(f"{path}, line {line}: unknown split {name!r} (valid: {', '.join(SPLITS)}, all)")
            if key in seen:
                raise DataError(f"{path}, line {line}: {key} is listed twice ({seen[key]} and {name}); "
                                "an image belongs to one split")
            seen[key] = name
            out.setdefault(name, []).append((key, cls))
    return out


def resolve_listing(items: dict[str, list[tuple[str, str]]], root: Path) -> dict[str, list[tuple[str, str]]]:
    """A listing's relative paths are relative to the data folder (listings written before
    were relative to the working directory: those still resolve when run from there)."""
    def resolve(key: str) -> str:
        if not root.is_dir():
            return key
        if "\\" in key and not (root / key).exists() and not Path(key).exists():
            key = key.replace("\\", "/")  # a listing written on Windows (happy\img1.jpg)
        if Path(key).is_absolute():
            return key
        inside = root / key
        return str(inside) if inside.exists() or not Path(key).exists() else key

    return {name: [(resolve(k), c) for k, c in rows] for name, rows in items.items()}


def check_listing_files(items: dict[str, list[tuple[str, str]]], root: Path, listing: str) -> None:
    """Every file a split listing names must exist, inside the data folder it is used with."""
    base = Path(os.path.abspath(root))  # not resolve(): a data folder may hold symlinked splits
    for rows in items.values():
        for key, _ in rows:
            file = Path(key)
            if not file.is_file():
                raise DataError(f"{listing}: {key} is listed but not there; the listing does not describe the data as it "
                                "is now (its paths are relative to the data folder, --data)")
            if root.is_dir() and base not in Path(os.path.abspath(file)).parents:
                raise DataError(f"{listing}: {key} is not inside --data {root}; the listing belongs to another data set")


def check_listing(listing: Path, root: Path) -> None:
    """That a run's split listing finds every one of its images under the data folder ``root``
    (a CSV's rows are checked as they are read)."""
    if root.is_dir():
        check_listing_files(resolve_listing(read_split_listing(listing), root), root, str(listing))


def file_class(cfg: Config, root: Path, path: str) -> str | None:
    """The class an image file of the data folder ``root`` has before any class option: its
    class folder, or with ``label_from`` what the pattern finds in its path."""
    if not cfg.label_from:
        return Path(path).parent.name
    relative = Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).parts
    if len(relative) > 1 and relative[0] in SPLITS and (Path(root) / relative[0]).is_dir():
        relative = relative[1:]  # patterns see paths inside the split folder, as when the data was read
    match = re.compile(cfg.label_from).search(Path(*relative).as_posix())
    return first_group(match) if match else None


def unlisted_images(items: dict[str, list[tuple[str, str]]], root: Path) -> list[str]:
    """Image files under the data folder that a split listing does not name (images added
    since the listing was written): a run with --splits leaves them out. Hidden files and
    folders are not data, as when the folder is scanned without a listing."""
    if not root.is_dir():
        return []
    listed = {os.path.abspath(k) for rows in items.values() for k, _ in rows}
    return [str(f) for f in image_files(root) if os.path.abspath(f) not in listed]


# --- class selection ---------------------------------------------------------------------


# Class names that mean the same expression in the data sets of this field (lower case),
# with the two-letter codes that JAFFE and KDEF name their expressions by (AN, HA, AF/FE...).
CLASS_ALIASES: dict[str, str] = {
    "anger": "angry", "angry": "angry", "mad": "angry", "an": "angry",
    "contempt": "contempt", "contemptuous": "contempt",
    "disgust": "disgust", "disgusted": "disgust", "di": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear", "fe": "fear", "af": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy", "joyful": "happy", "ha": "happy",
    "neutral": "neutral", "neutrality": "neutral", "ne": "neutral",
    "sad": "sad", "sadness": "sad", "sa": "sad",
    "surprise": "surprise", "surprised": "surprise", "su": "surprise",
}


def canonical_class(name: str) -> str:
    """Lower-case class name with the field's usual aliases folded (anger -> angry)."""
    key = name.strip().lower()
    return CLASS_ALIASES.get(key, key)


def named_classes(cfg: Config, known: set[str]) -> Config:
    """``cfg`` with its --classes and --drop-class values read as class names: a value that is
    the name of a class is that class, commas and all; any other is split at its commas
    (``--drop-class disgust,fear``)."""
    def names(values: list[str]) -> list[str]:
        return [part.strip() for v in values for part in ([v] if v in known else v.split(",")) if part.strip()]

    return replace(cfg, drop_classes=names(cfg.drop_classes), classes=names(cfg.classes) if cfg.classes else cfg.classes)


def class_target(cfg: Config, name: str) -> str | None:
    """The class a folder named ``name`` becomes under --merge-class, --drop-class and
    --classes, or None when the run leaves it out."""
    target = cfg.merge_classes.get(name, name)
    if target in cfg.drop_classes or name in cfg.drop_classes or (cfg.classes and target not in cfg.classes):
        return None
    return target


def select_classes(cfg: Config, names: list[str], scoring: bool = False, elsewhere=()) -> dict[str, str | None]:
    """Map each original class name to the class it becomes (None: dropped).

    Applies ``merge_classes`` first, then ``drop_classes``, then the ``classes`` whitelist.
    Unknown names fail with suggestions: a typo must not silently keep a class. When
    ``scoring`` a trained model's data, the settings are the run's own and the folder may lack
    some of those classes (or hold just one): what is there is scored. ``elsewhere``: classes
    of the data that a split listing leaves out (a run's --drop-class may name them).
    """
    known = set(names) | set(elsewhere)
    asked = list(cfg.merge_classes) + list(cfg.drop_classes) + list(cfg.classes or [])
    for name in asked if not scoring else []:
        if name not in known and name not in cfg.merge_classes.values():
            shown = ", ".join(repr(n) if "," in n else n for n in names)  # a name with a comma, quoted
            raise DataError(f"unknown class {name!r}.{suggest(name, names)} Classes in the data: {shown}")
    mapping = {name: class_target(cfg, name) for name in names}
    if len({t for t in mapping.values() if t}) < (1 if scoring else 2):
        kept = sorted({t for t in mapping.values() if t})
        if not asked:
            raise DataError(f"the data has {len(names)} class ({', '.join(names) or 'none'}): a classifier needs at least "
                            "two, one folder of images per class")
        raise DataError(f"fewer than {1 if scoring else 2} classes left after --classes/--drop-class/--merge-class "
                        f"(kept: {', '.join(kept) or 'none'}; the data has {', '.join(names)}): keep at least two")
    return mapping


def fold_to_model(mapping: dict[str, str | None], model_classes: list[str]) -> dict[str, str | None]:
    """Scoring a model: a class it knows under another usual name (anger for angry, Happy for
    happy) is scored as the model's class."""
    known = {canonical_class(c): c for c in model_classes}
    return {src: target if target is None or target in model_classes else known.get(canonical_class(target), target)
            for src, target in mapping.items()}


def _apply_class_map(items: dict[str, list[tuple[str, str]]], mapping: dict[str, str | None]):
    return {
        split: [(key, mapping[c]) for key, c in rows if mapping.get(c)]
        for split, rows in items.items()
    }


# --- building the splits -----------------------------------------------------------------


def _folder_items(root: Path, cfg: Config, skipped: list) -> tuple[dict[str, list[tuple[str, str]]], str]:
    layout = detect_layout(root, labeled=bool(cfg.label_from))

    def scan(folder: Path) -> list[tuple[str, str]]:
        found = _scan_labeled_files(folder, cfg.label_from, skipped) if cfg.label_from else _scan_class_folders(folder, skipped)
        if not found:
            raise DataError(f"no images under {folder}")
        return _flatten(found, folder)

    if layout == "flat":
        return {"all": scan(root)}, layout
    items = {}
    for name in SPLITS:
        if (root / name).is_dir():
            items[name] = scan(root / name)
    if "train" not in items:  # val/ or test/ alone: only to score a trained model on
        return items, layout
    train_classes = {c for _, c in items["train"]}
    for name in ("val", "test"):
        extra = sorted({c for _, c in items.get(name, [])} - train_classes)
        if extra:
            same = {canonical_class(c): c for c in train_classes}  # Happy for happy, anger for angry
            named = [f"{c} (train/ has {same[canonical_class(c)]})" if canonical_class(c) in same else c for c in extra]
            raise DataError(
                f"{root / name} has class folders that train/ lacks: {', '.join(named)}. "
                "Every class needs training images; rename or remove those folders."
            )
    return items, layout


def _flatten(found: dict[str, list[str]], folder: Path) -> list[tuple[str, str]]:
    empty = [c for c, paths in found.items() if not paths]
    if empty:
        raise DataError(f"class folder(s) without images in {folder}: {', '.join(empty)} ({', '.join(sorted(IMAGE_EXTENSIONS))} "
                        "files count); add images or remove the folder")
    return [(p, c) for c, paths in found.items() for p in paths]


def _assign_splits(items: dict[str, list[tuple[str, str]]], classes: list[str], cfg: Config):
    """Turn raw (key, class) lists into train/val/test Splits, carving missing ones out of train."""
    if "all" not in items and "train" not in items:
        if cfg.splits:
            raise DataError(f"{cfg.splits} lists no train split ({', '.join(items)} only): training needs train rows, or "
                            "a listing without a split column (a listing of scored images alone is for `ftkit evaluate "
                            "RUN --data DATA --splits LISTING --split NAME`)")
        raise DataError(f"{cfg.data} has {'/, '.join(items)}/ but no train/ folder: training needs train/<class>/ images "
                        "(a folder of val/ or test/ alone can only be scored: ftkit evaluate RUN --data ...)")
    if "all" in items:
        pool, fractions = items.pop("all"), {"val": cfg.val_split, "test": cfg.test_split}
    elif "val" not in items:
        pool, fractions = items.pop("train"), {"val": cfg.val_split}
    else:
        pool, fractions = None, {}
    splits = {name: _split_from_listing(rows, classes) for name, rows in items.items()}
    groups = None
    if pool is not None:
        full = _split_from_listing(pool, classes)
        if cfg.group_by:
            groups = group_keys(full.keys, cfg.group_by)
            where = grouped_split(full.labels, groups, fractions, cfg.seed)
        else:
            where = stratified_split(full.labels, fractions, cfg.seed)
        for name in ("train", *fractions):
            chosen = np.flatnonzero(where == name)
            if len(chosen):
                splits[name] = full.subset(chosen)
    if "val" not in splits or len(splits["val"]) == 0:
        if groups is not None and cfg.val_split > 0:
            found = np.unique(groups)
            raise DataError(f"--group-by {cfg.group_by!r} finds {len(found)} group(s) (e.g. {', '.join(map(str, found[:3]))}), "
                            f"too few to give whole groups to train and val{' and test' if 'test' in fractions else ''}: "
                            "check that its first group captures the subject or clip of each file")
        raise DataError("no validation images: raise --val-split or add a val/ folder")
    if "train" not in splits or len(splits["train"]) == 0:
        raise DataError(f"--val-split {cfg.val_split} and --test-split {cfg.test_split} leave no training image in "
                        f"{cfg.data} ({len(pool or [])} images to share): lower them")
    return {name: splits[name] for name in SPLITS if name in splits}


def load_data(cfg: Config, console=None, classes: list[str] | None = None, carve: bool = True) -> DataSplits:
    """Find, select, split and (when it fits) decode the data that ``cfg.data`` points at.

    ``classes`` fixes the class index (evaluating a trained model on new data: every class
    found must be one the model knows). With ``carve=False`` no split is carved out of
    another: a flat folder becomes the single split "all" (evaluation on a whole folder).
    """
    root = Path(cfg.data)
    skipped: list[tuple[str, str]] = []
    preloaded, unlisted, elsewhere, csv_splits = None, [], set(), None
    if root.suffix.lower() == ".csv":
        if cfg.label_from:
            raise DataError(f"--label-from reads classes from image file names; {root} is a FER2013 CSV, whose rows carry "
                            "their labels: leave --label-from out")
        items, preloaded, skipped = fer2013.read_fer_csv(root, strict=cfg.strict, console=console)
        source, csv_splits = "csv", {key: name for name, rows in items.items() for key, _ in rows}
        if cfg.splits:
            elsewhere = {c for rows in items.values() for _, c in rows}  # the CSV's classes, dropped ones too
            items = read_split_listing(Path(cfg.splits))
            missing = next((k for rows in items.values() for k, _ in rows if k not in preloaded), None)
            if missing is not None:
                raise DataError(f"{cfg.splits}: row {missing} is not in {root}; the listing belongs to another CSV")
    elif cfg.splits:
        items, source = resolve_listing(read_split_listing(Path(cfg.splits)), root), "splits-file"
        check_listing_files(items, root, cfg.splits)
        unlisted = unlisted_images(items, root)
        # the class folders on disk, listed or not: a run's --drop-class/--merge-class name them
        elsewhere = {file_class(cfg, root, f) for f in unlisted} | {file_class(cfg, root, k) for rows in items.values() for k, _ in rows}
    else:
        items, source = _folder_items(root, cfg, skipped)
    names = sorted({c for rows in items.values() for _, c in rows})
    cfg = named_classes(cfg, set(names) | set(elsewhere))
    mapping = select_classes(cfg, names, scoring=classes is not None, elsewhere=elsewhere)
    if classes is not None:
        mapping = fold_to_model(mapping, classes)
    items = _apply_class_map(items, mapping)
    kept = sorted({c for c in mapping.values() if c})
    # Not missing from the listing: any image of a run that leaves some out by design (--shots
    # draws, --faces require), and images of classes the run leaves out (--drop-class, --classes).
    by_design = cfg.shots or cfg.faces == "require"
    unlisted = [] if by_design else [f for f in unlisted if class_target(cfg, file_class(cfg, root, f)) is not None]
    if classes is not None:
        unknown = [c for c in kept if c not in classes]
        if unknown:
            raise DataError(f"class(es) {', '.join(unknown)} in {root} are unknown to the model (it knows "
                            f"{', '.join(classes)}): leave them out with --drop-class {','.join(unknown)}, or score each as one "
                            f"of its classes with --merge-class {unknown[0]}=CLASS")
    classes = classes or kept
    splits = _assign_splits(items, classes, cfg) if carve else {n: _split_from_listing(r, classes) for n, r in items.items()}
    data = DataSplits(classes, splits, source, skipped, {k: v for k, v in mapping.items() if v != k}, csv_splits=csv_splits)
    if unlisted:
        note = (f"{len(unlisted)} image(s) under {root} are not in the split listing {cfg.splits} and are left out "
                f"(e.g. {unlisted[0]}): the listing decides which images are used (these were added since it was written, "
                "or left out of it on purpose)")
        warnings.warn(note, stacklevel=2)
        data.notes.append(note)
    if cfg.shots and carve:
        apply_shots(data, cfg.shots, cfg.seed)
    for name in ("val", "test") if carve else ():
        lacking = data.classes_without_images(name) if len(data.splits.get(name, ())) else []
        if lacking:
            note = (f"the {name} split has no image of {', '.join(lacking)}, so its scores say nothing about "
                    f"{'them' if len(lacking) > 1 else 'it'}: add images, or cross-validate with --folds")
            warnings.warn(note, stacklevel=2)
            data.notes.append(note)
    if carve and not cfg.group_by and source != "csv":
        hint = near_duplicate_hint(data.splits["train"].keys)
        if hint:
            warnings.warn(hint, stacklevel=2)
            data.notes.append(hint)
    if preloaded is not None:
        for split in data.splits.values():
            split.images = [preloaded[k] for k in split.keys]
    else:
        _decode_or_verify(data, cfg, console, force_cache=cfg.faces != "none")
    note_copies(data)
    if cfg.faces != "none":
        _crop_faces(data, cfg, console)
    return data


def note_copies(data: DataSplits) -> None:
    """Take the pixel digest of every decoded image (``data.digests``, by key) and warn, noting it
    in the run record, when val or test images are pixel copies of training images. Only decoded
    (cached) data is compared: streamed data is not decoded here."""
    if any(split.images is None for split in data.splits.values()):
        return
    if data.digests is None:
        data.digests = {k: pixel_digest(image) for split in data.splits.values() for k, image in zip(split.keys, split.images)}
    note = copies_note(data.split_digests())
    if note:
        warnings.warn(note, stacklevel=3)
        data.notes.append(note)


def apply_shots(data: DataSplits, shots: int, seed: int) -> None:
    """Keep ``shots`` training images per class (drawn with ``seed``); the rest of the
    training pool becomes the test split when there is none, and is left out otherwise."""
    train = data.splits["train"]
    counts = np.bincount(train.labels, minlength=len(data.classes))
    if counts.min() < shots:
        fewest = int(counts.argmin())
        raise DataError(f"--shots {shots}: class {data.classes[fewest]!r} has only {counts[fewest]} training image(s), the "
                        f"fewest of any class, once the val and test splits are set apart: give --shots {counts[fewest]} or "
                        "fewer, or add images of it")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(len(data.classes)):
        index = np.flatnonzero(train.labels == label)
        chosen += sorted(rng.choice(index, size=shots, replace=False).tolist())
    rest = sorted(set(range(len(train))) - set(chosen))
    data.splits["train"] = train.subset(chosen)
    if "test" not in data.splits:
        data.splits["test"] = train.subset(rest)
        data.notes.append(f"--shots {shots}: {len(rest)} training images not drawn became the test split")
    else:
        data.notes.append(f"--shots {shots}: {len(rest)} training images not drawn were left out")


def _crop_faces(data: DataSplits, cfg: Config, console=None) -> None:

    cache = BoxCache()
    totals = {"found": 0, "fallback": 0, "skipped": 0, "fallback_files": [], "skipped_files": []}
    with progress_bar(console) as bar:
        task = bar.add_task("finding faces", total=sum(len(s) for s in data.splits.values()))
        for name, split in list(data.splits.items()):
            crops, stats = crop_faces(split.keys, split.images, cfg.faces, cfg.face_margin, cache,
                                      progress=lambda n: bar.advance(task, n), align=cfg.face_align)
            split.images = crops
            keep = [i for i, c in enumerate(crops) if c is not None]
            data.splits[name] = split.subset(keep) if len(keep) < len(crops) else split
            for key, value in stats.to_dict().items():
                totals[key] += value
    data.faces = totals
    if totals["fallback"]:
        warnings.warn(f"no face found in {totals['fallback']} image(s), centre-cropped instead "
                      f"(e.g. {totals['fallback_files'][0]}); --faces require leaves them out", stacklevel=2)
    if totals["skipped"]:
        warnings.warn(f"no face found in {totals['skipped']} image(s), left out (--faces require), "
                      f"e.g. {totals['skipped_files'][0]}", stacklevel=2)
    what = "use --faces crop (an image without a face is then centre-cropped), or check that the images show faces"
    for name, split in data.splits.items():
        if not len(split):
            where = f"of {cfg.data}" if name == "all" else f"of the {name} split"
            raise DataError(f"--faces require: no face found in any image {where}, so none is left: {what}")
        empty = data.classes_without_images(name) if name == "train" else []
        if empty:
            raise DataError(f"--faces require: no face found in any training image of class(es) {', '.join(empty)}: {what}")


def _decode_or_verify(data: DataSplits, cfg: Config, console=None, force_cache: bool = False) -> None:
    """Decode every image into memory (cache) or header-check them (stream); drop bad files."""

    total = sum(len(s) for s in data.splits.values())
    cache = force_cache or cfg.cache == "memory" or (cfg.cache == "auto" and _estimate_mb(data) <= cfg.cache_mb)
    with progress_bar(console) as bar:
        task = bar.add_task("decoding images" if cache else "checking images", total=total)
        for name, split in list(data.splits.items()):
            if cache:
                images, failures = decode_all(split.keys, progress=lambda n: bar.advance(task, n))
            else:
                failures = []
                for key in split.keys:
                    reason = verify_image(key)
                    if reason:
                        failures.append((key, reason))
                    bar.advance(task, 1)
            if failures and cfg.strict:
                raise DataError(f"unreadable image {failures[0][0]}: {failures[0][1]} (--strict is on)")
            bad = {k for k, _ in failures}
            keep = [i for i, k in enumerate(split.keys) if k not in bad]
            if cache:
                split.images = images
            data.splits[name] = split.subset(keep) if bad else split
            data.skipped += failures
    if data.skipped:
        warnings.warn(skipped_text(data.skipped), stacklevel=2)
    empty = data.classes_without_images("train") if "train" in data.splits else []
    if empty:
        raise DataError(f"no usable training images for class(es): {', '.join(empty)}")


def skipped_text(skipped: list[tuple[str, str]], shown: int = 5) -> str:
    """"skipped 7 unusable file(s): a.jpg (reason); ... and 2 more": the first few, named."""
    named = "; ".join(f"{k} ({r})" for k, r in skipped[:shown])
    more = f" and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"skipped {len(skipped)} unusable file(s): {named}{more}"


def _estimate_mb(data: DataSplits, probe: int = 16) -> float:
    """Decoded size of the whole set, extrapolated from the first few images' headers."""
    keys = [k for s in data.splits.values() for k in s.keys]
    sizes = []
    for key in keys[:probe]:
        try:
            with Image.open(key) as im:
                sizes.append(im.width * im.height * 3)
        except UNREADABLE:
            continue
    mean = np.mean(sizes) if sizes else 0.0
    return mean * len(keys) / 2**20


INSPECT_SAMPLE = 2000  # images whose headers `data inspect` reads for sizes and modes


def inspect_source(path: str | Path, console=None, label_from: str | None = None
                   ) -> tuple[dict[str, dict[str, int]], list[tuple[str, str]], dict[str, int]]:
    """Per-split, per-class counts of a folder (any layout) or CSV, without splitting it, the
    files or rows skipped (name, reason), and how many images have each size and colour mode
    ("48x48 L": the headers only, nothing decoded; at most INSPECT_SAMPLE images, evenly spaced); ``label_from``: classes from the file names
    (see Config.label_from)."""
    items, preloaded, skipped = _source_items(path, label_from, console)
    if preloaded is not None:
        kinds = Counter({f"{fer2013.SIDE}x{fer2013.SIDE} L": sum(len(rows) for rows in items.values())})
    else:
        keys = [k for rows in items.values() for k, _ in rows]
        # headers only, but a file open each: an evenly spaced sample of a big folder
        kinds = Counter(image_kind(k) for k in keys[::max(1, math.ceil(len(keys) / INSPECT_SAMPLE))])
    counts = {split: dict(sorted(Counter(c for _, c in rows).items())) for split, rows in items.items()}
    return counts, skipped, dict(kinds.most_common())


def inspect_duplicates(path: str | Path, console=None, label_from: str | None = None) -> Duplicates:
    """The pixel-identical images of a folder (any layout) or CSV, as it stands (not split):
    every image is decoded once, with a progress bar."""
    items, preloaded, _ = _source_items(path, label_from, console)
    with progress_bar(console) as bar:
        task = bar.add_task("comparing pixels", total=sum(len(rows) for rows in items.values()))
        return find_duplicates(items, preloaded, progress=lambda n: bar.advance(task, n))


def _source_items(path: str | Path, label_from: str | None, console=None):
    """(items, preloaded, skipped) of a folder or CSV: split -> [(key, class)] as the source
    lays them out, a CSV's decoded rows (None for a folder), and the files or rows skipped."""
    cfg = validate(Config(data=str(path), cache="stream", label_from=label_from))
    root = Path(path)
    if root.suffix.lower() == ".csv":
        return fer2013.read_fer_csv(root, console=console)
    skipped: list[tuple[str, str]] = []
    items, _ = _folder_items(root, cfg, skipped)
    return items, None, skipped


def image_kind(file) -> str:
    """"WIDTHxHEIGHT MODE" from an image file's header (a path or an open file; PIL opens
    lazily), or "unreadable"."""
    try:
        with Image.open(file) as im:
            return f"{im.width}x{im.height} {im.mode}"
    except UNREADABLE:
        return "unreadable"
