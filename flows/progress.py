"""A terminal progress bar that stays quiet when there is no terminal to draw on."""

from __future__ import annotations

import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TerminalProgress:
    def __init__(self, description: str, total: int, show: bool):
        self._progress = None
        if show and total > 0:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                transient=not sys.stderr.isatty(),
            )
            self._progress.start()
            self._task = self._progress.add_task(description, total=total)

    def update(self, done: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
