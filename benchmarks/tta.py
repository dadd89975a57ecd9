"""Test-time augmentation on a finished FER2013 run: each mode scored on the run's own val
slice of Training (which decides) and on PublicTest (which is only reported), with its time.

    python benchmarks/tta.py /tmp/ftkit-bench/runs/fer2013-fast
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import command_line, emit_row, machine

from ftkit.evaluation import TTA_MODES, tta_views
from ftkit.predict import evaluate_run
from ftkit.progress import console

HEADER = ("| run | tta | views | val accuracy (Training slice, decides) | val macro-F1 | PublicTest accuracy "
          "| PublicTest macro-F1 | PublicTest time | machine | command |\n|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--modes", nargs="+", default=list(TTA_MODES), choices=TTA_MODES)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    for mode in args.modes:
        scores = {}
        for split in ("val", "test"):
            started = time.perf_counter()
            _, report = evaluate_run(args.run, split=split, tta=mode, name=f"tta-{mode}-{split}", console=console)
            scores[split] = (report, time.perf_counter() - started)
        (val, _), (test, seconds) = scores["val"], scores["test"]
        row = (f"| {Path(args.run).name} | {mode} | {len(tta_views(torch.zeros(1, 3, 8, 8), mode))} "
               f"| {val['accuracy']:.4f} | {val['macro_f1']:.4f} | {test['accuracy']:.4f} | {test['macro_f1']:.4f} "
               f"| {seconds:.0f} s | {machine()} | `{command_line()}` |")
        emit_row("Test-time augmentation on finished FER2013 runs", HEADER, row, write=not args.no_write)


if __name__ == "__main__":
    main()
