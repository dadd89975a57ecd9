"""Data: load a labeled source into splits, decode it once, and serve it to the model.

Finding the images is in :mod:`ftkit.sources`, splitting them in :mod:`ftkit.splits`, reading
one image in :mod:`ftkit.images`; this module puts them together (:func:`load_data`) and is
the data layer's front: the names other layers use are imported from here.

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

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import fer2013
from .config import Config, validate
from .duplicates import Duplicates, copies_note, find_duplicates, pixel_digest
from .faces import BoxCache, FaceStats, crop_faces, describe, faces_line
from .images import (  # noqa: F401 (re-exported: data.py is the data layer's front)
    IMAGE_EXTENSIONS, UNREADABLE, DataError, decode_all, has_images, image_files, not_data, open_image, read_image,
    refuse_archive, verify_image, walk_files,
)
from .progress import console as default_console, progress_bar
from .sources import (  # noqa: F401 (re-exported)
    CLASS_ALIASES, apply_class_map, canonical_class, check_listing, check_listing_files, class_target, detect_layout, file_class,
    fold_to_model, folder_items, named_classes, read_split_listing, resolve_listing, select_classes, unlisted_images, write_listing,
    write_split_listing,
)
from .splits import (  # noqa: F401 (re-exported)
    SPLITS, DataSplits, Split, apply_shots, first_group, group_keys, grouped_split, near_duplicate_hint, split_from_listing,
    stratified_split,
)


# --- the data set in memory --------------------------------------------------------------


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


# --- building the splits -----------------------------------------------------------------


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
    splits = {name: split_from_listing(rows, classes) for name, rows in items.items()}
    groups = None
    if pool is not None:
        full = split_from_listing(pool, classes)
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


@dataclass
class _Found:
    """What a source holds before its classes are chosen: (key, class) rows per split, and what
    reading it noticed (files skipped, files a listing leaves out, the classes of those)."""
    items: dict[str, list[tuple[str, str]]]
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    preloaded: dict | None = None  # a CSV's decoded rows by key
    unlisted: list[str] = field(default_factory=list)
    elsewhere: set[str] = field(default_factory=set)
    csv_splits: dict[str, str] | None = None


def _find(cfg: Config, root: Path, console=None) -> _Found:
    """The rows of a FER2013 CSV (``--splits`` may re-split them), of a split listing, or of a folder."""
    if root.suffix.lower() == ".csv":
        if cfg.label_from:
            raise DataError(f"--label-from reads classes from image file names; {root} is a FER2013 CSV, whose rows carry "
                            "their labels: leave --label-from out")
        items, preloaded, skipped = fer2013.read_fer_csv(root, strict=cfg.strict, console=console)
        found = _Found(items, "csv", skipped, preloaded, csv_splits={key: name for name, rows in items.items() for key, _ in rows})
        if cfg.splits:
            found.elsewhere = {c for rows in items.values() for _, c in rows}  # the CSV's classes, dropped ones too
            found.items = read_split_listing(Path(cfg.splits))
            missing = next((k for rows in found.items.values() for k, _ in rows if k not in preloaded), None)
            if missing is not None:
                raise DataError(f"{cfg.splits}: row {missing} is not in {root}; the listing belongs to another CSV")
        return found
    if cfg.splits:
        items = resolve_listing(read_split_listing(Path(cfg.splits)), root)
        check_listing_files(items, root, cfg.splits)
        unlisted = unlisted_images(items, root)
        # the class folders on disk, listed or not: a run's --drop-class/--merge-class name them
        elsewhere = {file_class(cfg, root, f) for f in unlisted} | {file_class(cfg, root, k) for rows in items.values() for k, _ in rows}
        return _Found(items, "splits-file", unlisted=unlisted, elsewhere=elsewhere)
    skipped: list[tuple[str, str]] = []
    items, source = folder_items(root, cfg, skipped)
    return _Found(items, source, skipped)


def load_data(cfg: Config, console=None, classes: list[str] | None = None, carve: bool = True,
              only: str | None = None) -> DataSplits:
    """Find, select, split and (when it fits) decode the data that ``cfg.data`` points at.

    ``classes`` fixes the class index (evaluating a trained model on new data: every class
    found must be one the model knows). With ``carve=False`` no split is carved out of
    another: a flat folder becomes the single split "all" (evaluation on a whole folder).
    ``only`` names the one split wanted (scoring it; "all" stands in for a flat folder): the
    others are neither decoded nor face-cropped. When the data has neither, every split is kept.
    """
    root = Path(cfg.data)
    found = _find(cfg, root, console)
    names = sorted({c for rows in found.items.values() for _, c in rows})
    cfg = named_classes(cfg, set(names) | set(found.elsewhere))
    mapping = select_classes(cfg, names, scoring=classes is not None, elsewhere=found.elsewhere)
    if classes is not None:
        mapping = fold_to_model(mapping, classes)
    items = apply_class_map(found.items, mapping)
    kept = sorted({c for c in mapping.values() if c})
    if classes is not None:
        unknown = [c for c in kept if c not in classes]
        if unknown:
            raise DataError(f"class(es) {', '.join(unknown)} in {root} are unknown to the model (it knows "
                            f"{', '.join(classes)}): leave them out with --drop-class {','.join(unknown)}, or score each as one "
                            f"of its classes with --merge-class {unknown[0]}=CLASS")
    classes = classes or kept
    splits = _assign_splits(items, classes, cfg) if carve else {n: split_from_listing(r, classes) for n, r in items.items()}
    data = DataSplits(classes, splits, found.source, found.skipped, {k: v for k, v in mapping.items() if v != k},
                      csv_splits=found.csv_splits)
    if cfg.shots and carve:
        apply_shots(data, cfg.shots, cfg.seed)
    for note in _split_notes(data, cfg, root, found.unlisted, carve):
        warnings.warn(note, stacklevel=2)
        data.notes.append(note)
    if only:
        wanted = only if only in data.splits else "all"
        if wanted in data.splits:
            data.splits = {wanted: data.splits[wanted]}
    if found.preloaded is not None:
        for split in data.splits.values():
            split.images = [found.preloaded[k] for k in split.keys]
    else:
        _decode_or_verify(data, cfg, console, force_cache=cfg.faces != "none")
    note_copies(data)
    if cfg.faces != "none":
        _crop_faces(data, cfg, console)
    return data


def _split_notes(data: DataSplits, cfg: Config, root: Path, unlisted: list[str], carve: bool) -> list[str]:
    """What a run should be told of its splits: images a listing leaves out, a val or test split
    missing a class, file names that look like frames of clips."""
    notes = []
    # Not missing from the listing: any image of a run that leaves some out by design (--shots
    # draws, --faces require), and images of classes the run leaves out (--drop-class, --classes).
    by_design = cfg.shots or cfg.faces == "require"
    unlisted = [] if by_design else [f for f in unlisted if class_target(cfg, file_class(cfg, root, f)) is not None]
    if unlisted:
        notes.append(f"{len(unlisted)} image(s) under {root} are not in the split listing {cfg.splits} and are left out "
                     f"(e.g. {unlisted[0]}): the listing decides which images are used (these were added since it was "
                     "written, or left out of it on purpose)")
    for name in ("val", "test") if carve else ():
        lacking = data.classes_without_images(name) if len(data.splits.get(name, ())) else []
        if lacking:
            notes.append(f"the {name} split has no image of {', '.join(lacking)}, so its scores say nothing about "
                         f"{'them' if len(lacking) > 1 else 'it'}: add images, or cross-validate with --folds")
    if carve and not cfg.group_by and data.source != "csv":
        hint = near_duplicate_hint(data.splits["train"].keys)
        if hint:
            notes.append(hint)
    return notes


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


def _crop_faces(data: DataSplits, cfg: Config, console=None) -> None:
    """Crop every image to its largest face, as ``cfg.faces`` says; ``data.faces`` records the
    counts and the detector that ran (for run.json)."""
    cache = BoxCache(detector_name=cfg.face_detector)
    totals = FaceStats()
    with progress_bar(console) as bar:
        task = bar.add_task("finding faces", total=sum(len(s) for s in data.splits.values()))
        for name, split in list(data.splits.items()):
            crops, stats = crop_faces(split.keys, split.images, cfg.faces, cfg.face_margin, cache,
                                      progress=lambda n: bar.advance(task, n), align=cfg.face_align)
            split.images = crops
            keep = [i for i, c in enumerate(crops) if c is not None]
            data.splits[name] = split.subset(keep) if len(keep) < len(crops) else split
            totals.add(stats)
    data.faces = {**totals.to_dict(), "detector": describe(cache.detect)}
    (console or default_console).print(faces_line(data.faces, cfg.face_margin, cfg.face_align), markup=False)
    if totals.several:
        note = (f"{totals.several} image(s) show more than one face; the largest was taken (run.json: faces.several)")
        warnings.warn(note, stacklevel=2)
    if totals.fallback:
        warnings.warn(f"no face found in {len(totals.fallback)} image(s), centre-cropped instead "
                      f"(e.g. {totals.fallback[0]}); --faces require leaves them out", stacklevel=2)
    if totals.skipped:
        warnings.warn(f"no face found in {len(totals.skipped)} image(s), left out (--faces require), "
                      f"e.g. {totals.skipped[0]}", stacklevel=2)
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
            with open_image(key) as im:
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
    items, _ = folder_items(root, cfg, skipped)
    return items, None, skipped


def image_kind(file) -> str:
    """"WIDTHxHEIGHT MODE" from an image file's header (a path or an open file; PIL opens
    lazily), or "unreadable"."""
    try:
        with open_image(file) as im:
            return f"{im.width}x{im.height} {im.mode}"
    except UNREADABLE:
        return "unreadable"
