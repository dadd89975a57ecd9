"""Distributed data parallel on the CPU: torchrun, Gloo, 2 processes, a tiny timm model.

The 1- and 2-process runs are compared with augmentation and dropout off: those draw per rank
(as in timm), so with them the runs agree in distribution, not number for number. test_vit has
no BatchNorm (LayerNorm only), so per-rank batch statistics do not enter either.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import interrupt_at_epoch, tiny_config, write_split_folder
from safetensors.torch import load_file

import ftkit.train as train_mod
from ftkit.cli import main
from ftkit.config import ConfigError
from ftkit.data import Split
from ftkit.distributed import Context, RankBatches, gather_arrays, shard
from ftkit.models import DataConfig
from ftkit.train import check_distributed, finetune, make_loaders, seed_epoch

# Same losses to float32 rounding; weights after a few AdamW steps within this (the two runs sum
# the same gradients in another order).
WEIGHT_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-5

SETTINGS = dict(backbone="test_vit", img_size=32, epochs=3, freeze_epochs=1, batch_size=8, lr=3e-3, augment="none",
                drop_rate=0.0, device="cpu", channels_last=True)  # channels-last must keep working under DDP


def _flags(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        flag = f"--{key.replace('_', '-')}"
        out += [flag] if value is True else [flag, str(value)]
    return out


def _ftkit(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "FTKIT_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ftkit", *args], capture_output=True, text=True, env=env, timeout=timeout)


def _metrics(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _same_run(a: Path, b: Path) -> None:
    rows_a, rows_b = _metrics(a), _metrics(b)
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b):
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), abs=LOSS_TOLERANCE), (key, ra["epoch"])
    wa, wb = load_file(a / "checkpoints" / "last.safetensors"), load_file(b / "checkpoints" / "last.safetensors")
    assert wa.keys() == wb.keys()
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < WEIGHT_TOLERANCE


@pytest.fixture
def odd_data(tmp_path) -> Path:
    """13/5/5 images per class: splits that two ranks cannot halve evenly."""
    return write_split_folder(tmp_path / "data", sizes=(("train", 13), ("val", 5), ("test", 5)))


# --- sharding and slicing (no processes needed) -------------------------------------------


def test_rank_batches_cover_each_global_batch_once():
    order = torch.utils.data.BatchSampler(range(22), 8, drop_last=False)
    ranks = [list(RankBatches(order, Context(r, 3))) for r in range(3)]
    for step, batch in enumerate(order):
        parts = [ranks[r][step] for r in range(3)]
        assert sum(parts, []) == batch  # in order, nothing lost or repeated
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_eval_shards_cover_a_split_exactly_once():
    for n in (0, 1, 5, 15, 16):
        shards = [list(shard(n, Context(r, 4))) for r in range(4)]
        assert sum(shards, []) == list(range(n))
    assert gather_arrays(Context(), np.arange(3))[0].tolist() == [0, 1, 2]


def test_what_ddp_cannot_do_is_refused_before_anything_is_written(odd_data, tmp_path):
    cfg = tiny_config(odd_data, tmp_path, batch_size=9)
    with pytest.raises(ConfigError, match="--batch-size 9 .* use 8, 10"):
        check_distributed(cfg, Context(0, 2), torch.device("cpu"))
    with pytest.raises(ConfigError, match="--folds"):
        check_distributed(tiny_config(odd_data, tmp_path, folds=3), Context(0, 2), torch.device("cpu"))
    with pytest.raises(ConfigError, match="--sync-bn needs CUDA"):
        finetune(tiny_config(odd_data, tmp_path, sync_bn=True, device="cpu"))
    assert not (tmp_path / "runs").exists()


def test_ranks_and_workers_draw_different_augmentations_that_repeat(tmp_path):
    """All images alike: any difference between two batches is the augmentation's."""
    image = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
    split = Split([f"k{i}" for i in range(16)], np.zeros(16, dtype=np.int64), [image] * 16)
    data = train_mod.DataSplits(["only"], {"train": split, "val": split}, "folders")
    dc = DataConfig(32, 3, False, [0.5] * 3, [0.5] * 3, "bilinear")
    cfg = tiny_config(tmp_path, tmp_path, batch_size=8, augment="strong", workers=2)

    def epoch_batches(rank: int) -> list[torch.Tensor]:
        ctx = Context(rank, 2)
        loader, _, generator, train_tf = make_loaders(data, dc, cfg, torch.device("cpu"), ctx)
        seed_epoch(cfg.seed, 0, ctx, generator, train_tf)
        return [x for x, _ in loader]

    rank0, rank1 = epoch_batches(0), epoch_batches(1)
    assert len(rank0) == len(rank1) == 2 and rank0[0].shape[0] == 4  # 2 steps of 8 images, 4 per rank
    assert not torch.equal(rank0[0], rank0[1])  # worker 0 and worker 1 of one rank
    assert not torch.equal(rank0[0], rank1[0])  # worker 0 of rank 0 and of rank 1
    assert all(torch.equal(a, b) for a, b in zip(rank0, epoch_batches(0)))  # the seed fixes them


# --- real processes: torchrun, Gloo ---------------------------------------------------------


@pytest.mark.slow
def test_two_processes_give_the_run_of_one(odd_data, tmp_path):
    one = finetune(tiny_config(odd_data, tmp_path, **SETTINGS, project=str(tmp_path / "one"), name="run"))
    result = _ftkit("finetune", "--data", str(odd_data), "--no-pretrained", *_flags(SETTINGS), "--workers", "0",
                    "--project", str(tmp_path / "two"), "--name", "run", "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["run"]  # one run directory, written by rank 0
    two = tmp_path / "two" / "run"
    assert result.stdout.strip().splitlines()[-1] == str(two)  # printed once, by rank 0
    _same_run(one.run_dir, two)
    record = json.loads((two / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch": 8, "per_rank_batch": 4}
    # every test image scored exactly once, in order, with the 1-process run's labels
    pred_one = (one.run_dir / "predictions.csv").read_text().splitlines()
    pred_two = (two / "predictions.csv").read_text().splitlines()
    assert len(pred_two) == 1 + 15
    assert [r.split(",")[:3] for r in pred_one] == [r.split(",")[:3] for r in pred_two]
    # a DDP-trained run evaluates like any other: the plain model loads its checkpoint
    r = CliRunner().invoke(main, ["evaluate", str(two), "--name", "again", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    again = json.loads((two / "eval" / "again" / "report.json").read_text())
    assert again["accuracy"] == pytest.approx(json.loads((two / "report.json").read_text())["accuracy"])


@pytest.mark.slow
def test_two_processes_accumulating_half_batches_give_the_run_of_one(tmp_path):
    """--accumulate under DDP: each rank sums two batches of 2 before the one all-reduce of a step
    (no_sync for the first), which is the step of one process on batches of 8 (LayerNorm only in
    test_vit, so no statistic sees the smaller batches; 16 images per class: whole groups)."""
    data = write_split_folder(tmp_path / "data", sizes=(("train", 16), ("val", 5), ("test", 5)))
    one = finetune(tiny_config(data, tmp_path, **SETTINGS, project=str(tmp_path / "one"), name="run"))
    flags = _flags({**SETTINGS, "batch_size": 4, "accumulate": 2})
    result = _ftkit("finetune", "--data", str(data), "--no-pretrained", *flags, "--workers", "0",
                    "--project", str(tmp_path / "two"), "--name", "run", "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    # Adam divides by each gradient's running size, so float-order differences of a summed step
    # grow more than in a plain DDP run: 1.2e-4 here, where batches of 4 stepped one by one
    # differ from batches of 8 by 2.9e-2 (measured in one process)
    wa = load_file(one.run_dir / "checkpoints" / "last.safetensors")
    wb = load_file(tmp_path / "two" / "run" / "checkpoints" / "last.safetensors")
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-3
    # the losses drift with the weights: by epoch 3, 1.5e-5 (val) on one AMD EPYC machine, 1e-5 or
    # less on others; the float order alone, where a wrong step moves the weights by 2.9e-2
    for ra, rb in zip(_metrics(one.run_dir), _metrics(tmp_path / "two" / "run"), strict=True):
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), abs=10 * LOSS_TOLERANCE), (key, ra["epoch"])


@pytest.mark.slow
def test_a_run_resumes_on_another_number_of_processes(odd_data, tmp_path, monkeypatch):
    full = finetune(tiny_config(odd_data, tmp_path, **SETTINGS, name="full"))
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        interrupt_at_epoch(patch, 3)
        finetune(tiny_config(odd_data, tmp_path, **SETTINGS, name="cut"))
    cut = tmp_path / "runs" / "cut"
    assert len(_metrics(cut)) == 2
    result = _ftkit("finetune", "--resume", str(cut), "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((cut / "run.json").read_text())["distributed"]["world_size"] == 2
    _same_run(full.run_dir, cut)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_killed_rank_ends_the_run_with_a_message_not_a_hang(odd_data, tmp_path):
    run = tmp_path / "killed"
    launcher = _long_two_process_run(odd_data, run)
    try:
        deadline = time.monotonic() + 180
        while not (run / "metrics.csv").is_file():  # training has begun
            assert launcher.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        os.kill(_rank_pid(1), signal.SIGKILL)
        killed_at = time.monotonic()
        output, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert time.monotonic() - killed_at < 120
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed", output[-2000:]
    assert "another process of this run stopped" in record["error"] or "stopped by torchrun" in record["error"]
    assert (run / "checkpoints" / "last.state.pt").is_file()  # the finished epochs are kept


def _long_two_process_run(data: Path, run: Path, **popen) -> subprocess.Popen:
    """`ftkit finetune --nproc 2` for 500 epochs (stopped by the test), output captured."""
    env = {**os.environ, "FTKIT_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ftkit", "finetune", "--data", str(data), "--no-pretrained", *_flags(SETTINGS),
         "--epochs", "500", "--workers", "0", "--out", str(run), "--nproc", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **popen)


def _rank_pid(rank: int) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"ftkit" in cmdline and b"TORCHELASTIC_RUN_ID" in b"\0".join(environ):
            return int(entry.name)
    raise AssertionError(f"no process of rank {rank} found")


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT to a process group, as a terminal's Ctrl-C does")
def test_ctrl_c_reaches_every_rank_and_the_run_can_resume(odd_data, tmp_path):
    run = tmp_path / "stopped"
    launcher = _long_two_process_run(odd_data, run, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len((run / "metrics.csv").read_text().splitlines()) < 3 if (run / "metrics.csv").is_file() else True:
            assert launcher.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        os.killpg(launcher.pid, signal.SIGINT)  # the terminal's Ctrl-C goes to the whole foreground group
        output, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode != 0
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "interrupted", output[-2000:]
    assert not _alive_in_session(launcher.pid)  # torchrun and both ranks are gone
    assert (run / "checkpoints" / "last.state.pt").is_file()


def _alive_in_session(session: int) -> list[int]:
    """Processes (not zombies) of the session that the launcher started."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == session and (entry / "stat").read_text().split()[2] != "Z":
                alive.append(int(entry.name))
        except OSError:
            continue
    return alive
