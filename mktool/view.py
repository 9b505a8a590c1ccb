"""`mktool score`: the unified customer view (用户统一客户视图) with its scores (SPEC §3).

The base and feature columns come from one fixed query (``sql/customer_view_base.sql``);
the scores come from ``scores.yaml`` in the matrices folder, where analysts can read and
change them: the AHP-weighted value score and its tiers, then an ordered list of scalar SQL
columns (stickiness, churn, needs, cohort, segment) each of which may use the ones before.
Everything runs as one DuckDB statement; nothing is pulled into Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mktool.console import QUIET, Reporter
from mktool.contract import check_month
from mktool.database import Database, record_step, replace_month, table_exists
from mktool.errors import StateError
from mktool.freshness import view_inputs
from mktool.project import Project
from mktool.schema import VIEW_TABLE
from mktool.scoremodel import ScoreModel, view_params, view_sql


# -- the step ---------------------------------------------------------------------------------
@dataclass
class ScoreResult:
    month: str
    rows: int
    model: ScoreModel
    tiers: list[tuple[str, str, int]]  # (column, value, customers)


REQUIRED_FOR_SCORE = ("subscribers", "usage", "billing", "plans")



#: The month's customers per value tier, stickiness tier, churn flag and segment (score's summary).
TIER_COUNTS_SQL = " UNION ALL ".join(
    f"SELECT '{column}', CAST({column} AS VARCHAR), count(*) FROM {VIEW_TABLE} WHERE month = ? GROUP BY {column}"
    for column in ("value_tier", "stickiness_tier", "churn_flag", "segment")) + " ORDER BY 1, 2"


def score(db: Database, project: Project, month: str, *, reporter: Reporter = QUIET,
          params: dict[str, Any] | None = None, summary: bool = True) -> ScoreResult:
    """Build customer_view for ``month`` and store it (replacing that month's rows).

    ``summary`` adds the tier / flag / segment distribution (a second pass over the view,
    skipped when nobody will see it, e.g. under --quiet).
    """
    check_month(month)
    model = project.score_model(params)
    con = db.c
    missing = [t for t in REQUIRED_FOR_SCORE if not table_exists(con, t)]
    if missing:
        raise StateError(f"required table{'s' if len(missing) > 1 else ''} not loaded: {', '.join(missing)}",
                         hint="run `mktool ingest` with those extracts first")
    if not con.execute("SELECT 1 FROM subscribers WHERE month = ? LIMIT 1", [month]).fetchone():
        have = [r[0] for r in con.execute("SELECT DISTINCT month FROM subscribers ORDER BY 1").fetchall()]
        raise StateError(f"subscribers has no rows for month {month} (months loaded: {', '.join(have) or 'none'})",
                         hint=f"ingest subscribers_{month}.parquet first")
    has_vas = table_exists(con, "vas")
    if not has_vas:
        reporter.warn("table vas is not loaded: value-added-service columns (vas_active, has_*) are 0/false")
    sql = view_sql(model, has_vas=has_vas)
    with reporter.step(f"scoring {month}"), db.transaction():
        rows = replace_month(con, VIEW_TABLE, month, sql, view_params(month))
        record_step(con, month, "score", inputs=view_inputs(con, month), settings={"params": model.params},
                    overrides={"--param": dict(params)} if params else {})
    summarised = summary and {"stickiness_tier", "churn_flag", "segment"} <= set(model.output_columns)
    tiers = con.execute(TIER_COUNTS_SQL, [month] * 4).fetchall() if summarised else []
    return ScoreResult(month, rows, model, [(a, str(b), int(c)) for a, b, c in tiers])
