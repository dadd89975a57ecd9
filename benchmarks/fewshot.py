"""Few-shot FER2013 from ImageNet features: N training images per class, three seeds, scored
on all of PublicTest (recipes/fewshot-imagenet.yaml).

Methods: ``logreg`` (scikit-learn on frozen ImageNet embeddings, the floor to beat),
``linear`` (frozen backbone, trained linear head), ``finetune`` (all layers, the core
path) and ``scratch`` (a small CNN from random initialisation: the seed notebooks'
baseline). Training images come from the official Training split; a 2 % slice of Training
(never drawn as shots) picks the epoch and the regression's C; PublicTest is only scored.

    python benchmarks/fewshot.py                                   # the full grid
    python benchmarks/fewshot.py --shots 50 --sizes 64 --seeds 0   # one cell
    python benchmarks/fewshot.py --shots 50 --sizes 64 --methods finetune \
        --variant "epochs=15" --variant "epochs=30 freeze_epochs=0"  # settings variants (tuning section)

Rows of a ``--variant`` (recipe settings as KEY=VALUE pairs) go to a tuning section that also
gives the Training slice's macro-F1 at the chosen epoch: that column, not PublicTest, is what
a recipe default is chosen on.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, command_line, emit_row, extract_fer, heldout_layout, machine, parse_settings

from ftkit.config import resolve
from ftkit.data import apply_shots, load_data
from ftkit.progress import console
from ftkit.train import train_on

METHODS = {
    # method: config overrides on top of recipes/fewshot.yaml
    "logreg": dict(head="logreg"),
    "linear": dict(head="linear", lr=3e-3),
    "finetune": dict(head="finetune"),
    "scratch": dict(head="finetune", backbone="resnet10t", pretrained=False, freeze_epochs=0, backbone_lr_mult=1.0, lr=3e-3),
}
HEADER = ("| method | backbone | input | shots/class | seeds | PublicTest accuracy | PublicTest macro-F1 | wall time per run "
          "| machine | command |\n|---|---|---|---|---|---|---|---|---|---|")
TUNING_HEADER = ("| method | settings | input | shots/class | seeds | val macro-F1 (Training slice, decides) "
                 "| PublicTest accuracy | PublicTest macro-F1 | wall time per run | machine | command |\n"
                 "|---|---|---|---|---|---|---|---|---|---|---|")
GRID_SECTION = "Few-shot FER2013"
TUNING_SECTION = "Few-shot FER2013 settings (the Training slice decides)"


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} +- {np.std(values, ddof=1) if len(values) > 1 else 0:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "fewshot-imagenet.yaml"),
                        help="recipes/fewshot.yaml starts from the FER2013 model, which has seen FER2013: "
                             "measuring it here means nothing (benchmarks/transfer.py measures it on other faces)")
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 96])
    parser.add_argument("--methods", nargs="+", default=["logreg", "linear", "finetune"], choices=list(METHODS))
    parser.add_argument("--work", default="/tmp/ftkit-bench")
    parser.add_argument("--variant", action="append", default=[], metavar='"KEY=VALUE ..."',
                        help="recipe settings to try, for every method (repeatable: one row each)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    variants = [parse_settings(v, "--variant") for v in args.variant]

    work = Path(args.work)
    layout = heldout_layout(extract_fer(work), work)
    base = resolve(args.recipe, data=str(layout), val_split=0.02, project=str(work / "fewshot-runs"))
    full = load_data(base, console=console)  # decoded once, reused by every cell
    for size in args.sizes:
        for method in args.methods:
            for sets in variants or [{}]:
                for shots in args.shots:
                    row, section, header = run_cell(args, base, full, method, sets, size, shots)
                    emit_row(section, header, row, write=not args.no_write)


def run_cell(args, base, full, method: str, sets: dict[str, Any], size: int, shots: int) -> tuple[str, str, str]:
    """One cell of the grid over every seed: its BENCHMARKS.md row, section and header."""
    accs, f1s, vals, secs = [], [], [], []
    tag = "".join(f"-{k}{v}" for k, v in sets.items())
    for seed in args.seeds:
        cfg = replace(resolve(args.recipe, **{**base.to_dict(), **METHODS[method], **sets}), img_size=size,
                      seed=seed, shots=shots, name=f"{method}{tag}-{size}px-{shots}shot-seed{seed}")
        data = copy.copy(full)
        data.splits = dict(full.splits)
        data.notes = []
        apply_shots(data, shots, seed)
        started = time.perf_counter()
        result = train_on(data, cfg, console)
        secs.append(time.perf_counter() - started)
        accs.append(result.report["accuracy"])
        f1s.append(result.report["macro_f1"])
        vals.append(result.history[result.record["best_epoch"] - 1]["val_macro_f1"])
    common = f"| {mean_std(accs)} | {mean_std(f1s)} | {np.mean(secs):.0f} s | {machine()} | `{command_line()}` |"
    if sets:
        settings = " ".join(f"{k}={v}" for k, v in sets.items())
        row = f"| {method} | {settings} | {size}x{size} | {shots} | {len(args.seeds)} | {mean_std(vals)} " + common
        return row, TUNING_SECTION, TUNING_HEADER
    return f"| {method} | {cfg.backbone} | {size}x{size} | {shots} | {len(args.seeds)} " + common, GRID_SECTION, HEADER

if __name__ == "__main__":
    main()
