"""Peak memory of one training epoch's data: a synthetic 100k-image set decoded in memory
(ftkit's cached path) against the same set streamed from WebDataset shards.

    python benchmarks/streaming.py                 # 100,000 images
    python benchmarks/streaming.py --images 20000  # smaller, quicker

The set is FER-like: 48x48 grayscale PNG files in class folders, written once to WORK, and
written again as shards by ``ftkit data shards``. Each path then runs in a fresh process that
loads the data as ``finetune`` would and draws one epoch of training batches through ftkit's
loaders (decoding, augmentation, 64x64 tensors; no model, so that memory is the data's), with
no DataLoader workers, so that the one process holds everything that is measured.
Peak RSS is the process's maximum resident set (``getrusage``), next to that of a process
that only imported ftkit and torch.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import child_result, command_line, emit_row, machine

HEADER = ("| images | path | peak RSS | RSS after imports | data's share | epoch time | images/s | machine | command |\n"
          "|---|---|---|---|---|---|---|---|---|")


def write_folder(root: Path, n: int, classes: int = 7) -> None:
    import numpy as np
    from PIL import Image

    if (root / ".complete").is_file():
        return
    rng = np.random.default_rng(0)
    for i in range(n):
        label = i % classes
        folder = root / "train" / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        # smooth random faces-like blobs compress like real crops; pure noise would not
        small = rng.integers(0, 256, (12, 12), dtype=np.uint8)
        Image.fromarray(small).resize((48, 48), Image.BILINEAR).save(folder / f"{i:06d}.png")
    (root / ".complete").write_text("ok\n")


def child(path: str, data: str, batch: int) -> None:
    """One epoch of training batches through ftkit's loaders; prints a JSON line."""
    import torch

    from ftkit.config import resolve
    from ftkit.models import DataConfig
    from ftkit.shards import load
    from ftkit.train import make_loaders

    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # workers=0: everything in this one process, whose peak RSS is then the whole story (a forked
    # worker's RSS would count the parent's shared pages a second time)
    cfg = resolve(None, data=data, val_split=0.01, test_split=0.0, cache="memory" if path == "memory" else "auto",
                  batch_size=batch, augment="fer", workers=0)
    started = time.perf_counter()
    splits = load(cfg)
    dc = DataConfig(64, 3, True, [0.5] * 3, [0.5] * 3, "bilinear")
    loader, _, _, _ = make_loaders(splits, dc, cfg, torch.device("cpu"))
    seen = sum(len(y) for _, y in loader)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"imported_kb": imported, "peak_kb": peak, "seen": seen, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ftkit-streaming"))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.batch_size)

    work = Path(args.work)
    folder, shards = work / f"folder-{args.images}", work / f"shards-{args.images}"
    print(f"writing {args.images} PNG files to {folder} ...", flush=True)
    write_folder(folder, args.images)
    if not (shards / "dataset.json").is_file():
        print(f"writing shards to {shards} ...", flush=True)
        subprocess.run([sys.executable, "-m", "ftkit", "data", "shards", str(folder), str(shards), "--shard-size", "10000",
                        "--val-split", "0.01", "--test-split", "0"], check=True)
    for path, data in (("memory", folder), ("streamed", shards)):
        m = child_result(__file__, path, data, "--batch-size", args.batch_size)
        row = (f"| {args.images:,} | {'decoded in memory (cache=memory)' if path == 'memory' else 'streamed from shards'} "
               f"| {m['peak_kb'] / 1024:.0f} MB | {m['imported_kb'] / 1024:.0f} MB | "
               f"{(m['peak_kb'] - m['imported_kb']) / 1024:.0f} MB | {m['seconds']:.0f} s | {m['seen'] / m['seconds']:.0f} | "
               f"{machine()} | `{command_line()}` |")
        emit_row("Streaming: peak memory of a 100k-image epoch", HEADER, row, write=not args.no_write)


if __name__ == "__main__":
    main()
