"""Inference speed on this CPU: PyTorch eager vs onnxruntime, for each recipe's backbone and
input size. Batch 1 gives p50/p95 latency, batch 64 gives throughput; both engines are
measured in the same run on the same weights (7-class heads; speed does not depend on
the weights' values).

    python benchmarks/inference.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, command_line, emit_row, machine

from ftkit.config import resolve
from ftkit.zoo import resolve_config
from ftkit.export import export_onnx
from ftkit.models import INPUT_MODES, create, resolve_name

SECTION = "Inference on the CPU: PyTorch eager against onnxruntime"
HEADER = ("| recipe(s) | backbone | input | engine | batch 1 p50 | batch 1 p95 | batch 1 img/s | batch 64 img/s "
          "| machine | command |\n|---|---|---|---|---|---|---|---|---|---|")


def recipe_models() -> dict[tuple[str, int, int], list[str]]:
    """(timm name, side, channels) -> the recipes that use it."""
    found: dict[tuple[str, int, int], list[str]] = {}
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        cfg = resolve_config(path)  # a recipe with init: takes the init model's backbone and input
        side, channels, _ = INPUT_MODES[cfg.input]
        key = (resolve_name(cfg.backbone), cfg.img_size or side, cfg.channels or channels)
        found.setdefault(key, []).append(path.stem)
    return found


def timed(fn, x, repeats: int) -> np.ndarray:
    for _ in range(3):
        fn(x)  # warm-up: allocator, kernels, onnxruntime graph optimisation
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - start)
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50, help="timed batch-1 calls per engine")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import onnxruntime as ort

    for (name, side, channels), recipes in recipe_models().items():
        cfg = resolve(None, backbone=name, img_size=side, channels=channels, pretrained=False)
        model = create(cfg, 7).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            export_onnx(model, torch.zeros(2, channels, side, side), path, {"benchmark": True}, opset=17)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            engines = {
                "pytorch eager": lambda x: model(torch.from_numpy(x)),
                "onnxruntime": lambda x: session.run(None, {"input": x}),
            }
            with torch.inference_mode():
                for engine, fn in engines.items():
                    one = timed(fn, np.random.rand(1, channels, side, side).astype(np.float32), args.repeats)
                    many = timed(fn, np.random.rand(64, channels, side, side).astype(np.float32), max(3, args.repeats // 10))
                    row = (f"| {', '.join(recipes)} | {name} | {side}x{side}x{channels} | {engine} "
                           f"| {np.percentile(one, 50) * 1e3:.1f} ms | {np.percentile(one, 95) * 1e3:.1f} ms "
                           f"| {1 / one.mean():.0f} | {64 / many.mean():.0f} | {machine()} | `{command_line()}` |")
                    emit_row(SECTION, HEADER, row, write=not args.no_write)


if __name__ == "__main__":
    main()
