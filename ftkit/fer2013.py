"""FER2013 in its original Kaggle CSV form (``emotion,pixels,Usage``).

Training -> train, PublicTest -> val, PrivateTest -> test; Kaggle label ids 0-6 map to
angry, disgust, fear, happy, sad, surprise, neutral. Columns are found by name, in any order
(Kaggle's ``icml_face_data.csv`` has ``emotion, Usage, pixels``); without a Usage column
(Kaggle's ``train.csv``) every row is one pool that val and test are carved from, as for a
flat folder. Pixels are parsed with numpy, one
row at a time, so the full 35,887-row file (about 290 MB) loads in seconds with only the
decoded images (48x48) held in memory. Malformed rows are reported by line number.
"""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from .duplicates import holding_part
from .images import DataError
from .io import holds_files, new_folder
from .progress import progress_bar

KAGGLE_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SPLIT_TO_USAGE = {split: usage for usage, split in USAGE_TO_SPLIT.items()}
SEEN_ROLE = {"train": "the part it trained on", "val": "the part that chose its best epoch"}  # see seen_label
SIDE = 48
# How to crop a face (the detector's box grown by this fraction of its side; negative: inside it)
# for a model trained on FER2013's ready-made crops. FER2013's own frame is about the box + 0.1
# (median over Training images where the detector finds a face), but on the validation subjects
# of another face set the shipped models, untrained, labelled faces best inside the box: macro-F1
# 0.475 / 0.504 (fast / best) at -0.1 against 0.471 / 0.492 at 0 since 826dafe's antialiased shrink
# (0.46 / 0.49 against 0.43 / 0.44 before it; 0.35 / 0.36 at 0.1, falling again at -0.2):
# `python benchmarks/face_margin.py` (BENCHMARKS.md, "Face margin").
FACE_MARGIN = -0.1
# How photos are cropped for such a model: by RetinaFace, with the eyes levelled (on the posed set's
# faces tilted up to 30 degrees, levelling recovered fer2013-fast's 52.7 % from 47.5 %:
# `python benchmarks/faces_wild.py --part conditions`). A shipped model's manifest records it.
PHOTO_FACES = {"face_margin": FACE_MARGIN, "face_detector": "retinaface", "face_align": True}
COLUMNS = ("emotion", "pixels", "Usage")


def _columns(header: list[str], path: Path) -> tuple[int, int, int | None]:
    """Positions of emotion, pixels and Usage (None: no Usage column) in a CSV header."""
    names = [h.strip().lstrip("\ufeff").lower() for h in header]
    where = {c: names.index(c.lower()) if c.lower() in names else None for c in COLUMNS}
    lacking = [c for c in ("emotion", "pixels") if where[c] is None]
    if lacking:
        got = ",".join(h.strip() for h in header) or "an empty file"
        delimited = next((d for d in "\t;|" if len(header) == 1 and d in header[0]), None)
        hint = f" (it looks {'tab' if delimited == chr(9) else repr(delimited)}-separated: save it with commas)" if delimited else ""
        raise DataError(f"{path}: no {' or '.join(lacking)} column; expected the Kaggle header emotion,pixels,Usage "
                        f"(Usage optional, columns in any order), got {got}{hint}")
    return where["emotion"], where["pixels"], where["Usage"]


def _parse_row(emotion: str, pixels: str, usage: str | None) -> tuple[str, str, np.ndarray]:
    """Return (split, class, 48x48 uint8 image) or raise ValueError saying what is wrong; a row
    of a CSV without a Usage column (``usage`` None) goes to the split "all"."""
    emotion, pixels = emotion.strip(), pixels.strip()
    if not emotion.isdigit() or int(emotion) >= len(KAGGLE_LABELS):
        raise ValueError(f"unknown label {emotion!r} (expected 0-6)")
    if usage is not None and usage.strip() not in USAGE_TO_SPLIT:
        raise ValueError(f"unknown Usage {usage.strip()!r} (expected {', '.join(USAGE_TO_SPLIT)})")
    if not pixels.replace(" ", "").isdigit():
        raise ValueError("pixels contain a non-numeric value")
    values = np.fromstring(pixels, dtype=np.int32, sep=" ")
    if values.size != SIDE * SIDE:
        raise ValueError(f"expected {SIDE * SIDE} pixel values, got {values.size}")
    if values.max() > 255:
        raise ValueError(f"pixel value {values.max()} out of range 0-255")
    split = "all" if usage is None else USAGE_TO_SPLIT[usage.strip()]
    return split, KAGGLE_LABELS[int(emotion)], values.astype(np.uint8).reshape(SIDE, SIDE)


def _advancing(lines, bar, task, every: int = 256):
    """Yield lines, advancing the progress bar by their size every ``every`` lines."""
    pending = 0
    for i, line in enumerate(lines):
        pending += len(line)
        if i % every == 0:
            bar.advance(task, pending)
            pending = 0
        yield line


def read_fer_csv(path: str | Path, strict: bool = False, console=None):
    """Parse a FER2013 CSV.

    Returns (items, images, skipped): items maps split -> [(key, class)], images maps key ->
    an RGB uint8 (48, 48, 3) array (a read-only view of the gray plane), skipped lists (key, reason) for malformed rows. Keys are
    ``<file>:<line>``. With ``strict`` the first malformed row raises DataError.
    """

    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} not found")
    items: dict[str, list[tuple[str, str]]] = {}
    images: dict[str, np.ndarray] = {}
    skipped: list[tuple[str, str]] = []
    size = path.stat().st_size
    with open(path, newline="", encoding="utf-8-sig") as f, progress_bar(console) as bar:
        task = bar.add_task(f"reading {path.name}", total=size, info="")
        reader = csv.reader(_advancing(f, bar, task))
        header = next(reader, [])
        columns = _columns(header, path)
        needed = 1 + max(i for i in columns if i is not None)
        for row in reader:
            key = f"{path.name}:{reader.line_num}"
            try:
                if len(row) < needed or any(row[len(header):]):
                    raise ValueError(f"expected {len(header)} fields ({','.join(h.strip() for h in header)}), got {len(row)}")
                split, label, gray = _parse_row(*(None if i is None else row[i] for i in columns))
            except ValueError as exc:
                if strict:
                    raise DataError(f"{path} line {reader.line_num}: {exc} (--strict is on)") from exc
                skipped.append((key, str(exc)))
                continue
            items.setdefault(split, []).append((key, label))
            # a read-only 3-channel view of one gray plane: a third of the memory of a copy
            images[key] = np.broadcast_to(gray[:, :, None], (SIDE, SIDE, 3))
        bar.update(task, completed=size)
    if skipped:
        shown = "; ".join(f"line {k.rsplit(':', 1)[1]}: {r}" for k, r in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(f"{path}: skipped {len(skipped)} malformed row(s): {shown}{more}", stacklevel=2)
    if "train" not in items and "all" not in items:
        raise DataError(f"{path} has no usable Training rows")
    return items, images, skipped


def convert_csv(path: str | Path, dest: str | Path, strict: bool = False, console=None) -> dict[str, dict[str, int]]:
    """Write the folder form DEST/<split>/<class>/<Usage>_<line>.png (DEST/<class>/row_<line>.png
    for a CSV without a Usage column), losslessly (PNG). DEST appears only when complete
    (written beside it, then renamed)."""
    import cv2

    dest = Path(dest)
    if holds_files(dest):
        raise DataError(f"{dest} already holds files; give an empty or new folder")
    items, images, _ = read_fer_csv(path, strict=strict, console=console)
    split_to_usage = {v: k for k, v in USAGE_TO_SPLIT.items()}
    counts: dict[str, dict[str, int]] = {}
    with new_folder(dest, "folder for the images") as work, progress_bar(console) as bar:
        task = bar.add_task("writing PNG files", total=sum(len(rows) for rows in items.values()))
        for split, rows in items.items():
            for key, label in rows:
                line = key.rsplit(":", 1)[1]
                where = work / label if split == "all" else work / split / label
                target = where / f"{split_to_usage.get(split, 'row')}_{line}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                ok, png = cv2.imencode(".png", images[key][:, :, 0])
                target.write_bytes(png.tobytes())  # the whole folder is renamed into place once complete
                counts.setdefault(split, {}).setdefault(label, 0)
                counts[split][label] += 1
                bar.advance(task)
    return counts


def marked_usage(key: str, csv_split: str | None = None) -> str | None:
    """The FER2013 part (Training, PublicTest, PrivateTest) an image is marked as: a CSV row's
    Usage (``csv_split``: the split it was read into), or a file named ``<Usage>_<id>`` (``ftkit
    data convert``'s and the Kaggle image releases' names). None when it is not marked."""
    if csv_split is not None:
        return SPLIT_TO_USAGE.get(csv_split)
    prefix, sep, _ = Path(key).name.partition("_")
    return prefix if sep and prefix in USAGE_TO_SPLIT else None


def seen_counts(keys: list[str], seen: dict[str, str], csv_splits: dict[str, str] | None = None,
                digests: list[bytes] | None = None, known: dict[str, set[bytes]] | None = None) -> dict[str, int]:
    """How many of the images ``keys`` are marked as each FER2013 part of ``seen`` (a shipped
    model's ``fer2013_seen``: {"train": "Training", "val": "PublicTest"}, the parts it trained on
    and chose its epoch by); ``csv_splits``: each CSV row's split as read, for CSV keys. With the
    images' pixel ``digests`` and the ``known`` digests of each part (a shipped model's
    ``fer2013_digests``), an image not marked by its name or Usage is counted by its pixels."""
    marks = [marked_usage(k, csv_splits.get(k) if csv_splits is not None else None) for k in keys]
    if digests is not None and known:
        held = holding_part(digests, known, seen.values())
        marks = [mark if mark in seen.values() else (part or mark) for mark, part in zip(marks, held)]
    counts = Counter(marks)
    return {part: counts[usage] for part, usage in seen.items() if counts[usage]}


def seen_label(part: str, seen: dict[str, str], how: str | None = None) -> str:
    """What the images ``seen_counts`` counts for ``part`` are, in words: "marked FER2013 Training
    (``how`` they were matched), the part it trained on"."""
    return f"marked FER2013 {seen[part]}{f' ({how})' if how else ''}, {SEEN_ROLE[part]}"
