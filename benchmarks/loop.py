"""ftkit's training loop against a plain timm loop, on the same model, data, batch and steps.

    python benchmarks/loop.py                     # 1 process: cached and streamed paths
    python benchmarks/loop.py --processes 2       # the same under torchrun, DDP over Gloo

Both loops draw batches from the same DataLoader (ftkit's, built by ``make_loaders`` for the
cached path and by ``stream_loaders`` for WebDataset shards), so the ratio measures the loop
alone. The plain loop is forward, loss, backward, step (DDP-wrapped when there are several
processes). ftkit's loop is ``train_one_epoch`` as ``finetune`` runs it: with its progress
bar, the per-step loss/accuracy read-out (an all-reduce under DDP) and the learning-rate
schedule; a third row runs it without the bar to show what the bar costs. Repetitions are
interleaved (plain, ftkit, ftkit without bar, plain, ...); the ratios are taken within each
round, whose variants ran back to back, and their median is reported with the range, so that
load on the shared machine hits every variant alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import command_line, emit_row, machine

from ftkit import distributed
from ftkit.config import resolve
from ftkit.data import DataSplits, Split
from ftkit.models import create, resolve_data_config
from rich.console import Console

from ftkit.progress import progress_bar
from ftkit.shards import load_shards, write_shards
from ftkit.train import StepParts, build_optimizer, build_scheduler, make_loaders, seed_epoch, train_one_epoch

HEADER = ("| path | processes | ftkit img/s | plain img/s | ftkit / plain (range over rounds) | ftkit without bar / plain | per process img/s "
          "| model, input, batch, steps | machine | command |\n|---|---|---|---|---|---|---|---|---|---|")


def synthetic(n: int, classes: int = 7, seed: int = 0) -> DataSplits:
    """``n`` FER-like 48x48 gray faces (random pixels) in memory, replicated to RGB."""
    rng = np.random.default_rng(seed)
    images = [np.repeat(rng.integers(0, 256, (48, 48, 1), dtype=np.uint8), 3, axis=2) for _ in range(n)]
    labels = rng.integers(0, classes, n)
    train = Split([f"img{i:06d}.png" for i in range(n)], labels, images)
    val = Split(train.keys[:64], labels[:64], images[:64])
    return DataSplits([f"c{i}" for i in range(classes)], {"train": train, "val": val}, "synthetic")


def plain_steps(model, loader, optimizer, steps: int, channels_last: bool) -> float:
    """A plain timm loop (as timm's train.py: channels-last input when the model is), forward,
    loss, backward, step. Returns images/s over ``steps`` batches."""
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    seen, start = 0, time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if step == steps:
            break
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


class Limited:
    """The first ``steps`` batches of a loader, with its length (ftkit's loop sizes its bar by it)."""

    def __init__(self, loader, steps: int):
        self.loader, self.steps = loader, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for step, batch in enumerate(self.loader):
            if step == self.steps:
                return
            yield batch


def measure(path: str, data: DataSplits, args, ctx) -> dict[str, float]:
    cfg = resolve(None, data="synthetic", backbone=args.backbone, pretrained=False, img_size=args.img_size,
                  batch_size=args.batch_size, augment="fer", channels_last=args.channels_last, workers=args.workers)
    device = torch.device("cpu")
    model = create(cfg, len(data.classes))
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    dc = resolve_data_config(model, cfg)
    loader, _, generator, train_tf = make_loaders(data, dc, cfg, device, ctx)
    net = torch.nn.parallel.DistributedDataParallel(model) if ctx.active else model
    optimizer = build_optimizer(model, cfg)
    scheduler, when = build_scheduler(optimizer, cfg, args.steps)
    parts = StepParts(net, torch.nn.CrossEntropyLoss(), optimizer, scheduler, when, device,
                      memory_format=torch.channels_last if args.channels_last else None)
    quiet = Console(quiet=True) if not ctx.main else Console(file=sys.stderr)
    results: dict[str, list[float]] = {"plain": [], "ftkit": [], "ftkit_nobar": []}
    for rep in range(args.repeats + 1):  # the first round warms up (allocator, threads, caches)
        for variant in results:
            seed_epoch(0, rep, ctx, generator, train_tf)
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(rep)
            limited = Limited(loader, args.steps)
            if variant == "plain":
                rate = plain_steps(net, limited, optimizer, args.steps, args.channels_last)
            elif variant == "ftkit":
                with progress_bar(quiet) as bar:
                    task = bar.add_task(f"{path} rep {rep}", total=args.steps, info="")
                    rate = train_one_epoch(parts, limited, ctx, bar, task)["images_per_s"]
            else:
                rate = train_one_epoch(parts, limited, ctx)["images_per_s"]
            if variant == "plain" and ctx.active:  # the plain loop counts this rank's images only
                rate *= ctx.world
            if rep:
                results[variant].append(rate)
    # ratios of neighbours in time (one round), whose conditions on a shared machine are alike
    ratios = {k: [r / p for r, p in zip(results[k], results["plain"])] for k in ("ftkit", "ftkit_nobar")}
    return {**{k: statistics.median(v) for k, v in results.items()},
            **{f"{k}_ratio": statistics.median(v) for k, v in ratios.items()},
            **{f"{k}_spread": (min(v), max(v)) for k, v in ratios.items()}}


def per_step_extras(args) -> dict[str, float]:
    """Microseconds per step of what ftkit's loop does beyond the plain one, each timed alone
    over many calls (the loop ratios above cannot resolve a few per cent on a shared machine)."""
    import io

    from rich.console import Console as RichConsole

    cfg = resolve(None, data="synthetic", backbone=args.backbone, pretrained=False, img_size=args.img_size,
                  batch_size=args.batch_size)
    model = create(cfg, 7)
    optimizer = build_optimizer(model, cfg)
    scheduler, _ = build_scheduler(optimizer, cfg, 10_000)
    logits, y = torch.randn(args.batch_size, 7), torch.randint(0, 7, (args.batch_size,))
    loss = torch.nn.functional.cross_entropy(logits, y)
    live = RichConsole(file=io.StringIO(), force_terminal=True, width=120)  # a terminal's live bar
    calls = 2000

    def timed(fn) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls * 1e6

    with progress_bar(live) as bar:
        task = bar.add_task("bench", total=calls * 10, info="")
        bar_us = timed(lambda: bar.update(task, advance=1, info=f"loss {1.2345:.3f} acc {0.5:.3f}"))
    return {
        "progress bar update (live terminal)": bar_us,
        "learning-rate schedule step": timed(scheduler.step),
        "loss and accuracy read-out (.item() x2)": timed(lambda: (loss.item(), (logits.argmax(1) == y).sum().item())),
        "cross-rank sum (one process: none)": timed(lambda: distributed.sum_across([1.0, 2.0, 3.0], distributed.SINGLE)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per repetition")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: ftkit's choice)")
    parser.add_argument("--channels-last", action="store_true", default=True)
    parser.add_argument("--paths", nargs="+", default=["cached", "streamed"], choices=["cached", "streamed"])
    parser.add_argument("--processes", type=int, default=1, help="processes (the script restarts itself under torchrun)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ftkit-loop"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    if args.processes > 1 and not distributed.from_env().active:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.processes}",
                   *sys.argv]
        os.environ["FTKIT_LOOP_COMMAND"] = command_line()
        raise SystemExit(os.spawnv(os.P_WAIT, sys.executable, command))

    torch.manual_seed(0)
    with distributed.process_group("cpu") as ctx:
        data = synthetic(args.images)
        shards = Path(args.work) / f"shards-{args.images}"
        if "streamed" in args.paths and ctx.main and not (shards / "dataset.json").is_file():
            write_shards_from(data, Path(args.work), shards)
        distributed.on_main(lambda: None, ctx)  # the others wait for the shards
        for path in args.paths:
            source = data if path == "cached" else load_shards(resolve(None, data=str(shards)))
            rates = measure(path, source, args, ctx)
            if ctx.main:
                low, high = rates["ftkit_spread"]
                row = (f"| {path} | {ctx.world} | {rates['ftkit']:.1f} | {rates['plain']:.1f} | "
                       f"{rates['ftkit_ratio']:.3f}x ({low:.3f}-{high:.3f}) | {rates['ftkit_nobar_ratio']:.3f}x | "
                       f"{rates['ftkit'] / ctx.world:.1f} | {args.backbone} {args.img_size}x{args.img_size}, batch "
                       f"{args.batch_size} (global), {args.steps} steps x {args.repeats} | {machine()}, "
                       f"{torch.get_num_threads()} thread(s) per process | "
                       f"`{os.environ.get('FTKIT_LOOP_COMMAND', command_line())}` |")
                emit_row("Training loop: ftkit against a plain timm loop", HEADER, row, write=not args.no_write)
                step_ms = args.batch_size / rates["plain"] * 1e3
                print(f"{path}: a plain step takes {step_ms:.0f} ms; ftkit's extras per step, each timed alone:")
                for what, us in per_step_extras(args).items():
                    print(f"  {what}: {us:.1f} us ({us / 1e3 / step_ms:.3%} of a step)")


def write_shards_from(data: DataSplits, work: Path, dest: Path) -> None:
    """The synthetic set as PNG files, then as shards (the streamed path decodes PNG, as shards of a folder would)."""
    from PIL import Image

    folder = work / "images"
    for split in ("train", "val"):
        for key, label, image in zip(data.splits[split].keys, data.splits[split].labels, data.splits[split].images):
            target = folder / split / data.classes[label] / key
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                Image.fromarray(image[..., 0]).save(target)
    write_shards(resolve(None, data=str(folder), faces="none"), dest, shard_size=1000)


if __name__ == "__main__":
    main()
