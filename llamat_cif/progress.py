"""The one progress bar of the toolkit (rich), so every stage shows its work the same way.

``progress_bar("relax", enabled=show)`` gives a :class:`rich.progress.Progress` with the columns a
long stage needs: its name, a bar, done/total, elapsed and remaining time, and any extra text
columns the stage fills in (``fields=("note",)`` shows ``{task.fields[note]}``). A disabled bar
costs nothing and prints nothing, so callers never branch on whether progress is shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["progress_bar"]


def progress_bar(label: str | None = None, *, enabled: bool = True, fields: Sequence[str] = (),
                 remaining: bool = True, console: Any = None, transient: bool = False):
    """A rich ``Progress`` with the toolkit's columns.

    Args:
        label: fixed text before the bar; None shows each task's own description (several tasks).
        enabled: False gives a silent bar (same API, no output).
        fields: task fields shown after the counts (``bar.add_task(..., note="")``).
        remaining: show the estimated time remaining.
        console: the rich console to draw on (default: rich's global console).
        transient: remove the bar when it stops.

    Returns:
        A ``rich.progress.Progress``; use it as a context manager or call ``start``/``stop``.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    cols = [TextColumn(f"[bold]{label}" if label is not None else "[bold]{task.description}"),
            BarColumn(), MofNCompleteColumn(),
            *(TextColumn(f"{{task.fields[{f}]}}") for f in fields), TimeElapsedColumn()]
    if remaining:
        cols.append(TimeRemainingColumn())
    kwargs = {"console": console} if console is not None else {}
    return Progress(*cols, disable=not enabled, transient=transient, **kwargs)
