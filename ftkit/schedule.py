"""Phases, optimizer and learning-rate schedule of a fine-tuning run (pure functions of the config):
the head phase, then the full or gradual unfreeze, AdamW/SGD/... with a lower backbone rate,
cosine with warm-up, and the L2-SP pull toward the start."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from .config import Config, choice_error
from .models import (
    backbone_and_head_params,
    stage_groups,
)


@dataclass(frozen=True)
class Phase:
    name: str  # head | gradual-k/n | full
    unfrozen_stages: int | None  # backbone stage groups trained (None: all of them)


def plan_phases(epochs: int, freeze_epochs: int, unfreeze: str, n_stages: int) -> list[Phase]:
    """The phase of every epoch, e.g. [head, head, full, full, ...]."""
    phases = [Phase("head", 0)] * freeze_epochs
    for k in range(1, epochs - freeze_epochs + 1):
        if unfreeze == "gradual" and k < n_stages:
            phases.append(Phase(f"gradual-{k}/{n_stages}", k))
        else:
            phases.append(Phase("full", None))
    return phases


def run_phases(cfg: Config, model: nn.Module) -> list[Phase]:
    """The phase of each epoch of a run of ``cfg`` on ``model`` (--head linear: a frozen
    backbone throughout)."""
    freeze_epochs = cfg.epochs if cfg.head == "linear" else cfg.freeze_epochs
    return plan_phases(cfg.epochs, freeze_epochs, cfg.unfreeze, len(stage_groups(model)))


def describe_phases(phases: list[Phase], cfg: Config) -> list[dict[str, Any]]:
    """Consecutive epochs of one phase, as recorded in run.json and printed at the start."""
    out: list[dict[str, Any]] = []
    for epoch, phase in enumerate(phases, 1):
        if out and out[-1]["name"] == phase.name:
            out[-1]["epochs"][1] = epoch
            continue
        lr_backbone = 0.0 if phase.unfrozen_stages == 0 else cfg.lr * cfg.backbone_lr_mult
        out.append({"name": phase.name, "epochs": [epoch, epoch], "lr_head": cfg.lr, "lr_backbone": lr_backbone})
    return out


def cosine_with_warmup(step: int, total: int, warmup: int, floor: float = 0.01) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


OPTIMIZERS = {
    "adamw": lambda groups, cfg: torch.optim.AdamW(groups, weight_decay=cfg.weight_decay),
    "adam": lambda groups, cfg: torch.optim.Adam(groups, weight_decay=cfg.weight_decay),
    "sgd": lambda groups, cfg: torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay),
    "rmsprop": lambda groups, cfg: torch.optim.RMSprop(groups, alpha=0.9, momentum=0.9, eps=1e-3, weight_decay=cfg.weight_decay),
}


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Backbone and head groups (backbone lr x mult), no weight decay on biases and norms.
    With ``cfg.l2sp`` the backbone's weights decay toward their start instead (L2-SP).

    Frozen parameters stay in the optimizer: they get no gradient, so they do not move,
    and unfreezing needs no rebuild (which keeps --resume simple).
    """
    if cfg.optimizer not in OPTIMIZERS:
        raise choice_error("optimizer", cfg.optimizer, OPTIMIZERS)
    backbone, head = backbone_and_head_params(model)
    groups = []
    for name, params, lr in (("backbone", backbone, cfg.lr * cfg.backbone_lr_mult), ("head", head, cfg.lr)):
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        # with l2sp the backbone's weights are pulled toward their start (see pull_to_start), not toward 0
        to_start = {"weight_decay": 0.0, "l2sp": cfg.l2sp} if name == "backbone" and cfg.l2sp else {}
        groups.append({"params": decay, "lr": lr, "name": name, **to_start})
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}-no-decay"})
    return OPTIMIZERS[cfg.optimizer]([g for g in groups if g["params"]], cfg)


def start_weights(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """A copy of every weight that --l2sp pulls back (the backbone's), by parameter name: the
    start that ``pull_to_start`` pulls toward, saved with the run so that --resume pulls toward
    the same one."""
    pulled = {id(p) for group in optimizer.param_groups if group.get("l2sp") for p in group["params"]}
    return {name: p.detach().clone() for name, p in model.named_parameters() if id(p) in pulled}


@torch.no_grad()
def pull_to_start(optimizer: torch.optim.Optimizer, anchors: dict[int, torch.Tensor]) -> None:
    """L2-SP, decoupled as AdamW decouples its decay: each pulled weight moves toward its start by
    lr x l2sp of the distance, after the optimizer's step. Frozen weights (no gradient) have not
    left their start and are skipped."""
    for group in optimizer.param_groups:
        rate = group["lr"] * group.get("l2sp", 0.0)
        if rate:
            for p in group["params"]:
                if p.grad is not None:
                    p.lerp_(anchors[id(p)], rate)  # p - rate x (p - start), without a temporary


def build_scheduler(optimizer, cfg: Config, steps_per_epoch: int):
    """Returns (scheduler, 'step' | 'epoch' | None): when the scheduler is stepped."""
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "cosine":
        warmup = int(cfg.warmup_epochs * steps_per_epoch)
        fn = partial(cosine_with_warmup, total=total, warmup=warmup)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: fn(step)), "step"
    if cfg.scheduler == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total), "step"
    if cfg.scheduler == "plateau":
        mode = "min" if cfg.metric == "loss" else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.2, patience=2), "epoch"
    return None, None
