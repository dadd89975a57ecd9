"""Transfer to faces that are not FER2013: a small posed set (../shared/data/taiwanese, 29
subjects, 1,232 images, FER2013's seven class names), starting from ImageNet or from the
shipped FER2013 expression model, and that model with no fine-tuning at all.

Protocol (no subject is ever on two sides):
- 5 folds by subject (StratifiedGroupKFold, fixed fold seed 0, the same for every start);
  each fold's test subjects are only scored.
- In the other subjects, 15 % of the subjects form the validation split that picks the epoch
  (and, in a --variant run, the settings); the shots are drawn from the rest, per class and per
  seed. ``all`` trains on every non-validation image (``--all-epochs`` epochs).
- Every image is cropped to its largest face first (``--faces crop --face-margin 0``,
  recipes/fewshot.yaml's margin; ``--faces none`` keeps the whole 256x256 head-and-shoulders
  frame), the same for every start. The shipped model labels best without training at its
  manifest's margin, -0.1: ``--starts fer-zero --face-margin -0.1`` scores it that way.
- ``--placed``: each image is first placed alone into a 640x480 picture as
  benchmarks/faces_wild.py makes them (clutter, a random side of 48-200 px, a tilt of up to
  +-30 degrees, some blurred or dimmed), so that the detector must find the face: faces as they
  come, for comparing detectors and alignment end to end.
- Starts: ``imagenet`` (recipes/fewshot-imagenet.yaml: MobileNetV2 ImageNet weights),
  ``fer`` (recipes/fewshot.yaml: its ``init``, a shipped model), ``fer-zero`` (a shipped model,
  ``--zero-model``, classes matched by name, no training: scored on the same test folds).

    python benchmarks/transfer.py                                      # the whole grid
    python benchmarks/transfer.py --shots 20 --starts fer --seeds 0 \\
        --variant "lr=0.0001" --variant "freeze_epochs=5 backbone_lr_mult=0.1"   # tuning rows

Rows report test accuracy and macro-F1 as mean +- sample std over folds x seeds; a --variant
row also gives the validation macro-F1 at the chosen epoch, which is what decides.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from common import ROOT, SHARED, command_line, emit_row, machine, parse_settings

from ftkit.crossval import fold_indices
from ftkit.data import DataSplits, ImageDataset, group_keys, grouped_split, load_data
from ftkit.evaluation import predict_probs, quick_metrics
from ftkit.io import read_json, read_yaml
from ftkit.predict import load_run
from ftkit.progress import console
from ftkit.runs import read_metrics
from ftkit.train import train_on
from ftkit.transforms import eval_transform
from ftkit.zoo import match_classes, resolve_config

TAR = SHARED / "taiwanese" / "taiwanese-faces.tar.gz"
TAR_SHA256 = "f260a1295420d20915c0e221f83cf3fc07ad8a82a6fa0cbd7e2dddb876fe1757"
SUBJECT = r"([0-9]{2})[0-9]{2}[a-g][0-9]+[.]jpg$"
FER_INIT = read_yaml(ROOT / "recipes" / "fewshot.yaml")["init"]  # the shipped model the fer start begins from
STARTS = {
    # start: (recipe, what it starts from)
    "imagenet": (ROOT / "recipes" / "fewshot-imagenet.yaml", "ImageNet MobileNetV2"),
    "fer": (ROOT / "recipes" / "fewshot.yaml", f"shipped {FER_INIT}"),
}
HEADER = ("| start | shots/class | folds x seeds | test accuracy | test macro-F1 | train images per run | wall time per run "
          "| machine | command |\n|---|---|---|---|---|---|---|---|---|")
TUNING_HEADER = ("| start | settings | shots/class | folds x seeds | val macro-F1 (decides) | test accuracy | test macro-F1 "
                 "| wall time per run | machine | command |\n|---|---|---|---|---|---|---|---|---|---|")
SECTION = "Transfer to a posed face set that is not FER2013"
TUNING_SECTION = "Few-shot settings on the posed set (validation subjects decide)"


def extract(work: Path) -> Path:
    target = work / "taiwanese"
    if (target / ".complete").is_file():
        return target / "taiwanese"
    if not TAR.is_file():
        sys.exit(f"{TAR} not found: the benchmarks read ../shared/data (see its README)")
    digest = hashlib.sha256(TAR.read_bytes()).hexdigest()
    if digest != TAR_SHA256:
        sys.exit(f"{TAR}: sha256 {digest} is not the expected {TAR_SHA256}")
    with tarfile.open(TAR) as tar:
        tar.extractall(target, filter="data")
    (target / ".complete").write_text("ok\n")
    return target / "taiwanese"


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} +- {np.std(values, ddof=1) if len(values) > 1 else 0:.4f}"


def fold_data(full: DataSplits, groups: np.ndarray, test: np.ndarray, shots: int | None, seed: int) -> DataSplits:
    """train (``shots`` per class, or all) / val (15 % of the other subjects) / test (the fold)."""
    pool = full.splits["all"]
    rest = np.setdiff1d(np.arange(len(pool)), test)
    where = grouped_split(pool.labels[rest], groups[rest], {"val": 0.15}, seed=0)  # the same val subjects every seed
    train, val = rest[where == "train"], rest[where == "val"]
    if shots is not None:
        rng = np.random.default_rng(seed)
        train = np.concatenate([rng.choice(idx, size=min(shots, len(idx)), replace=False)
                                for idx in (train[pool.labels[train] == c] for c in range(len(full.classes)))])
    splits = {"train": pool.subset(np.sort(train)), "val": pool.subset(val), "test": pool.subset(test)}
    return DataSplits(full.classes, splits, full.source, full.skipped, full.class_map, full.faces, [])


def zero_shot(folds: list[np.ndarray], full: DataSplits, model: str) -> list[dict[str, float]]:
    """A shipped model on each test fold, its classes matched to the data's by name."""
    loaded = load_run(model, device="cpu")
    order = match_classes(loaded.classes, full.classes)
    if len(order) != len(full.classes):
        sys.exit(f"{model} does not know every class of the data: {full.classes}")
    columns = [order[t] for t in range(len(full.classes))]
    out = []
    for test in folds:
        split = full.splits["all"].subset(test)
        loader = torch.utils.data.DataLoader(ImageDataset(split, eval_transform(loaded.data_config)), batch_size=128)
        probs, labels, _ = predict_probs(loaded.model, loader, loaded.device, loaded.config.tta)
        out.append(quick_metrics(labels, probs[:, columns].argmax(1)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", nargs="+", default=["5", "10", "20", "50", "all"], help="per class, or 'all'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="which of the 5 folds to run")
    parser.add_argument("--starts", nargs="+", default=["fer-zero", "fer", "imagenet"], choices=["fer-zero", *STARTS])
    parser.add_argument("--zero-model", default="fer2013-fast", help="the shipped model that fer-zero scores")
    parser.add_argument("--all-epochs", type=int, default=15, help="epochs for the 'all' cell (the recipes' are for tens of images)")
    parser.add_argument("--variant", action="append", default=[], metavar='"KEY=VALUE ..."',
                        help="settings to try on top of the start's recipe (tuning rows; repeatable)")
    parser.add_argument("--tune", action="store_true",
                        help="write tuning rows (with the validation macro-F1) even without --variant")
    parser.add_argument("--faces", choices=["none", "crop"], default="crop",
                        help="crop every image to its largest face first (ftkit's --faces crop), for every start")
    parser.add_argument("--face-margin", type=float, default=0.0,
                        help="margin around a detected face (--faces crop); 0 is recipes/fewshot.yaml's, -0.1 the "
                             "shipped models' (face_margin.py)")
    parser.add_argument("--face-align", action="store_true", help="level each face's eyes before cropping (ftkit's face_align)")
    parser.add_argument("--face-detector", choices=["auto", "retinaface", "haar"], default="auto",
                        help="the face detector that crops every image (ftkit's face_detector; auto: RetinaFace)")
    parser.add_argument("--placed", action="store_true", help="place each image alone into a cluttered 640x480 picture first")
    parser.add_argument("--work", default="/tmp/ftkit-bench")
    parser.add_argument("--reuse", action="store_true",
                        help="read a fold and seed back from its finished run of the same settings (args.yaml) instead of training it again")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    work = Path(args.work)
    data_dir = extract(work)
    placed_note = ""
    if args.placed:
        from faces_wild import PICTURE, placed_set  # it imports this module

        data_dir = placed_set(data_dir, work / "taiwanese-placed")
        placed_note = f", each placed into a {PICTURE[0]}x{PICTURE[1]} picture"
    faces = face_settings(args)
    full = load_data(resolve_config(None, data=str(data_dir), cache="memory", **faces), console=console, carve=False)
    crop_note = placed_note + \
        (f", faces cropped by {args.face_detector} (margin {args.face_margin:g}{', eyes levelled' if args.face_align else ''})"
         if faces else "")
    groups = group_keys(full.splits["all"].keys, SUBJECT)
    all_folds = fold_indices(full.splits["all"].labels, 5, seed=0, groups=groups)
    folds = [all_folds[k - 1] for k in args.folds]
    console.print(f"{len(full.splits['all'])} images, {len(set(groups))} subjects, test folds of "
                  f"{[len(f) for f in folds]} images")
    label = f"{len(folds)} x {len(args.seeds)}"
    if "fer-zero" in args.starts and not (args.variant or args.tune):
        metrics = zero_shot(folds, full, args.zero_model)
        row = (f"| {args.zero_model}, no fine-tuning{crop_note} | 0 | {len(folds)} x 1 | {mean_std([m['accuracy'] for m in metrics])} "
               f"| {mean_std([m['macro_f1'] for m in metrics])} | 0 | 0 s | {machine()} | `{command_line()}` |")
        emit_row(SECTION, HEADER, row, write=not args.no_write)
    for start in [s for s in args.starts if s in STARTS]:
        for sets in [parse_settings(v, "--variant") for v in args.variant] or [{}]:
            for shots in args.shots:
                cell = run_cell(args, full, groups, folds, start, sets, None if shots == "all" else int(shots))
                console.print(f"{start} {shots}/class: validation macro-F1 {mean_std(cell['val'])} (what settings are chosen on)")
                if sets or args.tune:
                    settings = (" ".join(f"{k}={v}" for k, v in {**faces, **sets}.items()) or "the recipe as it is") + placed_note
                    row = (f"| {start_label(start, sets)} | {settings} | {shots} | {label} | {mean_std(cell['val'])} | {mean_std(cell['acc'])} "
                           f"| {mean_std(cell['f1'])} | {np.mean(cell['secs']):.0f} s | {machine()} | `{command_line()}` |")
                    emit_row(TUNING_SECTION, TUNING_HEADER, row, write=not args.no_write)
                else:
                    row = (f"| {STARTS[start][1]}, {cell['size']}x{cell['size']}{crop_note} | {shots} | {label} | {mean_std(cell['acc'])} | {mean_std(cell['f1'])} "
                           f"| {np.mean(cell['n']):.0f} | {np.mean(cell['secs']):.0f} s | {machine()} | `{command_line()}` |")
                    emit_row(SECTION, HEADER, row, write=not args.no_write)


def start_label(start: str, sets: dict[str, Any]) -> str:
    """A tuning row's start: ``fer`` names the model it started from (the recipe's ``init`` or the
    variant's), as the recipe's start has changed."""
    if start != "fer":
        return start
    return f"fer, from {sets.get('init') or FER_INIT}"


def face_settings(args) -> dict[str, Any]:
    """How every start's images are cropped (the same for all of them)."""
    if args.faces == "none":
        return {}
    # face_align always explicit: a start from the shipped model would otherwise take its manifest's
    # alignment into args.yaml, while the images were cropped once, here, without it
    return {"faces": args.faces, "face_margin": args.face_margin, "face_align": bool(args.face_align),
            **({"face_detector": args.face_detector} if args.face_detector != "auto" else {})}


def finished_run(cfg, cell: str) -> dict[str, float] | None:
    """A finished run of this fold, seed and shots (``cell``, the end of its name) whose args.yaml is
    ``cfg`` but for the name: its numbers, read back (``--reuse``). Matching the settings, not the
    name, reads a ``--variant`` run back once a recipe takes its settings."""
    wanted = {**yaml.safe_load(yaml.safe_dump(cfg.to_dict())), "name": None}
    for run in sorted(Path(cfg.project).glob(f"*{cell}*")):
        if not re.fullmatch(rf".*{cell}(-\d+)?", run.name) or not (run / "report.json").is_file():
            continue
        if {**read_yaml(run / "args.yaml"), "name": None} != wanted:
            continue
        record, report = read_json(run / "run.json"), read_json(run / "report.json")
        if record.get("status") != "finished":
            continue
        val = read_metrics(run)[int(record["best_epoch"]) - 1]["val_macro_f1"]
        return {"secs": float(record["train_seconds"]), "acc": report["accuracy"], "f1": report["macro_f1"], "val": val,
                "run": run.name}
    return None


def run_cell(args, full: DataSplits, groups, folds, start: str, sets: dict[str, Any], shots: int | None) -> dict[str, Any]:
    recipe, _ = STARTS[start]
    cell: dict[str, Any] = {"acc": [], "f1": [], "val": [], "secs": [], "n": []}
    tag = "".join(f"-{k}{v}" for k, v in sets.items()) + ("-aligned" if args.face_align else "") + \
        (f"-{args.face_detector}" if args.face_detector != "auto" else "") + ("-placed" if args.placed else "")
    for k, test in zip(args.folds, folds):
        for seed in args.seeds:
            extra = {"epochs": args.all_epochs} if shots is None else {}
            run_of = f"-{shots or 'all'}shot-fold{k}-seed{seed}"
            cfg = resolve_config(recipe, data="taiwanese-placed" if args.placed else "taiwanese", project=str(Path(args.work) / "transfer-runs"), seed=seed,
                                 name=f"{start}{tag}{run_of}",
                                 **{"faces": args.faces, **face_settings(args)}, **extra, **sets)
            cfg = replace(cfg, workers=0)
            data = fold_data(full, groups, test, shots, seed)
            done = finished_run(cfg, run_of) if args.reuse else None
            if done is None:
                started = time.perf_counter()
                result = train_on(data, cfg, console)
                done = {"secs": time.perf_counter() - started, "acc": result.report["accuracy"], "f1": result.report["macro_f1"],
                        "val": result.history[result.record["best_epoch"] - 1]["val_macro_f1"]}
            else:
                console.print(f"{cfg.name}: read from {done.pop('run')}, a finished run of the same settings (--reuse)")
            for key, value in {**done, "n": len(data.splits["train"])}.items():
                cell[key].append(value)
    cell["size"] = cfg.img_size
    return cell


if __name__ == "__main__":
    main()
