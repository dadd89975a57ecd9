"""How long the full-size FER2013 Kaggle CSV takes to load, and with how much memory.

The real fer2013.csv is not in ../shared/data, so a file of the same shape is built from
the 700-row sample: 35,887 rows (28,709 Training, 3,589 PublicTest, 3,589 PrivateTest),
about 290 MB. The baseline, measured in the same run, parses pixels per value in Python
(``[int(v) for v in pixels.split()]``), as the seed notebooks did.

    python benchmarks/fer_csv_load.py
"""

from __future__ import annotations

import argparse
import csv
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import SHARED, command_line, emit_row, machine

USAGE = [("Training", 28709), ("PublicTest", 3589), ("PrivateTest", 3589)]
HEADER = ("| file | rows | size | loader | time | peak RSS | machine | command |\n"
          "|---|---|---|---|---|---|---|---|")


def build_full_size(sample: Path, target: Path) -> Path:
    if target.is_file():
        return target
    with open(sample, newline="") as f:
        rows = list(csv.reader(f))[1:]
    with open(target, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        i = 0
        for usage, n in USAGE:
            for _ in range(n):
                emotion, pixels, _ = rows[i % len(rows)]
                w.writerow([emotion, pixels, usage])
                i += 1
    return target


def _measure(kind: str, path: str) -> None:
    """Run in a child process, so peak RSS belongs to one loader alone."""
    start = time.perf_counter()
    if kind == "ftkit":
        from ftkit.fer2013 import read_fer_csv

        items, images, skipped = read_fer_csv(path)
        n = sum(len(v) for v in items.values())
    else:
        import numpy as np

        n = 0
        with open(path, newline="") as f:
            reader = csv.reader(f)
            next(reader)
            images = []
            for emotion, pixels, usage in reader:
                images.append(np.array([int(v) for v in pixels.split()], dtype=np.uint8).reshape(48, 48))
                n += 1
    seconds = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n} {seconds:.2f} {rss_mb:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/ftkit-bench")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _measure(*args.child)
        return
    Path(args.work).mkdir(parents=True, exist_ok=True)
    path = build_full_size(SHARED / "fer2013" / "fer2013-sample.csv", Path(args.work) / "fer2013-fullsize.csv")
    size_mb = path.stat().st_size / 2**20
    for kind, label in (("ftkit", "ftkit read_fer_csv (numpy per row)"), ("python", "baseline: per-value Python int()")):
        out = subprocess.run([sys.executable, __file__, "--child", kind, str(path)], capture_output=True, text=True, check=True)
        n, seconds, rss = out.stdout.split()[-3:]
        row = (f"| {path.name} | {n} | {size_mb:.0f} MB | {label} | {float(seconds):.1f} s | {rss} MB "
               f"| {machine()} | `{command_line()}` |")
        emit_row("FER2013 CSV loading", HEADER, row, write=not args.no_write)


if __name__ == "__main__":
    main()
