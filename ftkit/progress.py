"""Rich progress bars and the console shared by every long-running step."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Output that is not a terminal (a pipe, a log, CI) gets whole lines: no width to fold or cut
# table cells at (`ftkit weights list 2>&1 | grep NAME` must find the name), and no live bars.
# No markup: paths, class and run names are printed as they are ("data[train]/a.jpg" used to lose
# "[train]", and a "[/x]" in a folder name stopped the command); styles are given as rich Text.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 1000, markup=False)


class _Progress(Progress):
    def add_task(self, description: str, *args, info: str = "", **kwargs):
        return super().add_task(description, *args, info=info, **kwargs)


def progress_bar(out: Console | None = None) -> Progress:
    """A bar with count, elapsed and remaining time, and a free-text ``info`` field."""
    return _Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        console=out or console,
        disable=not (out or console).is_terminal,
    )
