"""Distributed data parallel on PyTorch's own engine: torch.distributed, started by torchrun.

One process per device. ``torchrun --nproc-per-node N -m ftkit finetune ...`` starts them and
sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; ``ftkit finetune --nproc N``
starts torchrun itself (see ``launch``). Backend: NCCL on CUDA, Gloo on the CPU.

How a run stays one run (as in timm's train.py and torchvision's references):
- every rank draws the same global order of images and takes its slice of each global
  batch, so ``--batch-size`` is the global batch on any number of processes;
- validation and test are split into contiguous shards and the predictions gathered back in
  order, so every image is scored exactly once and every rank sees the same metrics, and
  therefore takes the same best-epoch and early-stopping decisions;
- only rank 0 writes (``Context.main``); the others learn its run directory by broadcast.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from .errors import DistributedError

T = TypeVar("T")

# How long a rank waits in a collective for the others (a rank writing a checkpoint, a slow
# evaluation shard) before the run fails with a message instead of hanging.
DEFAULT_TIMEOUT_S = int(os.environ.get("FTKIT_DDP_TIMEOUT", "600"))


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The one process that writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def describe(self, backend: str | None, batch_size: int) -> dict[str, Any]:
        """For run.json: how the run was spread."""
        return {"world_size": self.world, "backend": backend, "global_batch": batch_size,
                "per_rank_batch": batch_size // self.world}


SINGLE = Context()


def from_env() -> Context:
    """The process's place in a torchrun launch (a single process when not launched by it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Context(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def current() -> Context:
    """The context of the process group this process has joined (single when none)."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return SINGLE


@contextmanager
def process_group(device_type: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> Iterator[Context]:
    """Join torchrun's process group for the length of a run (no-op for a single process)."""
    ctx = from_env()
    if not ctx.active or dist.is_initialized():
        yield current()
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    # torchrun ends the other processes with SIGTERM when one fails; as an exception, it lets
    # rank 0 record the run as failed (with the reason) instead of vanishing mid-epoch. After a
    # Ctrl-C (SIGINT reaches every process of the terminal's group) torchrun's SIGTERM follows:
    # the run is already stopping, and stays recorded as interrupted.
    stopping = {"now": False}

    def on_sigint(signum, frame):
        stopping["now"] = True
        raise KeyboardInterrupt

    def on_sigterm(signum, frame):
        if not stopping["now"]:
            stopping["now"] = True
            raise DistributedError("stopped by torchrun (SIGTERM): another process of this run ended, or the launch "
                                   "was stopped; see the first error above. The last finished epoch can be continued "
                                   "with --resume")

    previous = signal.signal(signal.SIGINT, on_sigint), signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield ctx
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
        dist.destroy_process_group()


def explain(exc: BaseException) -> BaseException:
    """A collective that failed because another rank died (a Gloo "Connection reset by peer", an
    NCCL error, a timeout) as a DistributedError that says so; other exceptions as they are."""
    text = str(exc)
    lost_peer = isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError) and any(k in text for k in ("gloo", "NCCL", "Connection reset", "Connection closed")))
    if not lost_peer or isinstance(exc, DistributedError) or not current().active:
        return exc
    first = text.splitlines()[0] if text else type(exc).__name__
    return DistributedError(f"another process of this run stopped, so this one cannot go on ({first[:200]}); see "
                            "that process's error above. The last finished epoch can be continued with --resume")


def backend() -> str | None:
    return dist.get_backend() if dist.is_initialized() else None


def device_for(device: torch.device, ctx: Context) -> torch.device:
    """Rank r of a node uses CUDA device LOCAL_RANK; CPU ranks share the CPU."""
    if ctx.active and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


# --- decisions taken on rank 0 -----------------------------------------------------------


def on_main(fn: Callable[[], T], ctx: Context) -> T:
    """Run ``fn`` on rank 0 and give its result to every rank. If it raises, rank 0 re-raises
    and the other ranks stop with the same message (rather than waiting for a result that
    never comes)."""
    if not ctx.active:
        return fn()
    result: list[Any] = [None, None]
    error = None
    if ctx.main:
        try:
            result[0] = fn()
        except Exception as exc:  # carried to the other ranks, then raised here as it was
            error = exc
            result[1] = f"{type(exc).__name__}: {exc}"
    dist.broadcast_object_list(result, src=0)
    if error is not None:
        raise error
    if result[1] is not None:
        raise DistributedError(f"rank 0 stopped: {result[1]}")
    return result[0]


def broadcast_model(model: torch.nn.Module, ctx: Context) -> None:
    """Give every rank rank 0's weights and buffers (after rank 0 loaded a checkpoint that the
    other ranks, possibly on other machines, cannot read)."""
    if not ctx.active:
        return
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


# --- sharding ----------------------------------------------------------------------------


def shard(n: int, ctx: Context) -> range:
    """This rank's contiguous share of ``n`` items; shares differ by at most one and cover
    every item exactly once (no padding duplicates, unlike DistributedSampler)."""
    return range(n * ctx.rank // ctx.world, n * (ctx.rank + 1) // ctx.world)


def gather_arrays(ctx: Context, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every rank's shard arrays, concatenated in rank order (= the split's order)."""
    if not ctx.active:
        return arrays
    parts: list[Any] = [None] * ctx.world
    dist.all_gather_object(parts, arrays)
    # a rank with an empty shard predicts a (0, 0) array: leave it out
    return tuple(np.concatenate([p[i] for p in parts if len(p[i])] or [parts[0][i]]) for i in range(len(arrays)))


def sum_across(values: list[float], ctx: Context) -> list[float]:
    """Element-wise sum over ranks (training loss and counts of one step)."""
    if not ctx.active:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


class RankBatches(torch.utils.data.Sampler):
    """Slices every global batch of ``batches`` among the ranks: rank r gets the r-th of
    ``world`` near-equal parts. With DDP averaging the ranks' gradients, a step sees the
    same images, weighted the same, as one process with the whole batch."""

    def __init__(self, batches: torch.utils.data.BatchSampler, ctx: Context):
        self.batches, self.ctx = batches, ctx

    def __iter__(self):
        for batch in self.batches:
            yield [batch[i] for i in shard(len(batch), self.ctx)]

    def __len__(self) -> int:
        return len(self.batches)


# --- starting torchrun -------------------------------------------------------------------


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """``torchrun --standalone --nproc-per-node N -m ftkit ARGS`` with this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "ftkit", *args]


def launch(nproc: int, args: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``ftkit ARGS`` in ``nproc`` processes on this machine through torchrun, as
    Ultralytics does for ``device=0,1``; returns torchrun's exit code."""
    command = torchrun_command(nproc, args)
    print("launching: " + shlex.join(command[1:]), file=sys.stderr, flush=True)
    return subprocess.call(command, env={**os.environ, **(env or {})}, cwd=Path.cwd())
