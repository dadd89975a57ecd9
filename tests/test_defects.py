"""Defects found by a code review (issue 15), each pinned by a test that failed before its fix."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ftkit.cli import main
from ftkit.train import finetune, mix_batch, make_mixer
from conftest import TINY, tiny_config, write_split_folder


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
def test_a_logreg_run_reports_what_evaluate_repeats(split_folder, tmp_path):
    result = finetune(tiny_config(split_folder, tmp_path, head="logreg", name="lr"))
    run = result.run_dir
    assert "tta: flip" in (run / "args.yaml").read_text()
    r = invoke("evaluate", run, "--split", "test", "--name", "again")
    assert r.exit_code == 0, r.output
    again = json.loads((run / "eval" / "again" / "report.json").read_text())
    assert again["accuracy"] == result.report["accuracy"] and again["macro_f1"] == result.report["macro_f1"]


def test_mixup_also_mixes_odd_batches(split_folder, tmp_path):
    mixer = make_mixer(tiny_config(split_folder, tmp_path, mixup=0.4), 3)
    torch.manual_seed(0)
    np.random.seed(0)
    x, y = torch.rand(7, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    mixed, target = mix_batch(mixer, x.clone(), y)
    assert mixed.shape == x.shape and target.shape == (7, 3)
    assert torch.allclose(target.sum(1), torch.ones(7))
    assert not torch.equal(mixed[:6], x[:6])  # the first six are mixed
    assert torch.equal(mixed[6], x[6]) and torch.equal(target[6], torch.tensor([1.0, 0.0, 0.0]))


def test_list_settings_are_typed_element_by_element(tmp_path):
    from ftkit.config import ConfigError, resolve

    recipe = tmp_path / "r.yaml"
    recipe.write_text('mean: "0.5,0.5,0.5"\nstd: ["0.25", 0.25, 1]\n')
    cfg = resolve(str(recipe))
    assert cfg.mean == [0.5, 0.5, 0.5] and cfg.std == [0.25, 0.25, 1.0]
    recipe.write_text("mean: [a, b, c]\n")
    with pytest.raises(ConfigError, match="'mean' expects numbers"):
        resolve(str(recipe))


def test_weights_of_models_whose_classifier_is_not_the_last_matrix(tmp_path):
    """ConvNeXt's classifier is head.fc; sorted by name, head.fc.weight is not the last 2-D weight."""
    import timm
    from safetensors.torch import save_file

    from ftkit.weights import fit_to_model

    state = timm.create_model("convnext_atto", num_classes=7).state_dict()
    save_file({k: v.contiguous() for k, v in sorted(state.items())}, str(tmp_path / "c.safetensors"))
    from ftkit.weights import load_state_dict

    fitted = fit_to_model(load_state_dict(tmp_path / "c.safetensors"), "convnext_atto", ordered=False)
    assert fitted["head.fc.weight"].shape == (7, 320)


@pytest.mark.slow
def test_fixed_size_backbones_train_at_any_input_size(tmp_path):
    data = write_split_folder(tmp_path / "d", sizes=(("train", 4), ("val", 2)))
    r = invoke("finetune", "--data", data, "--backbone", "vit_tiny_patch16_224", "--input", "gray48", "--no-pretrained",
               "--epochs", 1, "--batch-size", 4, "--workers", 0, "--project", tmp_path / "runs", "--name", "vit")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "runs" / "vit" / "run.json").read_text())["data_config"]["img_size"] == 48


def test_annotated_outputs_of_same_named_images_do_not_overwrite_each_other():
    from ftkit.predict import annotated_names

    assert annotated_names(["a/1.jpg", "b/1.jpg", "c/2.png", "d/1.jpeg"]) == ["1.png", "1-2.png", "2.png", "1-3.png"]


@pytest.mark.slow
def test_resume_refuses_finished_runs_and_flags_it_would_ignore(split_folder, tmp_path):
    run = finetune(tiny_config(split_folder, tmp_path, epochs=1, freeze_epochs=0, name="done")).run_dir
    r = invoke("finetune", "--resume", run)
    assert r.exit_code == 1 and "nothing to resume" in r.output
    r = invoke("finetune", "--resume", run, "--epochs", 5)
    assert r.exit_code == 2 and "--epochs" in r.output
    logreg = finetune(tiny_config(split_folder, tmp_path, head="logreg", name="lr")).run_dir
    json_path = logreg / "run.json"
    json_path.write_text(json.dumps({**json.loads(json_path.read_text()), "status": "interrupted"}))
    r = invoke("finetune", "--resume", logreg)
    assert r.exit_code == 1 and "logreg" in r.output


def test_dataloader_workers_draw_different_augmentations(tmp_path):
    """Two workers start from one Albumentations pipeline; each must get its own stream."""
    from ftkit.data import ImageDataset, Split
    from ftkit.models import DataConfig
    from ftkit.train import seed_worker
    from ftkit.transforms import train_transform

    image = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
    split = Split([f"k{i}" for i in range(8)], np.zeros(8, dtype=np.int64), [image] * 8)
    dc = DataConfig(32, 3, False, [0.5] * 3, [0.5] * 3, "bilinear")

    def batches(seed):
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(ImageDataset(split, train_transform(dc, "strong", seed=0)), batch_size=4,
                                             num_workers=2, worker_init_fn=seed_worker)
        return [x for x, _ in loader]

    first, second = batches(0)
    assert not torch.equal(first, second)  # worker 0 and worker 1 did not replay one stream
    again = batches(0)
    assert torch.equal(again[0], first) and torch.equal(again[1], second)  # and --seed still fixes them


def test_tables_through_a_pipe_keep_whole_names(tmp_path, monkeypatch):
    from ftkit.io import write_json

    name = "a_very_long_timm_model_name_that_a_terminal_would_cut_short_v2_100"
    write_json(tmp_path / "manifest.json", {name: {"file": f"{name}.safetensors", "sha256": "0" * 64,
                                                   "source": "test", "parameters": 1}})
    monkeypatch.setenv("FTKIT_WEIGHTS", str(tmp_path))
    out = invoke("weights", "list").output
    assert any(name in line for line in out.splitlines())


def test_a_run_directory_works_after_moving_it_and_from_another_directory(split_folder, tmp_path, monkeypatch):
    """split.csv used to hold paths relative to the working directory of the training."""
    import shutil
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    result = finetune(tiny_config(Path("split_data"), tmp_path, project="runs", name="here", epochs=1))
    rows = (result.run_dir / "split.csv").read_text().splitlines()[1:]
    assert rows and all(row.split(",")[0].split("/")[0] in ("train", "val", "test") for row in rows)  # relative to the data
    moved = tmp_path / "elsewhere" / "moved"
    shutil.move(str(result.run_dir), str(moved))
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    r = CliRunner().invoke(main, ["evaluate", str(moved), "--name", "again", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    again = json.loads((moved / "eval" / "again" / "report.json").read_text())
    assert again["accuracy"] == pytest.approx(result.report["accuracy"]) and again["n"] == result.report["n"]
    r = CliRunner().invoke(main, ["report", str(moved)])
    assert r.exit_code == 0, r.output


def test_evaluate_scores_what_a_folder_holds_one_class_or_a_test_folder_alone(split_folder, tmp_path):
    """Scoring used to demand two classes, every class the run dropped, and a train/ folder."""
    import shutil

    run = finetune(tiny_config(split_folder, tmp_path, drop_classes=["gamma"], epochs=1)).run_dir
    shutil.copytree(split_folder / "test" / "alpha", tmp_path / "one" / "alpha")  # no gamma to drop, one class
    r = CliRunner().invoke(main, ["evaluate", str(run), "--data", str(tmp_path / "one"), "--name", "one"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "eval" / "one" / "report.json").read_text())["n"] == 4
    shutil.copytree(split_folder / "test", tmp_path / "alone" / "test")  # test/ without train/
    r = CliRunner().invoke(main, ["evaluate", str(run), "--data", str(tmp_path / "alone"), "--name", "alone"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "eval" / "alone" / "report.json").read_text())["n"] == 8  # gamma dropped, as in the run
    r = CliRunner().invoke(main, ["finetune", "--data", str(tmp_path / "alone"), "--backbone", TINY, "--no-pretrained"])
    assert r.exit_code == 1 and "no train/ folder" in r.output


def test_report_regenerates_a_cross_validated_run_and_html_with_one_run(flat_folder, tmp_path):
    """`ftkit report` on a --folds run used to only print, and --html with one run did nothing."""
    cv_run = finetune(tiny_config(flat_folder, tmp_path, folds=2, epochs=1, name="cv")).run_dir
    for name in ("report.html", "report.json", "confusion_matrix.png"):
        (cv_run / name).unlink()
    r = CliRunner().invoke(main, ["report", str(cv_run), "--html", str(tmp_path / "page.html")])
    assert r.exit_code == 0, r.output
    assert "2-fold cross-validation" in r.output
    assert (cv_run / "report.json").is_file() and (cv_run / "confusion_matrix.png").is_file()
    page = (cv_run / "report.html").read_text()
    assert "fold" in page and (tmp_path / "page.html").read_text() == page


def test_report_thumbnails_of_csv_rows_read_the_csv_once(tmp_path, monkeypatch):
    """Each thumbnail of a FER2013-CSV run used to re-read the CSV from its first line."""
    import builtins

    import ftkit.html_report as html_report
    from ftkit.report import write_report
    from test_fer2013 import _pixels, _write_csv

    rows = [(label, _pixels(label * 10 + i), usage) for label in range(7)
            for usage, n in (("Training", 4), ("PublicTest", 2), ("PrivateTest", 2)) for i in range(n)]
    csv = _write_csv(tmp_path / "fer.csv", rows)
    run = finetune(tiny_config(csv, tmp_path, epochs=1, name="csv")).run_dir
    opened = []

    def counting_open(file, *args, **kwargs):
        opened.append(str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(html_report, "open", counting_open, raising=False)
    write_report(run)
    page = (run / "report.html").read_text()
    assert page.count('class="thumb"') >= 5 and "image not found" not in page
    assert opened.count(str(csv)) == 1


def test_the_demo_reads_stored_weights_once(tmp_path, monkeypatch):
    """It used to load them to see whether they exist, then again to train."""
    import timm
    from safetensors.torch import save_file

    import ftkit.weights as weights

    store = tmp_path / "store"
    store.mkdir()
    save_file(timm.create_model(TINY, pretrained=False).state_dict(), store / f"{TINY}.safetensors")
    monkeypatch.setenv("FTKIT_WEIGHTS", str(store))
    loads = []
    real = weights.load_state_dict
    monkeypatch.setattr(weights, "load_state_dict", lambda path: loads.append(path) or real(path))
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--backbone", TINY])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "demo" / "run.json").read_text())["weights"]["source"] == "store"
    assert len(loads) == 1


def test_class_names_the_plot_font_cannot_draw_are_one_warning(tmp_path):
    """Chinese class names gave matplotlib's warning once per glyph per figure (8 lines for two
    characters); now one line names the characters, and the names reach the report intact."""
    from matplotlib import font_manager

    font = font_manager.get_font(font_manager.findfont(font_manager.FontProperties()))
    if font.get_char_index(ord("快")) and font.get_char_index(ord("乐")):
        pytest.skip("this machine's plotting font draws Chinese")
    data = write_split_folder(tmp_path / "data", classes=("快乐", "sad, very", "Ärger"))
    r = CliRunner().invoke(main, ["finetune", "--data", str(data), "--backbone", TINY, "--no-pretrained", "--img-size", "32",
                                  "--epochs", "1", "--freeze-epochs", "0", "--workers", "0", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert len(notes) == 1 and "has no 快 乐:" in notes[0] and "Glyph" not in r.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["classes"] == sorted(["快乐", "sad, very", "Ärger"])


def test_a_run_without_a_test_split_says_its_scores_are_not_held_out(flat_folder, tmp_path):
    """Reported on val, which chose the epoch: run.json said so, the console did not."""
    r = CliRunner().invoke(main, ["finetune", "--data", str(flat_folder), "--backbone", TINY, "--no-pretrained",
                                  "--img-size", "32", "--epochs", "1", "--freeze-epochs", "0", "--workers", "0",
                                  "--test-split", "0", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "(val split, best epoch 1)" in r.output
    assert "note: no test split: reported on val, which also chose the best epoch, so these scores are not held out" in (
        " ".join(r.output.split()))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["eval_split"] == "val"


def test_a_confusion_matrix_of_many_classes_is_colour_only_and_bounded(tmp_path):
    """200 classes drew 80,000 numbers into a 120-inch figure; past 30 classes the cells are
    colour only, with a colour bar, and the figure's side is bounded."""
    from PIL import Image

    from ftkit.report import MANY_CLASSES, plot_confusion

    for k in (MANY_CLASSES, 200):
        cm = np.random.default_rng(0).integers(0, 20, (k, k)).tolist()
        folder = tmp_path / str(k)
        folder.mkdir()
        plot_confusion({"classes": [f"c{i}" for i in range(k)], "confusion_matrix": cm, "split": "test"}, folder)
        width, height = Image.open(folder / "confusion_matrix.png").size
        assert width <= (40 + 6) * 120 and height <= (40 + 6) * 120
        if k == MANY_CLASSES:  # numbers in the cells: as wide as 0.75 inch per class
            assert width >= 0.5 * k * 120
