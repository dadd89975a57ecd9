import csv
import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from ftkit import train as train_mod
from ftkit.config import ConfigError, resolve
from ftkit.models import create, head_parameter_names, set_trainable, stage_groups
from ftkit.train import Phase, build_optimizer, cosine_with_warmup, finetune, plan_phases, resume
from conftest import interrupt_at_epoch, tiny_config, write_split_folder


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _bn_stats(model):
    return {n: b.detach().clone() for n, b in model.named_buffers() if "running_mean" in n}


def test_plan_phases_names_every_epoch():
    assert plan_phases(4, 1, "all", 5) == [Phase("head", 0)] + [Phase("full", None)] * 3
    gradual = plan_phases(6, 2, "gradual", 3)
    assert [p.name for p in gradual] == ["head", "head", "gradual-1/3", "gradual-2/3", "full", "full"]
    assert [p.unfrozen_stages for p in gradual] == [0, 0, 1, 2, None, None]


def test_a_backbone_with_no_start_trains_whole_from_the_first_epoch_unless_told_otherwise(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("backbone_lr_mult: 0.5\n")
    scratch = resolve(None, pretrained=False)
    assert (scratch.freeze_epochs, scratch.backbone_lr_mult) == (0, 1.0)
    assert plan_phases(scratch.epochs, scratch.freeze_epochs, "all", 5) == [Phase("full", None)] * scratch.epochs
    asked = resolve(recipe, pretrained=False, freeze_epochs=2)  # what a recipe or an option says stands
    assert (asked.freeze_epochs, asked.backbone_lr_mult) == (2, 0.5)
    for start in (resolve(None), resolve(None, pretrained=False, weights="w.safetensors"),
                  resolve(None, pretrained=False, head="linear")):
        assert (start.freeze_epochs, start.backbone_lr_mult) == (1, 0.1)


def test_run_names_keep_letters_of_any_script_and_fit_a_file_system(split_folder, tmp_path):
    from ftkit.runs import SLUG_BYTES, slug

    assert [slug(n) for n in ("run één", "表情 数据", "../up", ".hidden", "a\\b")] == ["run-één", "表情-数据", "up", "hidden", "a-b"]
    long = slug("表" * 100)  # 3 bytes a letter: cut at a whole letter
    assert long == "表" * (SLUG_BYTES // 3) and len(long.encode()) <= SLUG_BYTES
    run = finetune(tiny_config(split_folder, tmp_path, name="表情 " + "x" * 300, epochs=1)).run_dir
    assert run.name == slug("表情 " + "x" * 300) and run.name.startswith("表情-xxx") and (run / "report.json").is_file()


def test_cosine_schedule_warms_up_then_decays():
    values = [cosine_with_warmup(s, total=100, warmup=10) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[-1] == pytest.approx(0.01, abs=0.01)


def _one_epoch(model, cfg, data_root, tmp_path, unfrozen):
    """Train one epoch of the real loop with ``unfrozen`` stages; returns the model."""
    from ftkit.data import load_data
    from ftkit.models import resolve_data_config

    data = load_data(cfg)
    dc = resolve_data_config(model, cfg)
    loader, _, _, _ = train_mod.make_loaders(data, dc, cfg, torch.device("cpu"))
    set_trainable(model, unfrozen)
    opt = build_optimizer(model, cfg)
    train_mod.train_one_epoch(train_mod.StepParts(model, torch.nn.CrossEntropyLoss(), opt), loader)


def test_head_phase_freezes_backbone_weights_and_batchnorm(split_folder, tmp_path):
    cfg = tiny_config(split_folder, tmp_path)
    model = create(cfg, 3)
    before, stats_before = _snapshot(model), _bn_stats(model)
    _one_epoch(model, cfg, split_folder, tmp_path, unfrozen=0)
    head = head_parameter_names(model)
    after = _snapshot(model)
    assert head and all(not torch.equal(before[n], after[n]) for n in head)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in head)
    stats_after = _bn_stats(model)
    assert all(torch.equal(stats_before[n], stats_after[n]) for n in stats_before)


def test_full_phase_unfreezes_the_backbone(split_folder, tmp_path):
    cfg = tiny_config(split_folder, tmp_path)
    model = create(cfg, 3)
    before = _snapshot(model)
    _one_epoch(model, cfg, split_folder, tmp_path, unfrozen=None)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    first_stage = stage_groups(model)[0]
    assert set(first_stage) <= changed  # even the stem moved
    assert len(changed) == len(before)


def test_gradual_unfreezes_last_stages_first(split_folder, tmp_path):
    cfg = tiny_config(split_folder, tmp_path)
    model = create(cfg, 3)
    stages = stage_groups(model)
    set_trainable(model, 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(stages[-1]) | set(stages[-2]) | head_parameter_names(model)


def test_backbone_lr_multiplier_in_param_groups(split_folder, tmp_path):
    cfg = tiny_config(split_folder, tmp_path, lr=0.01, backbone_lr_mult=0.1)
    groups = {g["name"]: g for g in build_optimizer(create(cfg, 3), cfg).param_groups}
    assert groups["head"]["lr"] == pytest.approx(0.01)
    assert groups["backbone"]["lr"] == pytest.approx(0.001)
    assert groups["backbone-no-decay"]["weight_decay"] == 0.0


def test_unknown_optimizer_lists_valid_names(split_folder, tmp_path):
    from ftkit.config import ConfigError

    with pytest.raises(ConfigError, match="unknown value for 'optimizer': 'adamm'.*Did you mean 'adam'.*Valid: adamw, adam, sgd, rmsprop"):
        tiny_config(split_folder, tmp_path, optimizer="adamm")
    with pytest.raises(ConfigError, match=r"Valid: adamw, adam, sgd, rmsprop\.$"):  # a GPU index is a device's, not every choice's
        tiny_config(split_folder, tmp_path, optimizer="adamm")
    with pytest.raises(ConfigError, match=r"unknown value for 'device': 'gpu'.*Valid: .*cuda:N"):
        tiny_config(split_folder, tmp_path, device="gpu")


TIMING_COLUMNS = ("images_per_s", "seconds")


def _metrics(run):
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_finetune_writes_a_complete_run_directory(split_folder, tmp_path):
    result = finetune(tiny_config(split_folder, tmp_path, epochs=3, freeze_epochs=1))
    run = result.run_dir
    for name in ("args.yaml", "classes.json", "split.csv", "metrics.csv", "predictions.csv", "report.json",
                 "report.md", "run.json", "confusion_matrix.png", "confusion_matrix_normalized.png", "curves.png",
                 "checkpoints/best.safetensors", "checkpoints/best.json", "checkpoints/last.safetensors",
                 "checkpoints/last.json", "checkpoints/last.state.pt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "classes.json").read_text()) == ["alpha", "beta", "gamma"]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["eval_split"] == "test"
    assert [p["name"] for p in record["phases"]] == ["head", "full"]
    assert record["phases"][0]["epochs"] == [1, 1] and record["phases"][1]["epochs"] == [2, 3]
    assert [r["phase"] for r in _metrics(run)] == ["head", "full", "full"]
    assert record["weights"]["source"] == "none"
    assert len(open(run / "predictions.csv").readlines()) == 1 + 12
    assert not list(run.rglob("*.tmp"))
    # the bars are easy: three epochs are enough to beat chance clearly
    assert result.report["accuracy"] > 0.6


def test_a_run_that_merged_and_dropped_classes_resumes(tmp_path, monkeypatch):
    """--resume reads the run's split.csv, which names merged images by their new class and
    lists no dropped one: it failed with "unknown class" for any run with --merge-class or
    --drop-class."""
    data = write_split_folder(tmp_path / "data", sizes=(("train", 6), ("val", 2), ("test", 2)),
                              classes=("anger", "contempt", "disgust", "happy"))
    settings = dict(epochs=2, name="cut", merge_classes={"disgust": "anger"}, drop_classes=["contempt"])
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        interrupt_at_epoch(patch, 2)
        finetune(tiny_config(data, tmp_path, **settings))
    cut = tmp_path / "runs" / "cut"
    resumed = resume(cut)
    assert resumed.record["status"] == "finished" and [r["epoch"] for r in _metrics(cut)] == ["1", "2"]
    assert json.loads((cut / "classes.json").read_text()) == ["anger", "happy"]


@pytest.mark.slow
def test_same_seed_gives_identical_runs(split_folder, tmp_path):
    a = finetune(tiny_config(split_folder, tmp_path, name="a"))
    b = finetune(tiny_config(split_folder, tmp_path, name="b"))
    assert _metrics(a.run_dir) == _metrics(b.run_dir)
    assert (a.run_dir / "predictions.csv").read_text() == (b.run_dir / "predictions.csv").read_text()


@pytest.mark.slow
def test_resume_continues_from_the_last_epoch_exactly(split_folder, tmp_path, monkeypatch):
    full = finetune(tiny_config(split_folder, tmp_path, epochs=3, name="full"))
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        interrupt_at_epoch(patch, 3)
        finetune(tiny_config(split_folder, tmp_path, epochs=3, name="cut"))
    cut = tmp_path / "runs" / "cut"
    assert json.loads((cut / "run.json").read_text())["status"] == "interrupted"
    assert len(_metrics(cut)) == 2

    resumed = resume(cut)
    assert resumed.run_dir == cut
    assert [r["epoch"] for r in _metrics(cut)] == ["1", "2", "3"]
    assert _metrics(cut) == _metrics(full.run_dir)
    # the recorded time covers the epochs of both sittings, not just the resumed one
    with open(cut / "metrics.csv") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
    assert json.loads((cut / "run.json").read_text())["train_seconds"] == pytest.approx(sum(seconds), abs=0.1)


@pytest.mark.slow
def test_a_run_whose_data_moved_resumes_with_data_and_records_the_new_place(split_folder, tmp_path, monkeypatch):
    """Resuming on another disk or machine: the data is elsewhere. --resume RUN --data NEW checks
    every image of the run's split listing there, continues exactly, and records the move."""
    from click.testing import CliRunner

    from ftkit.cli import main

    full = finetune(tiny_config(split_folder, tmp_path, epochs=3, name="full"))
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        interrupt_at_epoch(patch, 3)
        finetune(tiny_config(split_folder, tmp_path, epochs=3, name="cut"))
    cut = tmp_path / "runs" / "cut"
    moved = split_folder.rename(tmp_path / "elsewhere")
    r = CliRunner().invoke(main, ["finetune", "--resume", str(cut)])
    assert r.exit_code == 1 and f"trained on {split_folder}, which is not there any more" in r.output
    assert f"--resume {cut} --data NEW_PLACE" in " ".join(r.output.split())
    short = tmp_path / "short"
    shutil.copytree(moved, short)
    next((short / "train").rglob("*.png")).unlink()
    r = CliRunner().invoke(main, ["finetune", "--resume", str(cut), "--data", str(short)])
    assert r.exit_code == 1 and "is listed but not there" in r.output
    assert yaml.safe_load((cut / "args.yaml").read_text())["data"] == str(split_folder)  # a failed move changes nothing

    r = CliRunner().invoke(main, ["finetune", "--resume", str(cut), "--data", str(moved)])
    assert r.exit_code == 0, r.output
    assert _metrics(cut) == _metrics(full.run_dir)
    assert yaml.safe_load((cut / "args.yaml").read_text())["data"] == str(moved)
    record = json.loads((cut / "run.json").read_text())
    assert record["data"]["path"] == str(moved) and record["data_moves"] == [{"from": str(split_folder), "to": str(moved)}]
    r = CliRunner().invoke(main, ["evaluate", str(cut), "--name", "again"])  # the run's own data, at its new place
    assert r.exit_code == 0, r.output
    assert (cut / "eval" / "again" / "predictions.csv").read_text() == (cut / "predictions.csv").read_text()

    # a finished run's data moved: evaluate says how to record it, and --resume --data records it
    final = moved.rename(tmp_path / "final")
    r = CliRunner().invoke(main, ["evaluate", str(cut), "--name", "lost"])
    assert r.exit_code == 1 and "which is not there any more" in r.output and "--data NEW_PLACE" in " ".join(r.output.split())
    r = CliRunner().invoke(main, ["finetune", "--resume", str(cut), "--data", str(final)])
    assert r.exit_code == 0 and "finished earlier: nothing to resume; it now reads its data from" in " ".join(r.output.split())
    assert yaml.safe_load((cut / "args.yaml").read_text())["data"] == str(final)
    assert CliRunner().invoke(main, ["evaluate", str(cut), "--name", "found"]).exit_code == 0
    assert CliRunner().invoke(main, ["report", str(cut)]).exit_code == 0  # its gallery finds the images moved twice
    page = (cut / "report.html").read_text()
    assert page.count('class="thumb"') >= 4 and "image not found" not in page


@pytest.mark.slow
def test_early_stopping_stops(split_folder, tmp_path, monkeypatch):
    # a metric that never improves after epoch 1 -> stop after `patience` more epochs
    monkeypatch.setattr(train_mod, "quick_metrics", lambda y, p: {"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 0.5})
    result = finetune(tiny_config(split_folder, tmp_path, epochs=6, patience=2))
    assert len(result.history) == 3
    assert json.loads((result.run_dir / "run.json").read_text())["best_epoch"] == 1


def test_channels_1_adapts_pretrained_first_conv(split_folder, tmp_path):
    """With one input channel, timm sums the pretrained RGB filters (as in_chans does)."""
    cfg3 = tiny_config(split_folder, tmp_path)
    rgb = create(cfg3, 3)
    state = rgb.state_dict()
    cfg1 = tiny_config(split_folder, tmp_path, channels=1)
    gray = create(cfg1, 3, state_dict=state)
    w3, w1 = rgb.conv_stem.weight, gray.conv_stem.weight
    assert w1.shape[1] == 1
    torch.testing.assert_close(w1[:, 0], w3.sum(1))


def test_mixer_is_off_by_default_and_mixes_pairs_when_on(split_folder, tmp_path):
    assert train_mod.make_mixer(tiny_config(split_folder, tmp_path), 3) is None
    mixer = train_mod.make_mixer(tiny_config(split_folder, tmp_path, mixup=0.4), 3)
    torch.manual_seed(0)
    np.random.seed(0)
    x, y = torch.rand(8, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    mixed, target = mixer(x.clone(), y)
    assert target.shape == (8, 3) and torch.allclose(target.sum(1), torch.ones(8))
    # image i is blended with image 7 - i (timm mixes a batch with its reverse); 0 and 7 differ in class
    lam = target[0, 0].item()
    assert 0 < lam < 1 and torch.allclose(mixed[0], lam * x[0] + (1 - lam) * x[7], atol=1e-6)


def test_training_with_mixup_and_cutmix_runs_and_is_recorded(split_folder, tmp_path):
    plain = finetune(tiny_config(split_folder, tmp_path, name="plain"))
    result = finetune(tiny_config(split_folder, tmp_path, mixup=0.2, cutmix=1.0, name="mixed"))
    rows = _metrics(result.run_dir)
    assert len(rows) == 2 and all(np.isfinite(float(r["train_loss"])) for r in rows)
    # same seed, same batches: only the mixing makes the losses differ
    assert [r["train_loss"] for r in rows] != [r["train_loss"] for r in _metrics(plain.run_dir)]
    args = (result.run_dir / "args.yaml").read_text()
    assert "mixup: 0.2" in args and "cutmix: 1.0" in args


def test_negative_mixup_is_refused(split_folder, tmp_path):
    with pytest.raises(ConfigError, match="mixup"):
        tiny_config(split_folder, tmp_path, mixup=-0.1)


def test_ema_checkpoints_hold_the_weight_average_and_resume_exactly(split_folder, tmp_path, monkeypatch):
    from ftkit.runs import load_checkpoint, load_train_state

    settings = dict(epochs=3, freeze_epochs=0, ema=0.9, augment="none", drop_rate=0.0)
    full = finetune(tiny_config(split_folder, tmp_path, name="full", **settings))
    ckpt = full.run_dir / "checkpoints"
    state = load_train_state(ckpt / "last.state.pt")
    saved, _ = load_checkpoint(ckpt / "last")
    # the checkpoint is the average, not the trained weights, and the two did part
    key = next(k for k in saved if k.endswith("weight") and saved[k].ndim == 4)
    assert torch.equal(saved[key], state["ema"][key])
    assert not torch.equal(state["ema"][key], state["model"][key])
    # the report was scored with the averaged weights: evaluating the checkpoint repeats it
    from ftkit import evaluate_run

    _, report = evaluate_run(full.run_dir, split="test")
    assert report["accuracy"] == pytest.approx(full.report["accuracy"])
    assert report["macro_f1"] == pytest.approx(full.report["macro_f1"])

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        interrupt_at_epoch(patch, 3)
        finetune(tiny_config(split_folder, tmp_path, name="cut", **settings))
    resumed = resume(tmp_path / "runs" / "cut")
    assert _metrics(resumed.run_dir) == _metrics(full.run_dir)
    again, _ = load_checkpoint(resumed.run_dir / "checkpoints" / "last")
    assert all(torch.equal(again[k], saved[k]) for k in saved)


def test_ema_warms_up_so_a_short_run_moves_off_its_start(split_folder, tmp_path):
    """A decay of 0.9999 without warm-up would leave a few-step run at its initial weights."""
    from ftkit.runs import load_train_state

    result = finetune(tiny_config(split_folder, tmp_path, epochs=2, freeze_epochs=0, ema=0.9999))
    state = load_train_state(result.run_dir / "checkpoints" / "last.state.pt")
    from ftkit.device import seed_everything

    seed_everything(0)  # as finetune does before building the model: the same initial weights
    initial = create(tiny_config(split_folder, tmp_path, epochs=2), 3).state_dict()
    key = next(k for k in state["ema"] if k.endswith("weight") and state["ema"][k].ndim == 4)
    moved = (state["ema"][key] - initial[key]).abs().max()
    trained = (state["model"][key] - initial[key]).abs().max()
    # measured: 0.87 of the way with the warm-up, 0.24 without (the average of step 1 held)
    assert moved > 0.5 * trained


@pytest.mark.parametrize("settings, message", [
    ({"ema": 1.0}, "ema is a decay in [0, 1)"),
    ({"ema": -0.5}, "ema is a decay in [0, 1)"),
    ({"ema": 0.99, "head": "logreg"}, "a --head logreg run takes none"),
])
def test_ema_values_that_cannot_work_are_refused(split_folder, tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        tiny_config(split_folder, tmp_path, **settings)


# --- l2sp: the backbone pulled toward its pretrained start -------------------------------


def _start_file(split_folder, tmp_path) -> str:
    """A tiny model's weights as a state-dict file: the 'pretrained' start of the l2sp runs."""
    torch.manual_seed(7)
    path = tmp_path / "start.pth"
    torch.save(create(tiny_config(split_folder, tmp_path), 3).state_dict(), path)
    return str(path)


def _conv_distance(run_dir, start: dict[str, torch.Tensor]) -> dict[str, float]:
    from ftkit.runs import load_train_state

    trained = load_train_state(run_dir / "checkpoints" / "last.state.pt")["model"]
    return {k: (trained[k] - start[k]).abs().max().item() for k in start if start[k].ndim == 4}


def test_l2sp_pulls_the_backbone_to_its_start_and_leaves_the_head_free(split_folder, tmp_path):
    start_file = _start_file(split_folder, tmp_path)
    start = torch.load(start_file)
    settings = dict(weights=start_file, epochs=2, freeze_epochs=0, scheduler="none", lr=3e-3, backbone_lr_mult=1.0,
                    augment="none")
    free = finetune(tiny_config(split_folder, tmp_path, name="free", **settings))
    # lr x l2sp = 1: every step ends with the backbone's weights back at their start
    held = finetune(tiny_config(split_folder, tmp_path, name="held", l2sp=1 / 3e-3, **settings))
    some = finetune(tiny_config(split_folder, tmp_path, name="some", l2sp=30.0, **settings))
    moved, back, pulled = (_conv_distance(r.run_dir, start) for r in (free, held, some))
    assert max(moved.values()) > 1e-3
    assert max(back.values()) < 1e-6
    assert sum(pulled.values()) < 0.8 * sum(moved.values())
    # the classifier (3 rows, as in the start file, so loaded from it) is not pulled: it trains
    from ftkit.runs import load_train_state

    model = load_train_state(held.run_dir / "checkpoints" / "last.state.pt")["model"]
    assert (model["classifier.weight"] - start["classifier.weight"]).abs().max() > 1e-3
    assert "l2sp" in (held.run_dir / "args.yaml").read_text()
    assert (held.run_dir / "checkpoints" / "start.safetensors").is_file()
    assert not (free.run_dir / "checkpoints" / "start.safetensors").exists()


def test_l2sp_keeps_every_parameter_training(split_folder, tmp_path):
    """Only the backbone's weights change their decay; its biases and norms still train."""
    cfg = tiny_config(split_folder, tmp_path, weights=_start_file(split_folder, tmp_path), l2sp=10.0)
    model = create(cfg, 3)
    optimizer = build_optimizer(model, cfg)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in model.parameters()}
    pulled = [g for g in optimizer.param_groups if g.get("l2sp")]
    assert [g["name"] for g in pulled] == ["backbone"] and pulled[0]["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in pulled[0]["params"])


def test_l2sp_resumes_toward_the_same_start(split_folder, tmp_path, monkeypatch):
    start_file = _start_file(split_folder, tmp_path)
    settings = dict(weights=start_file, epochs=3, freeze_epochs=1, l2sp=20.0)
    full = finetune(tiny_config(split_folder, tmp_path, name="full", **settings))
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        interrupt_at_epoch(patch, 3)
        finetune(tiny_config(split_folder, tmp_path, name="cut", **settings))
    cut = tmp_path / "runs" / "cut"
    resume(cut)
    assert _metrics(cut) == _metrics(full.run_dir)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        interrupt_at_epoch(patch, 2)
        finetune(tiny_config(split_folder, tmp_path, name="lost", **settings))
    (tmp_path / "runs" / "lost" / "checkpoints" / "start.safetensors").unlink()
    with pytest.raises(train_mod.RunError, match="start.safetensors is missing"):
        resume(tmp_path / "runs" / "lost")


def test_l2sp_without_a_start_or_below_zero_is_refused(split_folder, tmp_path):
    with pytest.raises(ConfigError, match="l2sp pulls the backbone toward its pretrained start"):
        tiny_config(split_folder, tmp_path, l2sp=1.0)  # tiny_config trains from random weights
    with pytest.raises(ConfigError, match="l2sp must be a finite number 0 or more"):
        tiny_config(split_folder, tmp_path, l2sp=-1.0, pretrained=True)


def test_frozen_batchnorm_statistics_stay_the_starts_while_every_weight_trains(split_folder, tmp_path):
    from ftkit.runs import load_train_state

    torch.manual_seed(7)
    model = create(tiny_config(split_folder, tmp_path), 3)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in norms:  # statistics unlike a fresh layer's 0 and 1, as a pretrained start has
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(model.state_dict(), tmp_path / "start.pth")
    settings = dict(weights=str(tmp_path / "start.pth"), epochs=2, freeze_epochs=0, backbone_lr_mult=1.0)
    runs = {stats: finetune(tiny_config(split_folder, tmp_path, name=stats, bn_stats=stats, **settings)).run_dir
            for stats in ("update", "frozen")}
    trained = {stats: load_train_state(run / "checkpoints" / "last.state.pt")["model"] for stats, run in runs.items()}
    statistics = [k for k in start if k.endswith(("running_mean", "running_var"))]
    scales = [k.replace("running_mean", "weight") for k in statistics if k.endswith("running_mean")]
    assert len(scales) == len(norms) > 3
    assert all(torch.equal(trained["frozen"][k], start[k]) for k in statistics)
    assert all(not torch.equal(trained["update"][k], start[k]) for k in statistics)
    assert all(not torch.equal(trained["frozen"][k], start[k]) for k in scales)  # scale (and shift) still train
    assert yaml.safe_load((runs["frozen"] / "args.yaml").read_text())["bn_stats"] == "frozen"


def test_frozen_batchnorm_statistics_need_a_start_and_a_known_value(split_folder, tmp_path):
    with pytest.raises(ConfigError, match="bn_stats frozen keeps the start's BatchNorm statistics, and this run has none"):
        tiny_config(split_folder, tmp_path, bn_stats="frozen")  # tiny_config trains from random weights
    with pytest.raises(ConfigError, match="Valid: update, frozen"):
        tiny_config(split_folder, tmp_path, bn_stats="fixed", pretrained=True)
    # a frozen backbone's statistics never move: the setting is named as not used, not taken silently
    for head in ("linear", "logreg"):
        notes = train_mod.setting_notes(tiny_config(split_folder, tmp_path, bn_stats="frozen", pretrained=True, head=head))
        assert any(f"head {head}" in n and "bn_stats=frozen do not apply" in n for n in notes), notes


@pytest.mark.parametrize("batches", [4, 5])  # 5: the epoch's last group is one batch
def test_accumulated_batches_step_like_one_large_batch(batches):
    """--accumulate 2 on batches of 4 gives the weights, schedule and step count of batches of 8
    (with no BatchNorm, the one thing that sees the small batch); a short last group is its own mean."""
    torch.manual_seed(0)
    x, y = torch.randn(4 * batches, 6), torch.randint(0, 3, (4 * batches,))
    small = [(x[i:i + 4], y[i:i + 4]) for i in range(0, len(x), 4)]
    large = [(x[i:i + 8], y[i:i + 8]) for i in range(0, len(x), 8)]

    def train(loader, accumulate):
        model = torch.nn.Linear(6, 3)
        torch.nn.init.constant_(model.weight, 0.1), torch.nn.init.zeros_(model.bias)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + step))
        parts = train_mod.StepParts(model, torch.nn.CrossEntropyLoss(), opt, sched, "step", accumulate=accumulate)
        stats = train_mod.train_one_epoch(parts, loader)
        return model, parts, stats

    (a, pa, _), (b, pb, _) = train(small, 2), train(large, 1)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.bias, b.bias, rtol=0, atol=1e-6)
    assert pa.steps == pb.steps == train_mod.optimizer_steps(batches, 2) == len(large)
    assert pa.optimizer.param_groups[0]["lr"] == pb.optimizer.param_groups[0]["lr"]
    (c, _, _) = train(small, 1)  # without accumulating, the small batches take twice the steps
    assert not torch.allclose(c.weight, b.weight, atol=1e-4)


def test_an_accumulating_run_says_so_and_resumes_exactly(split_folder, tmp_path, monkeypatch):
    """The schedule counts optimizer steps, not batches, so an interrupted run resumes to the
    same numbers; the plan, args.yaml and report.md say how the batch is made."""
    settings = dict(epochs=3, freeze_epochs=0, batch_size=4, accumulate=2, augment="none", ema=0.9)
    full = finetune(tiny_config(split_folder, tmp_path, name="full", **settings))
    assert yaml.safe_load((full.run_dir / "args.yaml").read_text())["accumulate"] == 2
    assert "batch 4 x 2 accumulated" in (full.run_dir / "report.md").read_text()
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        interrupt_at_epoch(patch, 3)
        finetune(tiny_config(split_folder, tmp_path, name="cut", **settings))
    resumed = resume(tmp_path / "runs" / "cut")
    assert _metrics(resumed.run_dir) == _metrics(full.run_dir)
    plain = finetune(tiny_config(split_folder, tmp_path, name="plain", **{**settings, "accumulate": 1}))
    assert _metrics(plain.run_dir) != _metrics(full.run_dir)  # twice the steps: another run
