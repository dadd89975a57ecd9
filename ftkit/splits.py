"""Splits of a labeled data set: the Split and DataSplits it ends up as, stratified and grouped
splitting, and drawing a few images per class (--shots)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .images import DataError

SPLITS = ("train", "val", "test")


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


def split_from_listing(items: list[tuple[str, str]], classes: list[str]) -> Split:
    index = {c: i for i, c in enumerate(classes)}
    return Split([p for p, _ in items], np.array([index[c] for _, c in items], dtype=np.int64))


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
