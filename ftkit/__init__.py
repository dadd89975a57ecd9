"""ftkit: transfer learning on pretrained timm backbones, built first for facial-expression recognition.

The Python API mirrors the CLI: ``ftkit.resolve(...)`` builds a config, ``ftkit.finetune(cfg)``
trains and writes a run directory, ``ftkit.evaluate_run`` / ``ftkit.predict_paths`` use it.
Named expression models (shipped in ``weights/`` or saved with ``ftkit weights save``) and
``--init`` live in ``ftkit.zoo``.
"""

__version__ = "0.1.0"

from .config import Config, ConfigError, resolve  # noqa: E402

__all__ = ["Config", "ConfigError", "resolve", "__version__"]
