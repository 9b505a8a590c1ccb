"""Which inputs each derived table was built from, so that no step runs on a stale one.

A customer view built before the latest ingest of a month in its window would silently feed
last week's bills into this month's lists. Every derived step therefore records, in the
bookkeeping table ``step_log`` (:func:`mktool.database.record_step`), *what* it was computed
from — not when: clocks and the
second-resolution ``ingest_log.loaded_at`` cannot order an ingest and a score run within the
same second, but the files themselves (table, month and sha256 of each) can, and re-ingesting
the very same file then leaves the view valid.

* ``score`` records the files its window reads (subscribers, usage, billing and vas of the
  three window months, and the plans catalogue) and a fresh ``build_id``;
* ``matrix`` and ``plan`` record the ``build_id`` of the view they read;
* every step that reads the view (matrix, plan, export, explain) first calls
  :func:`require_fresh_view`; export also calls :func:`require_built_on_view` for the
  recommendations and plan recommendations it publishes.

A refusal is a :class:`~mktool.errors.StateError` naming the newer file and the command to
re-run. A view with no record (built by an older mktool) is refused the same way when mktool
loaded its inputs: what it was built from cannot be known.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from mktool.contract import window
from mktool.database import load_order, table_exists
from mktool.errors import StateError

__all__ = ["require_built_on_view", "require_fresh_view", "view_build_id", "view_inputs"]

#: The monthly tables the customer view reads over its 3-month window.
VIEW_MONTHLY_INPUTS = ("subscribers", "usage", "billing", "vas")
#: The snapshot tables it reads whatever the month (the plan catalogue: plan_rental, product_status).
VIEW_SNAPSHOT_INPUTS = ("plans",)


def _loads(con: duckdb.DuckDBPyConnection, month: str) -> list[tuple[str, str, str, dt.datetime]]:
    """(identity, what, file, loaded_at) of every file whose rows the view of ``month`` reads now.

    A later load of a month replaces it, so per (table, window month) only the files of the
    latest load count, and of each snapshot table only its latest load. A file's identity is
    table, month and content (sha256): re-ingesting the very same file does not make a view
    stale, a changed file does.
    """
    if not table_exists(con, "ingest_log"):
        return []
    order = load_order(con)
    rows = con.execute(
        f"""
        WITH monthly AS (
            SELECT load_id, table_name, file, sha256, loaded_at, unnest(months) AS m, {order} AS load_seq
            FROM ingest_log WHERE list_contains(?, table_name)),
        latest_monthly AS (
            SELECT table_name, m, load_id FROM monthly WHERE list_contains(?, m)
            QUALIFY row_number() OVER (PARTITION BY table_name, m ORDER BY loaded_at DESC, load_seq DESC) = 1),
        latest_snapshot AS (
            SELECT table_name, load_id FROM ingest_log WHERE list_contains(?, table_name)
            QUALIFY row_number() OVER (PARTITION BY table_name ORDER BY loaded_at DESC, {order} DESC) = 1)
        SELECT mo.table_name, mo.m, mo.file, mo.sha256, mo.loaded_at
        FROM monthly mo JOIN latest_monthly l USING (table_name, m, load_id)
        UNION ALL
        SELECT g.table_name, '', g.file, g.sha256, g.loaded_at
        FROM ingest_log g JOIN latest_snapshot l USING (table_name, load_id)
        ORDER BY 1, 2, 3
        """,
        [list(VIEW_MONTHLY_INPUTS), list(window(month)), list(VIEW_SNAPSHOT_INPUTS)],
    ).fetchall()
    return [(f"{t}/{m}/{sha}", f"{t} {m}".strip(), file, at) for t, m, file, sha, at in rows]


def view_inputs(con: duckdb.DuckDBPyConnection, month: str) -> str:
    """The files the view of ``month`` would be built from now, as a stable text (sorted identities)."""
    return ",".join(sorted({identity for identity, *_ in _loads(con, month)}))


def _record(con: duckdb.DuckDBPyConnection, step: str, month: str) -> tuple[str, str] | None:
    if not table_exists(con, "step_log"):
        return None
    row = con.execute("SELECT build_id, inputs FROM step_log WHERE step = ? AND month = ?", [step, month]).fetchone()
    return (row[0], row[1]) if row else None


def view_build_id(con: duckdb.DuckDBPyConnection, month: str) -> str | None:
    rec = _record(con, "score", month)
    return rec[0] if rec else None


def require_fresh_view(con: duckdb.DuckDBPyConnection, month: str) -> str | None:
    """Refuse when the customer view of ``month`` predates a load it reads; returns its build id.

    A view with no record whose inputs were never loaded through ``ingest`` (a database put
    together by hand, as tests do) has nothing to be stale against: None, and no refusal.
    """
    rec = _record(con, "score", month)
    loads = _loads(con, month)
    if rec is None:
        if not loads:
            return None
        raise StateError(f"customer_view for {month} has no record of the loads it was built from "
                         f"(built by an older mktool, or by hand)",
                         hint=f"rebuild it with `mktool score --month {month}`")
    build_id, recorded = rec
    seen = set(recorded.split(",")) if recorded else set()
    newer = [(what, file, at) for identity, what, file, at in loads if identity not in seen]
    if newer:
        what, file, at = newer[0]
        more = f" (and {len(newer) - 1} more file{'s' if len(newer) > 2 else ''})" if len(newer) > 1 else ""
        raise StateError(
            f"customer_view for {month} is stale: {what} was ingested at {at} from {file}{more} "
            f"after the view was built",
            hint=f"rebuild it with `mktool score --month {month}` (then matrix, plan and export), "
                 f"or run the whole month with `mktool run --month {month}`",
        )
    return build_id


def require_built_on_view(con: duckdb.DuckDBPyConnection, step: str, table: str, month: str,
                          view_build: str | None) -> None:
    """Refuse when ``table`` (written by ``step``) for ``month`` was computed from another customer view.

    Only checked when the view itself has a build record (see :func:`require_fresh_view`).
    """
    if view_build is None:
        return
    rec = _record(con, step, month)
    if rec is None or rec[1] != view_build:
        raise StateError(
            f"table {table} for {month} was computed from an earlier customer_view than the current one",
            hint=f"re-run `mktool {step} --month {month}` (the view was rebuilt since), "
                 f"or run the whole month with `mktool run --month {month}`",
        )
