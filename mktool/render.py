"""What the CLI shows people: tables and the rule-test report, rendered with rich.

Library modules return data (rows, documents, messages); this module is the one place that
turns them into terminal output. Every title, header, cell and message carries file names,
rule ids and data values, so each is escaped here exactly once: ``[arpu]`` or ``[/]`` in a
value prints as written instead of restyling the output or crashing rich's markup parser.
Messages that go through :class:`~mktool.console.Reporter` are escaped by it; never escape
what you hand to it.

Output that is not a terminal (CI logs, pull-request comments) gets 140 columns instead of
rich's 80, so wide tables do not fold.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from mktool.console import Reporter
from mktool.ruletest.cases import Case
from mktool.ruletest.judging import TestRun

__all__ = ["WIDE", "print_table", "render_table", "render_test_report", "table", "tables_text"]

WIDE = 140  # columns for output that is not a terminal

#: A case's status in the ``mktool test`` table.
STATUS_STYLE = {"pass": "[green]pass[/green]", "fail": "[bold red]FAIL[/bold red]",
                "error": "[bold red]ERROR[/bold red]"}

Rows = Sequence[Sequence[Any]]


def table(title: str | None, columns: Sequence[str], rows: Rows, *, numeric: Sequence[str] = ()) -> Table:
    """A rich table of plain values (escaped once); ``numeric`` columns right-aligned; None shows empty.
    The first column (the row's key: a policy, a funnel, a rule) never wraps; the others fold when narrow."""
    out = Table(title=escape(title) if title else None, header_style="bold")
    for i, col in enumerate(columns):
        out.add_column(escape(col), overflow="fold", no_wrap=i == 0, justify="right" if col in numeric else "left")
    for row in rows:
        out.add_row(*[escape("" if v is None else str(v)) for v in row])
    return out


def print_table(title: str | None, columns: Sequence[str], rows: Rows, *, numeric: Sequence[str] = ()) -> None:
    """A table that *is* the command's output (snapshot, diff): on stdout, 140 columns when not a terminal."""
    console = Console(highlight=False)
    if not console.is_terminal and console.width < WIDE:
        console = Console(highlight=False, width=WIDE)
    console.print(table(title, columns, rows, numeric=numeric))


def tables_text(tables: Sequence[tuple[str, Sequence[str], Rows]], *, numeric: Sequence[str] = ()) -> str:
    """Tables as plain text and no colour: a report for stdout or a file (``--out``). At least 140
    columns, wider when a table needs it: a file or a pipe does not wrap, and a header folded to fit
    ("custome / rs") reads worse than a long line."""
    built = [table(title, columns, rows, numeric=numeric) for title, columns, rows in tables]
    measuring = Console(file=io.StringIO(), width=10_000, no_color=True, highlight=False, color_system=None)
    width = max([WIDE, *(Measurement.get(measuring, measuring.options, t).maximum for t in built)])
    console = Console(file=io.StringIO(), width=width, no_color=True, highlight=False, color_system=None)
    for rendered in built:
        console.print(rendered)
    return console.file.getvalue()  # type: ignore[attr-defined]


def render_table(reporter: Reporter, title: str | None, columns: Sequence[str], rows: Rows,
                 *, to_stdout: bool = False) -> None:
    """A table for people: on stderr (unless quiet), or on stdout when it is the requested output."""
    rendered = table(title, columns, rows)
    if to_stdout:
        Console(highlight=False).print(rendered)
    elif not reporter.quiet:
        reporter.console.print(rendered)


def given_text(case: Case, file_customer: dict[str, Any] | None = None) -> str:
    """The columns a failing case gave (the file's defaults, then its own): what to look at first."""
    given = {**(file_customer or {}), **case.customer}
    return ", ".join(f"{k}={v}" for k, v in given.items()) or "(the default customer)"


def render_test_report(run: TestRun, reporter: Reporter) -> None:
    """``mktool test``: the pass/fail table (unless quiet), then every failure with its diff (always), on stderr.

    Rule-file errors and failures are printed here (escaped once); the rule files' warnings
    go through :meth:`Reporter.warn`, which escapes them itself.
    """
    console = reporter.console
    if not console.is_terminal and console.width < WIDE:  # CI logs: do not fold at 80 columns
        console = Console(file=reporter.console.file, width=WIDE, highlight=False, no_color=reporter.console.no_color)
    if run.results and not reporter.quiet:
        report = Table(title=escape(f"Rule tests ({run.matrices_dir})"), header_style="bold")
        for col in ("file", "result", "scope", "rule", "case"):
            report.add_column(col, overflow="fold", no_wrap=col != "case")
        previous = None
        for r in run.results:
            name = Path(r.case.file).name
            report.add_row(escape(name) if name != previous else "", STATUS_STYLE[r.status], escape(r.case.scope),
                           escape(r.case.rule or ""), escape(r.case.name))
            previous = name
        console.print(report)
    for text in run.rule_errors:
        console.print(f"[bold red]error:[/bold red] {escape(text)}", highlight=False, soft_wrap=True)
    for r in run.failed:
        label = "FAIL" if r.status == "fail" else "ERROR"
        console.print(f"\n[bold red]{label}[/bold red] {escape(r.case.label)}", highlight=False, soft_wrap=True)
        console.print(f"  {escape(r.message)}", highlight=False, soft_wrap=True)
        cf = run.case_files.get(r.case.file)
        if r.status == "fail":
            console.print(f"  customer: {escape(given_text(r.case, cf.customer if cf else None))}", highlight=False,
                          soft_wrap=True)
        for line in r.details:
            console.print(escape(line), highlight=False, soft_wrap=True)
    for w in run.warnings:
        reporter.warn(w)
