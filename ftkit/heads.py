"""The ``logreg`` head: scikit-learn logistic regression on frozen-backbone embeddings.

Embeddings are the classifier's input (timm's ``forward_head(pre_logits=True)``), averaged
over each image and its mirror. The regression is fit on standardised embeddings, with C
chosen on the validation split, and then folded into the model's own linear classifier, so
the saved run is an ordinary checkpoint that ``evaluate`` and ``predict`` load unchanged.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from .config import Config, ConfigError
from .data import DataSplits, ImageDataset
from .device import resolve_device
from .evaluation import quick_metrics
from .models import resolve_data_config, resolve_name
from .runs import RunResult, save_checkpoint, update_record, write_metrics
from .transforms import eval_transform

C_GRID = (0.01, 0.1, 1.0, 10.0)


@torch.no_grad()
def embed(model: nn.Module, loader, device) -> np.ndarray:
    """Pre-logit embeddings, averaged over each image and its horizontal mirror."""
    model.eval()
    feats = []
    for x, _ in loader:
        x = x.to(device)
        pair = torch.cat([x, x.flip(-1)])
        f = model.forward_head(model.forward_features(pair), pre_logits=True).float()
        feats.append(((f[: len(x)] + f[len(x):]) / 2).cpu().numpy())
    return np.concatenate(feats)


def fold_into_linear(classifier: nn.Linear, clf: LogisticRegression, scaler: StandardScaler) -> None:
    """Write the standardisation and the regression into ``classifier``: same logits."""
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: softmax([0, z]) = sigmoid(z)
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.array([0.0, intercept[0]])
    weight = coef / scaler.scale_
    bias = intercept - (coef * scaler.mean_ / scaler.scale_).sum(1)
    with torch.no_grad():
        classifier.weight.copy_(torch.as_tensor(weight, dtype=classifier.weight.dtype))
        classifier.bias.copy_(torch.as_tensor(bias, dtype=classifier.bias.dtype))


# what only gradient training uses: a logreg run takes no step, so these change nothing in it
GRADIENT_ONLY = ("epochs", "freeze_epochs", "unfreeze", "backbone_lr_mult", "lr", "weight_decay", "l2sp", "bn_stats", "optimizer",
                 "scheduler", "warmup_epochs", "label_smoothing", "mixup", "cutmix", "class_weights", "sampler",
                 "augment", "augment_pipeline", "patience", "drop_rate", "accumulate")


# what only a backbone that trains uses: --head linear keeps it frozen throughout
BACKBONE_ONLY = ("freeze_epochs", "unfreeze", "backbone_lr_mult", "l2sp", "bn_stats")


def ignored_by_head(cfg: Config) -> list[str]:
    """The settings that differ from their defaults (given by a flag or a recipe) and that this
    head would silently not use: a logreg run takes no gradient step, a linear one never
    trains its backbone."""
    keys = {"logreg": GRADIENT_ONLY, "linear": BACKBONE_ONLY}.get(cfg.head, ())
    default = Config()
    return [f"{key}={getattr(cfg, key)}" for key in keys if getattr(cfg, key) != getattr(default, key)]


def fit_logreg(run: Path, cfg: Config, data: DataSplits, model: nn.Module, out: Console,
               finish: Callable[..., RunResult]) -> RunResult:
    """Fit the classifier on frozen embeddings, fold it into the model, and let ``finish`` (the
    training loop's own ending, handed in by ftkit.train) write the predictions and report."""
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Linear):
        raise ConfigError(f"--head logreg needs a backbone whose classifier is one linear layer; "
                         f"{resolve_name(cfg.backbone)} has {type(classifier).__name__}")
    device = resolve_device(cfg.device)
    model.to(device)
    dc = resolve_data_config(model, cfg)
    loaders = {name: torch.utils.data.DataLoader(ImageDataset(split, eval_transform(dc)), batch_size=cfg.batch_size)
               for name, split in data.splits.items()}
    started = time.perf_counter()
    out.print(f"logreg head: embedding {sum(len(s) for s in data.splits.values())} images with the frozen backbone")
    feats = {name: embed(model, loader, device) for name, loader in loaders.items()}
    y = {name: split.labels for name, split in data.splits.items()}
    scaler = StandardScaler().fit(feats["train"])
    z = {name: scaler.transform(f) for name, f in feats.items()}

    def fit(c: float) -> LogisticRegression:
        weights = "balanced" if cfg.class_weights == "balanced" else None
        return LogisticRegression(C=c, max_iter=3000, class_weight=weights).fit(z["train"], y["train"])

    key = "macro_f1" if cfg.metric == "loss" else cfg.metric
    scores = {c: quick_metrics(y["val"], fit(c).predict(z["val"]))[key] for c in C_GRID}
    best_c = max(scores, key=scores.get)
    clf = fit(best_c)
    fold_into_linear(classifier, clf, scaler)
    seconds = time.perf_counter() - started
    val = quick_metrics(y["val"], clf.predict(z["val"]))
    row = {"epoch": 1, "phase": f"logreg C={best_c:g}", "train_loss": float("nan"),
           "train_accuracy": float((clf.predict(z["train"]) == y["train"]).mean()), "val_loss": float("nan"),
           **{f"val_{k}": v for k, v in val.items()}, "lr": 0.0,
           "images_per_s": len(y["train"]) / max(seconds, 1e-9), "seconds": seconds}
    out.print(f"logreg head: C={best_c:g} chosen on val {key} ({', '.join(f'{c:g}: {s:.3f}' for c, s in scores.items())})")
    write_metrics(run, [row])
    update_record(run, device=str(device), data_config=dc.to_dict(),
                  phases=[{"name": row["phase"], "epochs": [1, 1], "lr_head": 0.0, "lr_backbone": 0.0}])
    meta = {"config": cfg.to_dict(), "classes": data.classes, "data_config": dc.to_dict(),
            "backbone": resolve_name(cfg.backbone), "epoch": 1, "metrics": row, "logreg": {"C": best_c, "val_scores": scores}}
    for stem in ("best", "last"):
        save_checkpoint(run / "checkpoints" / stem, model, meta)
    return finish(run, cfg, data, model, loaders, device, nullcontext, [row], out)
