"""The command line: thin Click commands, one library call each.

This module holds the group and the commands that train and read runs (finetune, lr-find,
report, runs, evaluate, ensemble, export, demo, backbones); predict, data and weights have
their own modules (cli_predict.py, cli_data.py, cli_weights.py), and what they share
(the error wrapper, the generated options) is in cli_options.py.

The ``finetune`` options are generated from the :class:`ftkit.config.Config` dataclass
(name, type and the one-line comment as help), so the CLI, recipes and the Python API
share one schema and cannot drift apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from . import __version__
from .cli_data import data
from .cli_options import DeviceType, config_options, device_option, flag_overrides, friendly  # noqa: F401 (DeviceType: re-exported)
from .cli_predict import predict
from .cli_weights import number_text, weights
from .config import CHECKPOINTS, CHOICES, DATA_OVERRIDES, Config
from .progress import console, progress_bar


# --- options generated from the config ---------------------------------------------------


# --- commands ----------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ftkit")
def main():
    """ftkit: fine-tune pretrained timm backbones on labeled images (facial expressions first)."""


@main.command()
@click.option("--recipe", type=click.Path(dir_okay=False), help="YAML recipe: a file, or the name of one of ftkit's (fewshot, fer2013-fast, ...: recipes/*.yaml); flags override it.")
@click.option("--resume", "resume_run", type=click.Path(file_okay=False), help="Continue an interrupted run directory.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train in this many processes on this machine (one per GPU, or CPU processes) with DDP: "
                   "ftkit starts torchrun itself. --batch-size stays the global batch.")
@config_options
@friendly
def finetune(recipe, resume_run, nproc, **kwargs):
    """Fine-tune a backbone on an image folder or FER2013 CSV and write a run directory.

    Example:

    \b
        ftkit finetune --data faces/ --backbone mobilenetv2 --input gray48 --epochs 10
        ftkit finetune --recipe recipes/fer2013-fast.yaml --data fer2013.csv
        ftkit finetune --init fer2013-fast --data my_faces/ --epochs 15
        ftkit finetune --resume runs/faces-resnet18 [--data where/the/data/moved/]
        ftkit finetune --recipe recipes/fer2013-fast.yaml --data fer2013/ --nproc 4
        torchrun --nproc-per-node 4 -m ftkit finetune --recipe recipes/fer2013-fast.yaml --data fer2013/
    """
    _run_training(recipe, resume_run, nproc, kwargs)


@main.command()
@click.argument("teachers", nargs=-1)
@click.option("--recipe", type=click.Path(dir_okay=False), help="YAML recipe of the student: a file, or the name of one of ftkit's (fer2013-fast, ...); flags override it.")
@click.option("--resume", "resume_run", type=click.Path(file_okay=False), help="Continue an interrupted distillation run directory.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train in this many processes on this machine (one per GPU, or CPU processes) with DDP.")
@config_options
@friendly
def distill(teachers, recipe, resume_run, nproc, **kwargs):
    """Train a student on the labels and on the soft targets of trained models (TEACHERS: run
    directories or named models; several are averaged): knowledge distillation.

    The teachers score every training image once, before the first epoch; their outputs are
    cached in the run directory (teacher.safetensors), so the student's epochs cost no teacher
    pass. The loss is (1 - alpha) x the labels' cross-entropy + alpha x T^2 x KL(teachers || student)
    at temperature T (--distill-alpha, --distill-temperature). Everything else is as in finetune.

    Example:

    \b
        ftkit distill runs/fer-a runs/fer-b --recipe fer2013-fast --data fer2013/ --name student
        ftkit distill fer2013-best --data my_faces/ --backbone mobilenetv3-small --epochs 20
        ftkit distill --resume runs/student
    """
    if resume_run and teachers:
        raise click.UsageError("--resume continues a run with its own teachers (args.yaml): leave out TEACHERS")
    if teachers:
        kwargs["teacher"] = ",".join([*teachers, *([kwargs["teacher"]] if kwargs.get("teacher") else [])])
    _run_training(recipe, resume_run, nproc, kwargs, distilling=True)


def _run_training(recipe: str | None, resume_run: str | None, nproc: int, kwargs: dict, distilling: bool = False) -> None:
    """finetune and distill: a new run from the resolved config, or an interrupted one resumed."""
    from .distributed import from_env
    from .train import finetune as run_finetune
    from .train import resume

    launched = nproc > 1 and not from_env().active
    if resume_run:
        moved = kwargs.pop("data")  # the run's own data, now somewhere else
        ignored = (["--recipe"] if recipe else []) + ["--" + k.replace("_", "-") for k in flag_overrides(kwargs)]
        if ignored:
            raise click.UsageError(f"--resume continues a run with its own settings (args.yaml); it would ignore "
                                   f"{', '.join(ignored)}: leave them out (only --data, for data that moved, goes with "
                                   "--resume), or start a new run")
        if launched:
            _launch_torchrun(nproc, ["finetune", "--resume", resume_run] + (["--data", moved] if moved else []))
        result = resume(resume_run, console=console, data=moved)
    else:
        cfg = _training_config(recipe, kwargs)
        if distilling and not cfg.teacher:
            raise click.UsageError("name at least one teacher (TEACHERS, --teacher or a recipe's teacher:): a run "
                                   "directory or a named model (ftkit weights list)")
        if launched:
            _launch_torchrun(nproc, ["finetune"], cfg)
        result = run_finetune(cfg, console=console)
    if from_env().main:
        click.echo(str(result.run_dir))


def _training_config(recipe: str | None, flags: dict) -> Config:
    """The resolved config of `finetune` and `lr-find`: defaults < recipe (or --init's model) <
    flags; --data must be given by one of them."""
    from .zoo import resolve_config

    cfg = resolve_config(recipe, **flag_overrides(flags))
    if not cfg.data:
        raise click.UsageError("--data is required (an image folder or a FER2013 CSV), directly or in the recipe")
    return cfg


def _launch_torchrun(nproc: int, args: list[str], cfg: Config | None = None):
    """Run the command again in ``nproc`` processes under torchrun, and exit with its code. A new
    run's settings, resolved and checked here, travel as a recipe file, so every process starts
    from exactly this config."""
    import os
    import tempfile

    from .distributed import launch
    from .io import write_yaml

    if cfg is None:
        raise SystemExit(launch(nproc, args))
    with tempfile.TemporaryDirectory(prefix="ftkit-launch-") as tmp:
        recipe = Path(tmp) / "resolved.yaml"
        write_yaml(recipe, cfg.to_dict())
        code = launch(nproc, [*args, "--recipe", str(recipe)], env={"OMP_NUM_THREADS": os.environ.get(
            "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))})
    raise SystemExit(code)


@main.command("lr-find")
@click.option("--recipe", type=click.Path(dir_okay=False), help="YAML recipe: a file, or the name of one of ftkit's (fewshot, fer2013-fast, ...: recipes/*.yaml); flags override it.")
@click.option("--start", type=click.FloatRange(min=0, min_open=True), default=1e-7, show_default=True,
              help="Learning rate of the first step.")
@click.option("--end", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Learning rate of the last step.")
@click.option("--steps", type=click.IntRange(min=5), default=100, show_default=True, help="Optimisation steps.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default="lr_find.png", show_default=True,
              help="Where the loss-against-rate plot goes.")
@config_options
@friendly
def lr_find(recipe, start, end, steps, plot_path, **kwargs):
    """Learning-rate range test: train a few steps while the rate grows from --start to --end,
    plot the smoothed loss, and suggest an --lr for `ftkit finetune` with the same options.
    Nothing else is written: the model is thrown away.

    Example:

    \b
        ftkit lr-find --data faces/ --backbone mobilenetv2 --input gray48
        ftkit lr-find --recipe recipes/fewshot.yaml --data my_faces/ --steps 60
    """
    from .lrfind import check_plot_path, find_lr, plot_lr_finding

    check_plot_path(plot_path)
    finding = find_lr(_training_config(recipe, kwargs), console=console, start=start, end=end, steps=steps)
    plot_lr_finding(finding, plot_path)
    table = Table(title=f"lr range test ({finding.phase} phase, {len(finding.lrs)} steps"
                        f"{', stopped: the loss diverged' if finding.stopped_early else ''})")
    for col in ("learning rate", "smoothed loss"):
        table.add_column(col, justify="right")
    for i in sorted({round(k * (len(finding.lrs) - 1) / 11) for k in range(12)}):
        table.add_row(f"{finding.lrs[i]:.1e}", f"{finding.losses[i]:.4f}")
    console.print(table)
    if finding.suggestion is None:
        raise click.ClickException(
            f"the loss did not fall between lr {start:g} and {end:g} ({finding.phase} phase; plot: {plot_path}), so the "
            "test names no rate: " + ("a frozen backbone without pretrained weights learns little (try --freeze-epochs "
                                      "0), or " if finding.phase == "head" and not finding.pretrained else "")
            + "give it more --steps (each step is one batch; a small set may need a smaller --batch-size)")
    console.print(f"lowest loss at lr {finding.minimum:.1e}; steepest fall at {finding.steepest:.1e}; "
                  f"suggested --lr {finding.suggestion:.1e} (a tenth of the lowest-loss rate); plot: {plot_path}")
    click.echo(f"{finding.suggestion:.1e}")


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="With several runs: write the comparison page here.")
@friendly
def report(runs, html_out):
    """Print a run's report and regenerate its files (report.html too); several runs side by side.

    Example:

    \b
        ftkit report runs/faces-mobilenetv2
        ftkit report runs/a runs/b runs/c --html comparison.html
    """
    from .html_report import check_page_path
    from .io import write_text
    from .report import (compare_table, comparison_note, print_cv_report, print_report, write_comparison_html,
                         write_report)

    if html_out:
        check_page_path(html_out)
    reports = {}
    for run in runs:
        reports[run] = write_report(Path(run))  # a cross-validated run: its pooled report and fold table
        if (Path(run) / "cv_report.json").is_file():
            print_cv_report(Path(run), console)
        elif len(runs) == 1:
            from .runs import read_args, read_record
            from .views import record_notes, tta_title

            record = read_record(Path(run))
            tta = tta_title(record, read_args(Path(run)))
            print_report(reports[run], console, title=f"{run} ({reports[run].get('split')} split{tta})")
            for note in record_notes(record):
                console.print(f"note: {note}", style="yellow")
    if len(reports) == 1:
        page = Path(runs[0]) / "report.html"
        console.print(f"report: {page}")
        if html_out:  # one run has no comparison: its own page goes where it was asked for
            write_text(html_out, page.read_text())
            console.print(f"copied to {html_out}")
        return
    console.print(compare_table(reports))
    note = comparison_note(list(reports))
    if note:
        console.print(f"note: {note}", style="yellow")
    if html_out:
        write_comparison_html(reports, Path(html_out), note=note)
        console.print(f"comparison: {html_out}")


@main.command("runs")
@click.argument("folder", type=click.Path(file_okay=False), default="runs")
@friendly
def runs_list(folder):
    """The run directories in FOLDER (default runs/), oldest first: status, backbone, epochs and
    scores; an interrupted or killed run is listed with the command that resumes it.

    Example:

    \b
        ftkit runs
        ftkit runs /shared/runs
    """
    from .runs import list_runs

    root = Path(folder)
    if not root.is_dir():
        raise click.ClickException(f"{root} not found: give the folder that holds run directories (finetune's --project)")
    found = list_runs(root)
    if not found:
        raise click.ClickException(f"no run directory in {root} (a run directory holds a run.json)")
    table = Table(title=f"runs in {root}")
    for col in ("run", "status", "backbone", "epochs", "scored on", "accuracy", "macro-F1", "data"):
        table.add_column(col, justify="right" if col in ("accuracy", "macro-F1") else "left", overflow="fold")
    for r in found:
        split = f"{r['folds']}-fold CV" if r["folds"] else r["split"]
        table.add_row(r["run"].name, r["status"], r["backbone"], r["epochs"], split, number_text(r["accuracy"]),
                      number_text(r["macro_f1"]), str(r["data"]))
    console.print(table)
    for r in found:
        if r["status"] in ("interrupted", "killed"):
            console.print(f"{r['run'].name} was {r['status']}: continue it with ftkit finetune --resume {r['run']}")


@main.command()
@click.argument("run", type=click.Path())
@click.option("--data", help="Image folder or CSV to score on [default: the run's own data].")
@click.option("--split", default="test", show_default=True, help="Split to score (a flat folder is scored whole).")
@click.option("--tta", type=click.Choice(CHOICES["tta"]), help="Test-time augmentation [default: the run's].")
@click.option("--name", help="Subfolder name under RUN/eval/.")
@click.option("--checkpoint", type=click.Choice(CHECKPOINTS), default="best", show_default=True,
              help="A run directory's epoch to score: best (chosen on its val split) or last (its final epoch, "
                   "chosen by nothing when the run ran all its epochs).")
@device_option
@config_options(only=DATA_OVERRIDES, default="the run's")
@friendly
def evaluate(run, data, split, tta, name, checkpoint, device, **kwargs):
    """Score a trained run, a named model or an exported file on another folder or split; writes
    RUN/eval/<name>/ (runs/<model name>/eval/<name>/ for a named model, eval/<name>/ beside an
    exported .onnx or TorchScript file, which is scored as deployed: on the CPU, with the
    preprocessing and TTA recorded in it).

    Faces are cropped and classes selected as the run was trained unless the options below say
    otherwise; class folders named by a usual alias of the model's classes (anger, happiness,
    Sad...) are scored as those classes.

    Examples:

    \b
        ftkit evaluate runs/faces-mobilenetv2 --data other_faces/ --split test --tta flip
        ftkit evaluate fer2013-fast --data my_photos/ --faces crop --drop-class contempt
        ftkit evaluate runs/faces-mobilenetv2/export/model.onnx --data other_faces/
        ftkit evaluate runs/faces-mobilenetv2 --checkpoint last --split test
    """
    from .io import read_json
    from .predict import evaluate_run
    from .report import print_report
    from .views import tta_title

    folder, rep = evaluate_run(run, data, split, tta, name, device, console=console, overrides=flag_overrides(kwargs),
                               checkpoint=checkpoint)
    record = read_json(folder / "run.json")
    last = ", last epoch" if checkpoint == "last" else ""
    print_report(rep, console, title=f"{folder} ({rep.get('split')}{tta_title(record)}{last})")
    note = record.get("eval_note")
    if note:
        console.print(f"note: {note}, so these scores are not held out", style="yellow")
    if record["eval_settings"].get("whole_images"):
        console.print(f"note: {record['eval_settings']['whole_images']}", style="yellow")
    click.echo(str(folder))


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New folder for the ensemble's predictions and report.")
@click.option("--data", help="Image folder or CSV to score on [default: each run's own data and split file; they must give the same images].")
@click.option("--split", default="test", show_default=True, help="Split to score (a flat folder is scored whole).")
@click.option("--tta", type=click.Choice(CHOICES["tta"]), help="Test-time augmentation for every run [default: each run's].")
@device_option
@config_options(only=DATA_OVERRIDES, default="each run's")
@friendly
def ensemble(runs, out, data, split, tta, device, **kwargs):
    """Average the class probabilities of several runs on the same images and report on them.

    Each run keeps its own input size, preprocessing and TTA; the runs must share class names. A
    member may be a named model or an exported .onnx or TorchScript file too.
    OUT gets predictions.csv, the report files and each member's predictions under members/.

    Example:

    \b
        ftkit ensemble runs/fer-fast runs/fer-best --split test --out runs/fer-ensemble
    """
    from .ensemble import ensemble_runs
    from .report import print_report

    with progress_bar(console) as bar:
        tasks = [bar.add_task(f"scoring {Path(r).name}", total=None) for r in runs]

        def follow(i, total=None, advance=None):
            if total is not None:
                bar.update(tasks[i], total=total)
            if advance:
                bar.advance(tasks[i], advance)

        folder, rep = ensemble_runs(list(runs), out, data, split, tta, device, console=console, progress=follow,
                                    overrides=flag_overrides(kwargs))
    from .io import read_json

    members = read_json(folder / "run.json")["ensemble"]
    table = Table(title=f"ensemble on {rep.get('split')} ({rep['n']} images)")
    for col in ("run", "input", "TTA", "accuracy", "macro-F1"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for m in members:
        table.add_row(m["run"], m["input"], m["tta"], f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}")
    table.add_section()
    table.add_row(*(Text(cell, style="bold") for cell in ("ensemble (mean probability)", "", "", f"{rep['accuracy']:.4f}",
                                                       f"{rep['macro_f1']:.4f}")))
    print_report(rep, console, title=f"{folder} ({rep.get('split')})")
    console.print(table)
    for note in [m["not_held_out"] for m in members if m.get("not_held_out")]:
        console.print(f"note: {note}, so these scores are not held out", style="yellow")
    for note in [m["whole_images"] for m in members if m.get("whole_images")]:
        console.print(f"note: {note}", style="yellow")
    click.echo(str(folder))


@main.command()
@click.argument("run", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]),
              help="[default: the one --out's suffix names (.onnx; .ts or .pt), else onnx]")
@click.option("--out", type=click.Path(dir_okay=False), help="Output file [default: RUN/export/model.onnx or model.ts].")
@click.option("--tolerance", type=click.FloatRange(min=0), default=1e-3, show_default=True,
              help="Largest allowed |exported - PyTorch| logit difference.")
@click.option("--force", is_flag=True, help="Replace a file at --out that is not an earlier export of this run or model.")
@friendly
def export(run, fmt, out, tolerance, force):
    """Export a run's best model or a named model (dynamic batch, preprocessing in the metadata),
    checking parity. Default output: RUN/export/model.onnx, or exports/<name>/model.onnx.

    Examples:

    \b
        ftkit export runs/faces --format onnx
        ftkit export fer2013-fast --format onnx
        ftkit export runs/faces --out faces.ts
    """
    from .export import export_run

    result = export_run(run, fmt, out, tolerance, force=force)
    console.print(f"{result.format} model: {result.path} (largest difference from PyTorch: {result.max_abs_diff:.2e}, "
                  f"tolerance {tolerance:g}); preprocessing in {result.path}.json")
    click.echo(str(result.path))


@main.command()
@click.option("--out", type=click.Path(file_okay=False), help="Run directory [default: runs/demo, numbered].")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where to write the synthetic data, or reuse it [default: demo-data/ beside the run directory].")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the demo's epochs.")
@click.option("--backbone", help="Override the demo's backbone.")
@friendly
def demo(out, data_dir, epochs, backbone):
    """Generate synthetic cartoon faces, fine-tune on them and print the per-class report.

    Runs in a few minutes on 2 CPU cores with no network.
    """
    from .demo import run_demo

    result = run_demo(out=out, data_dir=data_dir, epochs=epochs, backbone=backbone, console=console)
    click.echo(str(result.run_dir))


@main.command()
@click.option("--all", "show_all", is_flag=True, help="List every timm model name instead of the aliases.")
@click.option("--filter", "pattern", default="*", help="A wildcard such as 'resnet*', over the aliases and their timm names (with --all: over every timm name).")
@friendly
def backbones(show_all, pattern):
    """List backbone aliases with their timm names, parameter counts, input size, and where their
    ImageNet weights come from here (the store, the timm cache, `ftkit weights pull`, or the hub)."""
    from .models import backbone_rows

    import fnmatch

    import timm

    if show_all:
        names = timm.list_models(pattern or "")
        if not names:
            raise click.ClickException(f"no timm model name matches {pattern!r}; try a wider wildcard such as 'resnet*'")
        click.echo("\n".join(names))
        return
    rows = [r for r in backbone_rows()
            if not pattern or fnmatch.fnmatch(r["alias"], pattern) or fnmatch.fnmatch(r["timm"], pattern)]
    if not rows:
        raise click.ClickException(f"no alias or its timm name matches {pattern!r}; `ftkit backbones --all --filter "
                                   f"{pattern!r}` searches every timm model name")
    from .weights import weights_route

    table = Table(title="backbone aliases (any timm model name works too)")
    for col in ("alias", "timm name", "parameters", "default input", "mean / std", "ImageNet weights"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["alias"], row["timm"], f"{row['parameters'] / 1e6:.2f} M", row["input"], row["norm"],
                      weights_route(row["timm"]))
    console.print(table)


# --- data --------------------------------------------------------------------------------


# --- weights -----------------------------------------------------------------------------


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


for command in (predict, data, weights):  # the commands that live in their own modules
    main.add_command(command)
