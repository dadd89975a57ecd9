"""`ftkit ensemble`: averaged probabilities of several runs, checked against their own files."""

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import tiny_config, write_split_folder
from ftkit.cli import main
import ftkit.scoring
from ftkit.ensemble import in_class_order, score_members
from ftkit.evaluation import read_predictions
from ftkit.predict import Scored, data_key, load_run, score_run
from ftkit.train import finetune


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs on the same data at different input sizes, and one that knows only two classes."""
    tmp = tmp_path_factory.mktemp("ensemble")
    data = write_split_folder(tmp / "data")
    a = finetune(tiny_config(data, tmp, name="a", img_size=32, tta="none")).run_dir
    b = finetune(tiny_config(data, tmp, name="b", img_size=40, tta="flip", seed=1)).run_dir
    two = finetune(tiny_config(data, tmp, name="two", classes=["alpha", "beta"])).run_dir
    return tmp, a, b, two


def invoke(*args):
    return CliRunner().invoke(main, ["ensemble", *[str(a) for a in args]])


def test_ensemble_is_the_mean_of_its_members(runs):
    tmp, a, b, _ = runs
    out = tmp / "ens"
    result = invoke(a, b, "--out", out)
    assert result.exit_code == 0, result.output
    keys, true, pred, probs, classes = read_predictions(out / "predictions.csv")
    members = sorted((out / "members").iterdir())
    assert [m.name for m in members] == ["01-a", "02-b"]
    member_probs = []
    for member, run in zip(members, (a, b)):
        m_keys, m_true, _, m_probs, m_classes = read_predictions(member / "predictions.csv")
        assert (m_keys, m_true, m_classes) == (keys, true, classes)
        # each member scored its own test split with its own input size and TTA: the same
        # probabilities its run wrote at the end of training
        own_keys, _, _, own_probs, own_classes = read_predictions(run / "predictions.csv")
        assert own_keys == keys and own_classes == classes
        np.testing.assert_allclose(m_probs, own_probs, atol=2e-6)
        member_probs.append(m_probs)
    np.testing.assert_allclose(probs, np.mean(member_probs, axis=0), atol=2e-6)
    assert pred == [classes[i] for i in probs.argmax(1)]
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == len(keys) == 12 and report["split"] == "test" and report["run"] == str(out)
    assert report["accuracy"] == pytest.approx(np.mean([t == p for t, p in zip(true, pred)]))
    record = json.loads((out / "run.json").read_text())
    assert [m["input"] for m in record["ensemble"]] == ["32x32", "40x40"]
    assert [m["tta"] for m in record["ensemble"]] == ["none", "flip"]
    assert [m["not_held_out"] for m in record["ensemble"]] == [None, None]  # their own test split
    refused = CliRunner().invoke(main, ["export", str(out)])  # an ensemble holds scores, no model of its own
    assert refused.exit_code == 1 and "holds the scores of an ensemble, not a trained model: give one of its members" in \
        " ".join(refused.output.split())
    own = json.loads((a / "report.json").read_text())
    assert record["ensemble"][0]["accuracy"] == pytest.approx(own["accuracy"])
    assert "ensemble (mean probability)" in result.output
    md = (out / "report.md").read_text()
    assert str(a) in md and str(b) in md
    assert "member 2" in (out / "report.html").read_text()
    assert not list(tmp.glob(".ens.*")), "no temporary folder is left behind"


def test_ensemble_on_another_split_with_one_tta(runs):
    tmp, a, b, _ = runs
    result = invoke(a, b, "--split", "val", "--tta", "flip", "--out", tmp / "ens-val")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp / "ens-val" / "run.json").read_text())
    assert record["eval_split"] == "val" and {m["tta"] for m in record["ensemble"]} == {"flip"}
    assert json.loads((tmp / "ens-val" / "report.json").read_text())["n"] == 12
    # the val split chose each member's best epoch: each one's note says so, in the record and report
    notes = [m["not_held_out"] for m in record["ensemble"]]
    assert notes == [f"of the 12 images scored, {r} had 12 in its validation split, which chose its best epoch (the same files, or pixel copies of them)" for r in (a, b)]
    assert all(f"- note: {n}" in (tmp / "ens-val" / "report.md").read_text() for n in notes)
    assert "note:" in result.output


def test_ensemble_never_writes_over_a_folder(runs):
    tmp, a, b, _ = runs
    out = tmp / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke(a, b, "--out", out)
    assert result.exit_code != 0 and "already exists" in result.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_ensemble_refuses_runs_with_other_classes_and_single_runs(runs):
    tmp, a, _, two = runs
    result = invoke(a, two, "--out", tmp / "bad")
    assert result.exit_code != 0 and "share their class names" in result.output and "two" in result.output
    assert not (tmp / "bad").exists() and not list(tmp.glob(".bad.*"))
    result = invoke(a, "--out", tmp / "one")
    assert result.exit_code != 0 and "at least two runs" in result.output
    result = invoke(a, a.parent / "." / a.name, "--out", tmp / "twice")  # the same run, spelt another way
    assert result.exit_code == 1 and "is given twice" in result.output and not (tmp / "twice").exists()


def test_ensemble_refuses_an_out_folder_inside_the_data(runs):
    """Its plots and CSVs would be read as images of a class by the next run on that folder."""
    tmp, a, b, _ = runs
    for extra in ([], ["--data", tmp / "data"]):
        result = invoke(a, b, "--out", tmp / "data" / "ens", *extra)
        assert result.exit_code == 1 and "lies inside the input folder" in result.output, result.output
        assert not (tmp / "data" / "ens").exists() and not list((tmp / "data").glob(".ens.*"))


def test_members_in_another_class_order_are_aligned_by_name():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    scored = Scored(["x", "y"], np.array([0, 2]), probs, "test", "d", "none")
    aligned = in_class_order(scored, ["a", "b", "c"], ["c", "a", "b"])
    np.testing.assert_array_equal(aligned.probs, [[0.1, 0.7, 0.2], [0.6, 0.1, 0.3]])
    np.testing.assert_array_equal(aligned.labels, [1, 0])  # a -> index 1, c -> index 0


def test_ensemble_of_runs_on_a_flat_folder_uses_their_split_file(tmp_path, flat_folder):
    """A flat folder has no test split of its own: the runs' split.csv says which images are test."""
    a = finetune(tiny_config(flat_folder, tmp_path, name="fa")).run_dir
    b = finetune(tiny_config(flat_folder, tmp_path, name="fb", img_size=40)).run_dir
    result = invoke(a, b, "--out", tmp_path / "ens")
    assert result.exit_code == 0, result.output
    keys, *_ = read_predictions(tmp_path / "ens" / "predictions.csv")
    own_keys, *_ = read_predictions(a / "predictions.csv")
    assert keys == own_keys and json.loads((tmp_path / "ens" / "report.json").read_text())["split"] == "test"


def test_members_with_the_same_data_share_one_decode(runs, monkeypatch):
    """Runs a and b differ in input size, TTA and seed but read the same data: one load_data call
    per split serves both runs (only that split is decoded), and gives the probabilities each
    run scores alone."""
    _, a, b, _ = runs
    calls = []
    real = ftkit.scoring.load_data
    monkeypatch.setattr(ftkit.scoring, "load_data", lambda *args, **kw: calls.append(args) or real(*args, **kw))
    datasets = {}
    shared = {split: score_members([a, b], split=split, datasets=datasets)[1] for split in ("test", "val")}
    assert len(calls) == 2 and len(datasets) == 2
    for split, scores in shared.items():
        for run, scored in zip((a, b), scores):
            alone = score_run(load_run(run), split=split)
            assert scored.keys == alone.keys
            np.testing.assert_allclose(scored.probs, alone.probs, atol=1e-6)
    assert len(calls) == 2 + 4  # without a shared dict every score decodes again


def test_the_data_key_reads_split_files_by_content(runs, tmp_path):
    _, a, _, _ = runs
    cfg = load_run(a).config
    copy = tmp_path / "split.csv"
    copy.write_bytes((a / "split.csv").read_bytes())
    key = data_key(replace(cfg, splits=str(a / "split.csv")), ["alpha", "beta"], "test")
    assert data_key(replace(cfg, splits=str(copy)), ["alpha", "beta"], "test") == key
    assert data_key(replace(cfg, splits=str(copy), seed=7, img_size=99), ["alpha", "beta"], "test") == key  # not data settings
    assert data_key(replace(cfg, splits=str(copy)), ["beta", "alpha"], "test") != key
    assert data_key(replace(cfg, splits=str(copy), faces="crop"), ["alpha", "beta"], "test") != key
    assert data_key(replace(cfg, splits=str(copy)), ["alpha", "beta"], "val") != key  # only the scored split is loaded
    copy.write_text(copy.read_text().replace("test", "val"))
    assert data_key(replace(cfg, splits=str(copy)), ["alpha", "beta"], "test") != key
