"""The learning-rate range test (Leslie Smith; fastai's ``lr_find``): train for a few steps while
the learning rate grows geometrically, record the smoothed loss, and suggest a rate from the
curve. Nothing is saved: the model is built, stepped and thrown away.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rich.console import Console

from .config import Config, ConfigError
from .data import load_data
from .device import seed_everything
from .distributed import SINGLE
from .io import atomic_write
from .models import freeze_bn_of_frozen, set_trainable
from .plots import new_figure, png_bytes
from .progress import console as default_console
from .progress import progress_bar
from .loop import apply_step, backward_pass
from .schedule import run_phases
from .train import build_model, set_up

SMOOTHING = 0.98  # exponential smoothing of the loss, bias-corrected as Adam's moments are
DIVERGED = 4.0  # stop once the smoothed loss is this many times its minimum
FELL = 0.97  # the loss "fell" when its minimum is below this share of its start
SETTLED = math.ceil(math.log(0.5) / math.log(SMOOTHING))  # steps until the first batches weigh under half (35)


@dataclass
class LRFinding:
    lrs: list[float]  # the learning rate of the head at each step (the backbone's is lr x mult)
    losses: list[float]  # the smoothed training loss after each step
    phase: str  # the phase the test ran in: "head" (backbone frozen) or "full"
    stopped_early: bool  # the loss diverged before the last step
    pretrained: bool = True  # the model started from trained weights (not random initialisation)

    @property
    def minimum(self) -> float:
        """The rate at the lowest loss."""
        return self.lrs[int(np.argmin(self.losses))]

    @property
    def steepest(self) -> float:
        """The rate where the loss falls fastest against log(lr), before the minimum. The steps
        where the smoothed loss still rests on fewer batches than half its window (SETTLED, at
        most the first third of the test) are left out: there the average drifts with the luck
        of its first batches (a noisy few-shot loss fell fastest at 1e-7 otherwise)."""
        begin, end = max(3, min(SETTLED, len(self.lrs) // 3)), int(np.argmin(self.losses)) + 1
        if end - begin < 3:
            return self.minimum
        slope = np.gradient(np.asarray(self.losses[begin:end]), np.log(np.asarray(self.lrs[begin:end])))
        return self.lrs[begin + int(np.argmin(slope))]

    @property
    def fell(self) -> bool:
        """Whether the loss fell at all (by 3 % of where it started) over the range."""
        return min(self.losses) < FELL * float(np.median(self.losses[:5]))

    @property
    def suggestion(self) -> float | None:
        """A tenth of the rate at the lowest loss, below where training becomes unstable; None
        when the loss never fell, so that the curve names no rate."""
        return self.minimum / 10 if self.fell else None


def find_lr(cfg: Config, console: Console | None = None, start: float = 1e-7, end: float = 1.0,
            steps: int = 100) -> LRFinding:
    """Run the range test on ``cfg``'s data, model, optimizer and loss, in the first phase its
    training would run (head-only while ``freeze_epochs`` > 0, else everything)."""
    out = console or default_console
    if not 0 < start < end or steps < 5:
        raise ConfigError(f"the range test needs 0 < start < end and at least 5 steps; got start {start:g}, end {end:g}, "
                          f"steps {steps}")
    if cfg.folds or cfg.head == "logreg":
        raise ConfigError("lr-find tests gradient steps on one training split: leave out --folds and --head logreg")
    seed_everything(cfg.seed)
    data = load_data(cfg, console=out)
    model, weights = build_model(cfg, data.classes, out, allow_download=False)
    parts, loaders, _ = set_up(replace(cfg, scheduler="none"), data, model, ctx=SINGLE)
    phase = run_phases(cfg, model)[0]
    set_trainable(model, phase.unfrozen_stages)
    model.train()
    freeze_bn_of_frozen(model, every_layer=cfg.bn_stats == "frozen")
    base = [group["lr"] / cfg.lr for group in parts.optimizer.param_groups]  # each group's share of --lr
    batches = itertools.chain.from_iterable(itertools.repeat(loaders.train))
    lrs, losses, average, stopped = [], [], 0.0, False
    with progress_bar(out) as bar:
        task = bar.add_task(f"lr range test [{phase.name}]", total=steps)
        for step in range(steps):
            lr = start * (end / start) ** (step / (steps - 1))
            for group, share in zip(parts.optimizer.param_groups, base):
                group["lr"] = lr * share
            parts.optimizer.zero_grad(set_to_none=True)
            loss = 0.0
            for _ in range(cfg.accumulate):  # a step as the run would take it: --accumulate batches summed
                x, y = next(batches)
                loss += float(backward_pass(parts, x.to(parts.device), y.to(parts.device), 1 / cfg.accumulate)[0].item())
            apply_step(parts)
            loss /= cfg.accumulate
            average = SMOOTHING * average + (1 - SMOOTHING) * loss
            smoothed = average / (1 - SMOOTHING ** (step + 1))
            if not math.isfinite(smoothed) or (losses and smoothed > DIVERGED * min(losses)):
                stopped = True
                break
            lrs.append(lr)
            losses.append(smoothed)
            bar.update(task, advance=1, info=f"lr {lr:.1e} loss {smoothed:.3f}")
    if len(losses) < 3:
        raise ConfigError(f"the loss diverged within {len(losses) + 1} steps from lr {start:g}: lower --start")
    return LRFinding(lrs, losses, phase.name, stopped, pretrained=weights.source != "none")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_plot_path(path: str | Path) -> None:
    """Refuse, before the test runs, a plot path that would replace a file that is not a PNG
    (an earlier plot is replaced; someone's notes are not), or that does not end in .png."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--plot {path}: the plot is a PNG image; give a path ending in .png")
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                raise ConfigError(f"--plot {path} is a file that is not a PNG image (an earlier plot would be): nothing was "
                                  "written; give another path")


def plot_lr_finding(finding: LRFinding, path: str | Path) -> Path:
    """Loss against learning rate (log scale), with the suggestions marked."""
    fig = new_figure((7, 4))
    ax = fig.subplots()
    ax.plot(finding.lrs, finding.losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(f"lr range test, {finding.phase} phase")
    if finding.suggestion is not None:
        for lr, label, style in ((finding.suggestion, "suggested (minimum / 10)", "--"), (finding.steepest, "steepest", ":")):
            ax.axvline(lr, linestyle=style, color="k", label=f"{label}: {lr:.1e}")
        ax.legend()
    data = png_bytes(fig)
    return atomic_write(path, lambda f: f.write(data), mode="wb")
