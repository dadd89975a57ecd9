"""The commands end to end through Click's CliRunner, asserting on the files they write."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ftkit.cli import main
from conftest import TINY, class_image, write_split_folder


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def tiny_flags(tmp_path):
    return ["--backbone", TINY, "--no-pretrained", "--img-size", 32, "--epochs", 2, "--batch-size", 8,
            "--lr", 3e-3, "--workers", 0, "--project", tmp_path / "runs"]


def _all_commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if hasattr(cmd, "commands"):
            yield from _all_commands(cmd, prefix + (name,))


def test_every_command_has_help():
    for path, cmd in _all_commands(main):
        result = invoke(*path, "--help")
        assert result.exit_code == 0, path
        assert cmd.help and len(cmd.help.strip()) > 20, f"{' '.join(path)} has no real help text"


def test_finetune_help_is_generated_from_the_config():
    out = invoke("finetune", "--help").output
    for flag in ("--backbone-lr-mult", "--freeze-epochs", "--drop-class", "--merge-class", "--no-pretrained", "--amp", "--bn-stats"):
        assert flag in out
    assert "backbone learning rate = lr x this" in out
    # the help is the field's metadata, not a comment parsed out of the source
    import dataclasses

    from ftkit.config import Config

    fields = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(Config)}
    assert all(len(text) > 10 for text in fields.values()), [name for name, text in fields.items() if len(text) <= 10]
    flat = " ".join(out.split())
    assert fields["ema"] in flat and fields["face_margin"] in flat


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run trained through the CLI, shared by the read-only tests below."""
    tmp = tmp_path_factory.mktemp("cli")
    write_split_folder(tmp / "data")
    result = invoke("finetune", "--data", tmp / "data", *tiny_flags(tmp), "--name", "cli-run", "--freeze-epochs", 1)
    assert result.exit_code == 0, result.output
    return tmp, tmp / "runs" / "cli-run"


def test_finetune_cli_writes_run(trained):
    tmp, run = trained
    report = json.loads((run / "report.json").read_text())
    assert report["n"] == 12 and set(report["per_class"]) == {"alpha", "beta", "gamma"}
    md = (run / "report.md").read_text()
    assert "| alpha |" in md and "macro avg" in md


def test_report_matches_sklearn_on_predictions(trained):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support

    _, run = trained
    with open(run / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    y = [r["true"] for r in rows]
    p = [r["predicted"] for r in rows]
    # probabilities: one column per class, rows sum to 1, argmax = predicted
    for r in rows:
        probs = {c: float(r[f"p_{c}"]) for c in ("alpha", "beta", "gamma")}
        assert sum(probs.values()) == pytest.approx(1, abs=1e-4)
        assert max(probs, key=probs.get) == r["predicted"]
    report = json.loads((run / "report.json").read_text())
    assert report["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    assert report["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    prec, rec, f1, sup = precision_recall_fscore_support(y, p, labels=["alpha", "beta", "gamma"], zero_division=0)
    for i, c in enumerate(["alpha", "beta", "gamma"]):
        assert report["per_class"][c]["precision"] == pytest.approx(prec[i])
        assert report["per_class"][c]["recall"] == pytest.approx(rec[i])
        assert report["per_class"][c]["f1"] == pytest.approx(f1[i])
        assert report["per_class"][c]["support"] == sup[i]
    assert np.array(report["confusion_matrix"]).sum() == len(rows)
    # the accuracy's 95 % Wilson interval, from its textbook formula
    n, acc, z = len(rows), accuracy_score(y, p), 1.959963984540054
    centre, half = (acc + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert report["accuracy_ci95"] == pytest.approx([centre - half, centre + half], abs=1e-9)
    interval = f"accuracy 95 % Wilson interval {centre - half:.3f}-{centre + half:.3f}"
    assert interval in (run / "report.md").read_text() and interval in (run / "report.html").read_text()


def test_report_command_regenerates_and_compares(trained):
    tmp, run = trained
    (run / "report.json").unlink()
    (run / "confusion_matrix.png").unlink()
    result = invoke("report", run)
    assert result.exit_code == 0
    assert (run / "report.json").is_file() and (run / "confusion_matrix.png").is_file()
    assert "macro avg" in result.output
    both = invoke("report", run, run)
    assert both.exit_code == 0


def test_report_says_what_it_was_given_when_that_is_no_run(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    said = {what: " ".join(invoke("report", what).output.split()) for what in (tmp_path / "model.onnx", "fer2013-fast", tmp_path / "gone")}
    assert "model.onnx is a file, not a run directory" in said[tmp_path / "model.onnx"]
    assert "fer2013-fast is a named model, not a run directory: score it with ftkit evaluate fer2013-fast" in said["fer2013-fast"]
    assert f"run directory {tmp_path / 'gone'} not found" in said[tmp_path / "gone"]


def test_report_says_when_compared_runs_were_scored_on_different_images(trained, tmp_path):
    import shutil

    tmp, run = trained
    same, fewer = tmp_path / "same", tmp_path / "fewer"
    shutil.copytree(run, same)
    shutil.copytree(run, fewer)
    lines = (fewer / "predictions.csv").read_text().splitlines()
    (fewer / "predictions.csv").write_text("\n".join(lines[:-2]) + "\n")  # two test images fewer
    r = invoke("report", run, same, "--html", tmp_path / "a.html")
    assert r.exit_code == 0 and "scored on different images" not in r.output
    r = invoke("report", run, fewer, "--html", tmp_path / "b.html")
    assert r.exit_code == 0 and f"scored on different images ({run}: 12, {fewer}: 10; 10 in common)" in r.output
    assert "scored on different images" in (tmp_path / "b.html").read_text()
    assert "scored on different images" not in (tmp_path / "a.html").read_text()


def test_evaluate_on_another_folder(trained, tmp_path):
    tmp, run = trained
    rng = np.random.default_rng(5)
    from conftest import write_images

    for label, c in enumerate(["alpha", "beta"]):
        write_images(tmp_path / "other" / c, label, 5, rng)
    result = invoke("evaluate", run, "--data", tmp_path / "other", "--name", "other")
    assert result.exit_code == 0, result.output
    folder = run / "eval" / "other"
    report = json.loads((folder / "report.json").read_text())
    assert report["n"] == 10 and report["split"] == "all"
    assert report["per_class"]["gamma"]["support"] == 0
    # a second evaluation never overwrites the first
    again = invoke("evaluate", run, "--data", tmp_path / "other", "--name", "other")
    assert again.exit_code == 0 and (run / "eval" / "other-2" / "report.json").is_file()
    # a name is one folder under eval/, never a path out of it
    before = sorted(p.name for p in run.iterdir())
    escaped = invoke("evaluate", run, "--data", tmp_path / "other", "--name", "../../up")
    assert escaped.exit_code == 0 and (run / "eval" / "up" / "report.json").is_file()
    assert sorted(p.name for p in run.iterdir()) == before
    # an evaluation holds scores, no model: what needs a model says which one to give
    for command in (["export"], ["predict"], ["weights", "save"], ["finetune", "--init"], ["finetune", "--resume"]):
        args = {"predict": [str(tmp_path / "other")], "save": ["name"], "--init": ["--data", str(tmp_path / "other")]}
        result = invoke(*command, folder, *args.get(command[-1], []))
        assert result.exit_code == 1 and f"{folder} holds the scores of an evaluation, not a trained model: give the " \
            f"run or model it scored ({run})" in " ".join(result.output.split()), (command, result.output)


def test_evaluating_images_the_run_learned_from_says_so(trained):
    """Scores on images in the run's own training or validation split are not held out: the
    record and the console say how many there were (36 train, 12 val, 12 test images)."""
    tmp, run = trained

    def scored(*args, name):
        result = invoke("evaluate", run, *args, "--name", name)
        assert result.exit_code == 0, result.output
        return json.loads((run / "eval" / name / "run.json").read_text())["eval_note"], result.output

    note, output = scored("--data", tmp / "data" / "train", name="seen-train")  # the train folder, scored whole
    assert note == f"of the 36 images scored, {run} had 36 in its training split (the same files, or pixel copies of them)" and "note:" in output
    note, _ = scored("--data", tmp / "data", "--split", "val", name="seen-val")
    assert note == f"of the 12 images scored, {run} had 12 in its validation split, which chose its best epoch (the same files, or pixel copies of them)"
    note, output = scored("--data", tmp / "data", "--split", "test", name="held-out")
    assert note is None and "note:" not in output
    assert "- note: of the 36 images" in (run / "eval" / "seen-train" / "report.md").read_text()


def test_a_failed_evaluation_leaves_no_folder(trained, monkeypatch):
    _, run = trained

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device", str(run / "eval"))

    monkeypatch.setattr("ftkit.scoring.write_report", broken)
    result = CliRunner().invoke(main, ["evaluate", str(run), "--name", "broken"])
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert not list((run / "eval").glob("*broken*")) and not list((run / "eval").glob(".*"))


@pytest.mark.parametrize("tta", ["flip", "shift"])
def test_evaluate_own_test_split_with_tta(trained, tta):
    _, run = trained
    result = invoke("evaluate", run, "--split", "test", "--tta", tta, "--name", f"own-{tta}")
    assert result.exit_code == 0, result.output
    folder = run / "eval" / f"own-{tta}"
    assert json.loads((folder / "report.json").read_text())["n"] == 12
    assert json.loads((folder / "run.json").read_text())["eval_tta"] == tta
    # the title and report.md say so: these scores differ from the per-epoch ones, which had none
    assert f"(test, TTA {tta})" in " ".join(result.output.split())
    assert f"- split reported: test (12 images), test-time augmentation {tta}\n" in (folder / "report.md").read_text()
    assert "test-time augmentation" not in (run / "report.md").read_text()  # the run's own report had none


def test_evaluate_scores_the_last_checkpoint_when_asked(trained, tmp_path):
    import shutil

    from ftkit.evaluation import read_predictions
    from ftkit.runs import load_checkpoint, write_weights

    _, trained_run = trained
    run = tmp_path / "cli-run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    # a last checkpoint that cannot be mistaken for the best one: all weights zero, so every class gets 1/3
    weights, meta = load_checkpoint(run / "checkpoints" / "last")
    write_weights(run / "checkpoints" / "last.safetensors",
                  {k: v.zero_() if v.is_floating_point() else v for k, v in weights.items()}, meta)

    best = invoke("evaluate", run, "--split", "val")
    last = invoke("evaluate", run, "--split", "val", "--checkpoint", "last")
    assert best.exit_code == 0 and last.exit_code == 0, best.output + last.output
    folders = {f.name: f for f in (run / "eval").iterdir()}
    assert set(folders) == {"data-val", "data-val-last"}  # the default names keep both
    probs = {name: read_predictions(folders[name] / "predictions.csv")[3] for name in folders}
    assert np.allclose(probs["data-val-last"], 1 / 3) and not np.allclose(probs["data-val"], 1 / 3)
    records = {name: json.loads((folders[name] / "run.json").read_text()) for name in folders}
    assert records["data-val"]["eval_checkpoint"] == "best" and records["data-val-last"]["eval_checkpoint"] == "last"
    # the val split chose the best epoch, not the last one of a run that ran all its epochs
    assert "validation split" in records["data-val"]["eval_note"] and records["data-val-last"]["eval_note"] is None
    assert "last epoch" in " ".join(last.output.split())
    assert "the last epoch's weights (epoch 2)" in (folders["data-val-last"] / "report.md").read_text()


def test_the_last_checkpoint_is_a_run_directorys(trained, tmp_path):
    _, run = trained
    write_split_folder(tmp_path / "faces")
    named = invoke("evaluate", "fer2013-fast", "--data", tmp_path / "faces", "--checkpoint", "last")
    assert named.exit_code != 0 and "fer2013-fast is a named model" in named.output
    assert invoke("export", run, "--out", tmp_path / "m.onnx").exit_code == 0
    exported = invoke("evaluate", tmp_path / "m.onnx", "--data", tmp_path / "faces", "--checkpoint", "last")
    assert exported.exit_code != 0 and "is an exported file" in " ".join(exported.output.split())


def test_predict_prints_and_writes_csv_and_json(trained, tmp_path):
    _, run = trained
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(class_image(i, rng)).save(tmp_path / f"p{i}.png")
    (tmp_path / "bad.png").write_bytes(b"junk")
    result = invoke("predict", run, tmp_path / "p0.png", tmp_path / "p1.png", tmp_path / "p2.png",
                    tmp_path / "bad.png", "--topk", 2, "--output", tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "out.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    good = [r for r in rows if not r["error"]]
    assert len(good) == 3 and all(r["predicted"] in ("alpha", "beta", "gamma") for r in good)
    assert "cannot decode" in next(r for r in rows if r["error"])["error"]
    invoke("predict", run, tmp_path / "p0.png", "--output", tmp_path / "out.json")
    data = json.loads((tmp_path / "out.json").read_text())
    top = data[0]["detections"][0]["top"]
    assert data[0]["detections"][0]["box"] is None  # trained without faces: the whole image
    assert data[0]["detections"][0]["region"] == "image" and {r["region"] for r in good} == {"image"}
    # --faces crop on an image without a face: a centre crop, said as such (it read "whole image")
    crop = invoke("predict", run, tmp_path / "p0.png", "--faces", "crop", "--output", tmp_path / "crop.csv")
    assert crop.exit_code == 0 and "centre crop (no face found)" in crop.output
    assert next(csv.DictReader(open(tmp_path / "crop.csv")))["region"] == "centre"
    assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"]


def test_recipe_then_flags_precedence(trained, tmp_path):
    tmp, _ = trained
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"backbone: {TINY}\nepochs: 1\nfreeze_epochs: 0\nlr: 0.5\nimg_size: 32\npretrained: false\n")
    result = invoke("finetune", "--recipe", recipe, "--data", tmp / "data", "--lr", 0.002, "--workers", 0,
                    "--project", tmp_path / "runs", "--name", "rec")
    assert result.exit_code == 0, result.output
    import yaml

    args = yaml.safe_load((tmp_path / "runs" / "rec" / "args.yaml").read_text())
    assert args["lr"] == 0.002 and args["epochs"] == 1 and args["backbone"] == TINY


def test_bad_inputs_give_clear_messages(trained, tmp_path):
    tmp, run = trained
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("learning_rate: 0.1\n")
    r = invoke("finetune", "--recipe", recipe, "--data", tmp / "data")
    assert r.exit_code == 1 and "unknown key 'learning_rate' in recipe" in r.output and "ftkit calls it 'lr'" in r.output
    recipe.write_text("epoch: 3\n")
    r = invoke("finetune", "--recipe", recipe, "--data", tmp / "data")
    assert r.exit_code == 1 and "Did you mean 'epochs'" in r.output
    r = invoke("finetune", "--data", tmp_path / "missing", "--backbone", TINY)
    assert r.exit_code == 1 and "missing does not exist" in r.output
    r = invoke("finetune", "--data", tmp / "data", "--backbone", "mobilenet-v2")
    assert r.exit_code == 1 and "unknown backbone 'mobilenet-v2'" in r.output and "mobilenetv2" in r.output
    r = invoke("finetune", "--data", tmp / "data", "--backbone", "resnet999")  # an alias that is its timm name too
    assert r.exit_code == 1 and "Did you mean 'resnet50' or 'resnet34' or " in " ".join(r.output.split())
    r = invoke("finetune", "--data", tmp / "data", "--augment", "heavy")  # Click checks the choice (usage error: 2)
    assert r.exit_code == 2 and "'heavy' is not one of 'none', 'light', 'fer', 'strong'" in r.output
    r = invoke("report", tmp_path)
    assert r.exit_code == 1 and f"{tmp_path} is not an ftkit run directory (no run.json)" in r.output
    r = invoke("predict", tmp_path / "nope", "x.png")
    assert r.exit_code == 1 and "neither a run directory nor a named model" in r.output
    for command in (["predict", tmp / "runs" / "cli-rn", "x.png"], ["report", tmp / "runs" / "cli-rn"],
                    ["finetune", "--resume", tmp / "runs" / "cli-rn"]):  # a mistyped run: the runs beside it are offered
        r = invoke(*command)
        assert r.exit_code == 1 and f"Did you mean '{tmp / 'runs' / 'cli-run'}'" in " ".join(r.output.split()), command
    r = invoke("finetune", "--data", tmp / "data", *tiny_flags(tmp), "--out", run)
    assert r.exit_code == 1 and "already holds files" in r.output
    assert "random initialisation" not in r.output  # refused before the data and the model are loaded, not after
    folders = sorted(p.name for p in run.iterdir())
    r = invoke("finetune", "--data", tmp / "data", *tiny_flags(tmp), "--project", run)  # a run as the runs' folder
    assert r.exit_code == 1 and "is itself a run directory" in r.output and str(run.resolve().parent) in r.output
    assert sorted(p.name for p in run.iterdir()) == folders  # no run was made inside it
    assert (run / "report.json").is_file()  # nothing of the earlier run was touched
    for flag, message in (("--out", "is a file, not a folder: give a new folder for the run"),
                          ("--project", "is a file, not a folder: give the folder that holds your runs")):
        r = invoke("finetune", "--data", tmp / "data", *tiny_flags(tmp), flag, run / "report.json")
        assert r.exit_code == 1 and f"{flag} {run / 'report.json'} {message}" in r.output, r.output
        assert "random initialisation" not in r.output  # said before the model is built, not as 'File exists' after


def test_backbones_lists_aliases(tmp_path, monkeypatch):
    monkeypatch.setenv("FTKIT_WEIGHTS", str(tmp_path))  # an empty store
    r = invoke("backbones")
    assert r.exit_code == 0
    for alias, name in (("mobilenetv2", "mobilenetv2_100"), ("efficientnet-lite0", "efficientnet_lite0")):
        assert alias in r.output and name in r.output
    rows = {line.split("│")[1].strip(): line.split("│")[6].strip() for line in r.output.splitlines() if line.count("│") == 7}
    assert rows["mobilenetv2"] in ("ftkit weights pull mobilenetv2_100", "here (timm cache)")
    assert rows["resnet18"] in ("hub, or --weights FILE", "here (timm cache)")
    r = invoke("backbones", "--filter", "resnet*")  # used to be ignored without --all
    assert r.exit_code == 0 and "resnet18" in r.output and "mobilenetv2" not in r.output
    r = invoke("backbones", "--filter", "zzz*")
    assert r.exit_code == 1 and "no alias or its timm name matches 'zzz*'" in r.output
    r = invoke("backbones", "--all", "--filter", "zzz*")
    assert r.exit_code == 1 and "no timm model name matches 'zzz*'" in r.output


def test_data_synth_writes_all_classes(tmp_path):
    r = invoke("data", "synth", tmp_path / "syn", "--train", 2, "--val", 1, "--test", 1)
    assert r.exit_code == 0
    from ftkit.synth import FER_CLASSES

    for c in FER_CLASSES:
        assert len(list((tmp_path / "syn" / "train" / c).glob("*.png"))) == 2
        assert len(list((tmp_path / "syn" / "test" / c).glob("*.png"))) == 1
    # a second set over the first would mix them; a split of 0 images is not written empty
    r = invoke("data", "synth", tmp_path / "syn", "--train", 3)
    assert r.exit_code == 1 and "already exists and is not an empty folder" in r.output
    assert len(list((tmp_path / "syn" / "train" / "happy").glob("*.png"))) == 2
    r = invoke("data", "synth", tmp_path / "syn0", "--train", 1, "--val", 0, "--test", 0)
    assert r.exit_code == 0 and sorted(p.name for p in (tmp_path / "syn0").iterdir()) == ["train"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn", "syn0"]  # no partial folder left beside


def test_demo_runs_end_to_end_quickly(tmp_path):
    """The demo wiring with a tiny model and one epoch (the full demo is tested in test_demo.py)."""
    r = invoke("demo", "--out", tmp_path / "demo", "--epochs", 1, "--backbone", TINY)
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["n"] == 7 * 30 and len(report["per_class"]) == 7
    assert json.loads((tmp_path / "demo" / "run.json").read_text())["weights"]["source"] == "none"


def test_report_html_shows_the_numbers_of_report_json(trained):
    import re

    _, run = trained
    html = (run / "report.html").read_text()
    report = json.loads((run / "report.json").read_text())
    for label, key in (("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"), ("macro-F1", "macro_f1")):
        assert f'<div class="metric">{label}<b>{report[key]:.4f}</b></div>' in html
    for c, m in report["per_class"].items():
        row = re.search(rf"<tr><td>{c}</td>(.*?)</tr>", html).group(1)
        shown = [float(v) for v in re.findall(r"<td>(\d\.\d{3})<span", row)]
        assert shown == pytest.approx([m["precision"], m["recall"], m["f1"]], abs=5e-4)
        assert row.endswith(f"<td>{m['support']}</td>")
    assert html.count("data:image/png;base64,") >= 4


def test_expected_calibration_error_by_hand():
    from ftkit.html_report import expected_calibration_error

    conf = np.array([0.95, 0.95, 0.55, 0.55, 0.55, 0.55])
    correct = np.array([1, 0, 1, 1, 0, 0])
    ece, rows = expected_calibration_error(conf, correct)
    # bin 0.9-1.0: acc 0.5 vs conf 0.95 (2 of 6); bin 0.5-0.6: acc 0.5 vs conf 0.55 (4 of 6)
    assert ece == pytest.approx(2 / 6 * 0.45 + 4 / 6 * 0.05)
    assert [r[2] for r in rows] == [4, 2]


def test_missing_pretrained_weights_fail_before_any_run_directory(trained, tmp_path, monkeypatch):
    tmp, _ = trained
    monkeypatch.setenv("FTKIT_WEIGHTS", str(tmp_path / "empty-store"))
    r = invoke("finetune", "--data", tmp / "data", "--backbone", TINY, "--img-size", 32, "--epochs", 1,
               "--project", tmp_path / "runs", "--name", "nope")
    assert r.exit_code == 1
    assert "no pretrained weights for test_efficientnet found offline" in r.output and "--no-pretrained" in r.output
    assert not (tmp_path / "runs" / "nope").exists()
    # a cross-validation too: its folder was left 'failed', and the same --out then refused
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "cv", tmp_path / "empty"):
        r = invoke("finetune", "--data", tmp / "data", "--backbone", TINY, "--img-size", 32, "--epochs", 1, "--folds", 2,
                   "--out", out)
        assert r.exit_code == 1 and "no pretrained weights for test_efficientnet" in r.output, r.output
    assert not (tmp_path / "cv").exists() and list((tmp_path / "empty").iterdir()) == []  # a folder of the user's is kept


def test_paths_and_names_with_brackets_are_printed_as_they_are(tmp_path):
    """Messages are not rich markup: "faces[train]" used to print as "faces", and a "[/b]" in a
    path stopped the command with rich's MarkupError."""
    root = write_split_folder(tmp_path / "faces[train]" / "set[/b]")
    (root / "train" / "alpha" / "notes[red].txt").write_text("not an image")
    skipped = str(root / "train" / "alpha" / "notes[red].txt")
    r = invoke("data", "inspect", root)
    assert r.exit_code == 0 and f"skipped 1 unusable file(s): {skipped} (not an image file)" in r.output

    r = invoke("finetune", "--data", root, *tiny_flags(tmp_path), "--freeze-epochs", 1)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert skipped in text and "epoch 1/2 [head]" in text and "epoch 2/2 [full]" in text
    assert text.count(str(root)) >= 2  # the warning, and the data row of the run's summary


def test_an_evaluation_records_where_its_images_are_not_where_it_was_run_from(trained, tmp_path, monkeypatch):
    """`evaluate RUN --data faces/` recorded 'faces' and relative image paths: read from another
    folder, the record and report.html's thumbnails pointed nowhere. A run records its data's
    absolute place; an evaluation now does too."""
    import shutil

    tmp, run = trained
    shutil.copytree(tmp / "data" / "test", tmp_path / "faces")
    monkeypatch.chdir(tmp_path)
    r = invoke("evaluate", run, "--data", "faces", "--name", "relative")
    assert r.exit_code == 0, r.output
    folder = run / "eval" / "relative"
    assert json.loads((folder / "run.json").read_text())["eval_data"] == str(tmp_path / "faces")
    with open(folder / "predictions.csv") as f:
        assert all(Path(row["path"]).is_absolute() and Path(row["path"]).is_file() for row in csv.DictReader(f))
    shutil.rmtree(folder)  # the run is shared with other tests


def test_evaluate_takes_a_labels_csv_for_the_images_it_scores(trained, tmp_path):
    """`evaluate RUN --data photos/ --splits labels.csv`: the CSV names the images and their
    classes (any case, the model's aliases), as `finetune --splits` takes it."""
    tmp, run = trained
    test = tmp / "data" / "test"
    images = sorted(test.rglob("*.png"))[::2]
    rows = "".join(f"{p.relative_to(test).as_posix()},{p.parent.name.upper()}\n" for p in images)
    (tmp_path / "labels.csv").write_text("path,label\n" + rows)
    r = invoke("evaluate", run, "--data", test, "--splits", tmp_path / "labels.csv", "--name", "listed")
    assert r.exit_code == 0, r.output
    folder = run / "eval" / "listed"
    assert json.loads((folder / "report.json").read_text())["n"] == len(images)
    with open(folder / "predictions.csv") as f:
        assert sorted(row["path"] for row in csv.DictReader(f)) == sorted(map(str, images))
    settings = json.loads((folder / "run.json").read_text())["eval_settings"]
    assert settings["overridden"] == {"splits": str(tmp_path / "labels.csv")}
    import shutil

    shutil.rmtree(folder)  # the run is shared with other tests


def test_report_html_replaces_an_earlier_page_but_no_other_file(trained, tmp_path):
    """`report RUN --html notes.html` (or notes.txt) overwrote the file with the run's page."""
    _, run = trained
    page = tmp_path / "page.html"
    for _ in range(2):  # the second time over its own earlier page
        r = invoke("report", run, "--html", page)
        assert r.exit_code == 0 and page.read_text().startswith("<!doctype html>"), r.output
    (tmp_path / "notes.html").write_text("<html>my notes</html>")
    (tmp_path / "notes.txt").write_text("my notes")
    for name, message in (("notes.html", "exists and is not a page ftkit wrote: nothing was written"),
                          ("notes.txt", "give a path ending in .html")):
        r = invoke("report", run, run, "--html", tmp_path / name)
        assert r.exit_code == 1 and message in r.output, r.output
    assert (tmp_path / "notes.html").read_text() == "<html>my notes</html>" and (tmp_path / "notes.txt").read_text() == "my notes"
