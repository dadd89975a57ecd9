"""Run directories and checkpoints.

A run directory holds everything needed to understand and repeat a run::

    args.yaml        resolved config        classes.json   class names (index = label)
    split.csv        the exact split        metrics.csv    one row per epoch
    run.json         run record (status, phases, weights, data, timings)
    checkpoints/     best.* and last.* (safetensors + JSON metadata), last.state.pt (resume)
    predictions.csv, report.json, report.md, *.png

Nothing is ever overwritten by a new run: names are numbered, and every file is written
atomically.
"""

from __future__ import annotations

import csv
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from .config import Config, config_from_dict
from .errors import FtkitError
from .io import FileFormatError, atomic_write, holds_files, read_json, read_yaml, write_json, write_yaml
from .weights import check_finite

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None


class RunError(FtkitError, ValueError):
    """A run directory that is missing, incomplete, or would be overwritten."""


SLUG_BYTES = 200  # a folder name's bytes: file systems allow 255, and runs add '-2', '.partial'...


def slug(text: str) -> str:
    """``text`` as one plain folder name: letters (any script), digits, '_', '.', '-'; no
    separators, no leading dot ('..', '.hidden'), at most SLUG_BYTES bytes of UTF-8."""
    name = re.sub(r"[^\w.-]+", "-", text).strip("-.")
    return name.encode()[:SLUG_BYTES].decode(errors="ignore").strip("-.") or "run"


@dataclass
class RunResult:
    """What a finished training returns: its folder and, read back, its report and record."""

    run_dir: Path
    report: dict[str, Any]  # report.json contents (on the eval split)
    history: list[dict[str, Any]]  # one row per epoch
    record: dict[str, Any]  # run.json contents


def check_new_run(cfg: Config) -> None:
    """Refuse, before any data is read, a run directory that ``new_run_dir`` would refuse
    later: an ``--out`` that holds files, or a ``--project`` that is itself a run directory
    (new runs would be made inside that run)."""
    if cfg.out:
        path = Path(cfg.out)
        if path.exists() and not path.is_dir():
            raise RunError(f"--out {path} is a file, not a folder: give a new folder for the run")
        if holds_files(path):
            raise RunError(f"run directory {path} already holds files; continue it with --resume {path} or pick another --out")
    elif Path(cfg.project).exists() and not Path(cfg.project).is_dir():
        raise RunError(f"--project {cfg.project} is a file, not a folder: give the folder that holds your runs")
    elif (Path(cfg.project) / "args.yaml").is_file():
        parent = Path(cfg.project).resolve().parent
        raise RunError(f"--project {cfg.project} is itself a run directory (it holds args.yaml), so the new run would "
                       f"be made inside it: give the folder that holds your runs ({parent}, or a new one) as --project")


def new_run_dir(cfg: Config) -> Path:
    """Create and claim a fresh run directory; never reuse one that holds files."""
    check_new_run(cfg)
    if cfg.out:
        path = Path(cfg.out)
        path.mkdir(parents=True, exist_ok=True)
        return path
    stem = slug(cfg.name or f"{Path(cfg.data).stem or 'data'}-{cfg.backbone}")
    Path(cfg.project).mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        path = Path(cfg.project) / (stem if i == 1 else f"{stem}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunError(f"too many runs named {stem} in {cfg.project}")


@contextmanager
def _held(lock: Path):
    """Hold the advisory lock on ``lock`` without waiting: yields False (and holds nothing)
    when another process has it, True while this one does, and always True on Windows,
    which has no advisory locks (nothing is guarded there)."""
    if fcntl is None:
        yield True
        return
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def run_lock(run: Path):
    """Hold ``RUN/.lock`` while a process trains in RUN: a second ``--resume RUN`` is refused
    instead of writing into the same files. The operating system drops the lock when the
    process ends, however it ends, so a killed run can be resumed at once."""
    with _held(run / ".lock") as held:
        if not held:
            raise RunError(f"{run} is in use by another ftkit process (training or resuming it); "
                           "wait for it to end")
        yield


def in_use(run: Path) -> bool:
    """Whether a process holds ``RUN/.lock`` (is training or resuming the run) right now. On
    Windows, with no advisory locks, a "running" record is taken at its word."""
    if fcntl is None:
        return True
    if not (run / ".lock").is_file():
        return False
    with _held(run / ".lock") as held:
        return not held


def run_status(run: Path, record: dict[str, Any]) -> str:
    """The status run.json gives, except that a "running" record whose lock no process holds
    was killed: "killed"."""
    status = record.get("status", "?")
    return "killed" if status == "running" and not in_use(run) else status


def list_runs(root: Path) -> list[dict[str, Any]]:
    """The run directories directly under ``root`` (those with a run.json), oldest first: name,
    status, backbone, epochs, the split scored and its accuracy and macro-F1 (a cross-validation's:
    the mean over its folds, as `ftkit report` gives them). A record that says
    "running" with no process holding the run's lock was killed: its status says so."""
    found = []
    for folder in sorted((d for d in root.iterdir() if (d / "run.json").is_file()), key=lambda d: (d / "run.json").stat().st_mtime):
        record, args = read_record(folder), read_args(folder)
        status = run_status(folder, record)
        epochs, folds = args.get("epochs"), args.get("folds") or 0
        report = read_json(folder / "report.json") if (folder / "report.json").is_file() else {}
        if folds and (folder / "cv_report.json").is_file():  # the mean over folds, as its report gives it
            cv = read_json(folder / "cv_report.json")
            report = {key: cv[key]["mean"] for key in ("accuracy", "macro_f1")}
        done = record.get("epochs_run")
        if done is None:  # an unfinished run: the epochs its metrics.csv has
            try:
                done = len(read_metrics(folder))
            except FileFormatError:
                done = "?"
        if "eval_data" in record:  # `ftkit evaluate` or `ftkit ensemble` wrote it: scored, not trained
            status, epochs = ("ensemble" if "ensemble" in record else "evaluation"), None
        found.append({
            "run": folder, "status": status, "backbone": record.get("backbone") or args.get("backbone") or "",
            "epochs": (f"{folds} x {epochs}" if folds else f"{done}/{epochs}") if epochs else "", "folds": folds,
            "split": record.get("eval_split") or "", "accuracy": report.get("accuracy"), "macro_f1": report.get("macro_f1"),
            "data": record.get("eval_data") or (record.get("data") or {}).get("path") or args.get("data") or "",
        })
    return found


def runs_beside(path: Path) -> list[str]:
    """The run directories in the folder that holds ``path``: what a mistyped run was likely
    meant to be (for ' Did you mean ...?')."""
    try:
        return [str(d) for d in path.parent.iterdir() if (d / "args.yaml").is_file()]
    except OSError:  # no such folder, or not one this user may list
        return []


def runs_inside_hint(path: Path, trained: bool = True) -> str:
    """For a folder given where one run was meant: if it holds run directories (the --project
    folder, runs/), the text that names them; else "". ``trained``: only runs that trained a
    model (not evaluations or ensembles, which hold scores)."""
    try:
        inside = sorted(d for d in path.iterdir() if (d / ("args.yaml" if trained else "run.json")).is_file())
    except OSError:
        return ""
    if not inside:
        return ""
    named = ", ".join(str(d) for d in inside[:3]) + (" ..." if len(inside) > 3 else "")
    return f"; it holds {len(inside)} run director{'y' if len(inside) == 1 else 'ies'} ({named}): give one of them (`ftkit runs {path}` lists them)"


def refuse_scores(path: Path) -> None:
    """Refuse a folder that ``ftkit evaluate`` or ``ftkit ensemble`` wrote where a trained run is
    needed (to load, export, save or resume): it holds scores, no model; say what to give."""
    scored = read_record(path) if (path / "run.json").is_file() else {}
    if "eval_data" not in scored:
        return
    if "ensemble" in scored:
        raise RunError(f"{path} holds the scores of an ensemble, not a trained model: give one of its members "
                       f"({', '.join(m['run'] for m in scored['ensemble'])})")
    model = (scored.get("model") or {}).get("name")
    raise RunError(f"{path} holds the scores of an evaluation, not a trained model: give the run or model it scored "
                   f"({model or path.parent.parent})")


def require_run(path: str | Path) -> Path:
    """Check that ``path`` is a run directory with a trained model."""
    path = Path(path)
    refuse_scores(path)
    if not (path / "args.yaml").is_file():
        hint = runs_inside_hint(path) or "; give the folder that `ftkit finetune` wrote"
        raise RunError(f"{path} is not an ftkit run directory (no args.yaml){hint}")
    if not (path / "checkpoints" / "best.json").is_file():
        folds = sorted(p.name for p in path.glob("fold-*") if p.is_dir())
        if folds:
            raise RunError(f"{path} is a cross-validation: it holds one model per fold ({path / folds[0]} ... "
                           f"{path / folds[-1]}); use one of them, average them with `ftkit ensemble {path}/fold-* "
                           f"--data DIR --out DEST`, or train one model on all the data without --folds")
        raise RunError(f"{path} has no trained checkpoint yet (checkpoints/best.json); finish or resume the run first")
    return path


# --- checkpoints -------------------------------------------------------------------------


def write_weights(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """A safetensors file with ``meta`` (config, classes, preprocessing...) in its header, written
    atomically: checkpoints and named models (ftkit.zoo) are such files."""
    blob = save(tensors, metadata={"ftkit": json.dumps(meta, default=str)})
    atomic_write(path, lambda f: f.write(blob), mode="wb")


def read_weights(path: Path, tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The tensors (none with ``tensors=False``) and header metadata of a file ``write_weights``
    wrote (None for a file without it). Damaged files and non-finite weights are refused."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get("ftkit")
            state = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as exc:  # safetensors' own error types: truncated or not a safetensors file
        raise RunError(f"{path} cannot be read ({type(exc).__name__}: {exc}); it is damaged") from exc
    check_finite(state, str(path))
    return state, json.loads(header) if header else None


def ended_early(record: dict[str, Any], epochs: int) -> bool:
    """Whether a run's record says it ran fewer than its ``epochs`` (stopped early, or not finished)."""
    return record.get("epochs_run", epochs) < epochs


def save_checkpoint(stem: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Write ``stem.safetensors`` (weights, with ``meta`` in its header) and ``stem.json`` (the
    same metadata for people and tools). The safetensors file is the checkpoint: it carries
    its own metadata, so a stop between the two writes cannot pair weights with another
    epoch's description."""
    write_weights(stem.with_suffix(".safetensors"), {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, meta)
    write_json(stem.with_suffix(".json"), meta)


def load_checkpoint(stem: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata of a checkpoint (the metadata from the weights file's own header;
    runs written before it carried one fall back to the JSON beside it)."""
    weights = stem.with_suffix(".safetensors")
    if not weights.is_file():
        raise RunError(f"checkpoint {weights} is missing")
    tensors, meta = read_weights(weights)
    return tensors, meta if meta is not None else read_json(stem.with_suffix(".json"))


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    """Everything --resume needs, in one file written atomically: the model's weights, the
    optimizer, scheduler and history of the same epoch (plain tensors and numbers only)."""
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def load_train_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RunError(f"{path} is missing: this run cannot be resumed (it stopped before its first epoch ended)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, or not a file torch wrote
        raise RunError(f"{path} cannot be read ({type(exc).__name__}); the run cannot be resumed from it") from exc


def remove_partial_files(run: Path) -> list[Path]:
    """Temporary files left by writes that a kill interrupted (atomic_write's ``.NAME.*.tmp``)."""
    stale = [p for folder in (run, run / "checkpoints") if folder.is_dir()
             for p in folder.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink()
    return stale


# --- the files of a run directory: one writer (and reader) each ---------------------------


def write_args(folder: Path, config: dict[str, Any]) -> None:
    """args.yaml: the resolved config, enough to repeat the run."""
    write_yaml(folder / "args.yaml", config)


def read_args(folder: Path) -> dict[str, Any]:
    """args.yaml as written, or {} for a folder without one (e.g. an ensemble)."""
    path = folder / "args.yaml"
    return (read_yaml(path) or {}) if path.is_file() else {}


def load_run_config(run: Path) -> Config:
    return config_from_dict(read_args(run))


def move_data(run: Path, data: str) -> None:
    """Point a run at its data's new place (args.yaml, and run.json, which keeps the old one), so
    that a later --resume or evaluate finds it."""
    args = read_args(run)
    write_args(run, {**args, "data": data})
    record = read_record(run)
    update_record(run, data={**record.get("data", {}), "path": data},
                  data_moves=[*record.get("data_moves", []), {"from": args.get("data"), "to": data}])


def write_classes(folder: Path, classes: list[str]) -> None:
    """classes.json: the class names, index = label."""
    write_json(folder / "classes.json", classes)


METRIC_COLUMNS = ["epoch", "phase", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                  "val_balanced_accuracy", "val_macro_f1", "lr", "images_per_s", "seconds"]


def write_metrics(folder: Path, history: list[dict[str, Any]]) -> None:
    """metrics.csv: one row per epoch, rewritten whole (atomically) after each."""
    def write(f):
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)

    atomic_write(folder / "metrics.csv", write)


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """metrics.csv's rows with numbers as floats; [] when the run has none."""
    path = folder / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        # a column an older version did not write is empty in the rows it wrote: left out of those rows
        return [{k: (v if k == "phase" else float(v)) for k, v in r.items() if v != "" and k is not None} for r in rows]
    except (TypeError, ValueError) as exc:
        raise FileFormatError(f"{path} has a row that is not numbers ({exc}): the file was cut short or edited") from exc


def phase_text(phase: dict[str, Any]) -> str:
    """One phase of run.json's ``phases``, as every report (terminal, Markdown, HTML) says it."""
    first, last = phase["epochs"]
    span = f"epoch {first}" if first == last else f"epochs {first}-{last}"
    return f"{phase['name']} ({span}, head lr {phase['lr_head']:g}, backbone lr {phase['lr_backbone']:g})"


def read_record(run: Path) -> dict[str, Any]:
    """run.json (the run record), or {} for a folder without one."""
    path = run / "run.json"
    return read_json(path) if path.is_file() else {}


def update_record(run: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into run.json (the run record) and return it: the one writer of run.json."""
    record = {**read_record(run), **fields}
    write_json(run / "run.json", record)
    return record
