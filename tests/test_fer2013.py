import numpy as np
import pytest
import torch
from PIL import Image
from click.testing import CliRunner

from ftkit.cli import main
from ftkit.config import Config
from ftkit.data import DataError, ImageDataset, load_data
from ftkit.fer2013 import KAGGLE_LABELS, convert_csv, read_fer_csv
from ftkit.models import DataConfig
from ftkit.transforms import eval_transform
from conftest import SHARED_DATA


def _pixels(seed: int) -> str:
    return " ".join(str(v) for v in np.random.default_rng(seed).integers(0, 256, 48 * 48))


def _write_csv(path, rows):
    path.write_text("emotion,pixels,Usage\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows))
    return path


@pytest.fixture
def fer_csv(tmp_path):
    rows = []
    for label in range(7):
        for usage, n in (("Training", 4), ("PublicTest", 2), ("PrivateTest", 2)):
            rows += [(label, _pixels(100 * label + i + 10 * len(usage)), usage) for i in range(n)]
    return _write_csv(tmp_path / "fer.csv", rows)


def test_label_ids_and_usage_map_to_splits(fer_csv):
    items, images, skipped = read_fer_csv(fer_csv)
    assert KAGGLE_LABELS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert {k: len(v) for k, v in items.items()} == {"train": 28, "val": 14, "test": 14}
    assert not skipped
    # line 2 is the first data row: emotion 0, Training
    key, label = items["train"][0]
    assert key == "fer.csv:2" and label == "angry"
    first = np.fromstring(_pixels(10 * len("Training")), dtype=np.uint8, sep=" ").reshape(48, 48)
    assert images[key].shape == (48, 48, 3) and np.array_equal(images[key][:, :, 1], first)
    labels = {lab for _, lab in items["train"]}
    assert labels == set(KAGGLE_LABELS)


def test_malformed_rows_are_skipped_with_line_numbers(tmp_path):
    good = _pixels(0)
    path = _write_csv(tmp_path / "bad.csv", [
        (0, good, "Training"),
        (3, " ".join(["1"] * 100), "Training"),         # line 3: wrong count
        (3, good.replace("1", "x", 1), "Training"),      # line 4: non-numeric
        (9, good, "Training"),                           # line 5: unknown label
        (2, good, "Validation"),                         # line 6: unknown usage
        (1, good, "PublicTest"),
    ])
    with pytest.warns(UserWarning, match="skipped 4 malformed row"):
        items, _, skipped = read_fer_csv(path)
    reasons = dict(skipped)
    assert "expected 2304 pixel values, got 100" in reasons["bad.csv:3"]
    assert "non-numeric" in reasons["bad.csv:4"]
    assert "unknown label '9'" in reasons["bad.csv:5"]
    assert "unknown Usage 'Validation'" in reasons["bad.csv:6"]
    assert len(items["train"]) == 1 and len(items["val"]) == 1
    with pytest.raises(DataError, match="line 3: expected 2304 pixel values"):
        read_fer_csv(path, strict=True)
    r = CliRunner().invoke(main, ["data", "inspect", str(path)])  # the rows named once, by line
    assert r.exit_code == 0 and r.output.count("bad.csv") == 2 and "line 6: unknown Usage 'Validation'" in r.output, r.output


def test_wrong_header_is_refused(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("label,image\n1,2\n")
    with pytest.raises(DataError, match="no emotion or pixels column; expected the Kaggle header"):
        read_fer_csv(path)
    path.write_text("emotion\tpixels\tUsage\n")
    with pytest.raises(DataError, match="tab-separated: save it with commas"):
        read_fer_csv(path)


def test_columns_are_found_by_name_through_a_bom_and_crlf(fer_csv, tmp_path):
    """Kaggle's icml_face_data.csv orders its columns emotion, Usage, pixels (with spaces); a file
    saved by Excel starts with a byte-order mark and ends its lines with CRLF."""
    import csv

    rows = list(csv.reader(fer_csv.open()))[1:]
    moved = tmp_path / "icml_face_data.csv"
    moved.write_text("\ufeffemotion, Usage, pixels\r\n" + "".join(f"{e}, {u}, {p}\r\n" for e, p, u in rows), encoding="utf-8")
    items, images, skipped = read_fer_csv(moved)
    expected, expected_images, _ = read_fer_csv(fer_csv)
    assert not skipped and {k: len(v) for k, v in items.items()} == {"train": 28, "val": 14, "test": 14}
    assert [c for _, c in items["train"]] == [c for _, c in expected["train"]]
    first, again = items["val"][0][0], expected["val"][0][0]
    assert np.array_equal(images[first], expected_images[again])


def test_a_csv_without_usage_is_one_pool_split_like_a_flat_folder(fer_csv, tmp_path):
    """Kaggle's train.csv has emotion,pixels only: val and test are carved out of it."""
    import csv

    rows = list(csv.reader(fer_csv.open()))[1:]
    bare = tmp_path / "train.csv"
    bare.write_text("emotion,pixels\n" + "".join(f"{e},{p}\n" for e, p, _ in rows))
    items, _, _ = read_fer_csv(bare)
    assert list(items) == ["all"] and len(items["all"]) == len(rows)
    data = load_data(Config(data=str(bare), val_split=0.25, test_split=0.25))
    assert set(data.splits) == {"train", "val", "test"} and sum(map(len, data.splits.values())) == len(rows)
    counts = convert_csv(bare, tmp_path / "folders")
    assert counts == {"all": {c: 8 for c in KAGGLE_LABELS}}
    assert len(list((tmp_path / "folders" / "happy").glob("row_*.png"))) == 8
    (tmp_path / "short.csv").write_text("emotion,pixels,Usage\n3," + rows[0][1] + "\n")
    with pytest.warns(UserWarning, match="line 2: expected 3 fields"), pytest.raises(DataError, match="no usable Training rows"):
        read_fer_csv(tmp_path / "short.csv")


def test_csv_and_converted_folders_give_identical_tensors(fer_csv, tmp_path):
    counts = convert_csv(fer_csv, tmp_path / "folders")
    assert counts["train"]["happy"] == 4 and counts["test"]["sad"] == 2
    from_csv = load_data(Config(data=str(fer_csv)))
    from_dir = load_data(Config(data=str(tmp_path / "folders")))
    assert from_csv.classes == from_dir.classes
    tf = eval_transform(DataConfig(48, 3, True, [0.5] * 3, [0.5] * 3, "bilinear"))
    for split in ("train", "val", "test"):
        a = ImageDataset(from_csv.splits[split], tf)
        b = ImageDataset(from_dir.splits[split], tf)
        # the folder form is ordered by class then name; match rows through the line number
        by_line = {k.rsplit(":", 1)[1]: i for i, k in enumerate(from_csv.splits[split].keys)}
        for j, key in enumerate(from_dir.splits[split].keys):
            i = by_line[key.rsplit("_", 1)[1].removesuffix(".png")]
            xa, ya = a[i]
            xb, yb = b[j]
            assert ya == yb and torch.equal(xa, xb)


def test_csv_class_drop_and_merge(fer_csv):
    data = load_data(Config(data=str(fer_csv), drop_classes=["disgust"]))
    assert "disgust" not in data.classes and len(data.classes) == 6
    merged = load_data(Config(data=str(fer_csv), merge_classes={"disgust": "angry"}))
    assert merged.summary()["train"]["angry"] == 8 and "disgust" not in merged.classes


def test_a_csv_run_that_dropped_a_class_repeats_from_its_split_listing(fer_csv, tmp_path):
    """--splits RUN/split.csv --drop-class disgust failed: the listing names no disgust row."""
    from ftkit.data import write_split_listing

    data = load_data(Config(data=str(fer_csv), drop_classes=["disgust"]))
    write_split_listing(data, tmp_path / "split.csv")
    again = load_data(Config(data=str(fer_csv), drop_classes=["disgust"], splits=str(tmp_path / "split.csv")))
    assert again.classes == data.classes
    assert {n: s.keys for n, s in again.splits.items()} == {n: s.keys for n, s in data.splits.items()}


def test_scoring_a_csv_runs_own_rows_says_so_and_another_csv_of_that_name_is_other_images(fer_csv, tmp_path):
    """A CSV's images are keyed by file name and line: the run's own CSV (or a copy of it) has
    the rows it trained on; another fer.csv with other rows does not."""
    import json
    import shutil

    from conftest import tiny_config
    from ftkit.predict import evaluate_run
    from ftkit.train import finetune

    run = finetune(tiny_config(fer_csv, tmp_path / "out", epochs=1)).run_dir

    def note(data):
        folder, _ = evaluate_run(run, data=str(data), split="train")
        return json.loads((folder / "run.json").read_text())["eval_note"]

    assert note(fer_csv) == f"of the 28 images scored, {run} had 28 in its training split (the same files, or pixel copies of them)"
    (tmp_path / "copy").mkdir()
    assert note(shutil.copy(fer_csv, tmp_path / "copy" / "fer.csv")) is not None  # the same bytes
    (tmp_path / "other").mkdir()
    rows = [(label, _pixels(1000 + 10 * label + i), "Training") for label in range(7) for i in range(4)]
    assert note(_write_csv(tmp_path / "other" / "fer.csv", rows)) is None


def test_data_inspect_and_convert_cli(fer_csv, tmp_path, monkeypatch):
    r = CliRunner().invoke(main, ["data", "inspect", str(fer_csv)])
    assert r.exit_code == 0
    assert "train" in r.output and "28" in r.output
    assert "image sizes and modes (L: gray): 48x48 L 56" in r.output
    r = CliRunner().invoke(main, ["data", "convert", str(fer_csv), str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "out" / "train" / "happy" / "wide.png")
    r = CliRunner().invoke(main, ["data", "inspect", str(tmp_path / "out")])  # PNG files: their headers
    assert "image sizes and modes (L: gray): 48x48 L 56, 40x30 RGB 1" in " ".join(r.output.split())
    monkeypatch.setattr("ftkit.data.INSPECT_SAMPLE", 10)  # a big folder: the headers of an even sample
    r = CliRunner().invoke(main, ["data", "inspect", str(tmp_path / "out")])
    assert "(a sample of 10 of the 57 images)" in " ".join(r.output.split())
    assert len(list((tmp_path / "out" / "val" / "neutral").glob("PublicTest_*.png"))) == 2
    again = CliRunner().invoke(main, ["data", "convert", str(fer_csv), str(tmp_path / "out")])
    assert again.exit_code == 1 and "already holds files" in again.output


@pytest.mark.skipif(not (SHARED_DATA / "fer2013" / "fer2013-sample.csv").is_file(), reason="../shared/data absent")
def test_shared_kaggle_sample_loads():
    items, images, skipped = read_fer_csv(SHARED_DATA / "fer2013" / "fer2013-sample.csv")
    assert not skipped
    assert {k: len(v) for k, v in items.items()} == {"train": 350, "val": 350}
    from collections import Counter

    assert set(Counter(c for _, c in items["train"]).values()) == {50}
