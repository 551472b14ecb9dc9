"""The one progress bar every long stage shows (rich), with no heavy imports, so
light modules (evaluation, generation, the trainers) share it."""

from __future__ import annotations

__all__ = ["progress"]


def progress(total: int, description: str, *, enabled: bool = True, stderr: bool = False):
    """(bar, task): a rich progress bar with ETA and a free status field; use the bar
    as a context manager and `bar.update(task, ...)`. `enabled=False` hides it (the
    trainers show it on the main process only); `stderr=True` keeps stdout clean for
    commands that print JSON."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        disable=not enabled,
        transient=False,
        **({"console": Console(stderr=True)} if stderr else {}),
    )
    task = bar.add_task(description, total=total, status="")
    return bar, task
