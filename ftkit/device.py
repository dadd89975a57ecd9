"""Where and how tensors run: the device by name, mixed precision, and the random seeds."""

from __future__ import annotations

import random
from contextlib import nullcontext
from functools import partial

import numpy as np
import torch

from .config import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} asked for, but torch sees no CUDA GPU; use --device auto or cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA GPU(s), numbered from 0 "
                              "(CUDA_VISIBLE_DEVICES renumbers them)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps asked for, but torch has no MPS (Apple GPU) here; use --device auto or cpu")
    return torch.device(name)


def autocast_for(device: torch.device, amp: bool):
    """Mixed precision on CUDA (bf16 when supported, else fp16); a no-op elsewhere."""
    if not amp or device.type != "cuda":
        return nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return partial(torch.autocast, device_type="cuda", dtype=dtype), scaler


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
