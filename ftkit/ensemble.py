"""Ensembles: average the class probabilities of several trained runs on the same images.

Each member scores the split with its own preprocessing (input size, colour, normalisation)
and test-time augmentation, so runs at different input sizes or on different backbones
combine freely; they must share the class names. The ensemble folder holds the averaged
``predictions.csv`` with the usual report files, and each member's own predictions under
``members/`` so every number can be checked by hand.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .evaluation import quick_metrics, write_predictions
from .io import holds_files, new_folder, refuse_inside
from .scoring import LoadedRun, Scored, load_model, run_record, score_run, trained_on_note
from .report import write_report
from .runs import RunError, update_record, write_classes


def ensemble_runs(runs: list[str | Path], out: str | Path, data: str | None = None, split: str = "test",
                  tta: str | None = None, device: str = "auto", console=None, progress=None,
                  overrides: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Score every run on ``split`` of ``data`` (default: each run's own data and split file),
    average their probabilities, and write the ensemble's report into a new folder ``out``.
    ``overrides`` replaces every member's data settings, as in ftkit.scoring.score_run.

    ``progress(run_index, total=None, advance=None)`` follows the scoring. Returns (out, report).
    The folder appears only when complete; an existing, non-empty ``out`` is never touched.
    """
    if len(runs) < 2:
        raise RunError("an ensemble needs at least two runs")
    seen: dict[str, str | Path] = {}
    for run in runs:
        key = os.path.realpath(run) if Path(run).exists() else str(run)
        if key in seen:
            raise RunError(f"{run} is given twice (as {seen[key]} too): a run counted twice weighs double in the mean; "
                           "give each run once")
        seen[key] = run
    out = Path(out)
    if holds_files(out):  # said before the scoring, not after it
        raise RunError(f"{out} already exists and is not empty; choose another --out (nothing was changed)")
    if data:
        refuse_inside(out, [data], "--out")
    loaded, scores = score_members(runs, data, split, tta, device, console, progress, overrides=overrides)
    refuse_inside(out, [scores[0].data], "--out")  # the members' own data folder
    classes = loaded[0].classes
    members = []
    for run, scored in zip(loaded, scores):
        record = run_record(run)
        members.append({"run": run.label, "backbone": record.get("backbone"),
                        "input": f"{run.data_config.img_size}x{run.data_config.img_size}",
                        "tta": scored.tta, "best_epoch": record.get("best_epoch"),
                        "train_seconds": record.get("train_seconds"), "not_held_out": trained_on_note(run.label, scored),
                        "whole_images": scored.settings.get("whole_images"),
                        **quick_metrics(scored.labels, scored.probs.argmax(1))})
    probs = mean_probs(scores)
    first = scores[0]
    record = {"ensemble": members, "eval_split": first.split, "eval_data": first.data, "eval_tta": "per member",
              "eval_note": f"mean of the class probabilities of {len(runs)} runs", "eval_settings": first.settings,
              "train_seconds": _sum_or_none(m["train_seconds"] for m in members),
              "device": str(loaded[0].device), "data": {"path": first.data}}
    with new_folder(out, "--out") as work:
        for i, (member, scored) in enumerate(zip(members, scores), 1):
            folder = work / "members" / f"{i:02d}-{Path(member['run']).name}"
            folder.mkdir(parents=True)
            write_predictions(folder / "predictions.csv", scored.keys, scored.labels, scored.probs, classes)
        write_predictions(work / "predictions.csv", first.keys, first.labels, probs, classes)
        update_record(work, **record)
        write_classes(work, classes)
        report = write_report(work, name=str(out))
    return out, report


def score_members(runs: list[str | Path], data: str | None = None, split: str = "test", tta: str | None = None,
                  device: str = "auto", console=None, progress=None, datasets: dict | None = None,
                  overrides: dict[str, Any] | None = None) -> tuple[list[LoadedRun], list[Scored]]:
    """Load and score each run on the same images, every member's columns in the first run's
    class order. Refuses runs with other class names or that scored other images.

    Runs with the same data settings share one decoded copy of the data; pass ``datasets``
    (a dict) to share it across calls too, e.g. when scoring several splits."""
    datasets = {} if datasets is None else datasets
    loaded: list[LoadedRun] = []
    scores: list[Scored] = []
    for i, run in enumerate(runs):
        member = load_model(run, device)
        if loaded and sorted(member.classes) != sorted(loaded[0].classes):
            raise RunError(f"{run} predicts classes {member.classes}, but {runs[0]} predicts {loaded[0].classes}; "
                           "an ensemble's runs must share their class names")
        scored = score_run(member, data, split, tta, console, datasets=datasets, overrides=overrides,
                           progress=progress and (lambda total=None, advance=None, i=i: progress(i, total=total, advance=advance)))
        if loaded:
            scored = in_class_order(scored, member.classes, loaded[0].classes)
            _check_same_images(scored, scores[0], run, runs[0])
        loaded.append(member)
        scores.append(scored)
    return loaded, scores


def mean_probs(scores: list[Scored]) -> np.ndarray:
    """The ensemble's class probabilities: the mean of its members'."""
    return np.mean([s.probs for s in scores], axis=0)


def in_class_order(scored: Scored, have: list[str], want: list[str]) -> Scored:
    """Reorder a member's probability columns (and labels) from its class order to ``want``."""
    if have == want:
        return scored
    columns = [have.index(c) for c in want]
    relabel = np.array([want.index(c) for c in have])
    return replace(scored, labels=relabel[scored.labels], probs=scored.probs[:, columns])


def _check_same_images(scored: Scored, first: Scored, run, first_run) -> None:
    if scored.keys == first.keys and np.array_equal(scored.labels, first.labels):
        return
    if len(scored.keys) != len(first.keys):
        raise RunError(f"{run} scored {len(scored.keys)} images of split {scored.split!r}, {first_run} scored "
                       f"{len(first.keys)}: give --data (and --split) so that every run sees the same images")
    i = next(i for i, (a, b) in enumerate(zip(scored.keys, first.keys)) if a != b or scored.labels[i] != first.labels[i])
    raise RunError(f"{run} and {first_run} disagree on image {i} of split {scored.split!r} "
                   f"({scored.keys[i]} vs {first.keys[i]}): give --data so that every run sees the same images")


def _sum_or_none(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else round(float(sum(values)), 1)
