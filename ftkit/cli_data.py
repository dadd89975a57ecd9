"""ftkit data: make, crop, convert, shard and inspect data sets."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from .cli_options import config_options, flag_overrides, friendly
from .config import CHOICES, MIN_FACE_MARGIN
from .progress import console, progress_bar


@click.group()
def data():
    """Data utilities: synthetic faces, FER2013 CSV conversion, WebDataset shards, inspection."""


@data.command("synth")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--train", type=click.IntRange(min=1), default=80, show_default=True, help="Training images per class.")
@click.option("--val", type=click.IntRange(min=0), default=30, show_default=True, help="Validation images per class (0: none).")
@click.option("--test", type=click.IntRange(min=0), default=30, show_default=True, help="Test images per class (0: none).")
@click.option("--size", type=click.IntRange(min=8), default=64, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@friendly
def data_synth(dest, train, val, test, size, seed):
    """Write the synthetic expression data set (DEST/{train,val,test}/<class>/*.png).

    Example:

    \b
        ftkit data synth synthetic_faces/ --train 100
    """
    from .synth import write_synthetic

    write_synthetic(dest, {"train": train, "val": val, "test": test}, size=size, seed=seed)
    click.echo(dest)


@data.command("faces")
@click.argument("src", type=click.Path(file_okay=False))
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--margin", default=0.25, show_default=True,
              help=f"Margin around the face, as a fraction of its side (negative, above {MIN_FACE_MARGIN:g}: inside the detector's box).")
@click.option("--require", is_flag=True, help="Leave out images without a face (default: centre crop).")
@click.option("--size", default=0, show_default=True, help="Resize crops to SIZE x SIZE (0: keep).")
@click.option("--align", is_flag=True, help="Turn each face so its eyes are level, and place the crop by them.")
@click.option("--detector", type=click.Choice(CHOICES["face_detector"]), default="auto", show_default=True,
              help="auto (RetinaFace, or OpenCV's Haar cascades without onnxruntime), retinaface or haar.")
@friendly
def data_faces(src, dst, margin, require, size, align, detector):
    """Crop the largest face of every image once, keeping the folder structure.

    Example:

    \b
        ftkit data faces film_frames/ film_faces/ --margin 0.2 --size 96 --align
    """
    from .faces import crop_folder

    with progress_bar(console) as bar:
        task = bar.add_task("faces", total=None)
        result = crop_folder(src, dst, margin=margin, require=require, size=size, align=align, detector_name=detector,
                             progress=lambda n: bar.advance(task, n), on_total=lambda n: bar.update(task, total=n))
    stats = result.stats
    console.print(f"{result.written} crop(s) written ({result.detector['name']} detector): faces found in {stats.found} "
                  f"image(s), {stats.several} of them with more than one face (the largest taken), {stats.whole} already face "
                  f"crops (copied whole); centre-cropped "
                  f"{len(stats.fallback)}; no face, left out {len(stats.skipped)}; unreadable, left out {len(result.unreadable)}")
    lines = ([f"  no face, centre-cropped: {p}" for p in stats.fallback] + [f"  no face, left out: {p}" for p in stats.skipped]
             + [f"  unreadable, left out: {why}" for why in result.unreadable.values()])
    for line in lines[:10]:
        console.print(line)
    if len(lines) > 10:
        console.print(f"  ... and {len(lines) - 10} more")
    click.echo(dst)


@data.command("convert")
@click.argument("csv_path", type=click.Path(dir_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--strict", is_flag=True, help="Fail on the first malformed row.")
@friendly
def data_convert(csv_path, dest, strict):
    """Write a FER2013 Kaggle CSV as image folders (lossless PNG).

    Example:

    \b
        ftkit data convert fer2013.csv fer2013_folders/
    """
    from .fer2013 import convert_csv

    counts = convert_csv(csv_path, dest, strict=strict, console=console)
    console.print(_counts_table(counts, f"{dest}"))


@data.command("shards")
@click.argument("src", type=click.Path())
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--shard-size", default=10_000, show_default=True, type=click.IntRange(min=1), help="Images per tar shard.")
@config_options(only=("val_split", "test_split", "splits", "label_from", "classes", "drop_classes", "merge_classes", "strict",
                      "faces", "face_margin", "face_align", "face_detector", "group_by", "seed"))
@friendly
def data_shards(src, dest, shard_size, **kwargs):
    """Write any data source as WebDataset tar shards, streamed by `finetune --data DEST`.

    The split (carved as finetune would, or given with --splits), the class list and the labels
    ride along in DEST/dataset.json; images stay encoded (files as they are, CSV rows and face
    crops as PNG).

    Example:

    \b
        ftkit data shards fer2013.csv fer2013-shards/ --shard-size 5000
        ftkit data shards film_frames/ frames-shards/ --faces crop --val-split 0.1
        ftkit finetune --data fer2013-shards/ --recipe recipes/fer2013-fast.yaml
    """
    from .config import resolve
    from .shards import write_shards

    cfg = resolve(None, data=src, **flag_overrides(kwargs))
    index = write_shards(cfg, dest, shard_size=shard_size, console=console)
    table = Table(title=f"{dest}: {len(index['classes'])} classes")
    for column in ("split", "images", "shards"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, entry in index["splits"].items():
        table.add_row(name, f"{entry['count']:,}", str(len(entry["shards"])))
    console.print(table)
    click.echo(dest)


@data.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--label-from", help="Regex over each image's path whose first group is its class (instead of class folders).")
@click.option("--duplicates", is_flag=True, help="Decode every image and report the pixel-identical ones: copies across "
              "splits (scores not held out) and copies filed under different classes.")
@click.option("--duplicates-csv", type=click.Path(dir_okay=False), help="Write every group of copies to this CSV "
              "(group, split, class, path); implies --duplicates.")
@click.option("--held-out-csv", type=click.Path(dir_okay=False), help="Write a split listing (path, class, split) of the "
              "source less the val and test images that have a copy in train, for --splits of finetune or evaluate: "
              "scores held out from those copies. Implies --duplicates.")
@friendly
def data_inspect(path, label_from, duplicates, duplicates_csv, held_out_csv):
    """Per-split, per-class image counts of any supported data source, and its image sizes and modes;
    with --duplicates, its pixel-identical and blank images.

    Example:

    \b
        ftkit data inspect ../shared/data/fer2013/fer2013-sample.csv
        ftkit data inspect jaffe/ --label-from '[.]([A-Z]{2})[0-9]'
        ftkit data inspect shards/
        ftkit data inspect fer2013/ --duplicates-csv fer2013-copies.csv
        ftkit data inspect fer2013/ --held-out-csv fer2013-held-out.csv
        ftkit evaluate fer2013-fast --data fer2013/ --splits fer2013-held-out.csv --split val
    """
    from .data import skipped_text
    from .duplicates import check_duplicates_csv
    from .shards import inspect_data, shard_root

    duplicates = duplicates or bool(duplicates_csv or held_out_csv)
    if duplicates_csv:
        check_duplicates_csv(duplicates_csv)
    if held_out_csv and Path(held_out_csv).exists():
        raise click.UsageError(f"--held-out-csv {held_out_csv} exists: nothing was written; give another name, or delete it first")
    if duplicates and shard_root(path):
        raise click.UsageError(f"--duplicates reads image files or a CSV; {path} is a shard folder: give the data "
                               "its shards were written from")
    counts, skipped, kinds = inspect_data(path, console=console, label_from=label_from)
    console.print(_counts_table(counts, path))
    shown = ", ".join(f"{kind} {n}" for kind, n in list(kinds.items())[:6])
    more = f" and {len(kinds) - 6} more kinds" if len(kinds) > 6 else ""
    total, sampled = sum(n for per in counts.values() for n in per.values()), sum(kinds.values())
    sample = f" (a sample of {sampled} of the {total} images)" if sampled < total else ""
    console.print(f"image sizes and modes (L: gray){sample}: {shown}{more}")
    if skipped and Path(path).suffix.lower() != ".csv":  # a CSV's malformed rows: its reader has named them
        console.print(skipped_text(skipped), style="yellow")
    if held_out_csv and not ("train" in counts and {"val", "test"} & set(counts)):
        raise click.UsageError(f"--held-out-csv: {path} has no train split and val or test split to hold apart (it has "
                               f"{', '.join(counts)}); a held-out listing needs train/ beside val/ or test/")
    if duplicates:
        _show_duplicates(path, label_from, duplicates_csv, held_out_csv)


def _show_duplicates(path, label_from, csv_path, held_out_path) -> None:
    from .data import inspect_duplicates, write_listing
    from .duplicates import write_duplicates_csv

    found = inspect_duplicates(path, console=console, label_from=label_from)
    table = Table(title=f"{path}: pixel-identical images", show_header=False)
    table.add_column("what")
    table.add_column("how many", justify="right")
    for row in found.summary_rows(path):
        table.add_row(*row)
    console.print(table)
    for line in found.example_lines(path):
        console.print(f"  {line}")
    copies = sum(found.copies_of_training().values())
    if copies:
        console.print("a val or test image with a copy in train is not held out: delete one of the copies, or move "
                      "them to one split", style="yellow")
    if csv_path:
        write_duplicates_csv(found, csv_path, path)
        console.print(f"every group: {csv_path}")
    if held_out_path:
        write_listing(found.held_out_items(), held_out_path, path)
        console.print(f"the split listing without the {copies} val and test images that have a copy in train: {held_out_path}")


def _counts_table(counts: dict[str, dict[str, int]], title: str) -> Table:
    classes = sorted({c for split in counts.values() for c in split})
    table = Table(title=str(title))
    table.add_column("split")
    for c in classes:
        table.add_column(c, justify="right")
    table.add_column("total", justify="right")
    for split, per in counts.items():
        table.add_row(split, *[str(per.get(c, 0)) for c in classes], str(sum(per.values())))
    return table
