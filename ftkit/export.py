"""Export a trained run to ONNX or TorchScript, with its preprocessing recorded, and check
that the exported model gives the same outputs as PyTorch before calling it done.

The preprocessing (input size, channels, grayscale, mean, std, interpolation, class names)
goes into the file itself (ONNX ``metadata_props`` key ``ftkit``; TorchScript extra file
``ftkit.json``) and into a sidecar ``<file>.json``, so a deployed model needs nothing else.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import choice_error
from .errors import FtkitError
from .io import atomic_write, read_json, write_json
from .zoo import EXPORT_SUFFIXES, exported_format, load_run

FORMATS = ("onnx", "torchscript")


class ExportError(FtkitError, ValueError):
    """An export that failed or does not match PyTorch within tolerance."""


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float  # largest |exported - pytorch| over the parity inputs (logits)
    metadata: dict[str, Any]
    format: str  # onnx or torchscript


def export_metadata(loaded) -> dict[str, Any]:
    return {"format_version": 1, "classes": loaded.classes, **loaded.data_config.to_dict(),
            "backbone": loaded.config.backbone, "run": loaded.label,
            "faces": loaded.config.faces, "face_margin": loaded.config.face_margin,
            "face_align": loaded.config.face_align, "face_detector": loaded.config.face_detector, "tta": loaded.config.tta,
            "input": "NCHW float32, normalised",
            "output": "logits (apply softmax for probabilities)"}


def parity_inputs(loaded, n: int = 8, seed: int = 0) -> torch.Tensor:
    """Sample inputs: random normalised tensors of the model's shape."""
    dc = loaded.data_config
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dc.channels, dc.img_size, dc.img_size, generator=gen)


def export_run(run: str | Path, fmt: str = "onnx", out: str | Path | None = None, tolerance: float = 1e-3,
               opset: int = 17, force: bool = False) -> ExportResult:
    """Write ``RUN/export/model.onnx`` (or ``.ts``) and its sidecar JSON; fail on a parity gap.
    ``fmt`` None: the format ``out``'s suffix names, else ONNX. A file already at the path is
    replaced when it was exported from the same run or model (its sidecar says so), otherwise
    only with ``force``."""
    fmt = export_format(fmt, out)
    loaded = load_run(run, device="cpu")
    model = loaded.model.float().eval()
    meta = export_metadata(loaded)
    filename = "model" + EXPORT_SUFFIXES[fmt][0]
    # a named model has no run directory: its exports go under exports/<name>/
    folder = loaded.run / "export" if loaded.run is not None else Path("exports") / loaded.name
    path = Path(out) if out else folder / filename
    _refuse_foreign_file(path, meta, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The new file is checked under another name and moves into place only when it passes, so a
    # failed export leaves an earlier good one (and its sidecar) as it was.
    candidate = path.with_name(f".{path.stem}.candidate{path.suffix}")
    try:
        diff = _write_and_compare(model, loaded, fmt, candidate, meta, opset)
        if not np.isfinite(diff) or diff > tolerance:
            failed = path.with_suffix(path.suffix + ".failed")
            candidate.replace(failed)
            raise ExportError(f"exported {fmt} model differs from PyTorch by {diff:.2e} > tolerance {tolerance:g}; "
                              f"kept as {failed} for inspection" + (f" ({path} is unchanged)" if path.exists() else ""))
        candidate.replace(path)
    except OSError as exc:
        if exc.filename is not None and Path(exc.filename).name.startswith(f".{path.stem}.candidate"):  # the user's file, not ours
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    finally:
        candidate.unlink(missing_ok=True)
    write_json(path.with_suffix(path.suffix + ".json"), {**meta, "parity_max_abs_diff": diff, "tolerance": tolerance})
    return ExportResult(path, diff, meta, fmt)


def _refuse_foreign_file(path: Path, meta: dict, force: bool) -> None:
    """An export replaces an earlier export of the same source; any other file only with force."""
    if force or not path.exists():
        return
    sidecar = path.with_suffix(path.suffix + ".json")
    source = read_json(sidecar).get("run") if sidecar.is_file() else None
    if source is None or Path(source).resolve() != Path(meta["run"]).resolve():  # a run given by another path is the same
        what = f"an export of {source}" if source else "a file that is not an ftkit export of this model"
        raise ExportError(f"{path} is {what}: give another --out, or add --force to replace it")


def export_format(fmt: str | None, out: str | Path | None) -> str:
    """The format to write: ``fmt``, checked against ``out``'s suffix (a TorchScript file named
    .onnx would be handed to onnxruntime later), or the one that suffix names."""
    if fmt is not None and fmt not in FORMATS:
        raise choice_error("export format", fmt, FORMATS)
    if out is None:
        return fmt or "onnx"
    named = exported_format(out)
    if named is None or (fmt is not None and named != fmt):
        wanted = [fmt] if fmt else list(FORMATS)
        raise ExportError(f"--out {Path(out).name}: " + "; ".join(f"{f} files end in {' or '.join(EXPORT_SUFFIXES[f])}"
                                                                 for f in wanted))
    return named


def _write_and_compare(model, loaded, fmt: str, path: Path, meta: dict, opset: int) -> float:
    """Write the exported model to ``path``; the largest logit difference from PyTorch."""
    example = parity_inputs(loaded, n=2, seed=1)
    if fmt == "onnx":
        export_onnx(model, example, path, meta, opset)
        exported = _onnx_runner(path)
    else:
        _export_torchscript(model, example, path, meta)
        scripted, _ = load_torchscript(path)
        exported = lambda x: scripted(torch.from_numpy(x)).detach().numpy()  # noqa: E731
    x = parity_inputs(loaded)
    with torch.no_grad():
        expected = model(x).numpy()
    return float(np.abs(exported(x.numpy()) - expected).max())


def export_onnx(model, example, path: Path, meta: dict, opset: int) -> None:
    """Write ``model`` as ONNX at ``path`` (batch axis dynamic), with ``meta`` as JSON metadata
    under the key "ftkit" (see read_onnx_metadata). ``example`` is one input batch."""
    import onnx  # optional: the export extra

    tmp = path.with_suffix(".tmp.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter needs no onnxscript
            torch.onnx.export(model, (example,), str(tmp), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                              dynamo=False)
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "ftkit", json.dumps(meta)
    onnx.checker.check_model(proto)
    atomic_write(path, lambda f: f.write(proto.SerializeToString()), mode="wb")


def _onnx_runner(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x.astype(np.float32)})[0]


@contextlib.contextmanager
def _quiet_jit():
    """torch.jit is deprecated in recent torch and still loads everywhere: keep its notice out of the output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _export_torchscript(model, example, path: Path, meta: dict) -> None:
    with _quiet_jit():
        traced = torch.jit.trace(model, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={"ftkit.json": json.dumps(meta)})
    atomic_write(path, lambda f: f.write(buffer.getvalue()), mode="wb")


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """An ftkit TorchScript file on the CPU and the preprocessing recorded in it."""
    files = {"ftkit.json": ""}
    try:
        with _quiet_jit():
            model = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    except (RuntimeError, ValueError) as exc:  # a state dict, a pickle or any other file: not a TorchScript archive
        raise ExportError(f"{path} is not a TorchScript file (a state dict, or another kind of file): export one with "
                          "`ftkit export RUN --format torchscript`, or give a run directory") from exc
    if not files["ftkit.json"]:
        raise ExportError(f"{path}: no ftkit.json inside; export it with `ftkit export RUN --format torchscript`")
    return model.eval(), json.loads(files["ftkit.json"])


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The preprocessing recorded in an ftkit ONNX file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == "ftkit":
            return json.loads(prop.value)
    raise ExportError(f"{path} has no ftkit metadata: export it with `ftkit export`")
