"""Pixel-identical images: `data inspect --duplicates`, its two CSV files, and the note a run
makes when its val or test images are copies of training images."""

import csv
import json
import shutil

import numpy as np
from click.testing import CliRunner
from PIL import Image

from ftkit.cli import main
from ftkit.duplicates import Copy, Duplicates, fingerprint, pixel_digest
from conftest import TINY, write_split_folder


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def text(result) -> str:
    """The output with rich's table borders and runs of spaces reduced to single spaces."""
    return " ".join(result.output.replace("│", " ").split())


def rows(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def with_copies(root):
    """A split folder with two groups of copies: a training image re-saved as BMP in val/ (same
    class), and one saved again under another class in train/ (label noise)."""
    write_split_folder(root)
    Image.open(root / "train/alpha/img_000.png").save(root / "val/alpha/copy.bmp")
    shutil.copy(root / "train/beta/img_001.png", root / "train/gamma/also_beta.png")
    Image.new("RGB", (24, 24), (200, 0, 0)).save(root / "train/alpha/blank.png")  # one colour: blank, but no copy
    return root


def test_pixel_digest_is_the_pixels_and_shape_not_the_file(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (4, 4, 3), dtype=np.uint8)
    assert pixel_digest(image) == pixel_digest(image.copy())
    changed = image.copy()
    changed[3, 3, 2] ^= 1
    assert pixel_digest(changed) != pixel_digest(image)
    assert pixel_digest(image.reshape(2, 8, 3)) != pixel_digest(image)  # same bytes, another picture
    assert pixel_digest(image[:, ::-1]) == pixel_digest(np.ascontiguousarray(image[:, ::-1]))  # a view is read as laid out
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    assert fingerprint(red)[1] and fingerprint(np.zeros((4, 4, 3), np.uint8))[1]  # one colour, any colour
    red[3, 3, 1] = 1
    assert not fingerprint(red)[1] and not fingerprint(image)[1]


def test_digests_are_read_back_as_written_trailing_zero_bytes_too(tmp_path):
    """numpy's bytes dtype (S16) drops trailing zero bytes: 125 of FER2013's 28,709 Training digests
    came back one byte short and matched nothing."""
    from ftkit.duplicates import read_digests, write_digests

    digests = [bytes(range(1, 16)) + b"\0", b"\0" * 16, bytes(range(16))]
    write_digests(tmp_path / "d.npz", {"train": digests, "val": []})
    assert read_digests(tmp_path / "d.npz") == {"train": set(digests), "val": set()}


def test_counts_of_copies_across_splits_and_classes():
    groups = [[Copy("train", "a", "t1"), Copy("val", "a", "v1"), Copy("test", "b", "s1")],
              [Copy("train", "a", "t2"), Copy("train", "b", "t3")],
              [Copy("val", "a", "v2"), Copy("test", "a", "s2")]]
    items = {"train": [("t1", "a"), ("t2", "a"), ("t3", "b")], "val": [("v1", "a"), ("v2", "a"), ("v3", "a")],
             "test": [("s1", "b"), ("s2", "a")]}
    found = Duplicates(groups, items)
    assert found.extra == 4 and found.images == {"train": 3, "val": 3, "test": 2}
    assert found.copies_of_training() == {"val": 1, "test": 1}  # v2 = s2 is no copy of a training image
    assert found.across_splits() == [groups[0], groups[2]] and found.conflicting() == [groups[0], groups[1]]
    assert found.ordered() == [groups[0], groups[1], groups[2]]
    assert found.held_out_items() == {"train": items["train"], "val": [("v2", "a"), ("v3", "a")], "test": [("s2", "a")]}


def test_data_inspect_lists_copies_and_writes_a_held_out_listing(tmp_path):
    root = with_copies(tmp_path / "faces")
    copies, held = tmp_path / "copies.csv", tmp_path / "held.csv"
    r = invoke("data", "inspect", root, "--duplicates-csv", copies, "--held-out-csv", held)
    assert r.exit_code == 0, r.output
    out = text(r)
    assert "images compared 63" in out and "groups of pixel-identical images 2 (4 images)" in out
    assert "groups with different classes 1" in out and "groups across splits 1" in out
    assert "val images with a copy in train 1 of 13" in out and "test images with a copy in train 0 of 12" in out
    assert "blank images (one colour all over) 1 (e.g. train/alpha/blank.png)" in out
    assert "train/beta/img_001.png = train/gamma/also_beta.png train/alpha/img_000.png = val/alpha/copy.bmp" in out  # label noise first
    assert rows(copies) == [["group", "split", "class", "path"],
                            ["1", "train", "beta", "train/beta/img_001.png"], ["1", "train", "gamma", "train/gamma/also_beta.png"],
                            ["2", "train", "alpha", "train/alpha/img_000.png"], ["2", "val", "alpha", "val/alpha/copy.bmp"]]
    listed = rows(held)
    assert listed[0] == ["path", "class", "split"] and len(listed) == 1 + 63 - 1
    assert ["val/alpha/copy.bmp", "alpha", "val"] not in listed and ["train/alpha/img_000.png", "alpha", "train"] in listed

    # the listing scores val without the copy
    r = invoke("finetune", "--data", root, "--backbone", TINY, "--no-pretrained", "--img-size", 32, "--epochs", 1,
               "--batch-size", 8, "--workers", 0, "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    note = "1 of the 13 val images is a pixel copy of a training image"
    assert note in " ".join(r.output.split())  # the run says so, and records it
    assert any(n.startswith(note) for n in json.loads((tmp_path / "run" / "run.json").read_text())["data"]["notes"])
    assert f"- note: {note}" in (tmp_path / "run" / "report.md").read_text()  # and its report
    assert f"note: {note}" in " ".join(invoke("report", tmp_path / "run").output.split())
    r = invoke("evaluate", tmp_path / "run", "--data", root, "--splits", held, "--split", "val", "--name", "held")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "run" / "eval" / "held" / "report.json").read_text())
    assert report["n"] == 12


def test_a_listing_of_scored_images_alone_is_for_evaluate_not_for_training(tmp_path):
    """A listing with only a test split used to be refused by evaluate too ("lists no train split")."""
    root = write_split_folder(tmp_path / "faces")
    listing = tmp_path / "test-only.csv"
    listing.write_text("path,class,split\ntest/alpha/img_000.png,alpha,test\ntest/beta/img_001.png,beta,test\n")
    r = invoke("finetune", "--data", root, "--splits", listing, "--backbone", TINY, "--no-pretrained", "--img-size", 32,
               "--epochs", 1, "--out", tmp_path / "run")
    assert r.exit_code == 1 and f"{listing} lists no train split (test only)" in " ".join(r.output.split())
    r = invoke("finetune", "--data", root, "--backbone", TINY, "--no-pretrained", "--img-size", 32, "--epochs", 1,
               "--batch-size", 8, "--workers", 0, "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    r = invoke("evaluate", tmp_path / "run", "--data", root, "--splits", listing, "--name", "two")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "eval" / "two" / "report.json").read_text())["n"] == 2


def test_files_of_the_users_are_not_overwritten_and_shards_are_refused(tmp_path):
    root = with_copies(tmp_path / "faces")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,class\na.png,alpha\n")
    for option, path, said in (("--duplicates-csv", labels, "is not an earlier list of copies"),
                               ("--duplicates-csv", tmp_path / "copies.txt", "give a path ending in .csv"),
                               ("--held-out-csv", labels, "exists: nothing was written")):
        r = invoke("data", "inspect", root, option, path)
        assert r.exit_code != 0 and said in " ".join(r.output.split()), r.output
        assert "comparing pixels" not in r.output  # refused before any work
    assert labels.read_text() == "path,class\na.png,alpha\n" and not (tmp_path / "copies.txt").exists()

    copies = tmp_path / "copies.csv"
    for _ in range(2):  # an earlier list is replaced
        assert invoke("data", "inspect", root, "--duplicates-csv", copies).exit_code == 0
    assert len(rows(copies)) == 5

    r = invoke("data", "inspect", root / "train" / "alpha" / "img_000.png")
    assert r.exit_code != 0 and "(one image: `ftkit predict MODEL FILE` classifies it)" in text(r)
    flat = tmp_path / "flat"
    shutil.copytree(root / "train", flat)
    r = invoke("data", "inspect", flat, "--held-out-csv", tmp_path / "held.csv")
    assert r.exit_code != 0 and "has no train split and val or test split to hold apart (it has all)" in text(r)
    assert invoke("data", "shards", root, tmp_path / "shards").exit_code == 0
    r = invoke("data", "inspect", tmp_path / "shards", "--duplicates")
    assert r.exit_code != 0 and "is a shard folder: give the data its shards were written from" in text(r)


def test_a_fold_notes_test_images_that_are_copies_of_its_training_images():
    """Cross-validation splits one pool, so a copy can land in a fold's test and in its train."""
    import pytest

    from ftkit.config import Config
    from ftkit.crossval import fold_data
    from ftkit.data import DataSplits, Split

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(12)]
    images[11] = images[0].copy()  # image 11 is image 0 again
    pool = Split([f"img{i}.png" for i in range(12)], np.array([0, 1] * 6), images)
    data = DataSplits(["a", "b"], {"all": pool}, "flat")
    with pytest.warns(UserWarning, match="1 of the 2 test images is a pixel copy of a training image"):
        fold = fold_data(data, pool, np.array([10, 11]), Config(val_split=0.2), None)
    assert fold.notes[-1].startswith("1 of the 2 test images is a pixel copy")
    clean = fold_data(data, pool, np.array([0, 11]), Config(val_split=0.2), None)  # both copies tested, none trained on
    assert not any("pixel cop" in n for n in clean.notes) and data.notes == []


def test_evaluate_counts_pixel_copies_of_the_runs_training_images_under_other_names(tmp_path):
    """A 'new' folder holding re-saved training images used to be scored as held out: only the
    same files, by the run's split.csv, were counted."""
    root = write_split_folder(tmp_path / "faces")
    flags = ["--backbone", TINY, "--no-pretrained", "--img-size", 32, "--epochs", 1, "--batch-size", 8, "--workers", 0]
    assert invoke("finetune", "--data", root, *flags, "--out", tmp_path / "run").exit_code == 0
    assert (tmp_path / "run" / "digests.npz").is_file()
    other = tmp_path / "other"
    for cls in ("alpha", "beta", "gamma"):
        (other / cls).mkdir(parents=True)
        Image.open(root / "train" / cls / "img_000.png").save(other / cls / "renamed.bmp")  # seen, as a copy
        Image.open(root / "val" / cls / "img_001.png").save(other / cls / "also.png")  # chose the epoch
        shutil.copy(root / "test" / cls / "img_002.png", other / cls / "fresh.png")  # held out
    r = invoke("evaluate", tmp_path / "run", "--data", other, "--name", "other")
    assert r.exit_code == 0, r.output
    note = json.loads((tmp_path / "run" / "eval" / "other" / "run.json").read_text())["eval_note"]
    assert note == (f"of the 9 images scored, {tmp_path / 'run'} had 3 in its training split and 3 in its validation split, "
                    "which chose its best epoch (the same files, or pixel copies of them)")

    # a streamed run decodes nothing up front: no digests, and its evaluations count files only
    r = invoke("finetune", "--data", root, *flags, "--cache", "stream", "--out", tmp_path / "streamed")
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "streamed" / "digests.npz").exists()
    r = invoke("evaluate", tmp_path / "streamed", "--data", other, "--name", "other")
    assert r.exit_code == 0 and json.loads((tmp_path / "streamed" / "eval" / "other" / "run.json").read_text())["eval_note"] is None
