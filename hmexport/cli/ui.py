"""Consoles and progress bars: results on stdout, progress and messages on stderr."""

from __future__ import annotations

import atexit
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False)
_progress: Progress | None = None


def progress_factory() -> Callable[[str, int | None], Callable[[int], None]]:
    """``make(description, total)`` starts a task on one shared stderr progress display and returns ``advance(n)``."""

    def make(description: str, total: int | None) -> Callable[[int], None]:
        global _progress
        if _progress is None:
            _progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=err_console, transient=False)
            _progress.start()
            atexit.register(_progress.stop)
        task = _progress.add_task(description, total=total)
        return lambda n=1: _progress.advance(task, n)

    return make
