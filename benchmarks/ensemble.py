"""Ensembles of finished FER2013 runs: every combination of two or more of the given runs,
scored on the runs' val slice of Training (which decides) and on PublicTest (only reported).

Each run is scored once per split by `ftkit.ensemble.score_members`, with its own input size
and TTA, the same images checked; a combination's probabilities are the mean of its members'.
The training-time column sums the members' `train_seconds`: the cost of the ensemble on this machine.

    python benchmarks/ensemble.py /tmp/ftkit-bench/runs/fer2013-best /tmp/ftkit-bench/runs/fer2013-fast-2 ...
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from common import command_line, emit_row, machine
from rich.table import Table

from ftkit.ensemble import mean_probs, score_members
from ftkit.evaluation import quick_metrics
from ftkit.progress import console

SECTION = "Ensembles of finished FER2013 runs"
HEADER = ("| runs | members | training time, summed | val accuracy (Training slice, decides) | PublicTest accuracy "
          "| PublicTest macro-F1 | machine | command |\n|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished runs on the same data and split file")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    datasets: dict = {}  # one decode of the data serves every run and both splits
    scores = {}
    for split in ("val", "test"):
        console.print(f"scoring {len(args.runs)} runs on {split}")
        for run, scored in zip(args.runs, score_members(args.runs, split=split, datasets=datasets)[1]):
            scores[run, split] = scored
    hours = {run: json.loads((Path(run) / "run.json").read_text())["train_seconds"] / 3600 for run in args.runs}
    results = []
    for size in range(1, len(args.runs) + 1):
        for group in itertools.combinations(args.runs, size):
            val, test = (quick_metrics(scores[group[0], s].labels, mean_probs([scores[r, s] for r in group]).argmax(1))
                         for s in ("val", "test"))
            name, summed = " + ".join(Path(r).name for r in group), sum(hours[r] for r in group)
            results.append((name, summed, val, test))
            row = (f"| {name} | {size} | {summed:.1f} h "
                   f"| {val['accuracy']:.4f} | {test['accuracy']:.4f} | {test['macro_f1']:.4f} | {machine()} "
                   f"| `{command_line()}` |")
            emit_row(SECTION, HEADER, row, write=not args.no_write)
    summary(results)


def summary(results, top: int = 5) -> None:
    """The combinations the Training slice ranks highest; the first is the one to report."""
    table = Table(title=f"top {min(top, len(results))} of {len(results)} combinations by Training-slice accuracy "
                        "(first: the pick); PublicTest accuracy and macro-F1")
    table.add_column("runs", overflow="fold", min_width=24)
    for column in ("training", "slice", "PublicTest", "macro-F1"):
        table.add_column(column, justify="right")
    for name, summed, val, test in sorted(results, key=lambda r: -r[2]["accuracy"])[:top]:
        table.add_row(name, f"{summed:.1f} h", f"{val['accuracy']:.4f}", f"{test['accuracy']:.4f}",
                      f"{test['macro_f1']:.4f}")
    console.print(table)


if __name__ == "__main__":
    main()
