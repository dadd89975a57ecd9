"""Knowledge distillation (issue 36): the loss is the documented mix of the hard and soft terms,
the teachers run once per run and their cached targets are what the student's epochs use, and a
distillation run resumes exactly."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

import ftkit.distill as distill_mod
import ftkit.train as train_mod
from ftkit.cli import main
from ftkit.config import ConfigError
from ftkit.distill import DistillLoss, softened
from ftkit.predict import Predictor
from ftkit.train import finetune, resume

from conftest import TINY, interrupt_at_epoch, tiny_config, write_split_folder


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_the_loss_is_the_documented_mix_of_labels_and_teachers_by_hand():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4))
    labels = np.array([0, 3, 1, 1, 2])
    teacher_logits = rng.normal(size=(2, 5, 4))  # two teachers
    log_probs = np.log(_softmax(teacher_logits.reshape(10, 4))).reshape(2, 5, 4)
    alpha, t = 0.7, 3.0

    # by hand: p_T = mean over teachers of softmax(log q / T); soft = T^2 x mean over images of KL(p_T || softmax(z / T))
    p_t = np.mean([_softmax(lp / t) for lp in log_probs], axis=0)
    q_t = _softmax(logits / t)
    kl = np.mean(np.sum(p_t * (np.log(p_t) - np.log(q_t)), axis=1))
    hard = np.mean(-np.log(_softmax(logits)[np.arange(5), labels]))
    expected = (1 - alpha) * hard + alpha * t * t * kl

    soft = softened(torch.tensor(log_probs, dtype=torch.float64), t)
    assert np.allclose(soft.numpy(), p_t)
    loss = DistillLoss(torch.nn.CrossEntropyLoss(), alpha, t)
    got = loss(torch.tensor(logits), torch.tensor(labels), soft)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    # without soft targets (the validation loss) it is the labels' cross-entropy alone
    assert loss(torch.tensor(logits), torch.tensor(labels)).item() == pytest.approx(hard, rel=1e-9)
    # the ends of alpha: labels only, teachers only
    assert DistillLoss(torch.nn.CrossEntropyLoss(), 0.0, t)(torch.tensor(logits), torch.tensor(labels), soft).item() == \
        pytest.approx(hard, rel=1e-9)
    assert DistillLoss(torch.nn.CrossEntropyLoss(), 1.0, t)(torch.tensor(logits), torch.tensor(labels), soft).item() == \
        pytest.approx(t * t * kl, rel=1e-9)


def test_settings_a_distillation_run_cannot_take_are_refused(split_folder, tmp_path):
    with pytest.raises(ConfigError, match="mixup and cutmix"):
        tiny_config(split_folder, tmp_path, teacher=["x"], mixup=0.2)
    with pytest.raises(ConfigError, match="head logreg takes none"):
        tiny_config(split_folder, tmp_path, teacher=["x"], head="logreg")
    with pytest.raises(ConfigError, match="distill_alpha must be in"):
        tiny_config(split_folder, tmp_path, distill_alpha=1.5)
    with pytest.raises(ConfigError, match="distill_temperature above 0"):
        tiny_config(split_folder, tmp_path, distill_temperature=0.0)
    r = CliRunner().invoke(main, ["distill", "--data", str(split_folder)])
    assert r.exit_code == 2 and "name at least one teacher" in r.output
    r = CliRunner().invoke(main, ["distill", "--resume", str(tmp_path), "runs/a"])
    assert r.exit_code == 2 and "leave out TEACHERS" in r.output


@pytest.fixture
def teacher_run(split_folder, tmp_path):
    """A tiny trained run to distil from."""
    return finetune(tiny_config(split_folder, tmp_path, epochs=2, name="teacher")).run_dir


def _student_args(data, tmp_path, name, epochs=2):
    return ["--data", str(data), "--backbone", TINY, "--no-pretrained", "--img-size", "32", "--epochs", str(epochs),
            "--freeze-epochs", "1", "--batch-size", "8", "--lr", "0.003", "--workers", "0",
            "--project", str(tmp_path / "runs"), "--name", name]


def _metrics(run):
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in ("images_per_s", "seconds")} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_distill_runs_the_teachers_once_and_trains_on_their_cached_targets(split_folder, tmp_path, teacher_run, monkeypatch):
    events, seen_soft = [], []
    real_scores, real_epoch, real_loss = distill_mod.teacher_log_probs, train_mod.train_one_epoch, DistillLoss.forward

    def scores(*args, **kwargs):
        events.append("teacher")
        return real_scores(*args, **kwargs)

    def epoch(*args, **kwargs):
        events.append("epoch")
        return real_epoch(*args, **kwargs)

    def loss(self, logits, target, soft=None):
        if soft is not None:
            seen_soft.append(soft.clone())
        return real_loss(self, logits, target, soft)

    monkeypatch.setattr(distill_mod, "teacher_log_probs", scores)
    monkeypatch.setattr(train_mod, "train_one_epoch", epoch)
    monkeypatch.setattr(DistillLoss, "forward", loss)
    # the same teacher twice: an ensemble of two, each scored once
    r = CliRunner().invoke(main, ["distill", str(teacher_run), "--teacher", str(teacher_run), "--distill-alpha", "0.8",
                                  *_student_args(split_folder, tmp_path, "student")])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "student"
    assert events == ["teacher", "teacher", "epoch", "epoch"]  # both teachers before the first epoch, none after

    cache = load_file(run / "teacher.safetensors")["log_probs"]
    assert cache.shape == (2, 36, 3)  # teachers x training images x classes
    assert torch.allclose(cache.exp().sum(2), torch.ones(2, 36), atol=1e-5)
    targets = softened(cache, 4.0)
    # every soft target the student trained on is the cached one of some training image
    batches = torch.cat(seen_soft)
    assert len(batches) == 2 * 32 and all(  # 2 epochs of 4 full batches (a short last batch is dropped)
        torch.isclose(targets, row).all(1).any() for row in batches)

    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["distill"] == {"teachers": [str(teacher_run), str(teacher_run)], "alpha": 0.8, "temperature": 4.0,
                                 "teacher_tta": "model", "targets": "teacher.safetensors"}
    # the cached targets are the teacher's probabilities as ftkit predict computes them, image by image
    with open(run / "split.csv") as f:
        train = [split_folder / row["path"] for row in csv.DictReader(f) if row["split"] == "train"]
    probs = Predictor.from_run(teacher_run, device="cpu").probs([np.asarray(Image.open(p).convert("RGB")) for p in train])
    assert np.allclose(cache[0].exp().numpy(), probs, atol=1e-5)


@pytest.mark.slow
def test_a_distillation_run_resumes_exactly_without_running_the_teachers_again(split_folder, tmp_path, teacher_run,
                                                                              monkeypatch):
    def settings(name):
        return tiny_config(split_folder, tmp_path, epochs=3, name=name, teacher=[str(teacher_run)])

    full = finetune(settings("full"))
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        interrupt_at_epoch(patch, 3)
        finetune(settings("cut"))
    cut = tmp_path / "runs" / "cut"
    assert len(_metrics(cut)) == 2

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teachers ran again on resuming")

    monkeypatch.setattr(distill_mod, "teacher_log_probs", no_teacher)
    resume(cut)
    assert _metrics(cut) == _metrics(full.run_dir)
    assert torch.equal(load_file(cut / "teacher.safetensors")["log_probs"],
                       load_file(full.run_dir / "teacher.safetensors")["log_probs"])


@pytest.mark.slow
def test_a_teacher_without_a_class_of_the_data_is_refused_by_name(tmp_path):
    two = write_split_folder(tmp_path / "two", classes=("alpha", "beta"))
    teacher = finetune(tiny_config(two, tmp_path, epochs=1, freeze_epochs=0, name="two-classes")).run_dir
    three = write_split_folder(tmp_path / "three", classes=("alpha", "beta", "gamma"))
    r = CliRunner().invoke(main, ["distill", str(teacher), *_student_args(three, tmp_path, "student")])
    assert r.exit_code == 1 and f"teacher {teacher} has no class gamma" in r.output
