"""Accuracy versus training time of a finished run, from its metrics.csv: where more CPU
time stops paying. Training minutes per epoch = training images / measured images/s.

    python benchmarks/curve.py /tmp/ftkit-bench/runs/fer2013-fast
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from common import command_line, emit_row

HEADER = ("| run | epoch | phase | training time, measured | training time at the run's median speed | train images/s "
          "| val accuracy (Training slice) | val macro-F1 | command |\n|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    run = Path(args.run)
    record = json.loads((run / "run.json").read_text())
    n_train = sum(record["data"]["counts"]["train"].values())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # epochs slowed by other work on the machine inflate the measured time; the median-speed
    # column shows the same curve as if every epoch ran at the run's typical speed
    median = float(np.median([float(r["images_per_s"]) for r in rows]))
    minutes = 0.0
    for i, row in enumerate(rows, 1):
        minutes += n_train / float(row["images_per_s"]) / 60
        steady = i * n_train / median / 60
        line = (f"| {run.name} | {row['epoch']} | {row['phase']} | {minutes:.1f} min | {steady:.1f} min "
                f"| {float(row['images_per_s']):.0f} "
                f"| {float(row['val_accuracy']):.4f} | {float(row['val_macro_f1']):.4f} | `{command_line()}` |")
        emit_row(f"Accuracy versus training time: {run.name}", HEADER, line, write=not args.no_write, key=2)


if __name__ == "__main__":
    main()
