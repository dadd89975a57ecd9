"""The error family of ftkit: what a user can cause or meet, each with a message that names the
file or option and says what to do. The CLI prints these as one line (exit code 1); any other
exception is a bug and keeps its traceback.

Each module's own error (ConfigError, DataError, RunError, ModelError, WeightsError,
ExportError, TrainingDiverged, DistributedError) derives from FtkitError; most also derive
from ValueError, which they were before the family existed, so ``except ValueError`` in
callers' code keeps working.
"""

from __future__ import annotations


class FtkitError(Exception):
    """Base of ftkit's user-facing errors."""


class UsageError(FtkitError, ValueError):
    """An option, path or environment that cannot be used as given."""


class DistributedError(FtkitError, RuntimeError):
    """Another process of a distributed run failed or stopped; this one stops too."""
