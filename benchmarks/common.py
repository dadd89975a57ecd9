"""Helpers shared by the benchmarks: the shared data, the machine, the measured rows."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import yaml

import results

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FER_TAR = SHARED / "fer2013" / "fer2013-trainval.tar.gz"
FER_SHA256 = "a6dae57c74a715349cdc225e91f4fb250fef5f55a0d354260d43423bb518f1b0"


def extract_fer(work: Path) -> Path:
    """Extract the FER2013 train/val folders once into ``work`` (checksum verified)."""
    target = work / "fer2013"
    if (target / ".complete").is_file():
        return target
    if not FER_TAR.is_file():
        sys.exit(f"{FER_TAR} not found: the benchmarks read ../shared/data (see its README)")
    digest = hashlib.sha256(FER_TAR.read_bytes()).hexdigest()
    if digest != FER_SHA256:
        sys.exit(f"{FER_TAR}: sha256 {digest} is not the expected {FER_SHA256}")
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(FER_TAR) as tar:
        tar.extractall(target, filter="data")
    (target / ".complete").write_text("ok\n")
    return target


def heldout_layout(fer: Path, work: Path) -> Path:
    """train/ = official Training, test/ = official PublicTest (never used for selection).

    ftkit then carves its validation split (for the best epoch) out of Training, so the
    reported PublicTest numbers come from a split that no choice was made on.
    """
    layout = work / "fer2013-heldout"
    layout.mkdir(parents=True, exist_ok=True)
    for name, src in (("train", fer / "train"), ("test", fer / "val")):
        link = layout / name
        if not link.exists():
            link.symlink_to(src.resolve(), target_is_directory=True)
    return layout


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch
    except ImportError:  # benchmarks/faces.py can run in an environment without torch
        return f"{os.cpu_count()} CPU cores ({cpu}), no torch, threads 1"
    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, threads {torch.get_num_threads()}"


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def child_result(script: str, *args: object) -> dict[str, Any]:
    """Run ``script --child ARGS...`` in a fresh process, offline, so that what it measures (peak
    memory above all) is its own, and return the JSON object it printed last."""
    out = subprocess.run([sys.executable, script, "--child", *map(str, args)], check=True, capture_output=True, text=True,
                         env={**os.environ, "FTKIT_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def emit_row(section: str, header: str, row: str, write: bool = True, key: int = 1) -> None:
    """Print a measured row and, unless ``write`` is false (--no-write), record it in
    benchmarks/results/ and render BENCHMARKS.md and docs/benchmarks.md again. A new table's
    rows are told apart by their first ``key`` cells and their command."""
    print(row, flush=True)
    if write:
        results.record(section, header, row, key=key)


def parse_settings(text: str, flag: str) -> dict[str, Any]:
    """``"key=value key=value"`` (recipe settings given on a command line); values are read
    as YAML scalars, as a recipe's are, and dashes in keys become underscores."""
    pairs = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} expects KEY=VALUE pairs, got {item!r}")
        pairs[key.replace("-", "_")] = yaml.safe_load(value)
    return pairs
