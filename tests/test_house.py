"""How ftkit behaves as a library and a command (issue 15): one error family, choices that Click
checks, no process-wide state changed by importing or plotting."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import click
import pytest
import torch
from click.testing import CliRunner

import ftkit.data
import ftkit.export
import ftkit.models
import ftkit.runs
import ftkit.train
import ftkit.weights
from ftkit.cli import DeviceType, finetune, main
from ftkit.config import CHOICES, ConfigError
from ftkit.errors import DistributedError, FtkitError, UsageError


def test_every_user_facing_error_is_an_ftkit_error():
    for error in (ConfigError, UsageError, DistributedError, ftkit.data.DataError, ftkit.runs.RunError,
                  ftkit.models.ModelError, ftkit.weights.WeightsError, ftkit.export.ExportError,
                  ftkit.train.TrainingDiverged):
        assert issubclass(error, FtkitError), error


def test_a_bug_keeps_its_traceback_and_asks_to_be_reported(monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("internal")

    monkeypatch.setattr("ftkit.predict.evaluate_run", broken)
    r = CliRunner().invoke(main, ["evaluate", "runs/x"])
    assert isinstance(r.exception, KeyError)  # not turned into a friendly one-liner
    assert "bug: please report it" in r.output


def test_a_usage_error_raised_inside_a_command_is_not_called_a_bug(tmp_path):
    """Click's own exceptions pass through the error wrapper as they are: exit code 2 for a
    usage error, 1 for a ClickException, without the 'please report it' line."""
    r = CliRunner().invoke(main, ["finetune", "--epochs", "1"])
    assert r.exit_code == 2 and "--data is required" in r.output and "bug" not in r.output
    (tmp_path / "bad.jpg").write_text("not an image")
    r = CliRunner().invoke(main, ["predict", "fer2013-fast", str(tmp_path / "bad.jpg")])
    assert r.exit_code == 1 and "none of the 1 input image(s) could be read" in r.output and "bug" not in r.output


def test_an_ftkit_error_is_one_line_with_exit_code_1(tmp_path):
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "missing-run")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.startswith("Error: ") and str(tmp_path / "missing-run") in r.output


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_a_read_only_output_folder_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        r = CliRunner().invoke(main, ["data", "synth", str(locked / "faces"), "--train", "1", "--val", "1", "--test", "1"])
    finally:
        locked.chmod(0o700)
    assert r.exit_code == 1 and "Permission denied" in r.output and "faces" in r.output


def test_enumerated_options_are_click_choices():
    params = {p.name: p for p in finetune.params}
    for name, values in CHOICES.items():
        # the device: its choices, and a GPU by index (cuda:N), which no fixed list can hold
        assert isinstance(params[name].type, DeviceType if name == "device" else click.Choice), name
        assert tuple(params[name].type.choices) == values
    r = CliRunner().invoke(main, ["finetune", "--data", "x", "--optimizer", "adamm"])
    assert r.exit_code == 2 and "'adamm' is not one of 'adamw'" in r.output
    for command in ("evaluate", "ensemble", "predict"):
        device = next(p for p in main.commands[command].params if p.name == "device")
        assert tuple(device.type.choices) == CHOICES["device"], command


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_reports_leave_pyplot_and_the_backend_alone(tmp_path):
    """A notebook user's backend and figures are theirs: ftkit draws through Figure objects."""
    code = f"""
        import sys, matplotlib
        matplotlib.use("svg")
        from ftkit.report import plot_curves, plot_confusion
        from pathlib import Path
        out = Path({str(tmp_path)!r})
        history = [dict(epoch=e, phase="full", train_loss=1.0 / e, val_loss=1.1 / e, train_accuracy=0.5,
                        val_accuracy=0.4, val_macro_f1=0.3) for e in (1, 2)]
        plot_curves(history, out / "curves.png")
        plot_confusion({{"confusion_matrix": [[3, 1], [0, 4]], "classes": ["a", "b"], "split": "test"}}, out)
        # scikit-learn's ConfusionMatrixDisplay imports pyplot, but is handed ftkit's own axes
        figures = sys.modules["matplotlib.pyplot"].get_fignums() if "matplotlib.pyplot" in sys.modules else []
        print(matplotlib.get_backend(), len(figures))
    """
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["svg", "0"]  # the backend as the user set it, no figure left open
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "confusion_matrix_normalized.png").is_file()


def test_importing_ftkit_leaves_the_umask_alone_and_files_follow_it(tmp_path):
    code = f"""
        import os
        os.umask(0o027)
        calls = []
        real = os.umask
        os.umask = lambda mask: calls.append(mask) or real(mask)
        import ftkit, ftkit.cli, ftkit.train, ftkit.io
        path = ftkit.io.write_text({str(tmp_path / "a.txt")!r}, "x")
        print(len(calls), oct(os.stat(path).st_mode & 0o777))
    """
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", oct(0o640)]
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o640


def test_the_public_api_is_what_the_package_promises_and_import_stays_light():
    import ftkit
    import ftkit.predict
    import ftkit.train

    assert ftkit.finetune is ftkit.train.finetune and ftkit.evaluate_run is ftkit.predict.evaluate_run
    for name in ftkit.__all__:
        assert getattr(ftkit, name) is not None, name
    with pytest.raises(AttributeError):
        ftkit.no_such_function
    result = _python("import sys, ftkit, ftkit.cli; print('torch' in sys.modules)")
    assert result.returncode == 0 and result.stdout.split() == ["False"]  # `ftkit --help` does not load torch


# The package's layers, bottom up: a module imports only from its own layer or below (checked
# from the source by test_imports_only_go_down_and_never_in_a_circle).
LAYERS = {
    "foundation": {"errors", "config", "io", "progress", "device", "distributed", "plots"},
    "data": {"images", "fer2013", "faces", "synth", "duplicates", "splits", "sources", "data", "shards"},
    "model": {"models", "transforms", "weights"},
    "run directory, evaluation and reports": {"runs", "zoo", "evaluation", "views", "html_report", "report"},
    "training": {"heads", "crossval", "schedule", "distill", "loop", "train", "lrfind"},
    "using a run": {"scoring", "predict", "video", "ensemble", "export", "demo"},
    "command line": {"cli_options", "cli_data", "cli_weights", "cli_predict", "cli", "__main__", "__init__"},
}


def _package_imports() -> dict[str, list[tuple[str, bool]]]:
    """module -> [(imported ftkit module, imported at the top of the file)]."""
    import ast
    from pathlib import Path

    import ftkit

    found = {}
    for path in Path(ftkit.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                edges += [(n.split(".")[0], node in tree.body) for n in names]
        found[path.stem] = edges
    return found


def test_imports_only_go_down_and_never_in_a_circle():
    imports = _package_imports()
    layer = {m: i for i, modules in enumerate(LAYERS.values()) for m in modules}
    assert set(imports) == set(layer), "every module belongs to one layer"
    names = list(LAYERS)
    upward = [f"{m} ({names[layer[m]]}) imports {t} ({names[layer[t]]})"
              for m, edges in imports.items() for t, _ in edges if t in layer and layer[t] > layer[m]]
    assert not upward
    inside = [f"{m} imports {t} inside a function" for m, edges in imports.items() for t, top in edges
              if not top and t in layer and not m.startswith("cli")]  # the CLI imports lazily, for its start-up time
    assert not inside
    graph = {m: {t for t, _ in edges if t in layer} - {"__init__"} for m, edges in imports.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen)) for n in graph[start])

    assert not [m for m in graph if reaches(m, m, set())], "an import cycle"


def test_truncated_run_files_and_a_full_disk_are_one_line(split_folder, tmp_path, monkeypatch):
    import errno

    from conftest import tiny_config

    from ftkit.train import finetune

    run = finetune(tiny_config(split_folder, tmp_path, epochs=1)).run_dir
    before = (run / "report.json").read_text()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("ftkit.io.os.fsync", full_disk)
        r = CliRunner().invoke(main, ["report", str(run)])  # rewrites report.json, figures, report.html
    assert r.exit_code == 1 and "No space left on device" in r.output and "Traceback" not in r.output
    assert str(run) in r.output  # the file that could not be written is named
    assert (run / "report.json").read_text() == before and not list(run.glob(".*.tmp"))  # old file kept, no debris

    (run / "args.yaml").write_text("backbone: [unclosed\n")
    r = CliRunner().invoke(main, ["finetune", "--resume", str(run)])  # resume reads the run's args.yaml
    assert r.exit_code == 1 and "args.yaml is not valid YAML" in r.output and "Traceback" not in r.output
    (run / "run.json").write_text('{"status": "runn')  # cut short
    r = CliRunner().invoke(main, ["report", str(run)])
    assert r.exit_code == 1 and "run.json is not valid JSON" in r.output and "Traceback" not in r.output


def test_a_write_that_fails_names_the_file_not_the_temporary_one(tmp_path, monkeypatch):
    import errno

    from ftkit.io import write_text

    def refused(path, flags, mode=0o777):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("ftkit.io.os.open", refused)
    with pytest.raises(PermissionError) as caught:
        write_text(tmp_path / "report.json", "{}")
    assert caught.value.filename == str(tmp_path / "report.json")


def test_cut_short_csv_files_of_a_run_are_one_line(split_folder, tmp_path):
    from conftest import tiny_config

    from ftkit.train import finetune

    run = finetune(tiny_config(split_folder, tmp_path, epochs=1)).run_dir
    predictions = (run / "predictions.csv").read_text()
    (run / "predictions.csv").write_text(predictions[: len(predictions) - 7])  # the last row cut mid-number
    r = CliRunner().invoke(main, ["report", str(run)])
    assert r.exit_code == 1 and "predictions.csv, line" in r.output and "Traceback" not in r.output
    (run / "predictions.csv").write_text(predictions)
    metrics = (run / "metrics.csv").read_text().splitlines()
    (run / "metrics.csv").write_text("\n".join(metrics[:-1] + [metrics[-1][:12]]) + "\n")
    r = CliRunner().invoke(main, ["report", str(run)])
    assert r.exit_code == 1 and "metrics.csv" in r.output and "Traceback" not in r.output


def _report(f1_a: float, f1_b: float) -> dict:
    per_class = {c: {"precision": f, "recall": f, "f1": f, "support": 5} for c, f in (("a", f1_a), ("b", f1_b))}
    mean = (f1_a + f1_b) / 2
    avg = {"precision": mean, "recall": mean, "f1": mean, "support": 10}
    return {"classes": ["a", "b"], "per_class": per_class, "macro_avg": avg, "weighted_avg": avg, "accuracy": mean,
            "balanced_accuracy": mean, "macro_f1": mean, "n": 10, "confusion_matrix": [[4, 1], [2, 3]], "run": "r"}


def test_one_view_feeds_the_terminal_markdown_and_html():
    """Rows, labels and the best value per row come from ftkit.views; the three renderings agree."""
    from rich.console import Console

    from ftkit.html_report import render_comparison
    from ftkit.report import compare_table, print_report, report_markdown
    from ftkit.views import class_rows, comparison

    one, two = _report(0.25, 0.75), _report(0.5, 0.7)
    md = report_markdown(one, {})
    console = Console(record=True, width=200)
    print_report(one, console)
    terminal = console.export_text()
    for name, m in class_rows(one):
        assert f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |" in md
        assert name in terminal and f"{m['f1']:.3f}" in terminal
    assert "| **b** | 2 | 3 |" in md

    rows = comparison({"one": one, "two": two})
    assert [(r.label, r.best) for r in rows[:5]] == [("accuracy", 0.6), ("balanced accuracy", 0.6), ("macro-F1", 0.6),
                                                     ("f1 a", 0.5), ("f1 b", 0.75)]
    page = render_comparison({"one": one, "two": two}, {"one": {}, "two": {}})
    assert page.count("class='best'") == sum(r.is_best(v) for r in rows for v in r.values) == 9
    console = Console(record=True, width=200)
    console.print(compare_table({"one": one, "two": two}))
    assert console.export_text(styles=True).count("\x1b[1;32m") == 9  # bold green: the same nine cells

    # each column says what its numbers come from: a cross-validation's are its folds' predictions pooled
    one["split"], two["split"] = "test", "pooled folds"
    console = Console(record=True, width=200)
    console.print(compare_table({"one": one, "two": two}))
    page = render_comparison({"one": one, "two": two}, {"one": {}, "two": {}})
    for text in (console.export_text(), page):
        assert "test split" in text and "folds pooled" in text


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="a GPU is here")
@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_a_device_that_is_not_there_is_one_line(device, tmp_path):
    """--device mps on a machine without it stopped with PyTorch's RuntimeError traceback."""
    r = CliRunner().invoke(main, ["predict", "fer2013-fast", str(tmp_path / "x.png"), "--device", device])
    assert r.exit_code == 1 and f"--device {device} asked for" in r.output and "Traceback" not in r.output


def test_one_gpu_is_chosen_by_index_and_checked(monkeypatch, tmp_path):
    """--device cuda:1, or 1 as Ultralytics spells it; an index past the GPUs torch sees is one
    line, and so is cuda:N under torchrun, where each process takes its local rank's GPU."""
    from ftkit.config import ConfigError, resolve
    from ftkit.device import resolve_device
    from ftkit.distributed import Context
    from ftkit.train import check_distributed

    assert resolve(None, data=str(tmp_path), device="1").device == "cuda:1"
    with pytest.raises(ConfigError, match="cuda:N"):
        resolve(None, data=str(tmp_path), device="gpu")
    r = CliRunner().invoke(main, ["predict", "fer2013-fast", str(tmp_path / "x.png"), "--device", "gpu0"])
    assert r.exit_code == 2 and "'gpu0' is not one of auto, cpu, cuda, mps, cuda:N or a GPU index N" in r.output
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="--device cuda:2: torch sees 2 CUDA GPU"):
        resolve_device("cuda:2")
    ddp = Context(rank=0, world=2, local_rank=0)
    with pytest.raises(ConfigError, match="each process takes the GPU of its local rank"):
        check_distributed(resolve(None, data=str(tmp_path), device="cuda:1"), ddp, torch.device("cuda", 1))


def test_predict_starts_without_the_libraries_only_reports_need():
    """`ftkit predict` imports the report modules but draws and scores nothing: scikit-learn and
    matplotlib (about 1.5 s of its start-up on 2 CPU cores) are imported where they are used."""
    import subprocess
    import sys

    code = "import sys, ftkit.predict, ftkit.cli; print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'matplotlib'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
