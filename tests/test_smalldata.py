"""Few-shot draws, cross-validation folds, grouped splits and the three heads."""

import csv
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from ftkit.cli import main
from ftkit.crossval import fold_indices
from ftkit.data import DataError, grouped_split, load_data
from ftkit.evaluation import accuracy_interval
from ftkit.runs import list_runs
from conftest import TINY, tiny_config, write_images


@pytest.fixture
def clip_folder(tmp_path):
    """A flat folder of 'film frames': 4 clips per class, 5 numbered frames each."""
    rng = np.random.default_rng(2)
    root = tmp_path / "clips"
    for label, c in enumerate(["calm", "joy", "rage"]):
        for clip in range(4):
            folder = root / c
            folder.mkdir(parents=True, exist_ok=True)
            for i, path in enumerate(write_images(tmp_path / "tmpimg", label, 5, rng)):
                path.rename(folder / f"{c}clip{clip}_{i:04d}.png")
    return root


GROUP = r"(\w+clip\d+)_\d+\.png$"


def test_shots_draws_n_per_class_and_holds_out_the_rest(split_folder, tmp_path):
    a = load_data(tiny_config(split_folder, tmp_path, shots=5))
    assert a.summary()["train"] == {"alpha": 5, "beta": 5, "gamma": 5}
    # a test split exists already: the 7 undrawn per class are left out, test is untouched
    assert a.summary()["test"] == {"alpha": 4, "beta": 4, "gamma": 4}
    b = load_data(tiny_config(split_folder, tmp_path, shots=5))
    assert a.splits["train"].keys == b.splits["train"].keys
    c = load_data(tiny_config(split_folder, tmp_path, shots=5, seed=3))
    assert c.splits["train"].keys != a.splits["train"].keys
    for image in sorted((split_folder / "train" / "beta").glob("*.png"))[3:]:  # beta keeps 3 training images
        image.unlink()
    with pytest.raises(DataError, match=r"--shots 5: class 'beta' has only 3 training image\(s\), the fewest of any "
                                        r"class, .*: give --shots 3 or fewer"):
        load_data(tiny_config(split_folder, tmp_path, shots=5))


def test_shots_rest_becomes_test_when_there_is_none(flat_folder, tmp_path):
    data = load_data(tiny_config(flat_folder, tmp_path, shots=4, test_split=0.0, val_split=0.2))
    assert data.summary()["train"] == {"alpha": 4, "beta": 4, "gamma": 4}
    assert data.summary()["test"] == {"alpha": 12, "beta": 12, "gamma": 12}
    train, held = set(data.splits["train"].keys), set(data.splits["test"].keys) | set(data.splits["val"].keys)
    assert not train & held


def test_group_by_never_splits_a_clip(clip_folder, tmp_path):
    data = load_data(tiny_config(clip_folder, tmp_path, group_by=GROUP, val_split=0.25, test_split=0.25))
    side = {}
    for name, split in data.splits.items():
        for key in split.keys:
            clip = re.search(GROUP, key).group(1)
            assert side.setdefault(clip, name) == name, f"{clip} is on two sides"
    assert {len(s) for s in data.splits.values()} == {15, 30}  # whole clips of 5 frames


def test_a_group_by_that_finds_one_group_says_so(clip_folder, tmp_path):
    """It used to say 'no validation images: raise --val-split', which does not help."""
    with pytest.raises(DataError, match=r"--group-by '\(clip\)' finds 1 group\(s\) \(e\.g\. clip\), too few"):
        load_data(tiny_config(clip_folder, tmp_path, group_by="(clip)", val_split=0.25, test_split=0.25))


def test_grouped_split_is_pure_and_deterministic():
    labels = np.repeat([0, 1], 20)
    groups = np.repeat(np.arange(8), 5)
    a = grouped_split(labels, groups, {"val": 0.25}, seed=1)
    assert (a == grouped_split(labels, groups, {"val": 0.25}, seed=1)).all()
    for g in range(8):
        assert len(set(a[groups == g])) == 1


def test_near_duplicate_frames_warn_without_group_by(clip_folder, tmp_path):
    with pytest.warns(UserWarning, match=r"numbered frames of \d+ clips.*--group-by"):
        load_data(tiny_config(clip_folder, tmp_path))


def test_folds_are_stratified_disjoint_and_grouped():
    labels = np.repeat([0, 1, 2], 10)
    folds = fold_indices(labels, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(30))
    assert all(np.bincount(labels[f], minlength=3).tolist() == [2, 2, 2] for f in folds)
    groups = np.repeat(np.arange(6), 5)
    grouped = fold_indices(labels, 3, seed=0, groups=groups)
    for f in grouped:
        assert set(groups[f]).isdisjoint(set(np.concatenate([g for g in grouped if g is not f]) // 5))


@pytest.mark.slow
def test_cross_validation_report_aggregates_the_fold_predictions(flat_folder, tmp_path):
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    r = CliRunner().invoke(main, ["finetune", "--data", str(flat_folder), "--backbone", TINY, "--no-pretrained",
                                  "--img-size", "32", "--epochs", "1", "--freeze-epochs", "0", "--batch-size", "8",
                                  "--folds", "3", "--workers", "0", "--project", str(tmp_path / "runs"), "--name", "cv"])
    assert r.exit_code == 0, r.output
    assert "3-fold cross-validation" in r.output and "per-class F1 over folds" in r.output  # the summary tables
    root = tmp_path / "runs" / "cv"
    cv = json.loads((root / "cv_report.json").read_text())
    accs, f1s, per_class, cm, seen = [], [], {c: [] for c in ("alpha", "beta", "gamma")}, 0, set()
    for k in (1, 2, 3):
        with open(root / f"fold-{k}" / "predictions.csv") as f:
            rows = list(csv.DictReader(f))
        y, p = [r["true"] for r in rows], [r["predicted"] for r in rows]
        seen |= {r["path"] for r in rows}
        accs.append(accuracy_score(y, p))
        f1s.append(f1_score(y, p, average="macro", zero_division=0))
        for i, c in enumerate(per_class):
            per_class[c].append(f1_score(y, p, labels=[c], average="macro", zero_division=0))
        cm = cm + confusion_matrix(y, p, labels=list(per_class))
    assert len(seen) == 60  # every image tested exactly once
    assert cv["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert cv["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert cv["macro_f1"]["mean"] == pytest.approx(np.mean(f1s))
    for c, values in per_class.items():
        assert cv["per_class_f1"][c]["mean"] == pytest.approx(np.mean(values))
        assert cv["per_class_f1"][c]["std"] == pytest.approx(np.std(values, ddof=1))
    assert cv["confusion_matrix"] == cm.tolist()
    # the 60 pooled test images: their accuracy and its Wilson interval (scipy's, as a single run's)
    pooled_accuracy = np.trace(cm) / 60
    assert cv["pooled"]["n"] == 60 and cv["pooled"]["accuracy"] == pytest.approx(pooled_accuracy)
    assert cv["pooled"]["accuracy_ci95"] == pytest.approx(accuracy_interval(int(np.trace(cm)), 60))
    low, high = cv["pooled"]["accuracy_ci95"]
    said = f"pooled over the 60 test images: accuracy {pooled_accuracy:.4f} (95 % Wilson interval {low:.3f}-{high:.3f})"
    assert (root / "cv_report.md").is_file() and (root / "confusion_matrix.png").is_file()
    assert said in (root / "cv_report.md").read_text()
    r = CliRunner().invoke(main, ["report", str(root)])
    assert r.exit_code == 0 and "3-fold cross-validation" in r.output and said in " ".join(r.output.split())
    listed = list_runs(tmp_path / "runs")  # `ftkit runs` gives the same numbers, not the pooled folds'
    assert [(r["folds"], r["accuracy"], r["macro_f1"]) for r in listed] == [(3, cv["accuracy"]["mean"], cv["macro_f1"]["mean"])]


def test_shots_with_folds_draws_each_folds_training_images(flat_folder, tmp_path):
    """--shots N --folds K: each fold trains on N images per class drawn from its own training
    part, and every image is still tested once (the few-shot cross-validation protocol)."""
    r = CliRunner().invoke(main, ["finetune", "--data", str(flat_folder), "--backbone", TINY, "--no-pretrained",
                                  "--img-size", "32", "--epochs", "1", "--freeze-epochs", "0", "--batch-size", "8",
                                  "--folds", "3", "--shots", "4", "--workers", "0", "--project", str(tmp_path / "runs"),
                                  "--name", "cv"])
    assert r.exit_code == 0, r.output
    root, tested = tmp_path / "runs" / "cv", []
    for k in (1, 2, 3):
        data = json.loads((root / f"fold-{k}" / "run.json").read_text())["data"]
        assert data["counts"]["train"] == {"alpha": 4, "beta": 4, "gamma": 4}
        assert any("--shots 4" in note for note in data["notes"])
        with open(root / f"fold-{k}" / "split.csv") as f:
            rows = list(csv.DictReader(f))
        assert sum(row["split"] == "train" for row in rows) == 12
        tested += [row["path"] for row in rows if row["split"] == "test"]
    assert len(tested) == len(set(tested)) == 60


@pytest.mark.slow
@pytest.mark.parametrize("stop", [3, 4])
def test_an_interrupted_cross_validation_resumes_every_fold(stop, flat_folder, tmp_path, monkeypatch):
    """Ctrl-C in fold 2 of 3, then `--resume ROOT`: fold 1 is kept as it is, fold 2 continues
    from its last epoch (or, stopped in its first epoch, is trained again), fold 3 is trained,
    and the pooled report equals an uninterrupted run's."""
    from ftkit.train import finetune, resume
    from conftest import interrupt_at_epoch

    settings = dict(epochs=2, freeze_epochs=0, folds=3)
    full = finetune(tiny_config(flat_folder, tmp_path, name="full", **settings))
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        interrupt_at_epoch(patch, stop)  # fold 1 takes epochs 1-2; fold 2's first (3) or second (4) is stopped
        finetune(tiny_config(flat_folder, tmp_path, name="cut", **settings))
    cut = tmp_path / "runs" / "cut"
    assert json.loads((cut / "run.json").read_text())["status"] == "interrupted"
    assert json.loads((cut / "fold-2" / "run.json").read_text())["status"] == "interrupted"
    assert not (cut / "fold-3").exists()
    fold1 = (cut / "fold-1" / "predictions.csv").stat().st_mtime_ns

    resumed = resume(cut)
    assert resumed.run_dir == cut and json.loads((cut / "run.json").read_text())["status"] == "finished"
    assert (cut / "fold-1" / "predictions.csv").stat().st_mtime_ns == fold1  # kept, not trained again
    for name in ("cv_report.json", "predictions.csv"):
        assert (cut / name).read_text().replace("cut", "full") == (full.run_dir / name).read_text(), name
    with pytest.raises(Exception, match="finished 3-fold cross-validation: there is nothing to resume"):
        resume(cut)
    r = CliRunner().invoke(main, ["predict", str(cut), str(next(flat_folder.rglob("*.png")))])
    assert r.exit_code == 1 and "is a cross-validation: it holds one model per fold" in r.output


def test_too_many_folds_fail_before_any_folder_is_made(flat_folder, tmp_path):
    r = CliRunner().invoke(main, ["finetune", "--data", str(flat_folder), "--backbone", TINY, "--no-pretrained",
                                  "--folds", "30", "--workers", "0", "--project", str(tmp_path / "runs")])
    assert r.exit_code == 1 and "--folds 30: the smallest class has only 20 images" in r.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_a_cross_validation_whose_fold_failed_says_so_and_resumes(flat_folder, tmp_path, monkeypatch):
    import ftkit.train as train_mod
    from ftkit.train import finetune, resume

    real, calls = train_mod.train_one_epoch, {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # fold 2's second epoch
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(RuntimeError):
        patch.setattr(train_mod, "train_one_epoch", failing)
        finetune(tiny_config(flat_folder, tmp_path, name="cv", epochs=2, freeze_epochs=0, folds=3))
    root = tmp_path / "runs" / "cv"
    record = json.loads((root / "run.json").read_text())
    assert record["status"] == "failed" and record["error"] == "fold 2: RuntimeError: disk on fire"
    assert resume(root).report["folds"] == 3
    record = json.loads((root / "run.json").read_text())
    assert record["status"] == "finished" and record["error"] is None
    assert json.loads((root / "fold-2" / "run.json").read_text())["error"] is None


@pytest.mark.slow
@pytest.mark.parametrize("head", ["linear", "logreg"])
def test_heads_train_and_predict_through_the_cli(head, split_folder, tmp_path):
    r = CliRunner().invoke(main, ["finetune", "--data", str(split_folder), "--backbone", TINY, "--no-pretrained",
                                  "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--head", head,
                                  "--workers", "0", "--project", str(tmp_path / "runs"), "--name", head])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / head
    report = json.loads((run / "report.json").read_text())
    assert report["n"] == 12
    assert json.loads((run / "run.json").read_text())["train_seconds"] > 0
    if head == "linear":
        phases = json.loads((run / "run.json").read_text())["phases"]
        assert [p["name"] for p in phases] == ["head"]
    else:
        meta = json.loads((run / "checkpoints" / "best.json").read_text())
        assert meta["logreg"]["C"] in (0.01, 0.1, 1.0, 10.0)
        # the bar images are linearly separable in any embedding: the regression nails them
        assert report["accuracy"] >= 0.9
    r = CliRunner().invoke(main, ["predict", str(run), str(split_folder / "test" / "alpha"), "--output", str(tmp_path / f"{head}.json")])
    assert r.exit_code == 0, r.output
    preds = json.loads((tmp_path / f"{head}.json").read_text())
    assert len(preds) == 4 and all(len(p["detections"][0]["top"]) == 3 for p in preds)
    r = CliRunner().invoke(main, ["evaluate", str(run), "--split", "val"])
    assert r.exit_code == 0, r.output


def test_logreg_folded_into_the_linear_layer_gives_the_same_probabilities():
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ftkit.heads import fold_into_linear

    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, size=(60, 5))
    for n_classes in (2, 3):
        y = np.arange(60) % n_classes
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(max_iter=1000).fit(scaler.transform(x), y)
        layer = torch.nn.Linear(5, n_classes)
        fold_into_linear(layer, clf, scaler)
        probs = layer(torch.tensor(x, dtype=torch.float32)).softmax(1).detach().numpy()
        np.testing.assert_allclose(probs, clf.predict_proba(scaler.transform(x)), atol=1e-5)
