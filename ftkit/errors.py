"""The error family of ftkit: what a user can cause or meet, each with a message that says what
to do. The CLI prints these as one line; any other exception is a bug and keeps its traceback."""

from __future__ import annotations


class FtkitError(Exception):
    """Base of ftkit's user-facing errors."""


class DistributedError(FtkitError, RuntimeError):
    """Another process of a distributed run failed or stopped; this one stops too."""
