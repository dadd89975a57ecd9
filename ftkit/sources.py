"""Where labeled images come from: class folders, file names matched by a regex, split listings
(a run's split.csv or a CSV of one's own), and the selection and merging of their classes."""

from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import replace
from pathlib import Path

from .config import Config, suggest
from .images import IMAGE_EXTENSIONS, DataError, dangling_link, has_images, image_files, not_data, refuse_archive, walk_files
from .io import atomic_write
from .splits import SPLITS, DataSplits, first_group


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


def apply_class_map(items: dict[str, list[tuple[str, str]]], mapping: dict[str, str | None]):
    return {
        split: [(key, mapping[c]) for key, c in rows if mapping.get(c)]
        for split, rows in items.items()
    }


def folder_items(root: Path, cfg: Config, skipped: list) -> tuple[dict[str, list[tuple[str, str]]], str]:
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
