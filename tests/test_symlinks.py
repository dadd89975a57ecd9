"""Data folders laid out with symbolic links (class folders picked by `ln -s`, linked files) are
read like copied folders; loops end with a warning and dangling links are named."""

import csv
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from ftkit.cli import main
from ftkit.images import image_files, walk_files
from conftest import TINY, write_split_folder


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def flags(tmp_path):
    return ["--backbone", TINY, "--no-pretrained", "--img-size", 32, "--epochs", 1, "--batch-size", 8,
            "--workers", 0, "--project", tmp_path / "runs"]


def linked_copy(real, linked):
    """``linked/<split>/<class>`` as links to ``real``'s class folders, one image linked file by file."""
    for split in sorted(p for p in real.iterdir()):
        for cls in sorted(split.iterdir()):
            (linked / split.name).mkdir(parents=True, exist_ok=True)
            if cls.name == "alpha" and split.name == "train":  # a real folder of linked files
                (linked / split.name / cls.name).mkdir()
                for image in sorted(cls.iterdir()):
                    (linked / split.name / cls.name / image.name).symlink_to(image)
            else:
                (linked / split.name / cls.name).symlink_to(cls, target_is_directory=True)
    return linked


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("links")
    real = write_split_folder(tmp / "real")
    copied = shutil.copytree(real, tmp / "copied")
    return tmp, linked_copy(real, tmp / "ck"), copied


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_linked_folders_train_evaluate_and_predict_like_a_copy(folders):
    tmp, linked, copied = folders
    for data, name in ((linked, "linked"), (copied, "copied")):
        result = invoke("finetune", "--data", data, *flags(tmp), "--name", name)
        assert result.exit_code == 0, result.output
    runs = tmp / "runs"
    # the listing keeps the paths as the user gave them (the links), relative to the data folder
    assert _rows(runs / "linked" / "split.csv") == _rows(runs / "copied" / "split.csv")
    assert len(_rows(runs / "linked" / "split.csv")) == 3 * (12 + 4 + 4)
    for name in ("metrics.csv",):
        assert (runs / "linked" / name).read_text().count("\n") == (runs / "copied" / name).read_text().count("\n")
    linked_report = json.loads((runs / "linked" / "report.json").read_text())
    copied_report = json.loads((runs / "copied" / "report.json").read_text())
    assert linked_report["per_class"] == copied_report["per_class"] and linked_report["n"] == 12
    assert [r["predicted"] for r in _rows(runs / "linked" / "predictions.csv")] == \
        [r["predicted"] for r in _rows(runs / "copied" / "predictions.csv")]

    # one model scores the linked folder and the copy alike
    for data, name in ((linked, "on-linked"), (copied, "on-copied")):
        result = invoke("evaluate", runs / "copied", "--data", data, "--split", "test", "--name", name)
        assert result.exit_code == 0, result.output
    scored = [json.loads((runs / "copied" / "eval" / n / "report.json").read_text()) for n in ("on-linked", "on-copied")]
    assert scored[0]["n"] == scored[1]["n"] == 12 and scored[0]["per_class"] == scored[1]["per_class"]

    # predict reads through the links (it answered "no image files found" before) and writes the link paths
    for data, name in ((linked, "linked.csv"), (copied, "copied.csv")):
        result = invoke("predict", runs / "copied", data, "--output", tmp / name)
        assert result.exit_code == 0, result.output
    via_links, via_copy = _rows(tmp / "linked.csv"), _rows(tmp / "copied.csv")
    assert len(via_links) == len(via_copy) == 60
    assert [os.path.relpath(r["path"], linked) for r in via_links] == [os.path.relpath(r["path"], copied) for r in via_copy]
    assert all(r["path"].startswith(str(linked)) for r in via_links)
    assert [r["predicted"] for r in via_links] == [r["predicted"] for r in via_copy]


def test_a_link_loop_ends_with_a_warning_not_a_hang(tmp_path):
    write_split_folder(tmp_path / "data")
    (tmp_path / "data" / "train" / "alpha" / "up").symlink_to(tmp_path / "data", target_is_directory=True)
    (tmp_path / "data" / "train" / "beta" / "twin").symlink_to(tmp_path / "data" / "val" / "beta", target_is_directory=True)
    with pytest.warns(UserWarning) as caught:
        found = list(walk_files(tmp_path / "data"))
    said = " ".join(str(w.message) for w in caught)
    assert f"{tmp_path / 'data' / 'train' / 'alpha' / 'up'} is a symbolic link to a folder that holds it (a loop)" in said
    assert "is the same folder as" in said and "counted once" in said
    assert len(found) == 3 * (12 + 4 + 4)  # each real file once

    result = invoke("data", "inspect", tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert "(a loop)" in " ".join(result.output.split())


def test_a_dangling_link_is_named_like_a_corrupt_file(tmp_path):
    write_split_folder(tmp_path / "data")
    gone = tmp_path / "data" / "train" / "gamma" / "gone.png"
    gone.symlink_to(tmp_path / "elsewhere" / "gone.png")
    (tmp_path / "data" / "train" / "delta").symlink_to(tmp_path / "moved", target_is_directory=True)  # a class folder
    assert gone in image_files(tmp_path / "data")

    result = invoke("data", "inspect", tmp_path / "data")
    out = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "gone.png" in out and "which does not exist: mend or remove the link" in out
    assert "delta" in out

    trained = invoke("finetune", "--data", tmp_path / "data", *flags(tmp_path), "--name", "run")
    out = " ".join(trained.output.split())
    assert trained.exit_code == 0, trained.output
    assert "gone.png" in out and "which does not exist" in out
    assert "gone.png" not in (tmp_path / "runs" / "run" / "split.csv").read_text()

    predicted = invoke("predict", tmp_path / "runs" / "run", tmp_path / "data" / "train" / "gamma", "--output", tmp_path / "p.csv")
    assert predicted.exit_code == 0, predicted.output
    rows = {os.path.basename(r["path"]): r for r in _rows(tmp_path / "p.csv")}
    assert len(rows) == 13 and "which does not exist" in rows["gone.png"]["error"]


def test_face_crops_and_shards_read_through_links(folders):
    tmp, linked, copied = folders
    for data, name in ((linked, "linked"), (copied, "copied")):
        result = invoke("data", "faces", data, tmp / f"faces-{name}", "--size", 24)
        assert result.exit_code == 0, result.output
        result = invoke("data", "shards", data, tmp / f"shards-{name}")
        assert result.exit_code == 0, result.output
    crops = [sorted(p.relative_to(tmp / f"faces-{n}").as_posix() for p in (tmp / f"faces-{n}").rglob("*.png"))
             for n in ("linked", "copied")]
    assert crops[0] == crops[1] and len(crops[0]) == 60
    listed = [json.loads((tmp / f"shards-{n}" / "dataset.json").read_text()) for n in ("linked", "copied")]
    assert listed[0]["classes"] == listed[1]["classes"]
    sizes = [sum(p.stat().st_size for p in (tmp / f"shards-{n}").glob("*.tar")) for n in ("linked", "copied")]
    assert sizes[0] == sizes[1] > 0
