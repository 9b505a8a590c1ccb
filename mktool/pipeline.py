"""`mktool run`: the whole month in one cron-safe command.

Validates every rule file first (nothing is touched if one is broken), then holds the
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

from mktool.console import QUIET, Reporter
from mktool.database import Database
from mktool.errors import Interrupted

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
    month: str,
    *,
    matrices_dir: Path,
    ingest_paths: list[Path] | None,
    cycle_date: dt.date,
    out_dir: Path,
    fmt: str | None = None,
    reporter: Reporter = QUIET,
) -> PipelineResult:
    from mktool.export import funnel_document, run_export
    from mktool.ingest import ingest
    from mktool.matrices import evaluate
    from mktool.plan import load_plan_config, plan
    from mktool.rules import load_rules
    from mktool.view import score

    rules = load_rules(matrices_dir)  # validates every YAML before anything is written
    plan_config = load_plan_config(matrices_dir)
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
            files = len(step("ingest", lambda: ingest(db, paths, reporter=reporter)).files)
            reporter.info(f"ingest: {files} file(s)")
        scored = step("score", lambda: score(db, month, matrices_dir=matrices_dir, reporter=reporter, summary=False))
        reporter.info(f"score: {scored.rows:,} customers")
        matrix = step("matrix", lambda: evaluate(db, month, rules, reporter=reporter))
        reporter.info(f"matrix: {matrix.rows:,} recommendations for {matrix.customers:,} customers")
        planned = step("plan", lambda: plan(db, month, plan_config, reporter=reporter))
        reporter.info(f"plan: {planned.rows:,} plan recommendations for {planned.customers:,} customers")
        exported = step("export", lambda: run_export(db, month, matrices_dir=matrices_dir, out_dir=out_dir,
                                                     cycle_date=cycle_date, fmt=fmt, reporter=reporter))
        doc = funnel_document(db.c, month)
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
