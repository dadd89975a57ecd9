"""Transforms: Albumentations presets by name, resize and normalisation derived from the model.

Training and evaluation share one order: resize to the model's side, augmentation (train only),
optional grayscale, normalise with the model's mean/std, convert to a CHW tensor.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from .config import ConfigError, choice_error, suggest
from .models import DataConfig

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


def _light() -> list[A.BasicTransform]:
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.95, 1.05), translate_percent=(-0.05, 0.05), rotate=(-10, 10), p=0.7),
    ]


def _fer() -> list[A.BasicTransform]:
    # The Keras ImageDataGenerator set of the seed notebooks: rotation 10 deg, shifts 10 %,
    # shear 0.1 rad (~6 deg), zoom 10 %, horizontal flip.
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.1, 0.1), rotate=(-10, 10), shear=(-6, 6), p=1.0),
    ]


def _strong() -> list[A.BasicTransform]:
    return _fer() + [
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.6),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))], p=0.3),
        A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.1, 0.25), hole_width_range=(0.1, 0.25), p=0.4),
    ]


def _wild() -> list[A.BasicTransform]:
    # Faces as photos and film frames bring them: fer's geometry, then exposure (x 0.4-1.3, about
    # a stop and a third under to a third over, with a small shift), a gamma, and one of a blur, a
    # lower resolution, sensor noise (in brightness only: one value for the three channels) or JPEG blocks.
    return _fer() + [
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=(-0.6, 0.3), p=0.5),
        A.RandomGamma(gamma_limit=(70, 150), p=0.3),
        A.OneOf([A.GaussianBlur(sigma_limit=(0.5, 1.5)), A.Downscale(scale_range=(0.35, 0.7)),
                 A.GaussNoise(std_range=(0.02, 0.08), per_channel=False), A.ImageCompression(quality_range=(30, 80))], p=0.4),
    ]


PRESETS = {"none": list, "light": _light, "fer": _fer, "strong": _strong, "wild": _wild}


def augmentations(preset: str, pipeline: list[Any] | None = None) -> list[A.BasicTransform]:
    """The augmentation transforms of a preset, or of a full pipeline given in a recipe.

    A recipe pipeline is a list of ``{TransformName: {kwargs}}`` entries, built by
    Albumentations' own deserialiser, e.g. ``[{HorizontalFlip: {p: 0.5}}, {Affine: {rotate: [-15, 15]}}]``;
    compositions nest: ``{OneOf: {transforms: [{GaussianBlur: {}}, {GaussNoise: {}}], p: 0.3}}``.
    """
    if pipeline:
        return [_from_spec(spec) for spec in pipeline]
    if preset not in PRESETS:
        raise choice_error("augmentation preset", preset, PRESETS)
    return PRESETS[preset]()


def _from_spec(spec: Any) -> A.BasicTransform:
    serialized = _serialized(spec)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            transform = A.from_dict({"transform": serialized})
        except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise ConfigError(f"augment_pipeline: Albumentations cannot build {spec!r}: {exc}") from None
    for warning in said:  # a misspelt argument is only warned of, and the run would go on without it
        if "are not valid for transform" in str(warning.message):
            raise ConfigError(f"augment_pipeline: {warning.message} (in {spec!r})")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return transform


def _serialized(spec: Any) -> dict[str, Any]:
    """A recipe entry ``{Name: {kwargs}}`` in Albumentations' serialised form, the transforms of
    a composition (OneOf, SomeOf, Sequential...) too; an entry already in that form (as
    ``A.to_dict`` writes it, with ``__class_fullname__``) is taken as it is."""
    if isinstance(spec, dict) and "__class_fullname__" in spec:
        return spec
    if not (isinstance(spec, dict) and len(spec) == 1 and isinstance(next(iter(spec.values())) or {}, dict)):
        raise ConfigError(f"augment_pipeline entries must look like {{HorizontalFlip: {{p: 0.5}}}}, got {spec!r}")
    (name, kwargs), = spec.items()
    if not isinstance(getattr(A, name, None), type):
        raise ConfigError(f"unknown Albumentations transform {name!r} in augment_pipeline.{suggest(name, dir(A))}")
    kwargs = dict(kwargs or {})
    p = inspect.signature(getattr(A, name)).parameters.get("p")
    if "p" not in kwargs and p is not None and p.default is not inspect.Parameter.empty:
        kwargs["p"] = p.default  # the transform's own default, not the deserialiser's 0.5 and its warning
    if isinstance(kwargs.get("transforms"), list):
        kwargs["transforms"] = [_serialized(t) for t in kwargs["transforms"]]
    return {"__class_fullname__": name, **kwargs}


class Preprocess:
    """Callable turning an RGB uint8 HxWx3 array into a normalised CHW float tensor."""

    def __init__(self, dc: DataConfig, augment: list[A.BasicTransform] | None = None, seed: int | None = None):
        # Shrinking uses pixel areas (INTER_AREA), as PIL's antialiased resize does for timm: cubic or
        # linear interpolation alone aliases a 256-pixel face shrunk to 80. Enlarging uses the model's own.
        steps: list[A.BasicTransform] = [
            A.Resize(dc.img_size, dc.img_size, interpolation=INTERPOLATIONS.get(dc.interpolation, cv2.INTER_LINEAR),
                     area_for_downscale="image"),
        ]
        steps += augment or []
        if dc.grayscale:  # after the augmentation: a colour it adds (noise, a jitter) never reaches a gray model
            steps.append(A.ToGray(num_output_channels=dc.channels, p=1.0))
        steps += [A.Normalize(mean=dc.mean, std=dc.std, max_pixel_value=255.0), ToTensorV2()]
        self.pipeline = A.Compose(steps, seed=seed)

    def reseed(self, seed: int) -> None:
        """Make the random augmentations of the coming epoch repeatable."""
        self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.pipeline(image=image)["image"]


def train_transform(dc: DataConfig, preset: str, pipeline: list | None = None, seed: int = 0) -> Preprocess:
    return Preprocess(dc, augmentations(preset, pipeline), seed=seed)


def eval_transform(dc: DataConfig) -> Preprocess:
    return Preprocess(dc)
