"""Rich progress bars and the console shared by every long-running step."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class _Progress(Progress):
    def add_task(self, description: str, *args, info: str = "", **kwargs):
        return super().add_task(description, *args, info=info, **kwargs)


def progress_bar(out: Console | None = None) -> Progress:
    """A bar with count, elapsed and remaining time, and a free-text ``info`` field."""
    return _Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=out or console,
    )
