"""Using a trained run: load its best model, score it on other data, predict single images."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, config_from_dict
from .data import IMAGE_EXTENSIONS, DataError, ImageDataset, Split, load_data, read_image
from .evaluation import predict_probs, write_predictions
from .io import read_json, write_json
from .models import DataConfig, create
from .runs import load_checkpoint, require_run
from .train import resolve_device
from .transforms import eval_transform


@dataclass
class LoadedRun:
    run: Path
    model: torch.nn.Module
    classes: list[str]
    data_config: DataConfig
    config: Config
    device: torch.device


def load_run(run: str | Path, device: str = "auto", checkpoint: str = "best") -> LoadedRun:
    """The run's best (or last) model in eval mode, with its classes and preprocessing."""
    run = require_run(run)
    weights, meta = load_checkpoint(run / "checkpoints" / checkpoint)
    cfg = config_from_dict(meta["config"])
    model = create(replace(cfg, pretrained=False, weights=None), len(meta["classes"]))
    model.load_state_dict(weights)
    dev = resolve_device(device)
    model.to(dev).eval()
    return LoadedRun(run, model, meta["classes"], DataConfig(**meta["data_config"]), cfg, dev)


def evaluate_run(run: str | Path, data: str | None = None, split: str = "test", tta: str | None = None,
                 name: str | None = None, device: str = "auto", console=None) -> tuple[Path, dict[str, Any]]:
    """Score a trained run on another folder / CSV (or a split of its own data).

    Writes predictions.csv and the report files into ``RUN/eval/<name>/`` (never over an
    earlier evaluation) and returns (that folder, the report).
    """
    from .report import write_report

    loaded = load_run(run, device)
    cfg = replace(loaded.config, data=data or loaded.config.data, splits=None if data else str(loaded.run / "split.csv"))
    dataset = load_data(cfg, console=console, classes=loaded.classes, carve=False)
    chosen = split if split in dataset.splits else ("all" if "all" in dataset.splits else None)
    if chosen is None:
        raise DataError(f"split {split!r} not found in {cfg.data}; it has: {', '.join(dataset.splits)}")
    folder = _new_eval_dir(loaded.run, name or f"{Path(cfg.data).stem}-{chosen}")
    loader = torch.utils.data.DataLoader(ImageDataset(dataset.splits[chosen], eval_transform(loaded.data_config)), batch_size=128)
    probs, labels, _ = predict_probs(loaded.model, loader, loaded.device, tta or loaded.config.tta)
    write_predictions(folder / "predictions.csv", dataset.splits[chosen].keys, labels, probs, loaded.classes)
    write_json(folder / "run.json", {**read_json(loaded.run / "run.json"), "eval_split": chosen, "eval_data": cfg.data,
                                     "eval_tta": tta or loaded.config.tta, "eval_note": None})
    return folder, write_report(folder)


def _new_eval_dir(run: Path, name: str) -> Path:
    for i in range(1, 10_000):
        folder = run / "eval" / (name if i == 1 else f"{name}-{i}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"too many evaluations named {name} in {run}")


def expand_paths(paths: list[str]) -> list[Path]:
    """Image files from a mix of files and folders (recursively), in a stable order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"{p} does not exist")
    if not found:
        raise DataError(f"no image files found in {', '.join(paths)}")
    return found


def predict_paths(loaded: LoadedRun, paths: list[str], topk: int = 3, tta: str = "none", batch_size: int = 64) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image; unreadable files get an 'error'."""
    files = expand_paths(paths)
    images, results = [], []
    for f in files:
        try:
            images.append(read_image(f))
            results.append({"path": str(f)})
        except DataError as exc:
            results.append({"path": str(f), "error": str(exc)})
    good = [r for r in results if "error" not in r]
    split = Split([r["path"] for r in good], np.zeros(len(good), dtype=np.int64), images)
    loader = torch.utils.data.DataLoader(ImageDataset(split, eval_transform(loaded.data_config)), batch_size=batch_size)
    probs, _, _ = predict_probs(loaded.model, loader, loaded.device, tta) if good else (np.zeros((0, 0)), None, None)
    k = min(topk, len(loaded.classes))
    for r, p in zip(good, probs):
        order = np.argsort(-p)[:k]
        r["top"] = [{"class": loaded.classes[i], "probability": float(p[i])} for i in order]
        r["probabilities"] = {c: float(v) for c, v in zip(loaded.classes, p)}
    return results



def write_prediction_file(path: Path, results: list[dict[str, Any]], classes: list[str]) -> None:
    """Write predict results as CSV (one probability column per class) or JSON, by suffix."""
    import csv

    from .io import atomic_write

    if path.suffix.lower() == ".json":
        write_json(path, results)
        return
    if path.suffix.lower() != ".csv":
        raise DataError(f"--output must end in .csv or .json, got {path.name}")

    def write(f):
        w = csv.writer(f)
        w.writerow(["path", "predicted", "probability", "error", *[f"p_{c}" for c in classes]])
        for r in results:
            if "error" in r:
                w.writerow([r["path"], "", "", r["error"], *[""] * len(classes)])
            else:
                top = r["top"][0]
                w.writerow([r["path"], top["class"], f"{top['probability']:.6f}", "",
                            *[f"{r['probabilities'][c]:.6f}" for c in classes]])

    atomic_write(path, write)
