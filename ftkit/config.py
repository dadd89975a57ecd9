"""One typed configuration shared by the CLI, recipes and the Python API.

Precedence: dataclass defaults < recipe YAML (``recipes/*.yaml``) < command-line flags.
Unknown keys are rejected with close-match suggestions; the resolved config is written
into every run directory and every checkpoint, so a run can be repeated from its folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError


class ConfigError(UsageError):
    """A configuration value or key that ftkit cannot use; the message says what to do."""


def option(default: Any, help: str) -> Any:
    """A Config field with its one-line help, kept in the field's metadata: ``ftkit finetune
    --help`` shows it, and a mutable default ([] or {}) is copied for every Config."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


MIN_FACE_MARGIN = -0.5  # a face margin (fraction of the box side per edge) at which the crop shrinks to nothing


@dataclass
class Config:
    # --- data -------------------------------------------------------------------------
    data: str = option("", "image folder (DIR/train/<class>/ or DIR/<class>/) or a FER2013 Kaggle CSV")
    val_split: float = option(0.15, "fraction of train held out for validation when there is no val split")
    test_split: float = option(0.15, "fraction held out for testing when a flat folder has no test split")
    splits: str | None = option(None, "split.csv of an earlier run: reuse exactly that split; or a CSV of your own "
                                      "with path (or file, filename, image) and class (or label) columns, paths relative "
                                      "to the data folder, and "
                                      "an optional split column (without it ftkit splits the images it lists)")
    label_from: str | None = option(None, "regex over each image's path inside the data (or split) folder: its first "
                                          "group is the class, for sets named by expression (JAFFE's KA.AN1.39.tiff: "
                                          "'[.]([A-Z]{2})[0-9]') instead of sorted into class folders")
    classes: list[str] | None = option(None, "keep only these classes (others are dropped)")
    drop_classes: list[str] = option([], "classes to leave out entirely")
    merge_classes: dict[str, str] = option({}, "relabel SRC as DST (flag: --merge-class disgust=angry; recipe: {disgust: angry})")
    strict: bool = option(False, "fail on the first malformed CSV row or unreadable image instead of skipping it")
    faces: str = option("none", "none | crop | require: crop the largest face (require: leave out images without one)")
    face_margin: float = option(0.25, "margin added around a detected face, as a fraction of its side "
                                      f"(negative, above {MIN_FACE_MARGIN:g}: a crop inside the detector's box)")
    face_align: bool = option(False, "turn each face so its eyes are level and place the crop by them (the detector's "
                                     "eye landmarks, or OpenCV's eye cascade; a face whose eyes are not found is cropped "
                                     "by its box)")
    face_detector: str = option("auto", "auto | retinaface | haar: the face detector (auto: RetinaFace, or OpenCV's "
                                        "Haar cascades when onnxruntime is not installed)")
    shots: int = option(0, "few-shot: train on this many images per class, hold the rest out (0: all)")
    folds: int = option(0, "stratified K-fold cross-validation with this many folds (0: one split)")
    group_by: str | None = option(None, "regex over the path; its first group (or match) keeps groups on one side")
    cache: str = option("auto", "auto | memory | stream: decode images once into RAM, or per step")
    cache_mb: int = option(3072, "with cache=auto, cache in memory when the decoded set fits in this many MB")
    workers: int = option(-1, "DataLoader worker processes; -1 picks 0 for cached data, else up to 4")
    # --- model ------------------------------------------------------------------------
    backbone: str = option("mobilenetv3-small", "an alias (see `ftkit backbones`) or any timm model name")
    pretrained: bool = option(True, "start from pretrained weights (--weights, weights/ store, timm cache/hub)")
    weights: str | None = option(None, "a weights file (safetensors or state dict) to start from")
    init: str | None = option(None, "start from a trained model, a shipped or saved name (`ftkit weights list`) or a run directory: its backbone, preprocessing and matching classes")
    input: str = option("rgb224", "rgb224 | gray48: input size and colour; img_size/channels override")
    img_size: int | None = option(None, "square input side in pixels (default: from --input)")
    channels: int | None = option(None, "1 or 3 input channels (default: 3, gray replicated for gray48)")
    mean: list[float] | None = option(None, "normalisation mean (default: the backbone's pretrained config)")
    std: list[float] | None = option(None, "normalisation std (default: the backbone's pretrained config)")
    drop_rate: float = option(0.2, "dropout before the classifier")
    head: str = option("finetune", "finetune | linear (frozen backbone) | logreg (scikit-learn on frozen embeddings)")
    # --- schedule ---------------------------------------------------------------------
    epochs: int = option(10, "total epochs, all phases included")
    freeze_epochs: int = option(1, 'phase "head": train only the classifier for this many epochs')
    unfreeze: str = option("all", "all | gradual: after the head phase, unfreeze everything or one stage per epoch")
    backbone_lr_mult: float = option(0.1, "backbone learning rate = lr x this, once unfrozen")
    batch_size: int = option(64, "images per optimisation step")
    accumulate: int = option(1, "sum the gradients of this many batches per optimizer step: batches of batch_size in "
                                "memory, steps of batch_size x this (BatchNorm still sees batch_size)")
    lr: float = option(1e-3, "peak learning rate of the classifier head")
    weight_decay: float = option(0.01, "decoupled weight decay (adamw) or L2 (others)")
    bn_stats: str = option("update", "update | frozen: BatchNorm running statistics follow the training batches, or keep "
                           "the start's (normalising with them in training too; scale and shift still train), as Keras "
                           "advises for fine-tuning on small data; frozen wants a lower lr (1e-4 where 1e-3 diverged)")
    l2sp: float = option(0.0, "pull the backbone's weights toward their pretrained start instead of toward 0 (L2-SP), decoupled like adamw's decay: each step w -= backbone lr x this x (w - start); 0: off")
    optimizer: str = option("adamw", "adamw | adam | sgd | rmsprop")
    scheduler: str = option("cosine", "cosine | onecycle | plateau | none")
    warmup_epochs: float = option(0.0, "linear warm-up at the start of the cosine schedule")
    label_smoothing: float = option(0.0, "cross-entropy label smoothing")
    mixup: float = option(0.0, "mixup alpha: blend pairs of images and their labels (0: off; 0.2-0.4 typical)")
    cutmix: float = option(0.0, "cutmix alpha: paste a patch of one image into another (0: off); with mixup, one of the two per batch")
    class_weights: str = option("none", "none | balanced: weight the loss by inverse class frequency")
    sampler: str = option("random", "random | balanced: draw training images class-balanced")
    augment: str = option("light", "none | light | fer | strong | wild (see ftkit/transforms.py)")
    augment_pipeline: list[Any] | None = option(None, "a full Albumentations pipeline; replaces the preset")
    tta: str = option("none", "none | flip (image + mirror) | shift (+ 4 small shifts of each: 10 views)")
    metric: str = option("macro_f1", "macro_f1 | accuracy | balanced_accuracy | loss: picks the best epoch")
    patience: int = option(0, "stop after this many epochs without improvement (0: never stop early)")
    ema: float = option(0.0, "average the weights over steps with this decay (0: off; 0.999-0.9999 typical): the average is what is evaluated and saved")
    # --- distillation -----------------------------------------------------------------
    teacher: list[str] = option([], "distil from these trained models (run directories or named models, comma-separated; "
                                    "several: their mean): their outputs on the training images, computed once per run, "
                                    "are soft targets beside the labels")
    distill_alpha: float = option(0.9, "with teacher: the soft targets' share of the loss; the labels' cross-entropy has "
                                       "the rest")
    distill_temperature: float = option(4.0, "with teacher: softens teacher and student outputs in the soft term (which "
                                             "is scaled by its square)")
    teacher_tta: str = option("model", "model | none | flip | shift: the test-time augmentation the teachers score the "
                                       "training images with (model: each teacher's own; shift costs 10 passes)")
    # --- runtime ----------------------------------------------------------------------
    device: str = option("auto", "auto | cpu | cuda | mps, or one GPU: cuda:N (or N)")
    amp: bool = option(False, "mixed precision on CUDA (bf16 where supported, else fp16 with a grad scaler)")
    channels_last: bool = option(False, "channels-last memory format (faster on recent GPUs, and for MobileNetV2 on a CPU)")
    sync_bn: bool = option(False, "with several CUDA processes (torchrun, --nproc): BatchNorm statistics over the global batch")
    seed: int = option(0, "seeds splits, sampling, augmentation and initialisation")
    project: str = option("runs", "parent folder of run directories")
    name: str | None = option(None, "run directory name (default: <data>-<backbone>, numbered if taken)")
    out: str | None = option(None, "explicit run directory; overrides project/name")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHECKPOINTS = ("best", "last")  # a run's checkpoints: the epoch its val split chose, and its final epoch

CHOICES: dict[str, tuple[str, ...]] = {
    "input": ("rgb224", "gray48"),
    "faces": ("none", "crop", "require"),
    "face_detector": ("auto", "retinaface", "haar"),
    "head": ("finetune", "linear", "logreg"),
    "cache": ("auto", "memory", "stream"),
    "unfreeze": ("all", "gradual"),
    "optimizer": ("adamw", "adam", "sgd", "rmsprop"),
    "scheduler": ("cosine", "onecycle", "plateau", "none"),
    "class_weights": ("none", "balanced"),
    "sampler": ("random", "balanced"),
    "augment": ("none", "light", "fer", "strong", "wild"),
    "tta": ("none", "flip", "shift"),
    "teacher_tta": ("model", "none", "flip", "shift"),
    "bn_stats": ("update", "frozen"),
    "metric": ("macro_f1", "accuracy", "balanced_accuracy", "loss"),
    "device": ("auto", "cpu", "cuda", "mps"),
}

FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)


CUDA_INDEX = re.compile(r"cuda:[0-9]+")


def device_name(value: str) -> str:
    """A device as ftkit spells it: a bare GPU index (Ultralytics' ``device=0``) is ``cuda:0``."""
    return f"cuda:{int(value)}" if str(value).isdigit() else value


def suggest(name: str, options: typing.Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(dict.fromkeys(options)), n=3, cutoff=0.6)  # each name once
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def choice_error(kind: str, name: str, options: typing.Iterable[str]) -> ConfigError:
    """The error for an unknown component name: lists the valid names and close matches."""
    options = list(options)
    return ConfigError(
        f"unknown {kind} {name!r}.{suggest(name, options)} Valid: {', '.join(options)}."
    )


def _check_type(key: str, value: Any) -> Any:
    hint = _HINTS[key]
    base = typing.get_origin(hint) or hint
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"config key {key!r} must not be empty")
    if base is typing.Union or str(base) == "types.UnionType" or type(None) in args:
        hint = next(a for a in args if a is not type(None))
        base = typing.get_origin(hint) or hint
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is list and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ConfigError(
            f"config key {key!r} expects {getattr(base, '__name__', base)}, "
            f"got {value!r} ({type(value).__name__})"
        )
    if base is list:
        return _check_items(key, value, (typing.get_args(hint) or (Any,))[0])
    return value


def _check_items(key: str, values: list, item: Any) -> list:
    """A list's elements, of the element type its field names ("0.5" in a float list is 0.5)."""
    if item is float:
        try:
            out = [float(v) for v in values if not isinstance(v, bool)]
        except (TypeError, ValueError):
            out = []
        if len(out) != len(values) or not all(math.isfinite(v) for v in out):
            raise ConfigError(f"config key {key!r} expects numbers, got {values!r}")
        return out
    if item is str and not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"config key {key!r} expects names, got {values!r}")
    return [str(v) for v in values] if item is str else values


# The data settings of a trained run that scoring it on other images may replace (ftkit evaluate).
DATA_OVERRIDES = ("faces", "face_margin", "face_align", "face_detector", "label_from", "splits", "classes", "drop_classes", "merge_classes",
                  "strict")


def validate(cfg: Config) -> Config:
    """Check choice fields and ranges; raise ConfigError naming the field."""
    cfg.device = device_name(cfg.device)
    for key, options in CHOICES.items():
        value = getattr(cfg, key)
        if value not in options and not (key == "device" and CUDA_INDEX.fullmatch(value)):
            raise choice_error(f"value for {key!r}:", value, (*options, "cuda:N") if key == "device" else options)
    for key in ("val_split", "test_split"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise ConfigError(f"{key} must be in [0, 1), got {getattr(cfg, key)}")
    if cfg.val_split + cfg.test_split >= 1.0:
        raise ConfigError(f"val_split ({cfg.val_split}) + test_split ({cfg.test_split}) leave no training data: "
                          "their sum must be below 1")
    for key, low, high in (("lr", 0.0, None), ("backbone_lr_mult", -1e-12, None), ("weight_decay", -1e-12, None), ("l2sp", -1e-12, None),
                           ("warmup_epochs", -1e-12, None), ("drop_rate", -1e-12, 1.0), ("face_margin", MIN_FACE_MARGIN, None)):
        value = getattr(cfg, key)
        if not math.isfinite(value) or value <= low or (high is not None and value >= high):
            bound = "0 or more" if low == -1e-12 else f"above {low:g}"
            raise ConfigError(f"{key} must be a finite number {bound}" + (f" and below {high:g}" if high else "") +
                              f", got {value}")
    for key, low in (("patience", 0), ("workers", -1), ("cache_mb", 0), ("img_size", 8), ("epochs", 1), ("batch_size", 1),
                     ("accumulate", 1)):
        value = getattr(cfg, key)
        if value is not None and value < low:
            raise ConfigError(f"{key} must be at least {low}, got {value}")
    if cfg.std is not None and not all(s > 0 for s in cfg.std):
        raise ConfigError(f"std values divide the pixels and must be above 0, got {cfg.std}")
    if cfg.channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {cfg.channels}")
    if cfg.folds == 1 or cfg.folds < 0 or cfg.shots < 0:
        raise ConfigError(f"folds must be 0 (off) or at least 2, shots 0 or more; got folds={cfg.folds}, shots={cfg.shots}")
    for key in ("group_by", "label_from"):
        if getattr(cfg, key):
            try:
                re.compile(getattr(cfg, key))
            except re.error as exc:
                raise ConfigError(f"{key} {getattr(cfg, key)!r} is not a valid regular expression: {exc}") from exc
    if cfg.mixup < 0 or cfg.cutmix < 0 or not 0 <= cfg.label_smoothing < 1:
        raise ConfigError(f"mixup and cutmix must be >= 0 and label_smoothing in [0, 1); got mixup={cfg.mixup}, "
                          f"cutmix={cfg.cutmix}, label_smoothing={cfg.label_smoothing}")
    if not 0.0 <= cfg.ema < 1.0:
        raise ConfigError(f"ema is a decay in [0, 1) (0: off, 0.999-0.9999 typical), got {cfg.ema}")
    if cfg.ema and cfg.head == "logreg":
        raise ConfigError("ema averages the weights of gradient steps; a --head logreg run takes none: drop ema")
    if cfg.l2sp and not (cfg.init or cfg.weights or cfg.pretrained):
        raise ConfigError("l2sp pulls the backbone toward its pretrained start, and this run has none (pretrained off, "
                          "no init or weights): drop l2sp, or start from pretrained weights")
    if cfg.bn_stats == "frozen" and not (cfg.init or cfg.weights or cfg.pretrained):
        raise ConfigError("bn_stats frozen keeps the start's BatchNorm statistics, and this run has none (pretrained off, "
                          "no init or weights): its layers would normalise with mean 0 and variance 1; use bn_stats update")
    if cfg.init and cfg.weights:
        raise ConfigError(f"init ({cfg.init}) and weights ({cfg.weights}) both say where to start: give one of them")
    if cfg.warmup_epochs > cfg.epochs:
        raise ConfigError(f"warmup_epochs ({cfg.warmup_epochs:g}) is longer than the run (epochs {cfg.epochs}): the learning "
                          "rate would never reach lr; lower warmup_epochs")
    _check_distillation(cfg)
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed must be in [0, 2**32), got {cfg.seed}")
    if not 0 <= cfg.freeze_epochs <= cfg.epochs:
        raise ConfigError(f"freeze_epochs ({cfg.freeze_epochs}) must be between 0 and epochs ({cfg.epochs})")
    return cfg


def _check_distillation(cfg: Config) -> None:
    if not 0.0 <= cfg.distill_alpha <= 1.0 or not (math.isfinite(cfg.distill_temperature) and cfg.distill_temperature > 0):
        raise ConfigError(f"distill_alpha must be in [0, 1] and distill_temperature above 0; got alpha {cfg.distill_alpha}, "
                          f"temperature {cfg.distill_temperature}")
    if not cfg.teacher:
        return
    if cfg.head != "finetune":
        raise ConfigError(f"teacher: distillation trains the student by gradient steps, and head {cfg.head} takes none: "
                          "use head finetune")
    if cfg.mixup or cfg.cutmix:
        raise ConfigError("teacher: mixup and cutmix blend images, but the teachers' targets are of single images: drop "
                          "mixup and cutmix from a distillation run (augment strong, with its cut-out holes, still applies)")


# what timm's train.py, Keras, fastai and Ultralytics call some of ftkit's keys: named in the
# error for a recipe that uses them, never taken silently
OTHER_NAMES = {
    "learning_rate": "lr", "lr0": "lr", "base_lr": "lr", "model": "backbone", "arch": "backbone",
    "batch": "batch_size", "bs": "batch_size", "imgsz": "img_size", "image_size": "img_size", "input_size": "img_size",
    "max_epochs": "epochs", "num_epochs": "epochs", "wd": "weight_decay", "opt": "optimizer", "sched": "scheduler",
    "lr_scheduler": "scheduler", "smoothing": "label_smoothing", "num_workers": "workers", "model_ema_decay": "ema",
    "warmup": "warmup_epochs", "drop": "drop_rate", "dropout": "drop_rate", "freeze": "freeze_epochs",
    "early_stopping_patience": "patience", "teachers": "teacher", "kd_alpha": "distill_alpha",
    "kd_temperature": "distill_temperature", "temperature": "distill_temperature", "in_chans": "channels", "output": "out", "run_dir": "out",
}


def merge(cfg: Config, overrides: dict[str, Any], source: str) -> Config:
    """Return a copy of ``cfg`` with ``overrides`` applied; unknown keys fail with suggestions."""
    values = cfg.to_dict()
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if key not in FIELDS:
            hint = f" ftkit calls it {OTHER_NAMES[key]!r}." if key in OTHER_NAMES else suggest(key, FIELDS)
            raise ConfigError(f"unknown key {key!r} in {source}.{hint}")
        values[key] = _check_type(key, value)
    return Config(**values)


def bundled(checkout: str, installed: str) -> Path:
    """A folder that comes with ftkit: ``checkout`` beside the package in a clone (and an
    editable install), else ``installed`` inside the package, where a wheel puts it
    (pyproject.toml maps recipes/ to ftkit/recipes and weights/ to ftkit/shipped)."""
    package = Path(__file__).resolve().parent
    beside = package.parent / checkout
    return beside if beside.is_dir() or not (package / installed).is_dir() else package / installed


# the recipes that come with ftkit: `--recipe fewshot` names one
RECIPES_DIR = bundled("recipes", "recipes")


def find_recipe(name: str | Path) -> Path:
    """A recipe file: the path given, or else, for a bare name, ftkit's own recipe of that name."""
    path = Path(name)
    if path.is_file():
        return path
    own = RECIPES_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if path.parent == Path(".") and own.is_file():
        return own
    known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise ConfigError(f"recipe {str(name)!r} not found: give a YAML file, or the name of one of ftkit's recipes"
                      + (f" ({known})" if known else ""))


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe YAML file into a flat dict of config keys (not yet validated)."""
    path = find_recipe(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of config keys to values")
    return data


# A backbone with no pretrained start gains nothing from a head-only phase or a reduced
# learning rate: unless a recipe or an option says otherwise, it trains whole from epoch 1.
FROM_SCRATCH = {"freeze_epochs": 0, "backbone_lr_mult": 1.0}


def resolve(recipe: str | Path | None = None, base: dict[str, Any] | None = None, **overrides: Any) -> Config:
    """Build the run config: defaults, then ``base`` (what a model to start from fixes, see
    ``ftkit.zoo.resolve_config``), then the recipe, then explicit overrides (None = unset).
    A fine-tuning run with no start (no pretrained weights, weights file or init) takes
    FROM_SCRATCH's values for the settings that none of these gave."""
    layers = [(base or {}, "the init model"), (load_recipe(recipe) if recipe else {}, f"recipe {recipe}"),
              ({k: v for k, v in overrides.items() if v is not None}, "options")]
    cfg = Config()
    for values, source in layers:
        cfg = merge(cfg, values, source=source)
    if cfg.head == "finetune" and not (cfg.pretrained or cfg.weights or cfg.init):
        given = {key.replace("-", "_") for values, _ in layers for key in values}
        cfg = merge(cfg, {k: v for k, v in FROM_SCRATCH.items() if k not in given}, source="a start from scratch")
    return validate(cfg)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config saved in a run directory or checkpoint (tolerates keys added later). A run
    that cropped faces before there was a choice of detector cropped them with the cascades."""
    if values.get("faces", "none") != "none" and "face_detector" not in values:
        values = {**values, "face_detector": "haar"}
    return merge(Config(), {k: v for k, v in values.items() if k in FIELDS}, source="saved config")
