"""Stratified K-fold cross-validation: how sure a result on a small folder is.

Every image of the data (all its splits pooled) is tested exactly once. Fold k trains on
the other folds, minus a validation slice for choosing the epoch, and tests on fold k.
``--group-by`` keeps every group (a subject, a clip) inside one fold. Each fold is a full
run directory (``fold-1/`` ...); the parent holds ``cv_report.json`` / ``cv_report.md``
with mean and standard deviation over folds and a confusion matrix pooled over folds.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.rule import Rule
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from .config import Config
from .data import (DataError, DataSplits, Split, apply_shots, group_keys, grouped_split, load_data, note_copies, read_split_listing,
                   resolve_listing, stratified_split)
from .evaluation import accuracy_interval
from .io import read_json, write_json, write_text
from .report import cv_markdown, print_cv_report, write_report
from .runs import RunResult, new_run_dir, read_record, update_record, write_args


def fold_indices(labels: np.ndarray, k: int, seed: int, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """The test indices of each of ``k`` stratified (and, with groups, grouped) folds."""
    counts = np.bincount(labels)
    if counts[counts > 0].min() < k and groups is None:
        raise DataError(f"--folds {k}: the smallest class has only {counts[counts > 0].min()} images")
    if groups is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return [test for _, test in splitter.split(np.zeros(len(labels)), labels)]
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(labels)), labels, groups)]


def concat(splits: list[Split]) -> Split:
    images = None if any(s.images is None for s in splits) else [i for s in splits for i in s.images]
    return Split([k for s in splits for k in s.keys], np.concatenate([s.labels for s in splits]), images)


def fold_data(data: DataSplits, pool: Split, test: np.ndarray, cfg: Config, groups: np.ndarray | None) -> DataSplits:
    """train / val / test of one fold: test = the fold; val carved from the rest; with
    ``cfg.shots``, that many training images per class drawn from what remains (the few-shot
    protocol: every image is still tested once, by the fold that holds it)."""
    rest = np.setdiff1d(np.arange(len(pool)), test)
    fractions = {"val": cfg.val_split}
    if groups is not None:
        where = grouped_split(pool.labels[rest], groups[rest], fractions, cfg.seed)
    else:
        where = stratified_split(pool.labels[rest], fractions, cfg.seed)
    splits = {"train": pool.subset(rest[where == "train"]), "val": pool.subset(rest[where == "val"]),
              "test": pool.subset(test)}
    fold = DataSplits(data.classes, splits, data.source, data.skipped, data.class_map, data.faces, list(data.notes),
                      data.csv_splits, data.digests)
    if cfg.shots:
        apply_shots(fold, cfg.shots, cfg.seed)
    note_copies(fold)
    return fold


def aggregate_folds(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1) over folds; confusion matrices summed."""
    def stats(values: list[float]) -> dict[str, float]:
        arr = np.array(values, dtype=float)
        return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}

    classes = reports[0]["classes"]
    pooled = np.sum([r["confusion_matrix"] for r in reports], axis=0)
    n, correct = int(pooled.sum()), int(np.trace(pooled))
    return {
        "folds": len(reports),
        "classes": classes,
        "accuracy": stats([r["accuracy"] for r in reports]),
        "balanced_accuracy": stats([r["balanced_accuracy"] for r in reports]),
        "macro_f1": stats([r["macro_f1"] for r in reports]),
        "per_class_f1": {c: stats([r["per_class"][c]["f1"] for r in reports]) for c in classes},
        "confusion_matrix": pooled.tolist(),
        # every image is tested once: the folds' test images pooled, with the accuracy's interval
        "pooled": {"n": n, "accuracy": correct / max(n, 1), "accuracy_ci95": accuracy_interval(correct, n)},
        "per_fold": [{"fold": i + 1, "n": r["n"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}
                     for i, r in enumerate(reports)],
    }


def _pool_predictions(root: Path, folds: int) -> None:
    """root/predictions.csv: the fold predictions stacked (each image appears once)."""
    lines = []
    for k in range(1, folds + 1):
        rows = (root / f"fold-{k}" / "predictions.csv").read_text().splitlines(keepends=True)
        lines += rows if not lines else rows[1:]
    write_text(root / "predictions.csv", "".join(lines))


def _run_fold(folder: Path, fold: DataSplits, cfg: Config, train_on, resume_on, console, allow_download) -> RunResult:
    """Train a fold, or, going on with a cross-validation, keep it when finished and resume it
    when interrupted; a fold stopped before its first epoch ended has nothing to keep and starts again."""
    if not folder.exists():
        return train_on(fold, cfg, console, allow_download)
    record = read_record(folder)
    finished = record.get("status") == "finished"
    if not finished and not (folder / "checkpoints" / "last.state.pt").is_file():
        if console:
            console.print(f"{folder.name} stopped before its first epoch ended: training it again")
        shutil.rmtree(folder)
        return train_on(fold, cfg, console, allow_download)
    listed = resolve_listing(read_split_listing(folder / "split.csv"), Path(cfg.data)).get("test", [])
    if [key for key, _ in listed] != fold.splits["test"].keys:
        raise DataError(f"{folder} tested other images than this fold would now: {cfg.data} has changed since the "
                        "cross-validation began; start a new one")
    if finished:
        if console:
            console.print(f"{folder.name} finished earlier: kept")
        return RunResult(folder, read_json(folder / "report.json"), [], record)
    return resume_on(folder, console)


def _unmake(root: Path, there: bool) -> None:
    """Take back a cross-validation folder that holds only its own args.yaml and run.json, as a
    single run that fails before training leaves nothing behind (so the same --out can be used
    again); a folder that was there before, empty, is kept, empty."""
    for name in ("args.yaml", "run.json"):
        (root / name).unlink(missing_ok=True)
    if not there and not any(root.iterdir()):
        root.rmdir()


def cross_validate(cfg: Config, train_on: Callable[..., RunResult], console=None, allow_download: bool = True,
                   root: Path | None = None, resume_on: Callable[..., RunResult] | None = None) -> RunResult:
    """Train one run per fold with ``train_on`` (ftkit.train.train_on: the training is handed in, so
    that cross-validation sits beside training rather than on both sides of it) and pool them.

    With ``root``, an interrupted cross-validation goes on (ftkit finetune --resume ROOT): its
    finished folds are kept, an interrupted fold continues with ``resume_on`` (ftkit.train.resume)
    from its last epoch, and the folds not yet begun are trained."""
    data = load_data(replace(cfg, shots=0), console=console, carve=False)
    pool = concat(list(data.splits.values()))
    groups = group_keys(pool.keys, cfg.group_by) if cfg.group_by else None
    tests = fold_indices(pool.labels, cfg.folds, cfg.seed, groups)  # data too small for K folds: no folder made
    made = None  # the folder this call made, and whether it was there (empty) before
    if root is None:
        there = bool(cfg.out) and Path(cfg.out).is_dir()
        root = new_run_dir(cfg)
        made = (root, there)
        write_args(root, cfg.to_dict())
    update_record(root, status="running", error=None, folds=cfg.folds)  # a resumed root's earlier failure is over
    reports = []
    try:
        for k, test in enumerate(tests, 1):
            if console:
                # a ruled line as wide as a terminal: a log (console width 1000) gets no 1000-character line
                console.print(Rule(f"fold {k}/{cfg.folds}"), width=min(console.width, 100))
            fold_cfg = replace(cfg, folds=0, out=str(root / f"fold-{k}"))
            fold = fold_data(data, pool, test, cfg, groups)
            result = _run_fold(Path(fold_cfg.out), fold, fold_cfg, train_on, resume_on, console, allow_download)
            reports.append(result.report)
    except KeyboardInterrupt:
        update_record(root, status="interrupted")
        if console:
            console.print(f"cross-validation interrupted; continue it (every fold) with: ftkit finetune --resume {root}", style="yellow")
        raise
    except Exception as exc:
        if made and not any(root.glob("fold-*")):
            _unmake(*made)  # failed before any fold began (weights, device): nothing to keep or resume
        else:
            update_record(root, status="failed", error=f"fold {len(reports) + 1}: {type(exc).__name__}: {exc}")
        raise
    cv = aggregate_folds(reports)
    write_json(root / "cv_report.json", cv)
    write_text(root / "cv_report.md", cv_markdown(cv, root))
    _pool_predictions(root, cfg.folds)
    first = read_record(root / "fold-1")
    record = update_record(root, **{k: first.get(k) for k in ("backbone", "parameters", "weights", "device", "phases", "data_config")},
                           data={**first.get("data", {}), "counts": data.summary()},
                           status="finished", folds=cfg.folds, group_by=cfg.group_by, eval_split="pooled folds",
                           eval_note="every image predicted once, by the fold that held it out")
    write_report(root)  # pooled report.json, confusion matrices and report.html with the fold table
    if console:  # the summary `ftkit report ROOT` prints: a row per fold, mean +- std, per-class F1
        print_cv_report(root, console)
        console.print(f"cross-validation ({cfg.folds} folds): accuracy {cv['accuracy']['mean']:.4f} +- {cv['accuracy']['std']:.4f}, "
                      f"macro-F1 {cv['macro_f1']['mean']:.4f} +- {cv['macro_f1']['std']:.4f}")
    return RunResult(root, cv, [], record)
