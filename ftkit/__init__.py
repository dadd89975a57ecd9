"""ftkit: transfer learning on pretrained timm backbones, built first for facial-expression recognition.

The Python API mirrors the CLI, one function per command:

    import ftkit
    cfg = ftkit.resolve("recipes/fer2013-fast.yaml", data="fer2013.csv")   # defaults < recipe < arguments
    result = ftkit.finetune(cfg)                     # trains, writes a run directory
    ftkit.resume("runs/fer2013-mobilenetv2")         # continues an interrupted run
    ftkit.find_lr(cfg).suggestion                    # the learning-rate range test (ftkit lr-find)
    ftkit.evaluate_run(result.run_dir, data="other_faces/")
    ftkit.predict_paths(ftkit.open_predictor(result.run_dir), ["photo.jpg"])
    ftkit.ensemble_runs(["runs/a", "runs/b"], out="runs/ab")
    ftkit.export_run(result.run_dir, fmt="onnx")
    ftkit.write_shards(ftkit.resolve(data="big_folder/"), "big-shards/")

Named expression models (shipped in ``weights/`` or saved with ``ftkit weights save``) and
``--init`` live in ``ftkit.zoo``. Errors a user can cause derive from ``ftkit.FtkitError``.
The functions are imported on first use, so ``import ftkit`` (and the CLI's start) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from .config import Config, ConfigError, resolve  # noqa: E402
from .errors import FtkitError  # noqa: E402

# public name -> module that defines it
_LAZY = {
    "finetune": "train", "resume": "train", "RunResult": "train", "find_lr": "lrfind",
    "evaluate_run": "scoring", "predict_paths": "predict", "open_predictor": "predict", "load_run": "zoo",
    "ensemble_runs": "ensemble", "export_run": "export", "write_shards": "shards",
}

__all__ = ["Config", "ConfigError", "FtkitError", "resolve", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ftkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
