"""One training epoch: the data loaders and their seeding, mixup/cutmix, the weight average, and
the step (forward, backward, accumulation, optimizer) that lr-find takes too."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch import nn

from . import distributed
from . import shards
from .config import Config
from .data import DataSplits, ImageDataset
from .device import seed_everything
from .distill import WithSoftTargets
from .distributed import SINGLE, Context
from .errors import FtkitError
from .models import freeze_bn_of_frozen
from .schedule import pull_to_start
from .transforms import eval_transform, train_transform


def _workers(cfg: Config, cached: bool) -> int:
    if cfg.workers >= 0:
        return cfg.workers
    return 0 if cached else min(4, max(1, (torch.get_num_threads() or 2) - 1))


def make_loaders(data: DataSplits, dc, cfg: Config, device: torch.device, ctx: Context = SINGLE,
                 soft: torch.Tensor | None = None):
    """Train loader (augmented, seeded sampler) and eval loaders for every split. With ``soft``
    (the teachers' softened probabilities per training image) the train loader's batches are
    (images, labels, soft targets).

    Under DDP every rank draws the same global order (one generator, one seed) and takes its
    slice of each global batch (``distributed.RankBatches``); each eval loader serves the rank's
    contiguous shard of its split (``distributed.shard``), gathered back after prediction.
    """
    train = data.splits["train"]
    generator = torch.Generator().manual_seed(cfg.seed)
    train_tf = train_transform(dc, cfg.augment, cfg.augment_pipeline, seed=cfg.seed)
    if train.shards is not None:  # streamed: never decoded whole
        train_loader, eval_loaders = shards.stream_loaders(data, train_tf, eval_transform(dc), cfg, ctx,
                                                           _workers(cfg, False), device.type == "cuda")
        return train_loader, eval_loaders, generator, train_tf
    if cfg.sampler == "balanced":
        weights = 1.0 / np.bincount(train.labels, minlength=len(data.classes))[train.labels]
        sampler = torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights), len(train), generator=generator)
    else:
        sampler = torch.utils.data.RandomSampler(train, generator=generator)
    batches = torch.utils.data.BatchSampler(sampler, cfg.batch_size, drop_last=len(train) > cfg.batch_size)
    if ctx.active:
        batches = distributed.RankBatches(batches, ctx)
    common = dict(num_workers=_workers(cfg, train.images is not None), pin_memory=device.type == "cuda")
    train_set = ImageDataset(train, train_tf)
    train_loader = torch.utils.data.DataLoader(
        train_set if soft is None else WithSoftTargets(train_set, soft), batch_sampler=batches,
        worker_init_fn=partial(seed_worker, rank=ctx.rank), **common,
    )
    eval_tf = eval_transform(dc)
    eval_loaders = {}
    for name, split in data.splits.items():
        dataset = ImageDataset(split, eval_tf)
        if ctx.active:
            dataset = torch.utils.data.Subset(dataset, distributed.shard(len(split), ctx))
        eval_loaders[name] = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size * 2, **common)
    return train_loader, eval_loaders, generator, train_tf


RANK_STRIDE = 1_000_003  # seed offset between ranks: their augmentations and dropout differ


def seed_worker(worker_id: int, rank: int = 0) -> None:
    """Give each DataLoader worker its own augmentation stream. Workers start with copies of
    one Albumentations pipeline, which would otherwise replay the same random choices; torch's
    per-worker seed (drawn from the global RNG, which every epoch re-seeds) keeps it repeatable,
    and the rank keeps worker k of two processes apart."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "reseed"):
        transform.reseed((info.seed + RANK_STRIDE * rank) % 2**32)


def seed_epoch(seed: int, epoch: int, ctx: Context, generator: torch.Generator, train_tf) -> None:
    """Re-seed every random stream at the start of an epoch, so that a resumed run repeats the
    uninterrupted one exactly. The sampler's generator is the same on every rank (one global
    order of images); the augmentation and dropout streams differ between ranks."""
    seed_everything(seed + 1000 * (epoch + 1) + RANK_STRIDE * ctx.rank)
    generator.manual_seed(seed + epoch)
    train_tf.reseed(seed + epoch + RANK_STRIDE * ctx.rank)


def class_weight_tensor(data: DataSplits, cfg: Config) -> torch.Tensor | None:
    if cfg.class_weights != "balanced":
        return None
    labels = data.splits["train"].labels
    classes = np.arange(len(data.classes))
    return torch.tensor(compute_class_weight("balanced", classes=classes, y=labels), dtype=torch.float32)


class TrainingDiverged(FtkitError, ValueError):
    """The loss became NaN or infinite: the run stops instead of saving a broken model."""


def make_mixer(cfg: Config, n_classes: int):
    """timm's Mixup/CutMix for ``cfg.mixup`` / ``cfg.cutmix`` (None when both are 0).

    It returns mixed images and soft targets; label smoothing and class weights stay with the
    cross-entropy loss, which takes soft targets as they are.
    """
    if not (cfg.mixup or cfg.cutmix):
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=0.0, num_classes=n_classes)


def mix_batch(mixer, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed images and soft targets. timm's Mixup pairs image i with image n-1-i and needs an
    even batch: with an odd one (an odd --batch-size, or a last short batch) the last image
    stays as it is, with its one-hot target."""
    if len(y) % 2 == 0:
        return mixer(x, y)
    mixed, soft = mixer(x[:-1].clone(), y[:-1])
    last = torch.nn.functional.one_hot(y[-1:], soft.shape[1]).to(soft.dtype)
    return torch.cat([mixed, x[-1:]]), torch.cat([soft, last])


@dataclass
class StepParts:
    """What an optimisation step needs, travelling together."""

    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    step_when: str | None = None  # "step": the scheduler steps after every batch
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast: Callable = nullcontext
    scaler: Any = None  # fp16 gradient scaler
    memory_format: torch.memory_format | None = None
    mixer: Any = None  # timm Mixup/CutMix (see make_mixer)
    ema: Any = None  # timm ModelEmaV3: the weights averaged over steps (see make_ema)
    anchors: dict[int, torch.Tensor] | None = None  # id(parameter) -> its start, with --l2sp (see pull_to_start)
    steps: int = 0  # optimisation steps taken, for the average's warm-up
    accumulate: int = 1  # batches whose gradients are summed into one optimizer step
    frozen_bn: bool = False  # bn_stats frozen: every BatchNorm layer keeps its start's running statistics

    @property
    def model(self) -> nn.Module:
        """The model itself, inside a DDP wrapper or not."""
        return getattr(self.net, "module", self.net)

    @property
    def scored(self) -> nn.Module:
        """What each epoch is evaluated with and the checkpoints hold: the weight average with --ema."""
        return self.ema.module if self.ema is not None else self.model


def make_ema(model: nn.Module, cfg: Config):
    """An exponential moving average of ``model``'s weights and BatchNorm statistics (timm's
    ModelEmaV3), or None when ``cfg.ema`` is 0. Its decay warms up (1 - (1 + step)^-3/4, capped at
    ``cfg.ema``), so that a short few-shot run of a few hundred steps is averaged over its own
    steps, not held at the starting weights."""
    if not cfg.ema:
        return None
    return ModelEmaV3(model, decay=cfg.ema, use_warmup=True, warmup_power=3 / 4)


def backward_pass(p: StepParts, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0,
                  soft: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix the batch (with a mixer), forward, loss, and add ``weight`` x its gradient to the
    parameters' (a share of an accumulated step); returns the loss and the logits. ``soft``: the
    teachers' targets of a distillation run (its criterion is a distill.DistillLoss)."""
    target = y
    if p.mixer is not None and len(y) > 1:
        x, target = mix_batch(p.mixer, x, y)
    if p.memory_format is not None:
        x = x.contiguous(memory_format=p.memory_format)
    with p.autocast():
        logits = p.net(x)
        loss = p.criterion(logits.float(), target) if soft is None else p.criterion(logits.float(), target, soft)
    if p.scaler is not None:  # fp16 on CUDA
        p.scaler.scale(loss * weight).backward()
    else:
        (loss * weight).backward()
    return loss, logits


def apply_step(p: StepParts) -> None:
    """One optimizer step with the gradients summed so far, at the current rates."""
    if p.scaler is not None:
        p.scaler.step(p.optimizer)
        p.scaler.update()
    else:
        p.optimizer.step()


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimizer steps in an epoch of ``batches``: one per ``accumulate`` batches, the last
    group possibly shorter."""
    return math.ceil(batches / accumulate)


def train_one_epoch(parts: StepParts, loader, ctx: Context = SINGLE, bar=None, task=None) -> dict[str, float]:
    """One pass over the training data; returns mean loss, accuracy and images/s, over all ranks.

    With a mixer each batch is mixed (see ``mix_batch`` for odd sizes); accuracy is then
    against the unmixed labels. With ``parts.accumulate`` N, the gradients of N batches, each
    weighted 1/N (1/size of the epoch's last, shorter group), make one optimizer step: the mean
    over their images, as one large batch would give; under DDP only a group's last batch
    all-reduces its gradients.
    """
    net, p = parts.net, parts
    net.train()
    freeze_bn_of_frozen(net, every_layer=p.frozen_bn)
    seen, correct, loss_sum, start = 0, 0, 0.0, time.perf_counter()
    batches = len(loader)
    for step, (x, y, *soft) in enumerate(loader, 1):  # soft: the teachers' targets, in a distillation run
        x, y = x.to(p.device, non_blocking=True), y.to(p.device, non_blocking=True)
        soft = soft[0].to(p.device, non_blocking=True) if soft else None
        first = (step - 1) // p.accumulate * p.accumulate + 1  # this batch's group: batches first...last
        last = min(first + p.accumulate - 1, batches)
        if step == first:
            p.optimizer.zero_grad(set_to_none=True)
        with net.no_sync() if step < last and hasattr(net, "no_sync") else nullcontext():
            loss, logits = backward_pass(p, x, y, 1 / (last - first + 1), soft)
        if step == last:
            apply_step(p)
            if p.anchors is not None:
                pull_to_start(p.optimizer, p.anchors)
            if p.step_when == "step":
                p.scheduler.step()
            p.steps += 1
            if p.ema is not None:
                p.ema.update(p.model, step=p.steps)
        # .item() is a CPU-GPU sync point; once per step is cheap next to the step itself.
        # Under DDP the step's sums travel in one small all-reduce, so every rank sees a
        # diverged loss at the same step and they stop together.
        batch_loss, batch_correct, n = distributed.sum_across(
            [loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)], ctx)
        if not math.isfinite(batch_loss):
            # the checkpoints on disk are from before this epoch; nothing diverged is saved
            raise TrainingDiverged(f"the training loss became {batch_loss / n} at step {step} of this epoch "
                                   "(diverged): lower --lr, or check the data; the last good checkpoint is kept")
        loss_sum, correct, seen = loss_sum + batch_loss, correct + int(batch_correct), seen + int(n)
        if bar is not None:
            bar.update(task, advance=1, info=f"loss {loss_sum / seen:.3f} acc {correct / seen:.3f}")
    elapsed = time.perf_counter() - start
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1), "images_per_s": seen / max(elapsed, 1e-9)}
