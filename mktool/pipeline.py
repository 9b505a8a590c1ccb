"""`mktool run`: the whole month in one cron-safe command.

Takes the project validated once (every rule file, and the hash salt of every channel it
will export: nothing is touched if one is broken or missing), then holds the
database lock for the whole run while ingest → score → matrix → plan → export each commit
their own step; a failure stops the run with the earlier steps' results intact and the
failing step rolled back, so re-running after a fix picks up cleanly. A Ctrl-C says which
steps had committed before it came (never "nothing was committed" after ingest or score did).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import duckdb

from mktool import export, ingest, matrices, plan, view
from mktool.console import QUIET, Reporter
from mktool.database import Database
from mktool.errors import Interrupted
from mktool.project import Project

STEPS = ("ingest", "score", "matrix", "plan", "export")
T = TypeVar("T")


@dataclass
class PipelineResult:
    month: str
    ingested_files: int
    customers: int
    recommendations: int
    plan_customers: int
    exported: dict[str, int]
    out_dir: Path | None
    funnels: dict[str, list[dict[str, int | str]]]


def run_pipeline(
    db: Database,
    project: Project,
    month: str,
    *,
    ingest_paths: list[Path] | None,
    cycle_date: dt.date,
    out_dir: Path,
    fmt: str | None = None,
    reporter: Reporter = QUIET,
) -> PipelineResult:
    """ingest → score → matrix → plan → export for ``month``, each step committing on its own.

    The project was validated as a whole when it loaded; the salts of the channels this run
    exports are checked here, before the first write (see also :func:`check_before_run`).
    """
    check_before_run(project)
    committed: list[str] = []
    running: list[str] = []  # the step in progress, if any

    def step(name: str, work: Callable[[], T]) -> T:
        """Run one step; each commits on its own, and ``committed`` says which did."""
        running[:] = [name]
        value = work()
        committed.append(name)
        running.clear()
        return value

    try:
        files = 0
        if ingest_paths:
            paths = ingest_paths
            files = len(step("ingest", lambda: ingest.ingest(db, paths, reporter=reporter)).files)
            reporter.info(f"ingest: {files} file(s)")
        scored = step("score", lambda: view.score(db, project, month, reporter=reporter, summary=False))
        reporter.info(f"score: {scored.rows:,} customers")
        matrix = step("matrix", lambda: matrices.evaluate(db, project, month, reporter=reporter))
        reporter.info(f"matrix: {matrix.rows:,} recommendations for {matrix.customers:,} customers")
        planned = step("plan", lambda: plan.plan(db, project, month, reporter=reporter))
        reporter.info(f"plan: {planned.rows:,} plan recommendations for {planned.customers:,} customers")
        exported = step("export", lambda: export.run_export(db, project, month, out_dir=out_dir,
                                                            cycle_date=cycle_date, fmt=fmt, reporter=reporter))
        doc = export.funnel_document(db.c, month)
    except Interrupted as exc:  # export had committed: keep its note, add the steps before it
        raise Interrupted(_interrupted_note(committed, running, exc.note)) from None
    except (KeyboardInterrupt, duckdb.InterruptException) as exc:
        raise Interrupted(_interrupted_note(committed, running, None)) from exc
    except RuntimeError as exc:  # DuckDB may report a Ctrl-C as RuntimeError('Query interrupted')
        if "interrupted" not in str(exc).lower():
            raise
        raise Interrupted(_interrupted_note(committed, running, None)) from exc
    return PipelineResult(
        month=month, ingested_files=files, customers=scored.rows, recommendations=matrix.rows,
        plan_customers=planned.customers, exported={ch.channel: ch.rows for ch in exported.channels},
        out_dir=out_dir / month, funnels=doc["funnels"],
    )


def check_before_run(project: Project) -> None:
    """What `run` refuses before opening the database: a channel it exports without its hash salt.

    (Every rule file was validated when the project loaded.) ``run`` exports every channel.
    """
    project.require_salts()


def _interrupted_note(committed: list[str], running: list[str], running_note: str | None) -> str:
    """What a Ctrl-C leaves: the steps committed before it, the fate of the one running, the ones not run."""
    done_or_running = set(committed) | set(running)
    later = [s for s in STEPS if s not in done_or_running and STEPS.index(s) > max(
        (STEPS.index(x) for x in done_or_running), default=-1)]
    parts = [f"Interrupted during {running[0]}." if running else
             (f"Interrupted after {committed[-1]}." if committed else "Interrupted.")]
    if committed:
        parts.append(f"Committed before it: {', '.join(committed)} (their results are in the database).")
    else:
        parts.append("Nothing was committed.")
    if running:
        parts.append(running_note or f"{running[0]} was interrupted before it finished (a step commits all or nothing).")
    if later:
        parts.append(f"Not run: {', '.join(later)}. Re-run `mktool run` to finish.")
    return " ".join(parts)
