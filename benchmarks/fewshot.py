"""Few-shot FER2013: N training images per class, three seeds, scored on all of PublicTest.

Methods: ``logreg`` (scikit-learn on frozen ImageNet embeddings, the floor to beat),
``linear`` (frozen backbone, trained linear head), ``finetune`` (all layers, the core
path) and ``scratch`` (a small CNN from random initialisation: the seed notebooks'
baseline). Training images come from the official Training split; a 2 % slice of Training
(never drawn as shots) picks the epoch and the regression's C; PublicTest is only scored.

    python benchmarks/fewshot.py                                   # the full grid
    python benchmarks/fewshot.py --shots 50 --sizes 64 --seeds 0   # one cell
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import ROOT, append_row, command_line, extract_fer, heldout_layout, machine

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "fewshot.yaml"))
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 96])
    parser.add_argument("--methods", nargs="+", default=["logreg", "linear", "finetune"], choices=list(METHODS))
    parser.add_argument("--work", default="/tmp/ftkit-bench")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    work = Path(args.work)
    layout = heldout_layout(extract_fer(work), work)
    base = resolve(args.recipe, data=str(layout), val_split=0.02, project=str(work / "fewshot-runs"))
    full = load_data(base, console=console)  # decoded once, reused by every cell
    for size in args.sizes:
        for method in args.methods:
            for shots in args.shots:
                accs, f1s, secs = [], [], []
                for seed in args.seeds:
                    cfg = replace(resolve(args.recipe, **{**base.to_dict(), **METHODS[method]}), img_size=size, seed=seed,
                                  shots=shots, name=f"{method}-{size}px-{shots}shot-seed{seed}")
                    data = copy.copy(full)
                    data.splits = dict(full.splits)
                    data.notes = []
                    apply_shots(data, shots, seed)
                    started = time.perf_counter()
                    result = train_on(data, cfg, console)
                    secs.append(time.perf_counter() - started)
                    accs.append(result.report["accuracy"])
                    f1s.append(result.report["macro_f1"])
                row = (f"| {method} | {cfg.backbone} | {size}x{size} | {shots} | {len(args.seeds)} "
                       f"| {np.mean(accs):.4f} +- {np.std(accs, ddof=1) if len(accs) > 1 else 0:.4f} "
                       f"| {np.mean(f1s):.4f} +- {np.std(f1s, ddof=1) if len(f1s) > 1 else 0:.4f} "
                       f"| {np.mean(secs):.0f} s | {machine()} | `{command_line()}` |")
                console.print(row)
                if not args.no_write:
                    append_row("Few-shot FER2013 (PublicTest, mean +- sample std over seeds)", HEADER, row)


if __name__ == "__main__":
    main()
