"""Peak memory and speed of a training step of 64 images taken whole or as accumulated
batches (``--accumulate``): the memory a large effective batch needs when the device has less.

    python benchmarks/accumulate.py                           # MobileNetV2, 224x224 RGB, 64 images a step
    python benchmarks/accumulate.py --backbone resnet18 --steps 2

Each setting (batch 64; 32 x 2; 16 x 4; 8 x 8) runs in a fresh process that builds the model
(random weights: memory and time do not depend on them), holds the same synthetic images, and
takes ``--steps`` optimizer steps of 64 images through ftkit's training loop
(``ftkit.train.train_one_epoch``). Peak RSS (``getrusage``) is read before the first step and
after the last: the difference is what training adds (activations kept for the backward pass,
gradients, optimizer state). The first setting is the baseline of the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from common import child_result, command_line, emit_row, machine

HEADER = ("| backbone | input | step | batch in memory | peak RSS | before training | training's share | images/s | "
          "machine | command |\n|---|---|---|---|---|---|---|---|---|---|")
SETTINGS = ((64, 1), (32, 2), (16, 4), (8, 8))  # (batch, accumulate): 64 images per step each


def child(backbone: str, img_size: int, batch: int, accumulate: int, steps: int) -> None:
    """Train ``steps`` steps of batch x accumulate images; prints a JSON line."""
    import torch

    from ftkit.config import resolve
    from ftkit.models import create
    from ftkit.train import StepParts, build_optimizer, train_one_epoch

    torch.manual_seed(0)
    cfg = resolve(None, data="", backbone=backbone, pretrained=False, img_size=img_size)
    model = create(cfg, 7)
    images = steps * batch * accumulate
    x, y = torch.randn(images, 3, img_size, img_size), torch.randint(0, 7, (images,))
    loader = [(x[i:i + batch], y[i:i + batch]) for i in range(0, images, batch)]
    parts = StepParts(model, torch.nn.CrossEntropyLoss(), build_optimizer(model, cfg), accumulate=accumulate)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    train_one_epoch(parts, loader)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kb": before, "peak_kb": peak, "images": images, "seconds": seconds, "steps": parts.steps}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenetv2_100")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", nargs=2, type=int, metavar=("BATCH", "ACCUMULATE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.backbone, args.img_size, *args.child, args.steps)

    baseline = None
    for batch, accumulate in SETTINGS:
        m = child_result(__file__, batch, accumulate, "--backbone", args.backbone, "--img-size", args.img_size,
                         "--steps", args.steps)
        assert m["steps"] == args.steps, m  # every setting takes the same optimizer steps
        share = (m["peak_kb"] - m["before_kb"]) / 1024
        baseline = baseline or share
        row = (f"| {args.backbone} | {args.img_size}x{args.img_size} RGB | {batch * accumulate} images | "
               f"{batch}{f' x {accumulate} accumulated' if accumulate > 1 else ''} | {m['peak_kb'] / 1024:.0f} MB | "
               f"{m['before_kb'] / 1024:.0f} MB | {share:.0f} MB ({share / baseline:.0%} of batch 64's) | "
               f"{m['images'] / m['seconds']:.1f} | {machine()} | `{command_line()}` |")
        emit_row("Gradient accumulation: peak memory of a 64-image step", HEADER, row, write=not args.no_write)


if __name__ == "__main__":
    main()
