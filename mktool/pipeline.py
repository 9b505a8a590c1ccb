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

    def step(name: str, work: Callable[[], T]) -> T:
        """Run one step (it commits on its own); a Ctrl-C inside it names the steps already committed."""
        try:
            value = work()
        except Interrupted as exc:  # the step itself had committed (export): keep its note, add the earlier ones
            raise Interrupted(_interrupted_note(committed, name, exc.note)) from None
        except (KeyboardInterrupt, duckdb.InterruptException) as exc:
            raise Interrupted(_interrupted_note(committed, name, None)) from exc
        except RuntimeError as exc:  # DuckDB may report a Ctrl-C as RuntimeError('Query interrupted')
            if "interrupted" not in str(exc).lower():
                raise
            raise Interrupted(_interrupted_note(committed, name, None)) from exc
        committed.append(name)
        return value

    files = 0
    if ingest_paths:
        files = len(step("ingest", lambda: ingest(db, ingest_paths, reporter=reporter)).files)
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
    return PipelineResult(
        month=month, ingested_files=files, customers=scored.rows, recommendations=matrix.rows,
        plan_customers=planned.customers, exported={ch.channel: ch.rows for ch in exported.channels},
        out_dir=out_dir / month, funnels=doc["funnels"],
    )


def _interrupted_note(committed: list[str], current: str, current_note: str | None) -> str:
    """What a Ctrl-C during ``current`` leaves: the steps committed before it, and the current one's fate."""
    later = [s for s in STEPS[STEPS.index(current) + 1:]]
    parts = [f"Interrupted during {current}."]
    if committed:
        parts.append(f"Committed before it: {', '.join(committed)} (their results are in the database).")
    else:
        parts.append("Nothing was committed before it.")
    parts.append(current_note or f"{current} was interrupted before it finished (a step commits all or nothing).")
    if later:
        parts.append(f"Not run: {', '.join(later)}. Re-run `mktool run` to finish.")
    return " ".join(parts)
