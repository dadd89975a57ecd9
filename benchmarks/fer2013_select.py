"""Recipe selection on a cheap proxy: 400 Training images per class, 3 epochs, for a few
learning-rate / freezing variants of a recipe. The choice is made on the validation slice
of Training (``val accuracy``); PublicTest is printed too, but is not what decides.

    python benchmarks/fer2013_select.py                      # learning rate / freezing (A-D)
    python benchmarks/fer2013_select.py --variants D G E F   # input size and memory format
    python benchmarks/fer2013_select.py --variants E H I J K L M   # backbone, label smoothing,
        # mixup/cutmix, balanced sampling, augmentation strength, each against E
    python benchmarks/fer2013_select.py --variants E N O P   # distillation from the shipped models
        # (their mean) at a few alpha / temperature settings, against E
    python benchmarks/fer2013_select.py --summarize /tmp/ftkit-bench/select   # rows from finished runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, command_line, emit_row, extract_fer, heldout_layout, machine

D = ["--lr", "0.001", "--backbone-lr-mult", "1.0", "--freeze-epochs", "0"]
VARIANTS = {
    "A": ["--lr", "0.002", "--backbone-lr-mult", "0.5", "--freeze-epochs", "1"],
    "B": ["--lr", "0.001", "--backbone-lr-mult", "0.1", "--freeze-epochs", "1"],
    "C": ["--lr", "0.0005", "--backbone-lr-mult", "1.0", "--freeze-epochs", "0"],
    "D": D,
    # D at other input sizes, in channels-last memory format (faster on the CPU too)
    "G": D + ["--channels-last"],
    "E": D + ["--img-size", "80", "--channels-last"],
    "F": D + ["--img-size", "96", "--channels-last"],
}
E = VARIANTS["E"]  # the fast recipe's settings: the baseline of the next group
VARIANTS.update({
    "H": E + ["--backbone", "efficientnet_lite0"],
    "I": E + ["--label-smoothing", "0"],
    "J": E + ["--mixup", "0.2", "--cutmix", "1.0"],
    "K": E + ["--sampler", "balanced"],
    "L": E + ["--augment", "light"],
    "M": E + ["--augment", "strong"],
})
TEACHERS = ["--teacher", "fer2013-fast,fer2013-best", "--teacher-tta", "flip"]  # they trained on all of Training, the slice too
VARIANTS.update({
    "N": E + TEACHERS + ["--distill-alpha", "0.5", "--distill-temperature", "2"],
    "O": E + TEACHERS + ["--distill-alpha", "0.9", "--distill-temperature", "4"],
    "P": E + TEACHERS + ["--distill-alpha", "0.5", "--distill-temperature", "4"],
})
SECTION = "FER2013 recipe proxy (400 images per class, 3 epochs)"
HEADER = ("| variant | settings | val accuracy (Training slice, decides) | PublicTest accuracy | wall time | machine | command |\n"
          "|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "fer2013-fast.yaml"))
    parser.add_argument("--work", default="/tmp/ftkit-bench")
    parser.add_argument("--summarize", help="only summarise finished variant runs in this folder")
    parser.add_argument("--variants", nargs="+", default=list("ABCD"), choices=list(VARIANTS))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    runs = Path(args.summarize) if args.summarize else Path(args.work) / "select" / time.strftime("%Y%m%d-%H%M%S")
    variants = {name: VARIANTS[name] for name in args.variants}
    if not args.summarize:
        layout = heldout_layout(extract_fer(Path(args.work)), Path(args.work))
        for name, flags in variants.items():
            cmd = [sys.executable, "-m", "ftkit", "finetune", "--recipe", args.recipe, "--data", str(layout),
                   "--val-split", "0.05", "--shots", "400", "--epochs", "3", "--tta", "none", "--img-size", "64",
                   "--project", str(runs), "--name", name, *flags]
            subprocess.run(cmd, check=True)
    # the command that reproduces the rows (a --summarize pass only reads runs it made before)
    command = command_line().replace(f" --summarize {args.summarize}", "") if args.summarize else command_line()
    for name, flags in variants.items():
        run = runs / name
        history = (run / "metrics.csv").read_text().splitlines()
        header, last = history[0].split(","), history[-1].split(",")
        val = float(last[header.index("val_accuracy")])
        report = json.loads((run / "report.json").read_text())
        record = json.loads((run / "run.json").read_text())
        row = (f"| {name} | {' '.join(flags)} | {val:.4f} | {report['accuracy']:.4f} | {record['train_seconds']:.0f} s "
               f"| {machine()} | `{command}` |")
        emit_row(SECTION, HEADER, row, write=not args.no_write)


if __name__ == "__main__":
    main()
