"""Data larger than memory: WebDataset tar shards, written once and streamed while training.

``ftkit data shards SRC DEST`` writes ``DEST/<split>-000000.tar ...`` and ``DEST/dataset.json``
from any source ftkit reads (class folders, a FER2013 CSV, face crops). Images stay encoded:
a file's own bytes, or lossless PNG for decoded pixels (CSV rows, face crops). Each sample
carries its class index and its position in the split (``idx``); the index file carries the
class list, the splits and each shard's count, so a run knows its data without reading it.

Streaming (``--data DEST``) never decodes the whole set. Each process of a DDP run keeps the
images whose position modulo the number of processes is its rank; within a process the
DataLoader workers split the shards; samples are shuffled in a bounded buffer. Tar reading,
shuffling and writing are the ``webdataset`` package's.
"""

from __future__ import annotations

import io
import itertools
import random
import tarfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import torch
import webdataset as wds

from .config import Config, ConfigError
from .data import INSPECT_SAMPLE, DataError, DataSplits, Split, image_kind, inspect_source, load_data, read_image, read_split_listing
from .distributed import SINGLE, Context
from .io import holds_files, new_folder, read_json, refuse_inside, write_json
from .progress import progress_bar

INDEX = "dataset.json"
LABEL_FIELDS = ("cls", "idx.cls")  # a sample's fields besides its image: its class, its place in the split
FORMAT = "ftkit-shards"
VERSION = 1
SHUFFLE_BUFFER = 2000  # samples held for shuffling in each DataLoader worker while streaming


# --- writing -----------------------------------------------------------------------------


def write_shards(cfg: Config, dest: str | Path, shard_size: int = 10_000, console=None) -> dict[str, Any]:
    """Write the splits of ``cfg.data`` (split, class-selected and face-cropped as ``cfg`` says)
    as WebDataset shards in ``dest``. The folder appears only when complete: the shards are
    written next to it and moved in by one rename."""
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be at least 1, got {shard_size}")
    dest = Path(dest)
    if holds_files(dest):
        raise DataError(f"{dest} already exists and is not an empty folder; give a new folder for the shards")
    refuse_inside(dest, [cfg.data], "the shard folder")
    data = load_data(replace(cfg, cache="stream"), console=console)  # files stay encoded; crops/CSV rows are decoded
    with new_folder(dest, "folder for the shards") as partial:
        index = {"format": FORMAT, "version": VERSION, "classes": data.classes, "source": str(cfg.data),
                 "source_kind": data.source, "faces": cfg.faces, "shard_size": shard_size, "splits": {}}
        with progress_bar(console) as bar:
            for name, split in data.splits.items():
                task = bar.add_task(f"writing {name} shards", total=len(split))
                index["splits"][name] = _write_split(partial, name, split, shard_size, lambda: bar.advance(task))
        write_json(partial / INDEX, index)
    return index


def _write_split(folder: Path, name: str, split: Split, shard_size: int, advance) -> dict[str, Any]:
    with wds.ShardWriter(str(folder / f"{name}-%06d.tar"), maxcount=shard_size, verbose=0) as sink:
        for i, key in enumerate(split.keys):
            ext, payload = _encoded(split, i)
            sink.write({"__key__": f"{name}-{i:08d}", ext: payload, "cls": int(split.labels[i]), "idx.cls": i})
            advance()
    files = sorted(p.name for p in folder.glob(f"{name}-*.tar"))
    counts = [min(shard_size, len(split) - k * shard_size) for k in range(len(files))]
    return {"count": len(split), "shards": [{"file": f, "count": c} for f, c in zip(files, counts)],
            "keys": list(split.keys), "labels": split.labels.tolist()}


def _encoded(split: Split, i: int) -> tuple[str, bytes]:
    """(extension, bytes): the file's own bytes, or PNG of decoded pixels (one channel when gray)."""
    if split.images is None:
        path = Path(split.keys[i])
        ext = path.suffix.lower().lstrip(".")
        return ("jpg" if ext == "jpeg" else ext), path.read_bytes()
    image = split.images[i]
    if image.ndim == 3 and (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all():
        image = image[..., 0]
    ok, buffer = cv2.imencode(".png", image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError(f"could not encode image {split.keys[i]} as PNG")
    return "png", buffer.tobytes()


# --- reading -----------------------------------------------------------------------------


def shard_root(path: str | Path) -> Path | None:
    """The shard folder that ``path`` (a folder, or a brace pattern of its tar files) names, if any."""
    path = Path(path)
    folder = path.parent if ("{" in path.name or path.suffix == ".tar") else path
    return folder if (folder / INDEX).is_file() else None


def source_exists(path: str | Path) -> bool:
    """Whether data is where ``path`` says: a folder or CSV, or a brace pattern of shard files
    (which names no file as it stands)."""
    return Path(path).exists() or shard_root(path) is not None


def inspect_data(path: str | Path, console=None, label_from: str | None = None
                 ) -> tuple[dict[str, dict[str, int]], list[tuple[str, str]], dict[str, int]]:
    """``data.inspect_source`` for any source, shard folders too: a shard folder's counts come
    from its index, and its sizes and modes from the headers of the images at the start of each
    split's first shard (at most INSPECT_SAMPLE in all)."""
    if not shard_root(path):
        return inspect_source(path, console=console, label_from=label_from)
    data = load_shards(Config(data=str(path)))
    counts = {name: dict(sorted(Counter(data.classes[i] for i in split.labels).items())) for name, split in data.splits.items()}
    kinds: Counter = Counter()
    for split in data.splits.values():
        with tarfile.open(split.shards[0][0]) as tar:
            images = (m for m in tar if m.isfile() and m.name.split(".", 1)[-1] not in LABEL_FIELDS)
            for member in itertools.islice(images, INSPECT_SAMPLE // len(data.splits)):
                kinds[image_kind(tar.extractfile(member))] += 1
    return counts, [], dict(kinds.most_common())


def load_shards(cfg: Config) -> DataSplits:
    """The splits of a shard folder, as an index: keys, labels and shard files, no pixels.

    A brace pattern (``DEST/train-{000000..000009}.tar``) limits the training shards to those
    it names."""
    root = shard_root(cfg.data)
    index = read_json(root / INDEX)
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise DataError(f"{root / INDEX} is not an ftkit shard index (format {FORMAT} version {VERSION}); "
                        "write the shards with `ftkit data shards`")
    _refuse_unsupported(cfg, root)
    splits = {}
    for name, entry in index["splits"].items():
        shards = [(str(root / s["file"]), int(s["count"])) for s in entry["shards"]]
        missing = [f for f, _ in shards if not Path(f).is_file()]
        if missing:
            raise DataError(f"shard {missing[0]} listed in {root / INDEX} is missing; write the shards again")
        splits[name] = Split(list(entry["keys"]), np.asarray(entry["labels"], dtype=np.int64), shards=shards)
    if Path(cfg.data) != root:
        wanted = {str(root / Path(u).name) for u in wds.shardlists.expand_urls(str(cfg.data))}
        train = splits["train"]
        kept = [(f, c) for f, c in train.shards if f in wanted]
        if not kept:
            raise DataError(f"{cfg.data} names no training shard of {root}")
        # the positions of the kept shards' images; the others are left out of the index too
        starts = np.cumsum([0] + [c for _, c in train.shards])
        positions = [i for k, (f, c) in enumerate(train.shards) if f in wanted for i in range(starts[k], starts[k] + c)]
        splits["train"] = Split([train.keys[i] for i in positions], train.labels[positions], shards=kept)
    if "val" not in splits:
        raise DataError(f"{root} has no val split; write it again with a --val-split above 0")
    if cfg.splits:
        _check_listing(cfg.splits, splits)
    notes = [f"streamed from {len(sum((s.shards for s in splits.values()), []))} WebDataset shard(s) in {root}"]
    return DataSplits(list(index["classes"]), splits, "shards", notes=notes)


def _refuse_unsupported(cfg: Config, root: Path) -> None:
    """Options that need random access or were applied when the shards were written."""
    given = {
        "--shots": cfg.shots, "--folds": cfg.folds, "--group-by": cfg.group_by, "--label-from": cfg.label_from,
        "--classes": cfg.classes,
        "--drop-class": cfg.drop_classes, "--merge-class": cfg.merge_classes,
        "--faces": cfg.faces != "none", "--sampler balanced": cfg.sampler == "balanced",
        "--head logreg": cfg.head == "logreg",
    }
    used = [flag for flag, value in given.items() if value]
    if used:
        raise ConfigError(f"{', '.join(used)} cannot be used on the streamed shards in {root}: class selection, splits "
                          "and face crops are fixed when shards are written (give them to `ftkit data shards`), and "
                          "few-shot draws, folds, balanced sampling and logreg need random access (use the image folder)")


def _check_listing(listing: str, splits: dict[str, Split]) -> None:
    """A split.csv (``--splits``, or a resumed run's) must be exactly the shards' split."""
    items = read_split_listing(Path(listing))
    for name, split in splits.items():
        if [k for k, _ in items.get(name, [])] != split.keys:
            raise DataError(f"{listing} does not list the {name} split of these shards; the shards carry their own "
                            "split, so leave out --splits (a resumed run must use the shards it was trained on)")


class ShardStream(torch.utils.data.IterableDataset):
    """Streams one split's samples: this rank's share (position modulo the world size), each
    DataLoader worker its own shards; training shuffles shard order per epoch and samples in a
    bounded buffer. Yields (image, label), or (image, label, position) for evaluation."""

    def __init__(self, split: Split, transform, ctx: Context = SINGLE, seed: int = 0, train: bool = False):
        self.split, self.transform, self.ctx, self.seed, self.train = split, transform, ctx, seed, train
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        urls = [f for f, _ in self.split.shards]
        stream_seed = np.random.SeedSequence([self.seed, self.epoch, self.ctx.rank, worker]).generate_state(1)[0]
        if self.train:
            random.Random(self.seed + self.epoch).shuffle(urls)  # the same order on every rank and worker
            if hasattr(self.transform, "reseed"):
                self.transform.reseed(int(stream_seed))  # augmentations differ across ranks and workers
        stages = [wds.SimpleShardList(urls[worker::workers]), wds.tarfile_to_samples(), wds.select(self._ours)]
        if self.train:
            stages.append(wds.shuffle(SHUFFLE_BUFFER, initial=SHUFFLE_BUFFER // 2, rng=random.Random(int(stream_seed))))
        stages.append(wds.map(self._decode))
        return iter(wds.DataPipeline(*stages))

    def _ours(self, sample: dict) -> bool:
        return int(sample["idx.cls"]) % self.ctx.world == self.ctx.rank

    def _decode(self, sample: dict):
        ext = next(k for k in sample if not k.startswith("__") and k not in LABEL_FIELDS)
        try:
            image = read_image(io.BytesIO(sample[ext]))
        except DataError as exc:
            raise DataError(f"cannot decode sample {sample['__key__']} in {sample.get('__url__')}: {exc.__cause__}") from exc
        x, y = self.transform(image), int(sample["cls"])
        return (x, y) if self.train else (x, y, int(sample["idx.cls"]))


class StreamBatches:
    """Exactly ``steps`` batches of ``batch_size`` per epoch from a streamed split. Workers'
    batches (the last of each worker may be short) are joined again here, so every rank takes
    the same number of steps: ``steps`` = images // global batch, as the cached path's drop-last."""

    def __init__(self, loader: torch.utils.data.DataLoader, batch_size: int, steps: int):
        self.loader, self.batch_size, self.steps = loader, batch_size, steps

    def set_epoch(self, epoch: int) -> None:
        self.loader.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        xs, ys, held, done = [], [], 0, 0
        for x, y in self.loader:
            xs.append(x)
            ys.append(y)
            held += len(y)
            while held >= self.batch_size and done < self.steps:
                x_all, y_all = torch.cat(xs), torch.cat(ys)
                yield x_all[:self.batch_size], y_all[:self.batch_size]
                xs, ys, held, done = [x_all[self.batch_size:]], [y_all[self.batch_size:]], held - self.batch_size, done + 1
            if done == self.steps:
                return
        if done < self.steps:
            raise DataError(f"the shards gave {done} of {self.steps} batches: they hold fewer images than their "
                            f"index says; write them again with `ftkit data shards`")


def load(cfg: Config, console=None) -> DataSplits:
    """``cfg.data`` as splits: streamed from shards when it names a shard folder, else ``load_data``."""
    return load_shards(cfg) if shard_root(cfg.data) else load_data(cfg, console=console)


def stream_loaders(data: DataSplits, train_tf, eval_tf, cfg: Config, ctx: Context, workers: int, pin: bool):
    """The streamed counterparts of the cached loaders (see train.make_loaders)."""
    train = data.splits["train"]
    batch = cfg.batch_size
    if len(train) < batch:
        if ctx.world > 1:  # each process streams its own shards: one batch of all of them cannot be split evenly
            raise ConfigError(f"the training shards hold {len(train)} images, fewer than --batch-size {batch}: lower it "
                              f"to {len(train) // ctx.world * ctx.world} or less")
        batch = len(train)  # one batch of every image, as a folder of that size trains
    per_rank = batch // ctx.world
    stream = ShardStream(train, train_tf, ctx, cfg.seed, train=True)
    loader = torch.utils.data.DataLoader(stream, batch_size=per_rank, num_workers=workers, pin_memory=pin)
    train_loader = StreamBatches(loader, per_rank, len(train) // batch)
    eval_loaders = {
        name: torch.utils.data.DataLoader(ShardStream(split, eval_tf, ctx), batch_size=cfg.batch_size * 2,
                                          num_workers=min(workers, len(split.shards)), pin_memory=pin)
        for name, split in data.splits.items()
    }
    return train_loader, eval_loaders
