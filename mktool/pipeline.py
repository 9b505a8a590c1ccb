"""`mktool run`: the whole month in one cron-safe command.

Validates every rule file first (nothing is touched if one is broken), then holds the
database lock for the whole run while ingest → score → matrix → plan → export each commit
their own step; a failure stops the run with the earlier steps' results intact and the
failing step rolled back, so re-running after a fix picks up cleanly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from mktool.console import QUIET, Reporter
from mktool.database import Database


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
    files = 0
    if ingest_paths:
        files = len(ingest(db, ingest_paths, reporter=reporter).files)
        reporter.info(f"ingest: {files} file(s)")
    scored = score(db, month, matrices_dir=matrices_dir, reporter=reporter, summary=False)
    reporter.info(f"score: {scored.rows:,} customers")
    matrix = evaluate(db, month, rules, reporter=reporter)
    reporter.info(f"matrix: {matrix.rows:,} recommendations for {matrix.customers:,} customers")
    planned = plan(db, month, plan_config, reporter=reporter)
    reporter.info(f"plan: {planned.rows:,} plan recommendations for {planned.customers:,} customers")
    exported = run_export(db, month, matrices_dir=matrices_dir, out_dir=out_dir, cycle_date=cycle_date, fmt=fmt,
                          reporter=reporter)
    doc = funnel_document(db.c, month)
    return PipelineResult(
        month=month, ingested_files=files, customers=scored.rows, recommendations=matrix.rows,
        plan_customers=planned.customers, exported={ch.channel: ch.rows for ch in exported.channels},
        out_dir=out_dir / month, funnels=doc["funnels"],
    )
