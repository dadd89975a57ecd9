"""Small file helpers: atomic writes, so a crash never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from .errors import UsageError


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Write through ``write(file)`` into a temporary file beside ``path``, then rename it.

    The rename is atomic on POSIX and Windows, so readers see the old file or the new
    one, never a partial one.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with ctrl_c_deferred():
            fd, tmp = _new_temp(path)
            kwargs = {"newline": ""} if "b" not in mode else {}
            with os.fdopen(fd, mode, **kwargs) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except OSError as exc:
        # a full disk or a read-only folder: name the file the user asked for, not our temp file
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        named = Path(str(exc.filename)).name if exc.filename is not None else None
        if named is None or (named.startswith(f".{path.name}.") and named.endswith(".tmp")):
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # held by ctrl_c_deferred while a file is written


@contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT), or the SIGTERM torchrun sends after one, that arrives inside the
    block until the block ends, then hand it to the handler it would have reached.

    torch.save writes through a C++ zip writer: an exception raised inside one of its write
    calls comes out as "RuntimeError: unexpected pos", and the run would be recorded as failed
    instead of interrupted. Writes are short, so holding the signal costs nothing. Held are the
    signals whose handler is Python code: Python's own for Ctrl-C, and the ones a distributed
    run installs for both (ftkit.distributed.process_group); a signal left to the system's
    default action stays as it is. Only the main thread receives signals; elsewhere the block
    runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signum: handler for signum in DEFERRED_SIGNALS if callable(handler := signal.getsignal(signum))}
    caught: list[int] = []
    for signum in held:
        signal.signal(signum, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
    for signum in caught:  # in the order they came; a handler that raises ends the replay
        held[signum](signum, None)


def _new_temp(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """A new ``.NAME.<random>.tmp`` (or other ``suffix``) beside ``path``, created with mode
    0666 so that the process's umask gives it the usual permissions (mkstemp would make it 0600,
    and reading the umask means setting it, which changes process-wide state)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def temp_beside(path: str | Path, suffix: str = ".tmp") -> Path:
    """An empty new file beside ``path`` for a writer that opens files by name (a video
    writer): write it, then ``os.replace`` it onto ``path``. ``suffix`` keeps the extension
    such writers choose their format by."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_temp(path, suffix)
    os.close(fd)
    return Path(tmp)


def holds_files(path: str | Path) -> bool:
    """Whether writing a new folder at ``path`` would put something already there at risk:
    ``path`` is a file, or a folder that is not empty."""
    path = Path(path)
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


@contextmanager
def new_folder(dest: str | Path, what: str = "folder") -> Iterator[Path]:
    """Build a new folder ``dest`` in a temporary folder beside it, moved into place by one
    rename when the block ends without an error: readers never see a half-written folder, and
    a failed or interrupted write leaves nothing. ``dest`` must be new or empty."""
    dest = Path(dest)
    if holds_files(dest):
        raise UsageError(f"{dest} already exists and is not an empty folder; give a new {what} (nothing was changed)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield work
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def refuse_inside(output: str | Path, inputs: list[str | Path], what: str) -> None:
    """Refuse an output folder inside an input folder (or the same folder): what a command
    writes there would be read back as input by the next run. Raised before anything is written."""
    out = Path(os.path.abspath(output))
    for source in inputs:
        src = Path(os.path.abspath(source))
        if src.is_dir() and (out == src or src in out.parents):
            raise UsageError(f"{what} {output} lies inside the input folder {source}: its files would be read as "
                             "input next time; choose a folder outside it")


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def write_yaml(path: str | Path, obj: Any) -> Path:
    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


class FileFormatError(UsageError):
    """A file ftkit wrote or reads is truncated, edited or of another kind."""


def read_json(path: str | Path) -> Any:
    """A JSON file; a truncated or edited one is refused with its name, not a parser traceback."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path} is not valid JSON ({exc}): it was truncated or edited; restore it, or "
                              "start again from what wrote it") from exc


def read_yaml(path: str | Path) -> Any:
    """A YAML file (args.yaml of a run), refused with its name when it does not parse."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path} is not valid YAML ({exc}): it was truncated or edited; restore it") from exc


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")
