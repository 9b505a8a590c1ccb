"""Everything mktool says to a person goes to stderr through here; stdout is for data only.

Rich honours NO_COLOR and drops animation when stderr is not a terminal; ``--quiet``
silences progress and info lines for cron (warnings and errors still show).

Messages are plain text: they carry file names, rule ids and data values, so every method
escapes its message exactly once (a value such as ``[/]`` or ``[bold]`` prints as written
instead of crashing or restyling the output). Callers never escape what they pass in.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn


class Reporter:
    """Progress, info and warnings for one command invocation."""

    def __init__(self, *, quiet: bool = False, verbose: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.verbose = verbose
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(escape(message))

    def debug(self, message: str) -> None:
        """Detail for --verbose only (may name individual subscribers)."""
        if self.verbose and not self.quiet:
            self.console.print(f"[dim]{escape(message)}[/dim]")

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]Warning:[/yellow] {escape(message)}")

    def error(self, message: str, *, label: str = "Error:") -> None:
        """One error line (``Error: …``, or ``error: …`` for each problem of a report)."""
        self.console.print(f"[bold red]{escape(label)}[/bold red] {escape(message)}")

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        """A long step: a spinner while it runs, then its elapsed time (unless quiet)."""
        start = time.perf_counter()
        if self.quiet or not self.console.is_terminal:
            yield
        else:
            with Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=None),
                TimeElapsedColumn(), console=self.console, transient=True,
            ) as progress:
                progress.add_task(escape(description), total=None)
                yield
        self.debug(f"{description}: {time.perf_counter() - start:.2f}s")

    def progress(self, description: str, total: int) -> StepProgress:
        return StepProgress(self, description, total)


class StepProgress:
    """A counted progress bar (files ingested, matrices evaluated)."""

    def __init__(self, reporter: Reporter, description: str, total: int) -> None:
        self.reporter = reporter
        self.description = description
        self.total = total
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> StepProgress:
        if not self.reporter.quiet and self.reporter.console.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(), console=self.reporter.console, transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(escape(self.description), total=self.total)
        return self

    def advance(self, label: str | None = None) -> None:
        if self._progress is not None and self._task is not None:
            if label:
                self._progress.update(self._task, description=escape(f"{self.description} {label}"))
            self._progress.advance(self._task)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)


QUIET = Reporter(quiet=True)
