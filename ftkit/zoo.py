"""Named expression models: the ones ftkit ships in ``weights/`` and the ones a user saves.

A named model is one safetensors file (fp16 by default, to keep it small) whose header
metadata carries what is needed to use it: backbone, classes in order, preprocessing and
the config it was trained with. A manifest beside it lists each file with its sha256,
the recipe and commit that trained it, its measured accuracy and the data's terms.

Two places hold such models, listed apart by ``ftkit weights list``:

- shipped: ``weights/shipped.json`` in the ftkit checkout, tracked in git with its files;
- saved: ``models.json`` in the user's weight store (``ftkit weights save RUN NAME``).

Wherever ftkit takes a run directory to *use* a model (predict, evaluate, export, ensemble,
``finetune --init``), it also takes such a name. A run directory wins when both exist.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from timm.models import adapt_input_conv

from .config import CHECKPOINTS, Config, ConfigError, bundled, config_from_dict, load_recipe, resolve, suggest
from . import faces as face_module
from .data import canonical_class
from .device import resolve_device
from .duplicates import read_digests
from .io import read_json, write_json
from .models import DataConfig, ModelError, create, resolve_name
from .runs import RunError, load_checkpoint, read_args, read_weights, require_run, runs_beside, write_weights
from .weights import WeightsError, read_manifest, sha256sum, store_dir

SAVED = "models.json"  # in the user's weight store (git-ignored)
SHIPPED = "shipped.json"  # in the checkout's weights/ (tracked, with the files it lists)
SHIPPED_DIR = bundled("weights", "shipped")  # a wheel carries shipped.json and its files as ftkit/shipped/
FACE_KEYS = ("face_margin", "face_detector", "face_align")  # how a manifest says to crop faces for its model


class ModelNotFound(RunError):
    """Neither a run directory nor a named model."""


@dataclass
class ModelSource:
    """A trained model to use or to start from: its weights and what it was trained with."""

    name: str  # the name or run directory given
    kind: str  # shipped | saved | run
    path: Path  # the safetensors file (named models) or the run directory
    sha256: str | None
    state_dict: dict[str, torch.Tensor]  # float32
    meta: dict[str, Any]  # config, classes, data_config, backbone (a checkpoint's JSON)
    entry: dict[str, Any] | None = None  # the models.json entry of a named model

    def describe(self) -> dict[str, Any]:
        """How a run records where it started."""
        return {"kind": self.kind, "name": self.name, "path": str(self.path), "sha256": self.sha256,
                "backbone": self.meta.get("backbone"), "classes": self.meta.get("classes")}


# --- the manifests -----------------------------------------------------------------------


def manifests() -> list[tuple[str, Path]]:
    """(kind, manifest file) in lookup order: the user's saved models, then the shipped ones."""
    return [("saved", store_dir() / SAVED), ("shipped", SHIPPED_DIR / SHIPPED)]


def read_models(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        return read_json(path)
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}); restore it (git checkout weights/) or delete it") from exc


def list_models() -> list[dict[str, Any]]:
    """Every named model: its manifest entry plus ``name`` and ``kind`` (saved | shipped)."""
    return [{"name": name, "kind": kind, **entry}
            for kind, path in manifests() for name, entry in read_models(path).items()]


def find_model(name: str) -> tuple[str, Path, dict[str, Any]] | None:
    """(kind, file, entry) of the named model, or None."""
    for kind, path in manifests():
        entry = read_models(path).get(name)
        if entry is not None:
            return kind, path.parent / entry["file"], entry
    return None


# --- loading -----------------------------------------------------------------------------

# The files `ftkit export` writes, by format; the first suffix is the default file's.
EXPORT_SUFFIXES = {"onnx": (".onnx",), "torchscript": (".ts", ".pt")}


def exported_format(path: str | Path) -> str | None:
    """The export format a file name says (``model.onnx``: onnx), or None."""
    suffix = Path(path).suffix.lower()
    return next((fmt for fmt, suffixes in EXPORT_SUFFIXES.items() if suffix in suffixes), None)



def load_source(target: str | Path, checkpoint: str = "best") -> ModelSource:
    """A run directory (its best, or last, checkpoint) or a named model, with float32 weights."""
    path = Path(target)
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint {checkpoint!r}: a run keeps {' and '.join(CHECKPOINTS)}")
    if path.is_dir():
        run = require_run(path)
        weights, meta = load_checkpoint(run / "checkpoints" / checkpoint)
        return ModelSource(str(target), "run", run, sha256sum(run / "checkpoints" / f"{checkpoint}.safetensors"),
                           weights, meta)
    found = find_model(str(target))
    if found is None and path.is_file() and exported_format(path):
        raise ModelNotFound(f"{target} is an exported model file: `ftkit predict`, `evaluate` and `ensemble` take it; "
                            "to fine-tune from it or export again, give the run directory or named model it was exported from")
    if found is None:
        names = [m["name"] for m in list_models()]
        runs = runs_beside(path)  # a mistyped run directory: the runs beside where it would be
        raise ModelNotFound(
            f"{str(target)!r} is neither a run directory nor a named model.{suggest(str(target), names + runs)} "
            f"Named models: {', '.join(names) or 'none'} (see `ftkit weights list`)."
        )
    kind, file, entry = found
    if checkpoint != "best":
        raise ConfigError(f"{target} is a named model, which keeps one set of weights: the {checkpoint} checkpoint "
                          "is a run directory's")
    return _load_named(str(target), kind, file, entry)


def _load_named(name: str, kind: str, file: Path, entry: dict[str, Any]) -> ModelSource:
    if not file.is_file():
        raise WeightsError(f"model {name}: file {file} is missing; restore it (git checkout weights/) or save it again")
    digest = sha256sum(file)
    if entry.get("sha256") and digest != entry["sha256"]:
        raise WeightsError(f"model {name}: {file} has sha256 {digest[:16]}..., models.json expects "
                           f"{entry['sha256'][:16]}...; the file was changed or damaged: restore it")
    tensors, meta = read_weights(file)
    if meta is None:
        raise WeightsError(f"model {name}: {file} carries no ftkit metadata; save it with `ftkit weights save`")
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    return ModelSource(name, kind, file, digest, state_dict, _with_entry(meta, entry), entry)


def _with_entry(meta: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """A named model's metadata with its manifest's face margin, detector and alignment, which say
    how to crop faces for it (a model trained on ready-cropped faces, like FER2013's, has none in its config)."""
    pre = entry.get("preprocessing", {})
    faces = {k: pre[k] for k in FACE_KEYS if pre.get(k) is not None}
    return {**meta, "config": {**meta["config"], **faces}} if faces else meta


def source_meta(target: str | Path) -> dict[str, Any]:
    """A run's or named model's checkpoint metadata (config, classes, data_config, backbone),
    read without loading its weights."""
    path = Path(target)
    if path.is_dir():
        return read_json(require_run(path) / "checkpoints" / "best.json")
    found = find_model(str(target))
    if found is None:
        return load_source(target).meta  # raises the not-found message
    _, file, entry = found
    try:
        meta = read_weights(file, tensors=False)[1]
    except RunError:  # damaged: load_source names the problem
        meta = None
    return _with_entry(meta, entry) if meta is not None else load_source(target).meta


def source_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """The config values a model fixes for whoever starts from it: backbone and preprocessing
    (with the face margin, used when the run crops faces)."""
    dc, cfg = meta["data_config"], meta["config"]
    return {"backbone": meta["backbone"], "input": cfg.get("input", "rgb224"), "img_size": dc["img_size"],
            "channels": dc["channels"], "mean": dc["mean"], "std": dc["std"],
            **({"face_margin": cfg["face_margin"]} if "face_margin" in cfg else {}),
            **({"face_align": True} if cfg.get("face_align") else {})}


def resolve_config(recipe: str | Path | None = None, **overrides: Any) -> Config:
    """``ftkit.config.resolve`` with ``init`` understood: defaults < the init model's backbone and
    preprocessing < recipe < overrides, so a run from a model sees images as that model did."""
    init = overrides.get("init") or (load_recipe(recipe).get("init") if recipe else None)
    base = source_settings(source_meta(init)) if init else None
    return resolve(recipe, base=base, **overrides)


# --- a model ready to predict -----------------------------------------------------------


@dataclass
class LoadedRun:
    run: Path | None  # the run directory; None for a named model (see ftkit.zoo)
    model: torch.nn.Module
    classes: list[str]
    data_config: DataConfig
    config: Config
    device: torch.device
    name: str = ""  # what the user called it: the run directory or the model's name
    source: dict[str, Any] | None = None  # for a named model: kind, file, sha256, manifest entry
    checkpoint: str = "best"  # a run's checkpoint that was loaded (CHECKPOINTS)

    @property
    def label(self) -> str:
        return str(self.run) if self.run is not None else self.name


def load_run(run: str | Path, device: str = "auto", checkpoint: str = "best") -> LoadedRun:
    """A run's best (or last) model, or a named model (``ftkit weights list``), in eval mode,
    with its classes and preprocessing."""
    source = load_source(run, checkpoint)
    weights, meta = source.state_dict, source.meta
    folder = source.path if source.kind == "run" else None
    origin = None if folder else {**source.describe(), "entry": source.entry}
    cfg = config_from_dict(meta["config"])
    if folder is not None:  # the data's place as args.yaml has it now (--resume --data records a move)
        cfg = replace(cfg, data=read_args(folder).get("data", cfg.data))
    model = create(replace(cfg, pretrained=False, weights=None, init=None), len(meta["classes"]))
    model.load_state_dict(weights)
    dev = resolve_device(device)
    model.to(dev).eval()
    return LoadedRun(folder, model, meta["classes"], DataConfig(**meta["data_config"]), cfg, dev, str(run), origin,
                     checkpoint)


# --- saving ------------------------------------------------------------------------------


def save_model(run: str | Path, name: str, shipped: bool = False, dtype: torch.dtype = torch.float16,
               extra: dict[str, Any] | None = None, force: bool = False,
               faces: dict[str, Any] | None = None) -> dict[str, Any]:
    """Store a run's best model as ``<name>.safetensors`` with a manifest entry: in the user's
    store, or with ``shipped`` among the models the checkout ships (``weights/shipped.json``).

    ``extra`` adds to the entry (recipe, commit, measured accuracy, data terms...). ``faces``
    (``face_margin``, ``face_detector``, ``face_align``) is how to crop faces for the model
    (default: as its run did); a model trained on faces cropped elsewhere, like FER2013's, needs
    the framing that reproduces theirs (``ftkit.fer2013.PHOTO_FACES``). An existing entry of that
    name is replaced only with ``force``; its old sha256 is kept in the entry.
    """
    _check_name(name)
    unknown = set(faces or {}) - set(FACE_KEYS)
    if unknown:
        raise ValueError(f"save_model: faces takes {', '.join(FACE_KEYS)}, not {sorted(unknown)}")
    manifest_path = SHIPPED_DIR / SHIPPED if shipped else store_dir() / SAVED
    run = require_run(run)
    weights, meta = load_checkpoint(run / "checkpoints" / "best")
    manifest = read_models(manifest_path)
    if name in manifest and not force:
        raise WeightsError(f"a model named {name} is already in {manifest_path}; use --force to replace it")
    if not shipped and name in read_models(SHIPPED_DIR / SHIPPED):
        raise WeightsError(f"{name} is the name of a model ftkit ships; choose another name")
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    keep = {k: meta[k] for k in ("config", "classes", "data_config", "backbone", "epoch")}
    target = manifest_path.parent / f"{name}.safetensors"
    write_weights(target, tensors, keep)
    dc, cfg = meta["data_config"], config_from_dict(meta["config"])
    crop = {**{k: getattr(cfg, k) for k in FACE_KEYS}, **(faces or {})}
    entry = {
        "file": target.name, "sha256": sha256sum(target), "bytes": target.stat().st_size,
        "dtype": str(dtype).removeprefix("torch."), "backbone": meta["backbone"], "classes": meta["classes"],
        "preprocessing": {**{k: dc[k] for k in ("img_size", "channels", "grayscale", "mean", "std", "interpolation")},
                          **crop, "face_detector_settings": face_module.describe(face_module.detector(crop["face_detector"]))},
        "tta": meta["config"].get("tta", "none"), "trained_from": str(run), "best_epoch": meta.get("epoch"),
        **_run_measured(run, meta), **(extra or {}),
    }
    if name in manifest:
        entry["replaced_sha256"] = manifest[name]["sha256"]
    manifest[name] = entry
    write_json(manifest_path, manifest)
    return {"name": name, "kind": "shipped" if shipped else "saved", **entry}


def _run_measured(run: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """{"measured": ...} from the run's own report (its best checkpoint at full precision, on its
    report's split), for ``weights list``; empty when the run wrote no report."""
    path = run / "report.json"
    if not path.is_file():
        return {}
    report = read_json(path)
    return {"measured": {"split": f"{report['split']} split of {run.name}", "images": report["n"],
                         "tta": meta["config"].get("tta", "none"), "weights": "the run's float32 checkpoint",
                         **{k: round(report[k], 4) for k in ("accuracy", "balanced_accuracy", "macro_f1")}}}


def fer2013_provenance(entry: dict[str, Any] | None) -> dict[str, Any]:
    """What a shipped model's entry says of the FER2013 parts it saw (``fer2013_seen``) and the
    file of their pixel digests (``fer2013_digests``): what a run started or taught by it keeps,
    for the note that its scores are not held out."""
    return {k: entry[k] for k in ("fer2013_seen", "fer2013_digests") if (entry or {}).get(k)}


def fer2013_digests(entry: dict[str, Any] | None) -> dict[str, set[bytes]]:
    """The pixel digests of the FER2013 parts a shipped model (or a run started from one: its
    ``weights.init``) saw, from the file its entry names in weights/ ({} when it names none)."""
    name = (entry or {}).get("fer2013_digests")
    return read_digests(SHIPPED_DIR / name) if name else {}


def annotate_model(name: str, shipped: bool = False, **fields: Any) -> dict[str, Any]:
    """Add ``fields`` (e.g. what was measured with the stored file) to a model's manifest entry."""
    path = SHIPPED_DIR / SHIPPED if shipped else store_dir() / SAVED
    manifest = read_models(path)
    if name not in manifest:
        raise WeightsError(f"no model named {name} in {path}")
    manifest[name].update(fields)
    write_json(path, manifest)
    return {"name": name, **manifest[name]}


def stored_kind(name: str) -> str:
    """What ``name`` is in the user's store: "saved model" (``weights save``) or "imported weights"
    (``weights import``/``pull``, by timm name or alias); anything else is an error saying what is there."""
    if name in read_models(SHIPPED_DIR / SHIPPED):
        raise WeightsError(f"{name} ships with ftkit (weights/{SHIPPED}): it is part of the checkout, not of your store")
    saved = read_models(store_dir() / SAVED)
    if name in saved:
        return "saved model"
    imported = read_manifest()
    try:
        key = name if name in imported else resolve_name(name)
    except ModelError:
        key = name
    if key in imported:
        return "imported weights"
    raise WeightsError(f"nothing named {name} in the store {store_dir()} (saved models: {', '.join(saved) or 'none'}; "
                       f"imported weights: {', '.join(imported) or 'none'})")


def remove_model(name: str) -> dict[str, Any]:
    """Take a saved model out of the user's store (entry first, then its file)."""
    path = store_dir() / SAVED
    manifest = read_models(path)
    if name not in manifest:  # a shipped model, imported weights or nothing: stored_kind says which
        raise WeightsError(f"{name} is not a saved model ({stored_kind(name)})")
    entry = manifest.pop(name)
    write_json(path, manifest)
    (path.parent / entry["file"]).unlink(missing_ok=True)
    return {"name": name, **entry}


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _check_name(name: str) -> None:
    if not MODEL_NAME.fullmatch(name):
        raise WeightsError(f"model name {name!r}: use letters, digits, '-' and '_' (no path, no extension)")


# --- starting a run from a model -----------------------------------------------------------


def match_classes(source: list[str], target: list[str]) -> dict[int, int]:
    """{target index: source index} for every target class the source knows by name."""
    index = {canonical_class(c): i for i, c in enumerate(source)}
    return {t: index[canonical_class(c)] for t, c in enumerate(target) if canonical_class(c) in index}


def transfer_head(model: torch.nn.Module, source: ModelSource, head_names: set[str], matched: dict[int, int]) -> None:
    """Load the source's backbone into ``model`` and copy the classifier rows of matched classes.

    The model's other head rows keep their fresh initialisation. A first convolution made for
    another channel count (a 3-channel source, ``--channels 1``) is adapted as timm adapts
    pretrained weights for ``in_chans``; anything else that does not fit is refused by name.
    """
    backbone = {k: v for k, v in source.state_dict.items() if k not in head_names}
    ours = model.state_dict()
    first = f"{model.pretrained_cfg.get('first_conv')}.weight" if hasattr(model, "pretrained_cfg") else None
    if first in backbone and first in ours and backbone[first].shape[1] != ours[first].shape[1]:
        backbone[first] = adapt_input_conv(ours[first].shape[1], backbone[first].float()).to(backbone[first].dtype)
    wrong = sorted(k for k, v in backbone.items() if k in ours and v.shape != ours[k].shape)
    if wrong:
        raise WeightsError(f"{source.name} does not fit {source.meta.get('backbone')} as configured: {wrong[0]} is "
                           f"{tuple(backbone[wrong[0]].shape)} there and {tuple(ours[wrong[0]].shape)} here; start from it "
                           "with its own settings")
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    wrong = sorted(set(missing) - head_names) + sorted(unexpected)
    if wrong:
        raise WeightsError(f"{source.name} does not fit {source.meta.get('backbone')} as configured "
                           f"(e.g. {', '.join(wrong[:3])}); start from it with its own backbone")
    with torch.no_grad():
        for key in head_names:
            if key not in source.state_dict:
                raise WeightsError(f"{source.name} has no classifier tensor {key}")
            ours, theirs = dict(model.named_parameters())[key], source.state_dict[key]
            if ours.shape[1:] != theirs.shape[1:]:
                raise WeightsError(f"{source.name}: classifier {key} {tuple(theirs.shape)} does not fit {tuple(ours.shape)}")
            for t, s in matched.items():
                ours[t] = theirs[s]
