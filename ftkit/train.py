"""Fine-tuning, as a story: build data, build model, build optimizer, then loop
train_one_epoch / evaluate / save, and finish with predictions and a report. Resuming an
interrupted run is here too; the phases and schedules are in schedule.py, one epoch in loop.py.

Phases (named in the config, the log and the run record): "head" trains only the
classifier for ``freeze_epochs``; then "full" unfreezes the whole backbone at
``lr x backbone_lr_mult`` (or "gradual-k/n" unfreezes one stage group more per epoch).
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import __version__
from . import distributed
from . import shards
from .config import Config, ConfigError, suggest
from .crossval import cross_validate
from .data import DataSplits, check_listing, write_split_listing
from .duplicates import DIGESTS, SEEN_SPLITS, write_digests
from .device import autocast_for, resolve_device, seed_everything
from .distill import CACHE as TEACHER_CACHE
from .distill import DistillLoss, softened, teacher_origin, teacher_targets
from .distributed import SINGLE, Context
from .evaluation import predict_split, quick_metrics, write_predictions
from .fer2013 import seen_counts, seen_label
from .heads import fit_logreg, ignored_by_head
from .io import read_json, refuse_inside
from .loop import (
    StepParts, class_weight_tensor, make_ema, make_loaders, make_mixer, optimizer_steps, seed_epoch, train_one_epoch,
)
from .loop import TrainingDiverged, mix_batch, seed_worker  # noqa: F401 (re-exported: ftkit.train's API)
from .models import (
    create,
    count_parameters,
    head_parameter_names,
    resolve_data_config,
    resolve_name,
    set_trainable,
)
from .progress import console as default_console
from .progress import progress_bar
from .report import print_report, write_report
from .runs import (
    RunError,
    RunResult,
    check_new_run,
    ended_early,
    load_checkpoint,
    load_run_config,
    load_train_state,
    move_data,
    new_run_dir,
    phase_text,
    read_args,
    read_record,
    read_weights,
    refuse_scores,
    remove_partial_files,
    run_lock,
    runs_beside,
    runs_inside_hint,
    save_checkpoint,
    save_train_state,
    update_record,
    write_args,
    write_classes,
    write_metrics,
    write_weights,
)
from .schedule import Phase, build_optimizer, build_scheduler, describe_phases, run_phases, start_weights
from .schedule import cosine_with_warmup, plan_phases  # noqa: F401 (re-exported)
from .transforms import augmentations
from .views import tta_title
from .weights import WeightsInfo, find_pretrained
from .zoo import fer2013_digests, fer2013_provenance, load_source, match_classes, transfer_head


# --- the whole run -----------------------------------------------------------------------


def build_model(cfg: Config, classes: list[str], out: Console, allow_download: bool = True):
    """The backbone with a fresh head, from pretrained weights when asked (see weights.py), or
    from a trained model (``cfg.init``) whose classifier rows carry over to classes of the same name."""
    n_classes = len(classes)
    if cfg.init:
        return build_from_init(cfg, classes, out)
    if not cfg.pretrained and not cfg.weights:
        out.print(f"{resolve_name(cfg.backbone)}: training from random initialisation", style="yellow")
        return create(cfg, n_classes), WeightsInfo("none")
    state_dict, info = find_pretrained(cfg.backbone, cfg.weights, allow_download=allow_download)
    out.print(f"weights: {info.source} {info.file or ''}")
    return create(cfg, n_classes, state_dict), info


def build_from_init(cfg: Config, classes: list[str], out: Console):
    """The init model's backbone, its classifier rows for the classes it knows by name
    (aliases folded: anger/angry...), fresh rows for the others."""
    source = load_source(cfg.init)
    name = resolve_name(cfg.backbone)
    if name != source.meta["backbone"]:
        raise ConfigError(f"init {cfg.init} is a {source.meta['backbone']}, but backbone is {name}: leave backbone "
                          "unset to take the init model's (ftkit.zoo.resolve_config does), or start from another model")
    model = create(replace(cfg, pretrained=False, weights=None), len(classes))
    matched = match_classes(source.meta["classes"], classes)
    transfer_head(model, source, head_parameter_names(model), matched)
    carried = {classes[t]: source.meta["classes"][s] for t, s in matched.items()}
    fresh = [c for i, c in enumerate(classes) if i not in matched]
    out.print(f"init: {source.kind} {cfg.init} ({source.path}); classifier rows carried for "
              f"{', '.join(carried) or 'no class'}" + (f"; new rows for {', '.join(fresh)}" if fresh else ""))
    init = {**source.describe(), "classes_carried": carried, "classes_new": fresh, **fer2013_provenance(source.entry)}
    return model, WeightsInfo("init", str(source.path), source.sha256, init=init)


def finetune(cfg: Config, console: Console | None = None, allow_download: bool = True) -> RunResult:
    """Fine-tune ``cfg.backbone`` on ``cfg.data`` and write a complete run directory
    (with ``cfg.folds``, one run per fold plus the cross-validated report).

    Started by torchrun (WORLD_SIZE > 1), each process trains its share with DDP and rank 0
    writes the one run directory; see ftkit/distributed.py."""
    out = console or default_console
    refuse_inside(cfg.out or cfg.project, [cfg.data], "the run directory's folder")
    check_new_run(cfg)  # before the data is read, which can take minutes
    # an absolute data path: the run directory then works from any working directory
    cfg = replace(cfg, data=os.path.abspath(cfg.data) if cfg.data else cfg.data)
    device = resolve_device(cfg.device)  # a device that is not there fails before anything else
    augmentations(cfg.augment, cfg.augment_pipeline)  # so does a pipeline Albumentations cannot build
    with distributed.process_group(device.type) as ctx:
        check_distributed(cfg, ctx, device)
        out = out if ctx.main else Console(quiet=True)
        if cfg.folds:
            if shards.shard_root(cfg.data):
                raise ConfigError(f"--folds needs random access to the images; {cfg.data} is streamed from shards: "
                                  "cross-validate on the image folder the shards were written from")
            return cross_validate(cfg, train_on, console=out, allow_download=allow_download)
        data = shards.load(cfg, console=out)
        return train_on(data, cfg, out, allow_download, ctx)


def check_distributed(cfg: Config, ctx: Context, device: torch.device) -> None:
    """What DDP cannot do with this config, said before any folder exists."""
    if cfg.sync_bn and device.type != "cuda":
        raise ConfigError(f"--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no {device.type} kernel); on the CPU "
                          "each process normalises its own share of the batch: leave --sync-bn out")
    if not ctx.active:
        return
    if device.index is not None:
        raise ConfigError(f"--device {device}: under --nproc/torchrun each process takes the GPU of its local rank; "
                          "give --device cuda, and choose the GPUs with CUDA_VISIBLE_DEVICES")
    if cfg.folds:
        raise ConfigError("--folds runs its folds one after another in one process; leave out --nproc/torchrun, "
                          "or train each fold's split (--splits) as its own distributed run")
    if cfg.head == "logreg":
        raise ConfigError("--head logreg is fitted in one step by scikit-learn in one process; leave out --nproc/torchrun")
    if cfg.batch_size % ctx.world:
        lower, upper = cfg.batch_size - cfg.batch_size % ctx.world, cfg.batch_size + ctx.world - cfg.batch_size % ctx.world
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch and must divide among {ctx.world} processes "
                          f"(each takes an equal share, so that a step weighs every image alike): use "
                          f"{', '.join(str(b) for b in (lower, upper) if b)}")


def setting_notes(cfg: Config) -> list[str]:
    """Settings that this run would take without using them, or that add up to more than
    the user likely meant: said once at the start instead of silently."""
    notes, ignored = [], ignored_by_head(cfg)
    if ignored:
        what = {"logreg": "fits scikit-learn on frozen embeddings and takes no gradient step",
                "linear": "keeps the backbone frozen throughout"}[cfg.head]
        notes.append(f"head {cfg.head} {what}: {', '.join(ignored)} do not apply and are not used")
    if cfg.warmup_epochs and cfg.scheduler != "cosine" and cfg.head != "logreg":
        notes.append(f"warmup_epochs={cfg.warmup_epochs:g} applies to the cosine schedule only; scheduler "
                     f"{cfg.scheduler} does not use it")
    if cfg.sampler == "balanced" and cfg.class_weights == "balanced" and cfg.head != "logreg":
        notes.append("sampler=balanced and class_weights=balanced both correct class imbalance: together they "
                     "over-weight the rare classes (each is usually used alone)")
    return notes


def init_seen_note(data: DataSplits, init: dict[str, Any] | None, role: str = "this run's start") -> str | None:
    """Said when the split a run reports on holds FER2013 images that its init model or a teacher
    (``role``; a shipped one, by its manifest's ``fer2013_seen``, which ``weights.init`` in run.json
    keeps) trained on or chose its epoch by."""
    seen = (init or {}).get("fer2013_seen")
    split = data.eval_split
    known = fer2013_digests(init) if seen else {}
    counts = seen_counts(data.splits[split].keys, seen, data.csv_splits, data.split_digests().get(split), known) if seen else {}
    if not counts:
        return None
    how = "name, CSV Usage or pixels" if known and data.digests else None
    parts = " and ".join(f"{n} {seen_label(part, seen, how)}" for part, n in counts.items())
    return (f"of the {len(data.splits[data.eval_split])} images of the {data.eval_split} split, {init['name']} "
            f"({role}) had {parts}")


def train_on(data: DataSplits, cfg: Config, out: Console, allow_download: bool = True,
             ctx: Context | None = None) -> RunResult:
    """Build the model and train it on ``data``, writing everything into a new run directory
    (claimed only once the model exists, so a missing weights file leaves nothing behind)."""
    ctx = ctx or distributed.current()
    seed_everything(cfg.seed)
    for note in setting_notes(cfg):
        out.print(note, style="yellow")
    if cfg.head == "logreg" and cfg.tta == "none":
        # the regression is fitted on flip-averaged embeddings: predict the same way, and say so
        # in args.yaml and the checkpoint, so that `ftkit evaluate` repeats the run's own report
        cfg = replace(cfg, tta="flip")
        out.print("head logreg: tta set to flip, as its embeddings are flip-averaged")
    model, weights = build_model(cfg, data.classes, out, allow_download)
    for source, role in [(weights.init, "this run's start"), *((teacher_origin(t), "a teacher") for t in cfg.teacher)]:
        note = init_seen_note(data, source, role)
        if note:
            out.print(f"note: {note}, so this run's scores will not be held out: report on other images "
                      "(FER2013 PrivateTest, or another set)", style="yellow")
    device = resolve_device(cfg.device)  # a device that is not there fails here, before any folder exists
    if cfg.amp and device.type != "cuda":
        out.print(f"--amp: mixed precision is CUDA-only in ftkit; on {device.type} this run trains in full precision", style="yellow")
    run = distributed.on_main(lambda: new_run_dir(cfg), ctx)  # one folder, made by rank 0
    if weights.mean and cfg.mean is None and cfg.std is None:
        # the weights were trained with another normalisation than timm's config says
        cfg = Config(**{**cfg.to_dict(), "mean": weights.mean, "std": weights.std})
    with training_session(run, out) if ctx.main else nullcontext():
        if ctx.main:
            _write_run_inputs(run, cfg, data, model, weights)
        if cfg.head == "logreg":
            return fit_logreg(run, cfg, data, model, out, finish=_finish)
        return _train(run, cfg, data, model, state=None, out=out, ctx=ctx)


def resume(run_dir: str | Path, console: Console | None = None, data: str | Path | None = None) -> RunResult:
    """Continue an interrupted run from its last checkpoint, with its own config and split.

    The last epoch's weights, optimizer, scheduler and history come from one file
    (``last.state.pt``, written atomically), so a stop at any moment resumes from one epoch's
    state, never from weights of one epoch and optimizer state of another. ``data``: where the
    run's data is now, when it moved (another disk or machine); the run's split listing must
    find every one of its images there, and the run then records the new place."""
    out = console or default_console
    run = Path(run_dir)
    refuse_scores(run)
    if not run.exists():
        raise RunError(f"run directory {run} not found.{suggest(str(run), runs_beside(run))}")
    if not (run / "args.yaml").is_file():
        hint = runs_inside_hint(run) or ": give the folder an interrupted `ftkit finetune` wrote"
        raise RunError(f"{run} is not an ftkit run directory (no args.yaml){hint}")
    cfg = load_run_config(run)
    record = read_record(run)
    moved = data is not None and os.path.abspath(data) != os.path.abspath(cfg.data)
    if moved:
        if not shards.source_exists(data):
            raise RunError(f"--data {data} not found: give the folder or CSV that {run}'s data ({cfg.data}) moved to")
        cfg.data = os.path.abspath(data)
    elif not shards.source_exists(cfg.data):
        raise RunError(f"{run} trained on {cfg.data}, which is not there any more: if the data moved, continue with "
                       f"ftkit finetune --resume {run} --data NEW_PLACE")
    if moved and record.get("status") == "finished":
        return _record_finished_move(run, cfg.data, out)
    if cfg.folds:
        if record.get("status") == "finished":
            raise RunError(f"{run} is a finished {cfg.folds}-fold cross-validation: there is nothing to resume")
        check_distributed(cfg, distributed.from_env(), resolve_device(cfg.device))
        with run_lock(run):
            if moved:  # the folds too; an interrupted fold's own split listing checks the files as it resumes
                for folder in _run_folders(run):
                    move_data(folder, cfg.data)
            return cross_validate(cfg, train_on, console=out, root=run, resume_on=resume)
    cfg.splits = str(run / "split.csv")
    if record.get("status") == "finished":
        stopped = "stopped early" if ended_early(record, cfg.epochs) else "finished"
        raise RunError(f"{run} has {stopped} (epoch {record.get('epochs_run')} of {cfg.epochs}): there is nothing to "
                       f"resume; to train longer, start a new run with --init {run}")
    if cfg.head == "logreg":
        raise RunError(f"{run} is a --head logreg run, fitted in one step: there is no epoch to resume; start it again")
    # Any number of processes may resume a run (its state does not depend on how many trained
    # it); under torchrun every rank reads the run directory, so on several machines it must be
    # on storage they share, as with timm's --resume.
    device = resolve_device(cfg.device)
    with distributed.process_group(device.type) as ctx:
        check_distributed(cfg, ctx, device)
        if not ctx.main:
            return _resume_locked(run, cfg, Console(quiet=True), ctx)
        with training_session(run, out):
            return _resume_locked(run, cfg, out, ctx)


def _run_folders(run: Path) -> list[Path]:
    """A run directory and, for a cross-validation, its fold directories."""
    return [run, *(f for f in sorted(run.glob("fold-*")) if (f / "args.yaml").is_file())]


def _record_finished_move(run: Path, data: str, out: Console) -> RunResult:
    """A finished run whose data moved has nothing to train: check that every image of its split
    listings is at the new place, then record it there (a shard folder is checked as it is read)."""
    for folder in _run_folders(run):
        if (folder / "split.csv").is_file() and not shards.shard_root(data):
            check_listing(folder / "split.csv", Path(data))
    with run_lock(run):
        for folder in _run_folders(run):
            move_data(folder, data)
    out.print(f"{run} finished earlier: nothing to resume; it now reads its data from {data}")
    return RunResult(run, read_json(run / "report.json"), [], read_record(run))


@contextmanager
def training_session(run: Path, out: Console):
    """While this process trains in ``run``: hold its lock, and if training ends by an exception,
    leave run.json saying so (interrupted, or failed with the reason), never "running"."""
    with run_lock(run):
        try:
            yield
        except KeyboardInterrupt:
            if not (run / "checkpoints" / "last.state.pt").is_file():
                update_record(run, status="interrupted", error="stopped before the first epoch ended: nothing to resume")
                out.print(f"interrupted before the first epoch ended: nothing to resume; start again "
                          f"(with another --out, or after deleting {run})", style="yellow")
            else:
                update_record(run, status="interrupted")
                out.print(f"interrupted; continue with: ftkit finetune --resume {run}", style="yellow")
            raise
        except Exception as exc:
            reason = distributed.explain(exc)
            update_record(run, status="failed", error=f"{type(reason).__name__}: {reason}")
            if reason is not exc:
                raise reason from exc
            raise


def _resume_locked(run: Path, cfg: Config, out: Console, ctx: Context = SINGLE) -> RunResult:
    state = load_train_state(run / "checkpoints" / "last.state.pt")
    for stale in remove_partial_files(run) if ctx.main else []:
        out.print(f"removed {stale.name}, left by an interrupted write")
    data = shards.load(cfg, console=out)  # with cfg.splits the run's listing: every image it names must be there
    if ctx.main and os.path.abspath(cfg.data) != os.path.abspath(read_args(run)["data"]):
        move_data(run, cfg.data)
        out.print(f"{run} now reads its data from {cfg.data}")
    if "model" in state:
        weights = state["model"]
    else:  # runs written before the state file carried the weights: they must be of the same epoch
        weights, meta = load_checkpoint(run / "checkpoints" / "last")
        if meta.get("epoch") != state["epoch"]:
            raise RunError(f"{run}: last.safetensors is from epoch {meta.get('epoch')} but last.state.pt from epoch "
                           f"{state['epoch']} (the run was stopped between the two writes); it cannot be resumed exactly")
    cfg_model = Config(**{**cfg.to_dict(), "pretrained": False, "weights": None, "init": None})
    model = create(cfg_model, len(data.classes))
    model.load_state_dict(weights)
    out.print(f"resuming {run} after epoch {state['epoch']} of {cfg.epochs}")
    return _train(run, cfg, data, model, state=state, out=out, ctx=ctx)


def _write_run_inputs(run: Path, cfg: Config, data: DataSplits, model: nn.Module, weights: WeightsInfo) -> None:
    write_args(run, cfg.to_dict())
    write_classes(run, data.classes)
    write_split_listing(data, run / "split.csv", root=cfg.data)
    if data.digests:  # decoded data: evaluate can then tell copies of these images among the ones it scores
        write_digests(run / DIGESTS, {name: d for name, d in data.split_digests().items() if name in SEEN_SPLITS})
    update_record(
        run,
        status="running",
        ftkit=__version__, torch=torch.__version__, timm=timm.__version__, python=platform.python_version(),
        backbone=resolve_name(cfg.backbone), parameters=count_parameters(model),
        weights=weights.to_dict(),
        data={"source": data.source, "path": cfg.data, "counts": data.summary(), "class_map": data.class_map,
              "faces": data.faces, "notes": data.notes},
        skipped={"count": len(data.skipped), "files": [{"file": k, "reason": r} for k, r in data.skipped]},
    )


@dataclass
class TrainState:
    """Where a run stands after an epoch. With the weights, optimizer and scheduler, this is what
    ``last.state.pt`` holds, so a resumed run continues from exactly here."""

    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics row per epoch
    best: float | None = None  # the best validation score so far
    bad_epochs: int = 0  # epochs since it last improved (early stopping)

    def add(self, row: dict[str, Any], metric: str) -> bool:
        """Record an epoch's row; True when its score is the best so far."""
        score = row[f"val_{metric}"]
        improved = self.best is None or (score < self.best if metric == "loss" else score > self.best)
        self.history.append(row)
        self.epoch = row["epoch"]
        self.best, self.bad_epochs = (score, 0) if improved else (self.best, self.bad_epochs + 1)
        return improved

    @classmethod
    def restore(cls, saved: dict | None, parts: StepParts, steps_per_epoch: int) -> TrainState:
        """Where a saved run stands; the optimizer, schedule and weight average continue from it."""
        if saved is None:
            return cls()
        parts.optimizer.load_state_dict(saved["optimizer"])
        if parts.scheduler is not None and saved.get("scheduler"):
            parts.scheduler.load_state_dict(saved["scheduler"])
        if parts.ema is not None:
            parts.ema.module.load_state_dict(saved["ema"])
        parts.steps = saved["epoch"] * steps_per_epoch  # every epoch takes the same number of steps
        return cls(saved["epoch"], saved["history"], saved["best"], saved["bad_epochs"])


@dataclass
class Loaders:
    train: Any  # DataLoader, or shards.StreamBatches
    eval: dict[str, Any]  # split name -> DataLoader of this rank's share
    generator: torch.Generator  # the sampler's: one global order of images, re-seeded per epoch
    train_transform: Any


def set_up(cfg: Config, data: DataSplits, model: nn.Module, ctx: Context, soft: torch.Tensor | None = None):
    """Device, memory format, loaders, loss, optimizer, schedule and mixed precision for ``model``;
    ``soft``: the teachers' softened probabilities per training image, for a distillation run."""
    device = distributed.device_for(resolve_device(cfg.device), ctx)
    model.to(device)
    memory_format = torch.channels_last if cfg.channels_last else None
    if memory_format is not None:
        model.to(memory_format=memory_format)
    if cfg.sync_bn and ctx.active:
        # BatchNorm statistics over the global batch; same parameter names, so the checkpoints
        # load into a plain model
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    dc = resolve_data_config(model, cfg)
    loaders = Loaders(*make_loaders(data, dc, cfg, device, ctx, soft))
    optimizer = build_optimizer(model, cfg)
    scheduler, step_when = build_scheduler(optimizer, cfg, optimizer_steps(len(loaders.train), cfg.accumulate))
    autocast, scaler = autocast_for(device, cfg.amp)
    criterion = nn.CrossEntropyLoss(weight=_to(class_weight_tensor(data, cfg), device), label_smoothing=cfg.label_smoothing)
    if cfg.teacher:
        criterion = DistillLoss(criterion, cfg.distill_alpha, cfg.distill_temperature)
    parts = StepParts(
        net=model, optimizer=optimizer, scheduler=scheduler, step_when=step_when, device=device, criterion=criterion,
        autocast=autocast, scaler=scaler, memory_format=memory_format, mixer=make_mixer(cfg, len(data.classes)),
        ema=make_ema(model, cfg), accumulate=cfg.accumulate, frozen_bn=cfg.bn_stats == "frozen",
    )
    return parts, loaders, dc


def _train(run: Path, cfg: Config, data: DataSplits, model: nn.Module, state: dict | None, out: Console,
           ctx: Context = SINGLE) -> RunResult:
    # --- set up: the teachers' targets (once per run), device, data, loss, optimizer, schedule,
    # phases, and where the run stands
    soft = None
    if cfg.teacher:
        soft = softened(distributed.on_main(lambda: teacher_targets(run, cfg, data, out), ctx), cfg.distill_temperature)
    parts, loaders, dc = set_up(cfg, data, model, ctx, soft)
    if cfg.l2sp:
        parts.anchors = _anchors(run, parts.model, parts.optimizer, resuming=state is not None, ctx=ctx)
    phases = run_phases(cfg, model)
    meta = {"config": cfg.to_dict(), "classes": data.classes, "data_config": dc.to_dict(), "backbone": resolve_name(cfg.backbone)}
    progress = TrainState.restore(state, parts, steps_per_epoch=optimizer_steps(len(loaders.train), cfg.accumulate))
    if ctx.main:
        update_record(run, status="running", error=None, device=str(parts.device), phases=describe_phases(phases, cfg),
                      data_config=dc.to_dict(), distributed=ctx.describe(distributed.backend(), cfg.batch_size) if ctx.active else None,
                      distill={"teachers": list(cfg.teacher), "alpha": cfg.distill_alpha, "temperature": cfg.distill_temperature,
                               "teacher_tta": cfg.teacher_tta, "targets": TEACHER_CACHE} if cfg.teacher else None)
    _print_plan(out, run, cfg, data, phases, parts.device, dc, ctx)

    # --- per epoch: train, evaluate, save
    with progress_bar(out) as bar:
        for epoch in range(progress.epoch, cfg.epochs):
            _enter_phase(model, parts, phases[epoch], ctx)
            seed_epoch(cfg.seed, epoch, ctx, loaders.generator, loaders.train_transform)
            if isinstance(loaders.train, shards.StreamBatches):
                loaders.train.set_epoch(epoch)
            started = time.perf_counter()
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs} [{phases[epoch].name}]", total=len(loaders.train), info="")
            stats = train_one_epoch(parts, loaders.train, ctx, bar, task)
            distributed.broadcast_model(model, ctx)  # every rank evaluates (and rank 0 saves) the same weights
            probs, labels, val_loss = predict_split(parts.scored, loaders.eval["val"], parts.device, "none", parts.autocast, ctx)
            row = {"epoch": epoch + 1, "phase": phases[epoch].name, **stats, "val_loss": val_loss,
                   **{f"val_{k}": v for k, v in quick_metrics(labels, probs.argmax(1)).items()},
                   "lr": parts.optimizer.param_groups[-1]["lr"], "seconds": time.perf_counter() - started}
            improved = progress.add(row, cfg.metric)  # the same on every rank: from the gathered predictions
            if parts.step_when == "epoch":
                parts.scheduler.step(row[f"val_{cfg.metric}"])
            _log_epoch(out, bar, task, row, cfg, improved)
            if ctx.main:
                _save_epoch(run, meta, row, improved, parts, progress)
            if cfg.patience and progress.bad_epochs >= cfg.patience:
                out.print(f"early stop: val {cfg.metric} did not improve for {cfg.patience} epochs")
                break
    # --- finish: the best epoch's predictions and the report
    return _finish(run, cfg, data, model, loaders.eval, parts.device, parts.autocast, progress.history, out, ctx)


def _anchors(run: Path, model: nn.Module, optimizer, resuming: bool, ctx: Context) -> dict[int, torch.Tensor]:
    """What --l2sp pulls toward: the weights the run started from, kept in
    checkpoints/start.safetensors (written once, by rank 0, before the first step)."""
    path = run / "checkpoints" / "start.safetensors"
    if resuming:
        if not path.is_file():
            raise RunError(f"{path} is missing: the run trains with l2sp and needs the weights it started from to go on; "
                           "start it again")
        start, _ = read_weights(path)
    else:
        start = start_weights(model, optimizer)
        if ctx.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_weights(path, {k: v.cpu().contiguous() for k, v in start.items()}, {"what": "l2sp start"})
    params = dict(model.named_parameters())
    if set(start) - set(params):
        raise RunError(f"{path} holds weights this model does not have ({', '.join(sorted(set(start) - set(params))[:3])}): "
                       "it belongs to another run")
    return {id(params[name]): weight.to(params[name].device, params[name].dtype) for name, weight in start.items()}


def _enter_phase(model: nn.Module, parts: StepParts, phase: Phase, ctx: Context) -> None:
    """Freeze what the phase freezes. DDP reduces the gradients of the parameters that train when
    it is built, so under DDP the model is wrapped again whenever the trainable set changes."""
    set_trainable(model, phase.unfrozen_stages)
    if ctx.active and getattr(parts.net, "ftkit_phase", None) != phase:
        device = parts.device
        parts.net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        parts.net.ftkit_phase = phase


def _log_epoch(out: Console, bar, task, row: dict[str, Any], cfg: Config, improved: bool) -> None:
    score = row[f"val_{cfg.metric}"]
    bar.update(task, info=f"loss {row['train_loss']:.3f} val {cfg.metric} {score:.3f}{' *' if improved else ''} "
                          f"({row['images_per_s']:.0f} img/s)")
    if not out.is_terminal:  # logs and CI have no live bars: one line per epoch
        out.print(f"epoch {row['epoch']}/{cfg.epochs} [{row['phase']}] train loss {row['train_loss']:.4f} "
                  f"val loss {row['val_loss']:.4f} val accuracy {row['val_accuracy']:.4f} "
                  f"val macro-F1 {row['val_macro_f1']:.4f} ({row['images_per_s']:.0f} img/s)", markup=False)


def _print_plan(out: Console, run: Path, cfg: Config, data: DataSplits, phases: list[Phase], device, dc,
                ctx: Context = SINGLE) -> None:
    """The run at a glance, before the first epoch: data, model, input, schedule."""
    table = Table(title=f"ftkit finetune -> {run}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    counts = ", ".join(f"{name} {len(split)}" for name, split in data.splits.items())
    table.add_row("data", f"{cfg.data} ({data.source}): {counts}")
    table.add_row("classes", ", ".join(data.classes))
    table.add_row("backbone", f"{resolve_name(cfg.backbone)} on {device}" + (" (amp)" if cfg.amp and device.type == "cuda" else ""))
    if ctx.active:
        table.add_row("processes", f"{ctx.world} ({distributed.backend()}), batch {cfg.batch_size} = {ctx.world} x "
                                   f"{cfg.batch_size // ctx.world}" + (", SyncBatchNorm" if cfg.sync_bn else ""))
    table.add_row("input", f"{dc.img_size}x{dc.img_size}, {dc.channels} channel(s){', grayscale' if dc.grayscale else ''}, "
                           f"mean {[round(m, 3) for m in dc.mean]}, std {[round(s, 3) for s in dc.std]}")
    table.add_row("phases", "; ".join(phase_text(p) for p in describe_phases(phases, cfg)))
    batch = f"batch {cfg.batch_size}" + (f" x {cfg.accumulate} accumulated" if cfg.accumulate > 1 else "")
    table.add_row("optimisation", f"{cfg.optimizer} lr {cfg.lr:g}, {cfg.scheduler} schedule, {batch}, "
                                  f"augment {cfg.augment if not cfg.augment_pipeline else 'recipe pipeline'}, label smoothing {cfg.label_smoothing:g}"
                                  + (f", mixup {cfg.mixup:g}" if cfg.mixup else "") + (f", cutmix {cfg.cutmix:g}" if cfg.cutmix else "")
                                  + (f", weight average (ema) {cfg.ema:g}" if cfg.ema else "")
                                  + (f", backbone pulled to its start (l2sp {cfg.l2sp:g})" if cfg.l2sp else "")
                                  + (", BatchNorm statistics of the start (frozen)" if cfg.bn_stats == "frozen" else ""))
    if cfg.teacher:
        table.add_row("distillation", f"from {', '.join(cfg.teacher)}: loss = {1 - cfg.distill_alpha:g} x labels' cross-entropy "
                                      f"+ {cfg.distill_alpha:g} x T^2 x KL to the teachers' targets at T {cfg.distill_temperature:g}")
    out.print(table)


def _to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def _save_epoch(run: Path, meta: dict, row: dict, improved: bool, parts: StepParts, progress: TrainState) -> None:
    """metrics.csv, last checkpoint and train state every epoch; best checkpoint on improvement.
    The checkpoints hold what was scored (the weight average with --ema, else the model); the
    state file holds what resuming needs: the trained weights, and their average."""
    write_metrics(run, progress.history)
    ckpt = run / "checkpoints"
    epoch_meta = {**meta, "epoch": row["epoch"], "metrics": row}
    if improved:
        save_checkpoint(ckpt / "best", parts.scored, epoch_meta)
    save_checkpoint(ckpt / "last", parts.scored, epoch_meta)
    save_train_state(ckpt / "last.state.pt", {
        **asdict(progress), "model": _cpu_state(parts.model),
        "ema": _cpu_state(parts.ema.module) if parts.ema is not None else None,
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict() if parts.scheduler is not None else None,
    })


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _finish(run, cfg, data, model, eval_loaders, device, autocast, history, out, ctx: Context = SINGLE) -> RunResult:
    """Reload the best checkpoint, predict on the eval split, write every report file (rank 0)."""
    best_epoch = distributed.on_main(lambda: _load_best(run, model), ctx)
    distributed.broadcast_model(model, ctx)
    split = data.eval_split
    probs, labels, _ = predict_split(model, eval_loaders[split], device, cfg.tta, autocast, ctx)
    if not ctx.main:  # the run directory and its report are rank 0's
        return RunResult(run, {}, history, {})
    write_predictions(run / "predictions.csv", data.splits[split].keys, labels, probs, data.classes)
    images_per_s = float(np.mean([h["images_per_s"] for h in history])) if history else 0.0
    # summed over epochs (training and validation), so a resumed run counts every segment
    train_seconds = sum(h.get("seconds", 0.0) for h in history)
    record = update_record(
        run, status="finished", best_epoch=best_epoch, epochs_run=len(history), eval_split=split,
        eval_note="; ".join(note for note in (
            None if split == "test" else "no test split: reported on val, which also chose the best epoch",
            init_seen_note(data, (read_record(run).get("weights") or {}).get("init"))) if note) or None,
        train_seconds=round(train_seconds, 3), train_images_per_s=round(images_per_s, 1),
    )
    report = write_report(run)
    tta = tta_title(record, {"tta": cfg.tta})  # per-epoch val scores had none: say why these differ
    print_report(report, out, title=f"{run} ({split} split, best epoch {best_epoch}{tta})")
    if record["eval_note"]:
        out.print(f"note: {record['eval_note']}, so these scores are not held out", style="yellow")
    return RunResult(run, report, history, record)


def _load_best(run: Path, model: nn.Module) -> int:
    weights, best_meta = load_checkpoint(run / "checkpoints" / "best")
    model.load_state_dict(weights)
    return best_meta["epoch"]
