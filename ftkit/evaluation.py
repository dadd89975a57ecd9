"""Evaluation: run a model over a split, write predictions.csv, and compute the report from it.

Every number in a report comes from ``predictions.csv`` through scikit-learn, so the report
can be recomputed (``ftkit report RUN``) and checked by anyone from that one file.
"""

from __future__ import annotations

import csv
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from .config import CHOICES, ConfigError
from .distributed import SINGLE, Context
from .io import FileFormatError, atomic_write


TTA_MODES = CHOICES["tta"]
TTA_SHIFT = 0.06  # fraction of the side by which ``shift`` moves the image: ~4 px at 64x64


def tta_views(x: torch.Tensor, mode: str = "none") -> list[torch.Tensor]:
    """The views of a batch [N, C, H, W] that test-time augmentation averages over.

    ``flip``: the image and its mirror. ``shift``: both of those, each also moved by
    ``TTA_SHIFT`` of its side up, down, left and right (edge pixels repeated): 10 views, the
    FER literature's ten-crop without shrinking the face.
    """
    if mode not in TTA_MODES:
        raise ConfigError(f"unknown test-time augmentation {mode!r}; choose from {', '.join(TTA_MODES)}")
    views = [x] if mode == "none" else [x, x.flip(-1)]
    if mode == "shift":
        h, w = x.shape[-2:]
        s = max(1, round(TTA_SHIFT * min(h, w)))
        padded = [torch.nn.functional.pad(v, (s, s, s, s), mode="replicate") for v in views]
        offsets = [(0, s), (2 * s, s), (s, 0), (s, 2 * s)]  # (top, left) of the window in the padded image
        views += [p[..., top:top + h, left:left + w] for p in padded for top, left in offsets]
    return views


def tta_probs(forward, x: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Softmax probabilities of ``forward`` (batch -> logits) averaged over the TTA views of ``x``."""
    views = tta_views(x, mode)
    return sum(forward(v).float().softmax(1) for v in views) / len(views)


@torch.no_grad()
def predict_probs(model, loader, device, tta: str = "none", autocast=nullcontext, progress=None):
    """Softmax probabilities and labels for every batch of ``loader``.

    ``tta`` is one of ``TTA_MODES`` (see ``tta_views``): probabilities are averaged over the views.
    Returns (probs [N, C] float64, labels [N] int64, mean cross-entropy loss).
    """
    model.eval()
    probs, labels, loss_sum = [], [], 0.0
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        with autocast():
            p = tta_probs(model, x, tta)
        loss_sum += torch.nn.functional.nll_loss(p.clamp_min(1e-12).log(), y.to(device), reduction="sum").item()
        probs.append(p.cpu().double().numpy())
        labels.append(y.numpy())
        if progress:
            progress(len(y))
    probs_all = np.concatenate(probs) if probs else np.zeros((0, 0))
    labels_all = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    return probs_all, labels_all, loss_sum / max(len(labels_all), 1)


def predict_split(model, loader, device, tta: str = "none", autocast=nullcontext, ctx: Context = SINGLE,
                  progress=None):
    """``predict_probs`` over a split's loader, in the split's order. A streamed loader
    (shards.ShardStream) yields each image's position in the split, which puts its predictions
    back in order; under DDP every rank's share is gathered, so each image of the split comes once."""
    positions: list[np.ndarray] = []

    def batches():
        for batch in loader:
            if len(batch) == 3:  # (images, labels, positions)
                positions.append(batch[2].numpy())
            yield batch[0], batch[1]

    probs, labels, loss = predict_probs(model, batches(), device, tta, autocast, progress)
    count = np.array([loss * len(labels)])
    position = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
    if ctx.active:
        probs, labels, count, position = distributed.gather_arrays(ctx, probs, labels, count, position)
    if len(position):  # DataLoader workers interleave shards, and ranks hold every world-th image
        order = np.argsort(position, kind="stable")
        probs, labels = probs[order], labels[order]
    return probs, labels, float(count.sum()) / max(len(labels), 1)


def quick_metrics(labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    """The metrics tracked every epoch (and used for early stopping). Macro-F1 averages over the
    classes present in ``labels``: a class with no image to score is not a zero."""
    # scikit-learn is imported here, not at the top: `ftkit predict` uses this module but scores
    # nothing, and sklearn is a second of its start-up
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    return {
        "accuracy": float(accuracy_score(labels, preds)),
        # balanced accuracy = mean recall over the classes present (sklearn's, without its warning
        # when a prediction names a class that has no image here)
        "balanced_accuracy": float(recall_score(labels, preds, labels=np.unique(labels), average="macro", zero_division=0)),
        "macro_f1": float(f1_score(labels, preds, labels=np.unique(labels), average="macro", zero_division=0)),
    }


def write_predictions(path: Path, keys: list[str], labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    """predictions.csv: path, true, predicted, and one probability column per class."""
    preds = probs.argmax(1)

    def write(f):
        w = csv.writer(f)
        w.writerow(["path", "true", "predicted", *[f"p_{c}" for c in classes]])
        for key, y, p, row in zip(keys, labels, preds, probs):
            w.writerow([key, classes[y], classes[p], *[f"{v:.6f}" for v in row]])

    atomic_write(path, write)


def read_predictions(path: Path) -> tuple[list[str], list[str], list[str], np.ndarray, list[str]]:
    """Return (paths, true names, predicted names, probs, classes) from a predictions.csv."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = list(reader)
    if header[:3] != ["path", "true", "predicted"]:
        raise FileFormatError(f"{path} is not a predictions.csv (header {','.join(header[:3]) or 'missing'}); "
                              "recreate it with `ftkit evaluate`")
    classes = [h.removeprefix("p_") for h in header[3:]]
    for line, row in enumerate(rows, 2):
        try:
            if len(row) != len(header):
                raise ValueError(f"{len(row)} fields, the header has {len(header)}")
            total = sum(float(v) for v in row[3:])
            if abs(total - 1) > 1e-3:  # written with 6 decimals: a row cut mid-number does not sum to 1
                raise ValueError(f"the probabilities sum to {total:.6f}, not 1")
        except ValueError as exc:
            raise FileFormatError(f"{path}, line {line}: {exc} (the file was cut short or edited); recreate it "
                                  "with `ftkit evaluate`") from exc
    probs = np.array([[float(v) for v in r[3:]] for r in rows]) if rows else np.zeros((0, len(classes)))
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], probs, classes


def compute_report(predictions: Path) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class P/R/F1/support, macro and weighted averages,
    and the confusion matrix, all computed by scikit-learn from ``predictions.csv``."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix  # see quick_metrics

    _, true, pred, _, classes = read_predictions(predictions)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[t] for t in true], dtype=np.int64)
    p = np.array([index[t] for t in pred], dtype=np.int64)
    labels = list(range(len(classes)))
    per = classification_report(y, p, labels=labels, target_names=classes, output_dict=True, zero_division=0)
    # Macro averages over the classes that have images in this split: a class with no support
    # has no recall to speak of, and counting it as 0 would understate every other class.
    present = [c for c in classes if per[c]["support"] > 0]
    macro = {k: float(np.mean([per[c][k] for c in present])) if present else 0.0 for k in ("precision", "recall", "f1-score")}
    macro["support"] = int(len(y))
    return {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, p)),
        "accuracy_ci95": accuracy_interval(int((y == p).sum()), len(y)),
        "balanced_accuracy": macro["recall"],
        "macro_f1": macro["f1-score"],
        "per_class": {c: _prf(per[c]) for c in classes},
        "no_support": [c for c in classes if c not in present],
        "macro_avg": _prf(macro),
        "weighted_avg": _prf(per["weighted avg"]),
        "classes": classes,
        "confusion_matrix": confusion_matrix(y, p, labels=labels).tolist(),
    }


def accuracy_interval(correct: int, n: int) -> list[float] | None:
    """The 95 % Wilson score interval of an accuracy of ``correct`` out of ``n`` (None for no
    image): how far a small test split's accuracy can be from the model's true rate."""
    if not n:
        return None
    from scipy.stats import binomtest  # see quick_metrics

    ci = binomtest(correct, n).proportion_ci(0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def _prf(d: dict[str, float]) -> dict[str, float]:
    return {
        "precision": float(d["precision"]),
        "recall": float(d["recall"]),
        "f1": float(d["f1-score"]),
        "support": int(d["support"]),
    }
