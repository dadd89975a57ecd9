"""Pixel-identical images: the same picture under two names, found by its decoded pixels.

A picture in both the training split and a split that is scored makes that score not held
out, and copies filed under different classes are label noise. FER2013 has both: 280 of its
3,589 PublicTest images are copies of Training images. ``ftkit data inspect --duplicates``
lists the copies of a source; a run notes how many of its val and test images have a copy
among its training images, and keeps the digests of its train and val images (``digests.npz``)
so that ``ftkit evaluate`` counts their copies among the images it scores, under any name, as
``weights/fer2013-digests.npz`` does for the shipped FER2013 models.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import UsageError
from .images import decode_all
from .io import atomic_write

COLUMNS = ("group", "split", "class", "path")  # the header of a --duplicates-csv file
DIGEST_BYTES = 16


def pixel_digest(image: np.ndarray) -> bytes:
    """Equal for images with the same size and pixels, whatever their names and formats (a PNG
    and a lossless re-save of it; a gray file and its RGB copy, both decoded to RGB)."""
    digest = hashlib.blake2b(str(image.shape).encode(), digest_size=DIGEST_BYTES)
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.digest()


@dataclass(frozen=True)
class Copy:
    """One image of a group of pixel-identical images."""

    split: str
    cls: str
    key: str  # file path, or a CSV row id


@dataclass
class Duplicates:
    """The groups of pixel-identical images in a source (two or more images each), and the
    images looked at: split -> [(key, class)]."""

    groups: list[list[Copy]]
    items: dict[str, list[tuple[str, str]]]
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): not compared
    blank: list[Copy] = field(default_factory=list)  # images of one colour all over: nothing to learn from

    @property
    def images(self) -> dict[str, int]:
        """Images looked at per split."""
        return {split: len(rows) for split, rows in self.items.items()}

    @property
    def extra(self) -> int:
        """Images beyond the first of each group: how many a clean-up would delete."""
        return sum(len(g) - 1 for g in self.groups)

    def across_splits(self) -> list[list[Copy]]:
        return [g for g in self.groups if len({c.split for c in g}) > 1]

    def conflicting(self) -> list[list[Copy]]:
        """Groups whose copies are filed under different classes."""
        return [g for g in self.groups if len({c.cls for c in g}) > 1]

    def _training_copies(self) -> list[Copy]:
        """The images of splits other than train that have a copy in train (not held out)."""
        return [c for g in self.groups if any(c.split == "train" for c in g) for c in g if c.split != "train"]

    def copies_of_training(self) -> dict[str, int]:
        """Per split other than train: how many of its images have a copy in train."""
        return dict(Counter(c.split for c in self._training_copies()))

    def held_out_items(self) -> dict[str, list[tuple[str, str]]]:
        """The images, less those of val and test that have a copy in train: what a listing
        for --splits keeps so that the scores are held out from the copies."""
        copied = {c.key for c in self._training_copies()}
        return {split: [(k, c) for k, c in rows if k not in copied] for split, rows in self.items.items()}

    def ordered(self) -> list[list[Copy]]:
        """The groups that matter most first: copies with different classes, then copies across
        splits, then the largest."""
        return sorted(self.groups, key=lambda g: (-len({c.cls for c in g}), -len({c.split for c in g}), -len(g)))


    def summary_rows(self, root: str | Path) -> list[tuple[str, str]]:
        """(what, how many) for a table: the groups, the copies across splits and classes, per
        split the images that are copies of training images, and the blank images (paths
        relative to ``root``)."""
        rows = [("images compared", f"{sum(self.images.values()):,}"),
                ("groups of pixel-identical images", f"{len(self.groups):,} ({sum(len(g) for g in self.groups):,} images)"),
                ("copies beyond the first of each group", f"{self.extra:,}"),
                ("groups with different classes", f"{len(self.conflicting()):,}")]
        if len(self.images) > 1:
            rows.append(("groups across splits", f"{len(self.across_splits()):,}"))
        copies = self.copies_of_training()
        rows += [(f"{split} images with a copy in train", f"{copies.get(split, 0):,} of {n:,}")
                 for split, n in self.images.items() if split != "train" and "train" in self.images]
        if self.blank:
            rows.append(("blank images (one colour all over)", f"{len(self.blank):,} (e.g. {_relative(self.blank[0].key, root)})"))
        if self.unreadable:
            rows.append(("unreadable, not compared", f"{len(self.unreadable):,} (e.g. {self.unreadable[0][0]})"))
        return rows

    def example_lines(self, root: str | Path, shown: int = 5) -> list[str]:
        """The first ``shown`` groups (most important first), one line each: the paths of its
        first four copies relative to ``root``, each with its split and class where the path
        does not say them."""
        def named(copy: Copy) -> str:  # the split and class, where the path does not already say them
            path, where = _relative(copy.key, root), f"{copy.split}/{copy.cls}"
            return path if path.startswith(where + "/") else f"{path} ({where})"

        def line(group: list[Copy], most: int = 4) -> str:
            text = " = ".join(named(c) for c in group[:most])
            return text + (f" = {len(group) - most} more" if len(group) > most else "")

        lines = [line(group) for group in self.ordered()[:shown]]
        more = len(self.groups) - shown
        if more > 0:
            lines.append(f"... and {more:,} more group{'s' if more > 1 else ''}")
        return lines


def _relative(key: str, root: str | Path) -> str:
    """``key`` relative to ``root`` where it lies under it (a CSV row id is left as it is)."""
    try:
        return str(Path(key).relative_to(root))
    except ValueError:
        return key


def group_copies(digests: Iterable[tuple[Copy, bytes]]) -> list[list[Copy]]:
    """The groups of two or more images with the same digest, in the order first met."""
    found: dict[bytes, list[Copy]] = defaultdict(list)
    for copy, digest in digests:
        found[digest].append(copy)
    return [g for g in found.values() if len(g) > 1]


def find_duplicates(items: dict[str, list[tuple[str, str]]], preloaded: dict[str, np.ndarray] | None = None,
                    progress: Callable[[int], None] | None = None) -> Duplicates:
    """Decode every image of ``items`` (split -> [(key, class)]; ``preloaded`` images by key,
    for a CSV's rows) and group the pixel-identical ones. An unreadable file is named in
    ``unreadable`` and compared with nothing."""
    copies = [Copy(split, cls, key) for split, rows in items.items() for key, cls in rows]
    if preloaded is not None:
        found = [fingerprint(preloaded[c.key]) for c in copies]
        unreadable = []
        if progress:
            progress(len(copies))
    else:
        found, unreadable = decode_all([c.key for c in copies], progress=progress, keep=fingerprint)
    read = [(c, f) for c, f in zip(copies, found) if f is not None]
    groups = group_copies((c, digest) for c, (digest, _) in read)
    return Duplicates(groups, items, unreadable, blank=[c for c, (_, flat) in read if flat])


def fingerprint(image: np.ndarray) -> tuple[bytes, bool]:
    """The image's pixel digest, and whether it is blank: one colour all over (FER2013 has
    twelve black squares, filed under five classes)."""
    return pixel_digest(image), bool((image == image[:1, :1]).all())


def copies_note(splits: dict[str, list[bytes]]) -> str | None:
    """For a run whose images are decoded (``splits``: the pixel digests of each split's images):
    how many of its val and test images are pixel copies of a training image, so that their
    scores are not held out; None when none is."""
    if "train" not in splits:
        return None
    seen = set(splits["train"])
    counts = {name: sum(digest in seen for digest in digests) for name, digests in splits.items() if name != "train"}
    found = [f"{n} of the {len(splits[name])} {name} images" for name, n in counts.items() if n]
    if not found:
        return None
    what = "is a pixel copy of a training image" if sum(counts.values()) == 1 else "are pixel copies of training images"
    return (f"{' and '.join(found)} {what}, so their scores are not fully held out: "
            "`ftkit data inspect DATA --duplicates` lists them")


# --- the list of copies, as a file -------------------------------------------------------


def check_duplicates_csv(path: str | Path) -> None:
    """Refuse, before any image is decoded, a --duplicates-csv path that does not end in .csv or
    that names a file other than an earlier list of copies (a data set's labels.csv must not be
    overwritten)."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise UsageError(f"--duplicates-csv {path}: the list is a CSV file; give a path ending in .csv")
    if path.exists():
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != COLUMNS:
            raise UsageError(f"--duplicates-csv {path} exists and is not an earlier list of copies: nothing was written; "
                             "give another name, or delete it first")


def write_duplicates_csv(duplicates: Duplicates, path: str | Path, root: str | Path) -> Path:
    """One row per image of each group (groups numbered from 1, most important first), paths
    relative to ``root`` where they lie under it."""

    def write(f) -> None:
        out = csv.writer(f)
        out.writerow(COLUMNS)
        for number, group in enumerate(duplicates.ordered(), 1):
            out.writerows((number, c.split, c.cls, _relative(c.key, root)) for c in group)

    return atomic_write(path, write)


# --- digests kept, for telling a model's training images when it is scored ----------------

DIGESTS = "digests.npz"  # in a run directory: the pixel digests of its train and val images
SEEN_SPLITS = ("train", "val")  # the splits a run learned from and chose its epoch by


def write_digests(path: str | Path, parts: dict[str, list[bytes]]) -> Path:
    """Pixel digests by part (a run's train and val splits; FER2013's Training and PublicTest),
    one (N, 16) uint8 array each: numpy's bytes dtype would drop a digest's trailing zero bytes."""
    arrays = {name: np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), DIGEST_BYTES)
              for name, digests in parts.items()}
    return atomic_write(path, lambda f: np.savez(f, **arrays), mode="wb")


def holding_part(digests: list[bytes], parts: dict[str, set[bytes]], order: Iterable[str]) -> list[str | None]:
    """Per digest, the first part of ``order`` whose digests (``parts``, as read_digests gives
    them) hold it, or None."""
    order = [name for name in order if name in parts]
    return [next((name for name in order if digest in parts[name]), None) for digest in digests]


def read_digests(path: str | Path) -> dict[str, set[bytes]]:
    """part -> the digests of its images, as ``write_digests`` wrote them ({} without the file)."""
    if not Path(path).is_file():
        return {}
    with np.load(path, allow_pickle=False) as arrays:
        return {name: {row.tobytes() for row in arrays[name]} for name in arrays.files}
