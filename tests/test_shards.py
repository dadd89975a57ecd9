"""WebDataset shards: written from any source, streamed without repeats or losses across ranks
and workers, trained on and evaluated like a folder."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_config, write_split_folder

from ftkit.cli import main
from ftkit.config import ConfigError, resolve
from ftkit.data import DataError, load_data, read_image
from ftkit.distributed import Context
from ftkit.models import DataConfig
from ftkit.shards import ShardStream, StreamBatches, load_shards, write_shards
from ftkit.train import finetune
from ftkit.transforms import eval_transform, train_transform

DC = DataConfig(24, 3, False, [0.5] * 3, [0.5] * 3, "bilinear")


@pytest.fixture
def flat(tmp_path) -> Path:
    """A flat folder (splits carved by ftkit): 20 images per class, png and jpg mixed."""
    root = write_split_folder(tmp_path / "flat", sizes=(("", 20),))
    for i, path in enumerate(sorted(root.rglob("*.png"))[::3]):
        from PIL import Image

        Image.open(path).save(path.with_suffix(".jpg"), quality=90)
        path.unlink()
    return root


def _samples(folder: Path, split: str) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for tar in sorted(folder.glob(f"{split}-*.tar")):
        with tarfile.open(tar) as t:
            for member in t.getmembers():
                key, ext = member.name.split(".", 1)
                out.setdefault(key, {})[ext] = t.extractfile(member).read()
    return out


def test_shards_keep_the_split_the_labels_and_the_files_bytes(flat, tmp_path):
    cfg = resolve(None, data=str(flat), val_split=0.2, test_split=0.2, seed=3)
    index = write_shards(cfg, tmp_path / "shards", shard_size=7)
    data = load_data(cfg)
    assert index["classes"] == data.classes
    for name, split in data.splits.items():
        entry = index["splits"][name]
        assert entry["keys"] == split.keys and entry["labels"] == split.labels.tolist()
        assert sum(s["count"] for s in entry["shards"]) == len(split) and all(s["count"] <= 7 for s in entry["shards"])
        samples = _samples(tmp_path / "shards", name)
        assert len(samples) == len(split)
        for sample in samples.values():
            i = int(sample["idx.cls"])
            ext = "jpg" if split.keys[i].endswith(".jpg") else "png"
            assert sample[ext] == Path(split.keys[i]).read_bytes()  # images stay encoded, as they were
            assert int(sample["cls"]) == split.labels[i]


def test_csv_rows_become_lossless_png(tmp_path):
    from test_fer2013 import _pixels, _write_csv

    rows = [(label, _pixels(label * 10 + i), usage) for label in range(7) for usage, n in
            (("Training", 3), ("PublicTest", 2)) for i in range(n)]
    csv = _write_csv(tmp_path / "fer.csv", rows)
    write_shards(resolve(None, data=str(csv)), tmp_path / "shards", shard_size=100)
    data = load_data(resolve(None, data=str(csv)))
    samples = _samples(tmp_path / "shards", "train")
    for sample in samples.values():
        i = int(sample["idx.cls"])
        assert np.array_equal(read_image(io.BytesIO(sample["png"])), data.splits["train"].images[i])


def test_streaming_splits_ranks_and_workers_without_repeats_or_losses(flat, tmp_path):
    cfg = resolve(None, data=str(flat), val_split=0.2, test_split=0.0)
    write_shards(cfg, tmp_path / "shards", shard_size=5)
    split = load_shards(resolve(None, data=str(tmp_path / "shards"))).splits["val"]
    for world, workers in ((1, 0), (2, 2), (3, 2)):
        got = []
        for rank in range(world):
            stream = ShardStream(split, eval_transform(DC), Context(rank, world))
            loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=workers)
            got += [int(i) for _, _, idx in loader for i in idx]
        assert sorted(got) == list(range(len(split))), (world, workers)  # each image once


def test_stream_batches_give_every_rank_the_same_steps_and_shuffle_per_epoch(flat, tmp_path):
    cfg = resolve(None, data=str(flat), val_split=0.2, test_split=0.0)
    write_shards(cfg, tmp_path / "shards", shard_size=5)
    train = load_shards(resolve(None, data=str(tmp_path / "shards"))).splits["train"]  # 48 images
    labels_per_epoch = []
    for epoch in (0, 1):
        per_rank = []
        for rank in (0, 1):
            stream = ShardStream(train, eval_transform(DC), Context(rank, 2), seed=0, train=True)
            batches = StreamBatches(torch.utils.data.DataLoader(stream, batch_size=5, num_workers=2), 5, len(train) // 10)
            batches.set_epoch(epoch)
            per_rank.append([y for _, y in batches])
        assert len(per_rank[0]) == len(per_rank[1]) == len(train) // 10
        assert all(len(y) == 5 for rank in per_rank for y in rank)
        labels_per_epoch.append(torch.cat([torch.cat(r) for r in per_rank]).tolist())
    assert labels_per_epoch[0] != labels_per_epoch[1]  # a new order every epoch


def test_two_workers_do_not_repeat_each_others_augmentations(tmp_path):
    """One picture everywhere: differences between samples are the augmentation's alone."""
    from PIL import Image

    image = (np.arange(24 * 24 * 3) % 251).astype(np.uint8).reshape(24, 24, 3)
    for c in ("a", "b"):
        (tmp_path / "same" / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(image).save(tmp_path / "same" / c / f"{i}.png")
    write_shards(resolve(None, data=str(tmp_path / "same"), val_split=0.25, test_split=0.0), tmp_path / "shards", shard_size=3)
    train = load_shards(resolve(None, data=str(tmp_path / "shards"))).splits["train"]

    def by_worker(seed: int) -> list[torch.Tensor]:
        stream = ShardStream(train, train_transform(DC, "strong"), Context(), seed=seed, train=True)
        return [x for x, _ in torch.utils.data.DataLoader(stream, batch_size=3, num_workers=2)]

    first = by_worker(0)
    assert not torch.equal(first[0], first[1])  # the first batches of worker 0 and worker 1
    assert all(torch.equal(a, b) for a, b in zip(first, by_worker(0)))  # and --seed repeats them


@pytest.mark.slow
def test_a_run_on_shards_trains_evaluates_and_resumes_like_a_folder(flat, tmp_path):
    r = CliRunner().invoke(main, ["data", "shards", str(flat), str(tmp_path / "shards"), "--shard-size", "6",
                                  "--val-split", "0.2", "--test-split", "0.2"])
    assert r.exit_code == 0, r.output
    result = finetune(tiny_config(tmp_path / "shards", tmp_path, workers=2, name="streamed"))
    index = json.loads((tmp_path / "shards" / "dataset.json").read_text())
    lines = (result.run_dir / "predictions.csv").read_text().splitlines()[1:]
    assert [line.split(",")[0] for line in lines] == index["splits"]["test"]["keys"]  # every test image once, in order
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["data"]["source"] == "shards"
    r = CliRunner().invoke(main, ["evaluate", str(result.run_dir), "--name", "again", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    again = json.loads((result.run_dir / "eval" / "again" / "report.json").read_text())
    assert again["accuracy"] == pytest.approx(result.report["accuracy"])
    r = CliRunner().invoke(main, ["evaluate", str(result.run_dir), "--faces", "crop", "--device", "cpu"])
    assert r.exit_code == 1 and "faces were fixed when they were written" in r.output


def test_shards_refuse_what_they_cannot_do(flat, tmp_path):
    shards = tmp_path / "shards"
    write_shards(resolve(None, data=str(flat)), shards, shard_size=10)
    with pytest.raises(DataError, match="already exists"):
        write_shards(resolve(None, data=str(flat)), shards)
    with pytest.raises(ConfigError, match="--shots.*cannot be used on the streamed shards"):
        load_shards(resolve(None, data=str(shards), shots=5))
    with pytest.raises(ConfigError, match="--folds"):
        finetune(tiny_config(shards, tmp_path, folds=3))
    # a brace pattern keeps only the training shards it names
    subset = load_shards(resolve(None, data=str(shards / "train-{000000..000001}.tar")))
    assert len(subset.splits["train"]) == 20 and len(subset.splits["train"].shards) == 2
    (shards / "val-000000.tar").unlink()
    with pytest.raises(DataError, match="val-000000.tar .* is missing"):
        load_shards(resolve(None, data=str(shards)))
    assert not list(tmp_path.glob(".shards.partial-*"))


def test_a_run_on_a_brace_pattern_of_shards_is_found_again_by_resume(flat, tmp_path):
    """The pattern names no file on disk as it is; --resume took the data for gone."""
    from ftkit.runs import RunError
    from ftkit.train import resume

    shards = tmp_path / "shards"
    write_shards(resolve(None, data=str(flat), val_split=0.2, test_split=0.2), shards, shard_size=10)
    run = finetune(tiny_config(shards / "train-{000000..000001}.tar", tmp_path, epochs=1, freeze_epochs=0, name="brace")).run_dir
    with pytest.raises(RunError, match="has finished"):  # not: "which is not there any more"
        resume(run)


def test_data_inspect_reads_a_shard_folder_and_a_set_smaller_than_a_batch_trains_in_one(flat, tmp_path):
    """`data inspect` on shards said the folder had no class folders; a training split smaller
    than --batch-size was refused on shards, where a folder of that size trains in one batch."""
    shards = tmp_path / "shards"
    write_shards(resolve(None, data=str(flat), seed=1), shards, shard_size=10)
    index = json.loads((shards / "dataset.json").read_text())
    r = CliRunner().invoke(main, ["data", "inspect", str(shards)])
    assert r.exit_code == 0, r.output
    for name, entry in index["splits"].items():
        row = next(line for line in r.output.splitlines() if f" {name} " in line).split("│")
        assert [int(n) for n in row[2:-1]] == [entry["labels"].count(i) for i in range(3)] + [entry["count"]]
    sampled = sum(entry["shards"][0]["count"] for entry in index["splits"].values())  # each split's first shard
    assert f"(a sample of {sampled} of the 60 images): 24x24 RGB {sampled}" in r.output

    train = index["splits"]["train"]["count"]
    result = finetune(tiny_config(shards, tmp_path, batch_size=train + 10, epochs=1, freeze_epochs=0))
    assert json.loads((result.run_dir / "run.json").read_text())["status"] == "finished"
