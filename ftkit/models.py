"""Backbones: friendly names over timm, input adaptation, and the freeze/unfreeze machinery.

Every model is built by ``timm.create_model``; the head is found with ``get_classifier()``
and the stage groups with timm's ``group_matcher``, never by guessing layer names.
Preprocessing (input size, mean, std, interpolation) comes from the model's pretrained
config unless the user overrides it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import timm
import torch
from timm.models import group_parameters
from torch import nn

from .config import Config, suggest
from .errors import FtkitError

ALIASES: dict[str, str] = {
    "mobilenetv2": "mobilenetv2_100",
    "mobilenetv3": "mobilenetv3_large_100",
    "mobilenetv3-small": "mobilenetv3_small_100",
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "efficientnet-b0": "efficientnet_b0",
    "efficientnet-lite0": "efficientnet_lite0",
}

INPUT_MODES: dict[str, tuple[int, int, bool]] = {
    # name: (side in pixels, model input channels, convert the image to grayscale first)
    "rgb224": (224, 3, False),
    "gray48": (48, 3, True),
}


class ModelError(FtkitError, ValueError):
    """An unknown backbone or an unusable model setting."""


def resolve_name(name: str) -> str:
    """Map an alias or a timm model name to the timm name; unknown names list close matches."""
    if name in ALIASES:
        return ALIASES[name]
    if timm.is_model(name):
        return name
    close = suggest(name, list(ALIASES) + timm.list_models())
    raise ModelError(
        f"unknown backbone {name!r}.{close} Aliases: {', '.join(ALIASES)}; "
        "any timm model name also works (list them with `ftkit backbones --all`)."
    )


@dataclass
class DataConfig:
    """How images must be prepared for this model; saved with every checkpoint."""

    img_size: int  # square side in pixels
    channels: int  # 1 or 3 model input channels
    grayscale: bool  # convert to grayscale before (replicating to) the model's channels
    mean: list[float]  # per-channel normalisation mean (0-1 scale)
    std: list[float]  # per-channel normalisation std
    interpolation: str  # resize interpolation from the pretrained config

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_data_config(model: nn.Module, cfg: Config) -> DataConfig:
    """Input size and normalisation for ``model``: pretrained config first, user overrides last."""
    pretrained = timm.data.resolve_model_data_config(model)
    side, channels, gray = INPUT_MODES[cfg.input]
    side = cfg.img_size or side
    channels = cfg.channels or channels
    mean = list(cfg.mean or pretrained["mean"])
    std = list(cfg.std or pretrained["std"])
    if channels == 1 and len(mean) == 3:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    if len(mean) != channels or len(std) != channels:
        raise ModelError(f"mean/std need {channels} values for {channels}-channel input, got {mean} / {std}")
    return DataConfig(side, channels, gray or channels == 1, mean, std, pretrained.get("interpolation", "bilinear"))


def create(cfg: Config, num_classes: int, state_dict: dict | None = None) -> nn.Module:
    """Build the backbone with a fresh ``num_classes`` head, optionally from a state dict.

    Loading goes through timm's own pretrained loader, which drops a classifier of another
    size and adapts the first convolution to ``channels`` (as ``in_chans`` does).
    """
    name = resolve_name(cfg.backbone)
    channels = cfg.channels or INPUT_MODES[cfg.input][1]
    kwargs = dict(num_classes=num_classes, in_chans=channels, drop_rate=cfg.drop_rate)
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        # ViT, Swin...: position embeddings and windows are built for one size, so timm must be
        # told the input size (it resamples pretrained position embeddings to it)
        kwargs["img_size"] = cfg.img_size or INPUT_MODES[cfg.input][0]
    if state_dict is None:
        model = timm.create_model(name, pretrained=False, **kwargs)
        init_head(model)
        return model
    head_rows = _classifier_rows(name, state_dict)
    overlay = dict(state_dict=state_dict, num_classes=head_rows)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    if head_rows != num_classes:  # the checkpoint's head was dropped: this one is new
        init_head(model)
    return model


def init_head(model: nn.Module) -> None:
    """Initialise a new linear classifier with small weights (normal, std 0.01; zero bias).

    Some timm families scale their classifier init by 1/sqrt(num_classes), which for a
    7-class head gives logits in the tens and a first-epoch loss near 10; small weights
    start every class near uniform, as torchvision and fastai heads do.
    """
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


def _classifier_rows(name: str, state_dict: dict) -> int:
    """Number of classes of the head stored in ``state_dict`` (timm keeps it when it matches)."""
    pretrained = timm.models.get_pretrained_cfg(name)  # read from timm's registry: no model is built
    head = pretrained.classifier if pretrained and isinstance(pretrained.classifier, str) else "classifier"
    weight = state_dict.get(f"{head}.weight")
    return int(weight.shape[0]) if weight is not None else 0


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- freezing ----------------------------------------------------------------------------


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names of the classifier's parameters, found through timm's ``get_classifier()``."""
    head = model.get_classifier()
    ids = {id(p) for p in head.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def stage_groups(model: nn.Module) -> list[list[str]]:
    """Backbone parameter names in stage order (stem first), from timm's ``group_matcher``.

    The classifier is excluded: it is always trainable.
    """
    head = head_parameter_names(model)
    groups = group_parameters(model, model.group_matcher(coarse=True))
    stages = [[n for n in names if n not in head] for _, names in sorted(groups.items())]
    return [s for s in stages if s]


def set_trainable(model: nn.Module, unfrozen_stages: int | None) -> None:
    """Freeze the backbone except its last ``unfrozen_stages`` stage groups (None: all)."""
    stages = stage_groups(model)
    keep = set(head_parameter_names(model))
    chosen = stages if unfrozen_stages is None else stages[len(stages) - unfrozen_stages:] if unfrozen_stages else []
    for stage in chosen:
        keep.update(stage)
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep)


def freeze_bn_of_frozen(model: nn.Module, every_layer: bool = False) -> None:
    """Keep BatchNorm layers whose parameters are frozen in eval mode (running stats fixed);
    with ``every_layer`` (``bn_stats: frozen``), all of them, trained or not.

    Called after ``model.train()``: a frozen stage must not drift through its statistics, and a
    few-shot batch of 16 need not replace the statistics the start learned on a large set.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if every_layer or (params and not any(p.requires_grad for p in params)):
                module.eval()


def backbone_and_head_params(model: nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    head = head_parameter_names(model)
    backbone = [p for n, p in model.named_parameters() if n not in head]
    return backbone, [p for n, p in model.named_parameters() if n in head]


def backbone_rows() -> list[dict]:
    """One row per alias: timm name, parameter count (7 classes), default input, normalisation."""
    rows = []
    for alias, name in ALIASES.items():
        with torch.device("meta"):  # shapes and the pretrained config only: nothing is allocated
            model = timm.create_model(name, pretrained=False, num_classes=7)
        dc = timm.data.resolve_model_data_config(model)
        norm = "imagenet" if tuple(dc["mean"]) == (0.485, 0.456, 0.406) else f"{dc['mean'][0]:g}/{dc['std'][0]:g}"
        rows.append(dict(alias=alias, timm=name, parameters=count_parameters(model),
                         input="x".join(str(v) for v in dc["input_size"]), norm=norm))
    return rows
