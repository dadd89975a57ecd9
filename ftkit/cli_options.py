"""What every command shares: the error wrapper (one line per user error, a traceback for a bug),
the options generated from the Config dataclass, and the --device type."""

from __future__ import annotations

import dataclasses
import functools
import typing
import warnings

import click
from rich.text import Text

from .config import CHOICES, CUDA_INDEX, Config, device_name
from .errors import FtkitError
from .progress import console


def friendly(fn):
    """ftkit's own errors (FtkitError) and the operating system's (a missing file, a read-only
    or full disk) become one line naming the file or option, exit code 1. Anything else is a
    bug: it keeps its traceback, under a line asking to report it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")  # each distinct warning once per command
                warnings.showwarning = lambda msg, *a, **k: console.print(Text.assemble(("warning:", "yellow"), f" {msg}"))
                return fn(*args, **kwargs)
        except (click.ClickException, click.Abort, click.exceptions.Exit):
            raise  # click's own: a usage message already, or a deliberate stop
        except KeyboardInterrupt:
            # a Ctrl-C: what it stopped has said so (a run says how to resume it); the shell's
            # code for an interrupt, 130, instead of click's "Aborted!" and 1
            raise click.exceptions.Exit(130) from None
        except FtkitError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            if exc.filename is None:
                raise
            where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
            raise click.ClickException(f"{where}: {exc.strerror or exc} (check the path, its permissions and the free "
                                       "disk space)") from exc
        except Exception:
            click.echo("ftkit stopped on an unexpected error, which is a bug: please report it with the command "
                       "line and the traceback below.", err=True)
            raise

    return wrapper


_FLAG_NAMES = {"drop_classes": "--drop-class", "merge_classes": "--merge-class"}


_CLASS_LISTS = ("classes", "drop_classes")  # repeatable, and each value a comma list


_HIDDEN = {"augment_pipeline"}  # only a recipe can give a full pipeline


class DeviceType(click.ParamType):
    """The config's device choices, plus one GPU by index: cuda:1, or 1 as Ultralytics spells it."""

    name = "device"
    choices = CHOICES["device"]

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(self.choices) + "|cuda:N]"

    def convert(self, value, param, ctx):
        value = device_name(value)
        if value in self.choices or CUDA_INDEX.fullmatch(value):
            return value
        self.fail(f"{value!r} is not one of {', '.join(self.choices)}, cuda:N or a GPU index N", param, ctx)


def config_options(fn=None, *, only: tuple[str, ...] | None = None, default: str | None = None):
    """Add one option per Config field (default None: only flags given override); with
    ``only``, just those fields' options (``@config_options(only=(...))``). ``default`` says in
    the help what an option not given means, when that is not the Config default."""
    if fn is None:
        return functools.partial(config_options, only=only, default=default)
    hints = typing.get_type_hints(Config)
    for f in reversed(dataclasses.fields(Config)):
        if f.name in _HIDDEN or (only is not None and f.name not in only):
            continue
        flag = _FLAG_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        hint = hints[f.name]
        base = typing.get_origin(hint) or hint
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = typing.get_origin(args[0]) or args[0] if args else base
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        repeatable = " (repeatable; a class whose name has a comma: give it alone)" if f.name in _CLASS_LISTS else ""
        text = f"{f.metadata['help']}{repeatable} [default: {default or value}]"
        if hint is bool:
            fn = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=text)(fn)
        elif base is dict:
            fn = click.option(flag, f.name, multiple=True, metavar="SRC=DST", help=text + " (repeatable)")(fn)
        elif base is list or inner is list:
            fn = click.option(flag, f.name, multiple=f.name in _CLASS_LISTS, metavar="A,B,...", help=text)(fn)
        elif f.name in CHOICES:  # --help lists the values, and Click catches a typo
            kind = DeviceType() if f.name == "device" else click.Choice(CHOICES[f.name])
            fn = click.option(flag, f.name, type=kind, default=None, help=text)(fn)
        else:
            kind = {int: int, float: float}.get(inner if args else base, str)
            fn = click.option(flag, f.name, type=kind, default=None, help=text)(fn)
    return fn


def flag_overrides(kwargs: dict) -> dict:
    """Click values to config overrides: drop unset ones, parse lists and SRC=DST pairs."""
    out = {}
    for key, value in kwargs.items():
        if value is None or value == ():
            continue
        if key == "merge_classes":
            pairs = [v.split("=", 1) for v in value]
            if any(len(p) != 2 or not all(p) for p in pairs):
                raise click.BadParameter("use SRC=DST, e.g. --merge-class disgust=angry", param_hint="--merge-class")
            value = dict(pairs)
        elif key in _CLASS_LISTS:  # split at commas once the class names are known (data.named_classes)
            value = list(value)
        elif key in ("mean", "std"):
            value = [v.strip() for v in value.split(",") if v.strip()]  # numbers are checked by the config
        out[key] = value
    return out


# Every command spells --device the same, with the config's choices.
device_option = click.option("--device", type=DeviceType(), default="auto", show_default=True,
                             help="Where to run: auto picks CUDA, then MPS, then the CPU; cuda:1 (or 1) picks a GPU.")
