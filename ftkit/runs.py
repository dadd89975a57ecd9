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

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from .config import Config, config_from_dict
from .io import atomic_write, read_json, write_json


class RunError(ValueError):
    """A run directory that is missing, incomplete, or would be overwritten."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def new_run_dir(cfg: Config) -> Path:
    """Create and claim a fresh run directory; never reuse one that holds files."""
    if cfg.out:
        path = Path(cfg.out)
        if path.exists() and any(path.iterdir()):
            raise RunError(f"run directory {path} already holds files; continue it with --resume {path} or pick another --out")
        path.mkdir(parents=True, exist_ok=True)
        return path
    stem = _slug(cfg.name or f"{Path(cfg.data).stem or 'data'}-{cfg.backbone}")
    Path(cfg.project).mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        path = Path(cfg.project) / (stem if i == 1 else f"{stem}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunError(f"too many runs named {stem} in {cfg.project}")


def require_run(path: str | Path) -> Path:
    """Check that ``path`` is a run directory with a trained model."""
    path = Path(path)
    if not (path / "args.yaml").is_file():
        raise RunError(f"{path} is not an ftkit run directory (no args.yaml); give the folder that `ftkit finetune` wrote")
    if not (path / "checkpoints" / "best.json").is_file():
        raise RunError(f"{path} has no trained checkpoint yet (checkpoints/best.json); finish or resume the run first")
    return path


# --- checkpoints -------------------------------------------------------------------------


def save_checkpoint(stem: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Write ``stem.safetensors`` (weights) and ``stem.json`` (config, classes, preprocessing)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(stem.with_suffix(".safetensors"), lambda f: f.write(save(tensors)), mode="wb")
    write_json(stem.with_suffix(".json"), meta)


def load_checkpoint(stem: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    weights = stem.with_suffix(".safetensors")
    if not weights.is_file():
        raise RunError(f"checkpoint {weights} is missing")
    return load_file(str(weights)), read_json(stem.with_suffix(".json"))


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    """Optimizer, scheduler, RNG and history for --resume (plain tensors and numbers only)."""
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def load_train_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RunError(f"{path} is missing: this run cannot be resumed (it stopped before its first epoch ended)")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_run_config(run: Path) -> Config:
    import yaml

    return config_from_dict(yaml.safe_load((run / "args.yaml").read_text()))


def update_record(run: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into run.json (the run record) and return it."""
    path = run / "run.json"
    record = read_json(path) if path.is_file() else {}
    record.update(fields)
    write_json(path, record)
    return record
