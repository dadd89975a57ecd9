"""Faults: a run killed at any file boundary of an epoch resumes to exactly the run that was
never interrupted; a run that fails says so in its record."""

import csv
import json
import shutil
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ftkit.runs import load_checkpoint
from ftkit.train import finetune, resume
from conftest import tiny_config, write_split_folder

TIMING_COLUMNS = {"images_per_s", "seconds"}

# Runs a tiny training in a child process that SIGKILLs itself at one file write: after write
# number KILL_AT has been renamed into place ("after"), or in the middle of it, before the
# rename, with the temporary file half written ("during"). LOG gets every write's path.
DRIVER = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    import ftkit.io
    from ftkit.config import resolve
    from ftkit.train import finetune

    data, project, log, kill_at, how = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    real = ftkit.io.atomic_write
    count = {"n": 0}

    def watched(path, write, mode="w"):
        count["n"] += 1
        with open(log, "a") as f:
            f.write(Path(path).name + "\\n")
        if count["n"] == kill_at and how == "during":
            def half(f):
                f.write(b"\\0" * 64 if "b" in mode else "partial")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, half, mode)
        result = real(path, write, mode)
        if count["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    for name, module in list(sys.modules.items()):  # every ftkit module that imported atomic_write
        if name.startswith("ftkit") and getattr(module, "atomic_write", None) is real:
            module.atomic_write = watched
    cfg = resolve(None, data=data, backbone="test_efficientnet", pretrained=False, img_size=32, epochs=3,
                  freeze_epochs=1, batch_size=8, lr=3e-3, workers=0, project=project, name="run", augment="light")
    finetune(cfg)
''')


def _metrics(run):
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)]


def _drive(tmp_path, data, kill_at, mode, tag):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    project, log = tmp_path / tag, tmp_path / f"{tag}.log"
    done = subprocess.run([sys.executable, str(driver), str(data), str(project), str(log), str(kill_at), mode],
                          capture_output=True, text=True, timeout=300)
    return done, project / "run", log.read_text().split()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    data = write_split_folder(tmp / "data", sizes=(("train", 8), ("val", 3), ("test", 3)))
    done, run, writes = _drive(tmp, data, kill_at=0, mode="none", tag="reference")
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp, data, run, writes


def _epoch_two_writes(writes):
    """Indexes (1-based) of the writes of the second epoch: from its metrics.csv to its state file."""
    marks = [i for i, name in enumerate(writes, 1) if name == "last.state.pt"]
    return list(range(marks[0] + 1, marks[1] + 1))


@pytest.mark.slow
def test_a_kill_at_every_file_boundary_resumes_to_the_uninterrupted_run(reference, tmp_path):
    ref_tmp, data, ref_run, writes = reference
    boundaries = _epoch_two_writes(writes)
    assert [writes[i - 1] for i in boundaries][0] == "metrics.csv" and len(boundaries) >= 4
    cases = [(k, "after") for k in boundaries] + [(k, "during") for k in boundaries[-2:]]
    want_weights = load_file(str(ref_run / "checkpoints" / "best.safetensors"))
    for kill_at, mode in cases:
        tag = f"kill-{kill_at}-{mode}"
        done, run, _ = _drive(tmp_path, data, kill_at, mode, tag)
        assert done.returncode == -9, f"{tag}: {done.stderr[-500:]}"
        result = resume(run)
        assert _metrics(run) == _metrics(ref_run), tag
        got = load_file(str(run / "checkpoints" / "best.safetensors"))
        assert got.keys() == want_weights.keys()
        assert all(torch.equal(got[k], want_weights[k]) for k in got), tag
        assert result.report["accuracy"] == json.loads((ref_run / "report.json").read_text())["accuracy"]
        _, meta = load_checkpoint(run / "checkpoints" / "best")
        assert meta == json.loads((run / "checkpoints" / "best.json").read_text())
        leftovers = [p.name for p in run.rglob(".*.tmp")]
        assert leftovers == [], f"{tag}: {leftovers}"


def test_a_run_that_fails_says_so_in_its_record(split_folder, tmp_path, monkeypatch):
    import ftkit.train as train_mod

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash in the loop")

    monkeypatch.setattr(train_mod, "train_one_epoch", broken)
    with pytest.raises(RuntimeError):
        finetune(tiny_config(split_folder, tmp_path, name="crash"))
    record = json.loads((tmp_path / "runs" / "crash" / "run.json").read_text())
    assert record["status"] == "failed" and "simulated crash" in record["error"]


def test_ctrl_c_in_the_first_epoch_does_not_advise_resume(split_folder, tmp_path, monkeypatch, capsys):
    import ftkit.train as train_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_config(split_folder, tmp_path, name="early"))
    record = json.loads((tmp_path / "runs" / "early" / "run.json").read_text())
    assert record["status"] == "interrupted" and "nothing to resume" in record["error"]


def test_ctrl_c_on_the_command_line_exits_130_with_the_resume_line(split_folder, tmp_path, monkeypatch):
    """Click answered a Ctrl-C with 'Aborted!' and exit code 1, after the run's own line."""
    from click.testing import CliRunner

    from ftkit.cli import main
    from conftest import TINY, interrupt_at_epoch

    interrupt_at_epoch(monkeypatch, 2)
    r = CliRunner().invoke(main, ["finetune", "--data", str(split_folder), "--backbone", TINY, "--no-pretrained",
                                  "--img-size", "32", "--epochs", "3", "--workers", "0", "--out", str(tmp_path / "cut")])
    assert r.exit_code == 130 and "Aborted" not in r.output
    assert f"interrupted; continue with: ftkit finetune --resume {tmp_path / 'cut'}" in " ".join(r.output.split())


# --- never replace good data with bad -------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    data = write_split_folder(tmp / "data", sizes=(("train", 6), ("val", 2), ("test", 2)))
    return finetune(tiny_config(data, tmp, epochs=1, freeze_epochs=0, name="t")).run_dir


def test_a_failed_re_export_keeps_the_good_file(trained, tmp_path, monkeypatch):
    from ftkit import export

    good = export.export_run(trained, out=tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes(), (tmp_path / "m.onnx.json").read_text()
    real = export._onnx_runner
    monkeypatch.setattr(export, "_onnx_runner", lambda path: (lambda x: real(path)(x) + 0.01))
    with pytest.raises(export.ExportError, match="unchanged"):
        export.export_run(trained, out=tmp_path / "m.onnx")
    assert ((tmp_path / "m.onnx").read_bytes(), (tmp_path / "m.onnx.json").read_text()) == before
    assert (tmp_path / "m.onnx.failed").is_file() and good.max_abs_diff < 1e-3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.failed", "m.onnx.json"]


def test_weights_import_asks_before_replacing_and_refuses_non_finite(tmp_path, monkeypatch):
    import timm
    from click.testing import CliRunner

    from ftkit.cli import main

    monkeypatch.setenv("FTKIT_WEIGHTS", str(tmp_path / "store"))
    state = timm.create_model("test_efficientnet", num_classes=3).state_dict()
    torch.save(state, tmp_path / "a.pth")
    r = CliRunner().invoke(main, ["weights", "import", str(tmp_path / "a.pth"), "--backbone", "test_efficientnet"])
    assert r.exit_code == 0, r.output
    first = json.loads((tmp_path / "store" / "manifest.json").read_text())["test_efficientnet"]["sha256"]
    state[next(iter(state))].mul_(1.5)
    torch.save(state, tmp_path / "b.pth")
    r = CliRunner().invoke(main, ["weights", "import", str(tmp_path / "b.pth"), "--backbone", "test_efficientnet"])
    assert r.exit_code == 1 and "--force" in r.output
    r = CliRunner().invoke(main, ["weights", "import", str(tmp_path / "b.pth"), "--backbone", "test_efficientnet", "--force"])
    entry = json.loads((tmp_path / "store" / "manifest.json").read_text())["test_efficientnet"]
    assert r.exit_code == 0 and entry["replaced_sha256"] == first != entry["sha256"]
    state[next(iter(state))][0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    r = CliRunner().invoke(main, ["weights", "import", str(tmp_path / "nan.pth"), "--backbone", "test_efficientnet", "--force"])
    assert r.exit_code == 1 and "NaN" in r.output and "nan.pth" in r.output
    (tmp_path / "empty.pth").write_bytes(b"")
    r = CliRunner().invoke(main, ["weights", "import", str(tmp_path / "empty.pth"), "--backbone", "test_efficientnet"])
    assert r.exit_code == 1 and "empty" in r.output and "Traceback" not in r.output


def test_a_diverging_run_stops_failed_and_keeps_its_checkpoint(split_folder, tmp_path, monkeypatch):
    import ftkit.train as train_mod

    real, calls = train_mod.nn.CrossEntropyLoss.forward, {"n": 0}

    def nan_in_epoch_two(self, logits, target):
        calls["n"] += 1
        loss = real(self, logits, target)
        return loss * float("nan") if calls["n"] > 5 else loss  # epoch 1 has 36 / 8 -> 4 steps

    monkeypatch.setattr(train_mod.nn.CrossEntropyLoss, "forward", nan_in_epoch_two)
    with pytest.raises(train_mod.TrainingDiverged, match="lower --lr"):
        finetune(tiny_config(split_folder, tmp_path, epochs=3, name="nan"))
    run = tmp_path / "runs" / "nan"
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed" and "diverged" in record["error"]
    weights, meta = load_checkpoint(run / "checkpoints" / "last")
    assert meta["epoch"] == 1 and all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


@pytest.mark.parametrize("flags, message", [
    (["--lr", "0"], "lr must be a finite number above 0"),
    (["--lr", "nan"], "lr must be a finite number above 0"),
    (["--lr", "-0.1"], "lr must be a finite number above 0"),
    (["--val-split", "0.6", "--test-split", "0.5"], "leave no training data"),
    (["--img-size", "2"], "img_size must be at least 8"),
    (["--patience", "-1"], "patience must be at least 0"),
    (["--accumulate", "0"], "accumulate must be at least 1, got 0"),
    (["--batch-size", "0"], "batch_size must be at least 1, got 0"),
    (["--epochs", "0"], "epochs must be at least 1, got 0"),
    (["--face-margin", "-0.5"], "face_margin must be a finite number above -0.5"),
    (["--mean", "a,b,c"], "config key 'mean' expects numbers"),
    (["--std", "0,0,0"], "std values divide the pixels and must be above 0"),
    (["--ema", "1"], "ema is a decay in [0, 1)"),
    (["--seed", "-1"], "seed must be in [0, 2**32)"),
    (["--epochs", "2", "--warmup-epochs", "3"], "warmup_epochs (3) is longer than the run (epochs 2)"),
])
def test_numeric_options_out_of_range_are_refused_before_any_work(flags, message, split_folder, tmp_path):
    from click.testing import CliRunner

    from ftkit.cli import main

    r = CliRunner().invoke(main, ["finetune", "--data", str(split_folder), "--project", str(tmp_path / "runs"), *flags])
    assert r.exit_code == 1 and message in r.output, r.output
    assert not (tmp_path / "runs").exists()


def test_predict_fails_when_no_input_could_be_read(trained, tmp_path):
    from click.testing import CliRunner

    from ftkit.cli import main

    (tmp_path / "a.jpg").write_bytes(b"not an image")
    (tmp_path / "b.png").write_bytes(b"")
    r = CliRunner().invoke(main, ["predict", str(trained), str(tmp_path / "a.jpg"), str(tmp_path / "b.png")])
    assert r.exit_code == 1 and "none of the 2 input image(s) could be read" in r.output


def test_a_split_listing_gives_exactly_its_split_or_refuses(flat_folder, tmp_path):
    from ftkit.data import DataError, load_data

    data = load_data(tiny_config(flat_folder, tmp_path))
    from ftkit.data import write_split_listing

    listing = tmp_path / "split.csv"
    write_split_listing(data, listing)
    lines = listing.read_text().splitlines()

    def refused(text, message, data_root=flat_folder):
        bad = tmp_path / "bad.csv"
        bad.write_text("\n".join(text) + "\n")
        with pytest.raises(DataError, match=message):
            load_data(tiny_config(data_root, tmp_path, splits=str(bad)))

    refused([lines[0], lines[1].rsplit(",", 1)[0] + ",holdout", *lines[2:]], "unknown split 'holdout'")
    refused([*lines, lines[1].rsplit(",", 1)[0] + ",test"], "listed twice")
    refused([lines[0], lines[1].replace(".png", "-gone.png"), *lines[2:]], "is listed but not there")
    other = write_split_folder(tmp_path / "other", sizes=(("train", 4),))
    refused(lines, "not inside --data", data_root=other)
    again = load_data(tiny_config(flat_folder, tmp_path, splits=str(listing)))
    assert {n: s.keys for n, s in again.splits.items()} == {n: s.keys for n, s in data.splits.items()}


def test_classes_without_images_are_named_not_averaged_in_as_zero(tmp_path):
    from ftkit.evaluation import compute_report, quick_metrics, write_predictions
    from ftkit.report import report_markdown

    classes = ["angry", "happy", "sad"]
    labels = np.array([0, 0, 1, 1])  # no "sad" image
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    write_predictions(tmp_path / "p.csv", ["a", "b", "c", "d"], labels, probs, classes)
    report = compute_report(tmp_path / "p.csv")
    f1 = {c: report["per_class"][c]["f1"] for c in ("angry", "happy")}
    assert report["no_support"] == ["sad"]
    assert report["macro_f1"] == pytest.approx((f1["angry"] + f1["happy"]) / 2)
    assert quick_metrics(labels, probs.argmax(1))["macro_f1"] == pytest.approx(report["macro_f1"])
    assert "No image of sad in this split" in report_markdown({**report, "run": "x"}, {})


def test_an_output_folder_inside_its_input_folder_is_refused_before_writing(split_folder, trained, tmp_path):
    from click.testing import CliRunner

    from ftkit.cli import main

    before = sorted(p.relative_to(split_folder) for p in split_folder.rglob("*"))
    r = CliRunner().invoke(main, ["finetune", "--data", str(split_folder), "--project", str(split_folder / "runs")])
    assert r.exit_code == 1 and "inside the input folder" in r.output
    r = CliRunner().invoke(main, ["data", "faces", str(split_folder), str(split_folder / "train" / "crops")])
    assert r.exit_code == 1 and "inside the input folder" in r.output
    r = CliRunner().invoke(main, ["predict", str(trained), str(split_folder), "--annotate", str(split_folder / "a")])
    assert r.exit_code == 1 and "inside the input folder" in r.output
    r = CliRunner().invoke(main, ["data", "faces", str(split_folder), str(tmp_path / "crops"), "--margin", "-1"])
    assert r.exit_code == 1 and "--margin" in r.output
    assert sorted(p.relative_to(split_folder) for p in split_folder.rglob("*")) == before


def test_a_run_in_use_cannot_be_resumed_twice(trained, tmp_path):
    import fcntl

    from ftkit.runs import RunError

    record = trained / "run.json"
    saved = record.read_text()
    record.write_text(json.dumps({**json.loads(saved), "status": "interrupted"}))
    try:
        with open(trained / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process trains in it
            with pytest.raises(RunError, match="in use by another ftkit process"):
                resume(trained)
    finally:
        record.write_text(saved)


def test_a_decompression_bomb_is_skipped_like_any_unreadable_file(tmp_path):
    from PIL import Image

    from ftkit.data import load_data

    data = write_split_folder(tmp_path / "d", sizes=(("train", 6), ("val", 2)))
    bomb = data / "train" / "alpha" / "bomb.png"
    Image.new("L", (1, 1)).save(bomb)
    raw = bytearray(bomb.read_bytes())
    raw[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR width and height: 900 megapixels claimed
    raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")  # a valid header, so PIL believes it
    bomb.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="decompression bomb"):
        loaded = load_data(tiny_config(data, tmp_path))
    assert any("bomb.png" in path and "decompression bomb" in reason for path, reason in loaded.skipped)
    assert len(loaded.splits["train"]) == 18


@pytest.mark.parametrize("flags, message", [
    # a flat folder of 20 images per class: these fractions pass the config but leave no image to train on
    (["--val-split", "0.99", "--test-split", "0"], "leave no training image in"),
    (["--drop-class", "alpha,beta"], "fewer than 2 classes left after --classes/--drop-class/--merge-class (kept: gamma"),
])
def test_data_that_selection_or_splitting_empties_is_refused_by_option(flags, message, flat_folder, tmp_path):
    from click.testing import CliRunner

    from ftkit.cli import main

    r = CliRunner().invoke(main, ["finetune", "--data", str(flat_folder), "--backbone", "test_efficientnet",
                                  "--no-pretrained", "--project", str(tmp_path / "runs"), *flags])
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "runs").exists()


def test_resuming_a_folder_that_is_not_a_run_names_it(tmp_path):
    from click.testing import CliRunner

    from ftkit.cli import main

    r = CliRunner().invoke(main, ["finetune", "--resume", str(tmp_path / "nope")])
    assert r.exit_code == 1 and f"run directory {tmp_path / 'nope'} not found" in r.output, r.output
    assert not (tmp_path / "nope").exists()  # and nothing (a lock file) was made there
    (tmp_path / "folder").mkdir()  # a folder, but not a run
    r = CliRunner().invoke(main, ["finetune", "--resume", str(tmp_path / "folder")])
    assert r.exit_code == 1 and "folder is not an ftkit run directory (no args.yaml)" in r.output, r.output
    assert list((tmp_path / "folder").iterdir()) == []


def test_a_folder_of_runs_given_for_one_run_names_the_runs_in_it(tmp_path):
    """`ftkit report runs` (the --project folder, not a run in it) said only that runs/ had no
    predictions.csv; each command that takes one run now names the runs inside. Those that need
    a trained model name only trained runs, not evaluations (scores, no model)."""
    from click.testing import CliRunner

    from ftkit.cli import main

    runs = tmp_path / "runs"
    for name, files in (("faces", ("args.yaml", "run.json")), ("scored", ("run.json",))):
        (runs / name).mkdir(parents=True)
        for f in files:
            (runs / name / f).write_text("{}")
    r = CliRunner().invoke(main, ["report", str(runs)])
    assert r.exit_code == 1 and f"holds 2 run directories ({runs / 'faces'}, {runs / 'scored'})" in r.output, r.output
    for args in (["finetune", "--resume", str(runs)], ["export", str(runs)], ["evaluate", str(runs), "--data", str(tmp_path)]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1 and f"holds 1 run directory ({runs / 'faces'}): give one of them" in r.output, (args, r.output)
    assert sorted(p.name for p in runs.rglob("*")) == ["args.yaml", "faces", "run.json", "run.json", "scored"]


def test_an_export_that_cannot_be_written_names_the_users_file(trained, tmp_path, monkeypatch):
    """A full disk while the candidate is written: the message names model.onnx, not our temp file."""
    import errno

    from ftkit import export

    def full(model, example, path, meta, opset):
        raise OSError(errno.ENOSPC, "No space left on device", str(path.with_name(f"{path.stem}.tmp{path.suffix}")))  # as export_onnx names it

    monkeypatch.setattr(export, "export_onnx", full)
    with pytest.raises(OSError) as caught:
        export.export_run(trained, out=tmp_path / "model.onnx")
    assert caught.value.filename == str(tmp_path / "model.onnx") and caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_amp_on_the_cpu_is_said_not_silently_dropped(split_folder, tmp_path):
    from rich.console import Console

    console = Console(record=True, width=200)
    finetune(tiny_config(split_folder, tmp_path, epochs=1, freeze_epochs=0, amp=True), console=console)
    text = console.export_text()
    assert "--amp: mixed precision is CUDA-only in ftkit; on cpu this run trains in full precision" in text
    assert "(amp)" not in text


def test_a_logreg_run_names_the_training_options_it_does_not_use(split_folder, tmp_path):
    from rich.console import Console

    console = Console(record=True, width=300)
    finetune(tiny_config(split_folder, tmp_path, head="logreg", epochs=5, lr=0.01, mixup=0.2), console=console)
    text = " ".join(console.export_text().split())
    assert "epochs=5, lr=0.01, mixup=0.2 do not apply and are not used" in text


def test_settings_a_run_would_not_use_are_named_before_it_starts():
    """--head linear with --unfreeze gradual, a warm-up under the plateau scheduler, and both
    ways of balancing classes at once used to be taken without a word."""
    from ftkit.config import Config
    from ftkit.train import setting_notes

    assert setting_notes(Config()) == []
    (note,) = setting_notes(Config(head="linear", unfreeze="gradual", backbone_lr_mult=0.5))
    assert note == ("head linear keeps the backbone frozen throughout: unfreeze=gradual, backbone_lr_mult=0.5 do not "
                    "apply and are not used")
    (note,) = setting_notes(Config(scheduler="plateau", warmup_epochs=1))
    assert "applies to the cosine schedule only; scheduler plateau does not use it" in note
    (note,) = setting_notes(Config(sampler="balanced", class_weights="balanced"))
    assert "together they over-weight the rare classes" in note
    assert setting_notes(Config(sampler="balanced")) == setting_notes(Config(warmup_epochs=1)) == []


def test_ctrl_c_during_a_checkpoint_write_finishes_the_file_then_interrupts(tmp_path):
    """A Ctrl-C inside torch.save's writes used to come out of its C++ zip writer as
    "RuntimeError: unexpected pos" (the run then read as failed, not interrupted). It is held
    until the file is whole and in place, and raised as KeyboardInterrupt then."""
    import os
    import signal

    from ftkit.runs import load_train_state, save_train_state

    state = {"epoch": 3, "weights": torch.arange(300_000, dtype=torch.float32)}
    real_save = torch.save

    def save_with_ctrl_c(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the file is being written
        real_save(obj, f, *args, **kwargs)

    path = tmp_path / "last.state.pt"
    # Python's own Ctrl-C handler, also when the suite was started in the background
    # (`cmd &` in a script), where SIGINT is ignored and Python installs none
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.save, saved = save_with_ctrl_c, None
    try:
        with pytest.raises(KeyboardInterrupt):
            save_train_state(path, state)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        torch.save = real_save
        signal.signal(signal.SIGINT, outer)
    saved = load_train_state(path)
    assert saved["epoch"] == 3 and torch.equal(saved["weights"], state["weights"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.state.pt"]  # no temporary file left


def test_signals_a_distributed_run_handles_are_held_during_a_write_too(tmp_path):
    """Under torchrun, process_group installs its own SIGINT and SIGTERM handlers (both raise).
    They used to be called inside torch.save's writes (a Ctrl-C, then torchrun's SIGTERM), so a
    2-process run stopped by Ctrl-C could end "failed: unexpected pos"; they are now called
    once the file is whole and in place, in the order the signals came."""
    import os
    import signal

    from ftkit.runs import load_train_state, save_train_state

    calls = []

    def on_sigint(signum, frame):
        calls.append("SIGINT")
        raise KeyboardInterrupt

    def on_sigterm(signum, frame):
        calls.append("SIGTERM")

    state = {"epoch": 2, "weights": torch.arange(300_000, dtype=torch.float32)}
    real_save = torch.save

    def save_with_signals(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun's, then the terminal's Ctrl-C
        os.kill(os.getpid(), signal.SIGINT)
        assert calls == []  # held while the file is written
        real_save(obj, f, *args, **kwargs)

    previous = signal.signal(signal.SIGINT, on_sigint), signal.signal(signal.SIGTERM, on_sigterm)
    torch.save = save_with_signals
    try:
        with pytest.raises(KeyboardInterrupt):
            save_train_state(tmp_path / "last.state.pt", state)
        assert calls == ["SIGTERM", "SIGINT"]
        assert signal.getsignal(signal.SIGINT) is on_sigint and signal.getsignal(signal.SIGTERM) is on_sigterm
    finally:
        torch.save = real_save
        signal.signal(signal.SIGINT, previous[0]), signal.signal(signal.SIGTERM, previous[1])
    assert torch.equal(load_train_state(tmp_path / "last.state.pt")["weights"], state["weights"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.state.pt"]


def test_runs_lists_each_run_with_its_state_and_how_to_resume(split_folder, tmp_path, monkeypatch):
    """A run whose record says "running" while no process holds its lock was killed."""
    from click.testing import CliRunner

    from ftkit.cli import main
    from ftkit.runs import run_lock
    from conftest import TINY, interrupt_at_epoch

    done = finetune(tiny_config(split_folder, tmp_path, epochs=1, freeze_epochs=0, name="done")).run_dir
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        interrupt_at_epoch(patch, 2)
        finetune(tiny_config(split_folder, tmp_path, epochs=3, name="cut"))
    killed = tmp_path / "runs" / "killed"
    shutil.copytree(tmp_path / "runs" / "cut", killed)
    record = json.loads((killed / "run.json").read_text())
    (killed / "run.json").write_text(json.dumps({**record, "status": "running"}))
    (tmp_path / "runs" / "notes").mkdir()  # not a run: left out
    r = CliRunner().invoke(main, ["runs", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]] for line in r.output.splitlines()
            if line.count("│") == 9}
    assert set(rows) == {"done", "cut", "killed"}
    report = json.loads((done / "report.json").read_text())
    assert rows["done"][:6] == ["finished", TINY, "1/1", "test", f"{report['accuracy']:.4f}", f"{report['macro_f1']:.4f}"]
    assert rows["cut"][:3] == ["interrupted", TINY, "1/3"] and rows["killed"][0] == "killed"
    said = " ".join(r.output.split())
    assert f"cut was interrupted: continue it with ftkit finetune --resume {tmp_path / 'runs' / 'cut'}" in said
    assert f"killed was killed: continue it with ftkit finetune --resume {killed}" in said
    # `ftkit report` on them says the same, not that predictions.csv is missing
    for run, ended in ((tmp_path / "runs" / "cut", "was interrupted"), (killed, "was killed")):
        told = CliRunner().invoke(main, ["report", str(run)])
        assert told.exit_code == 1 and f"{run} {ended}" in " ".join(told.output.split())
        assert f"so it has no report: continue it with ftkit finetune --resume {run}" in " ".join(told.output.split())
    with run_lock(killed):  # a process holds it: running, truly
        again = CliRunner().invoke(main, ["runs", str(tmp_path / "runs")])
        told = CliRunner().invoke(main, ["report", str(killed)])
    assert "is still training in another ftkit process" in " ".join(told.output.split())
    assert any(line.split("│")[1].strip() == "killed" and line.split("│")[2].strip() == "running"
               for line in again.output.splitlines() if line.count("│") == 9)
    assert CliRunner().invoke(main, ["runs", str(tmp_path / "none")]).exit_code == 1
    assert CliRunner().invoke(main, ["evaluate", str(done), "--name", "again"]).exit_code == 0
    scored = CliRunner().invoke(main, ["runs", str(done / "eval")])  # evaluations are listed as what they are
    assert [[c.strip() for c in line.split("│")[1:4]] for line in scored.output.splitlines() if line.count("│") == 9] == [
        ["again", "evaluation", TINY]]
