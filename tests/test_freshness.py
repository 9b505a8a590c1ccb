"""No step runs on a stale customer view (issue 10 §7): what each derived table was built from.

The fixture month is run once per test; a later ingest of a window month (a changed file)
makes matrix, plan, export and explain refuse with the command to re-run, and the database
and output folder stay as they were. Re-ingesting the very same file, a month outside the
window, or responses (contact_history) do not.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES, MATRICES, M

from mktool.cli import app


@pytest.fixture
def month_run(runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MKTOOL_MATRICES", str(MATRICES))
    db = tmp_path / "mk.duckdb"
    out = tmp_path / "out"

    def mk(*args: str):
        return runner.invoke(app, [*args, "--db", str(db)])

    done = mk("run", "--quiet", "--month", M, "--ingest", str(FIXTURES), "--date", "2026-11-01", "--out", str(out))
    assert done.exit_code == 0, done.output
    return mk, db, out, tmp_path


def _changed_copy(src: Path, target: Path) -> Path:
    """The same extract with one fee moved by a fen: a different file for the same month."""
    table = pq.read_table(src)
    fees = table.column("total_fee").to_pylist()
    fees[0] = round(fees[0] + 0.01, 2)
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.set_column(table.schema.get_field_index("total_fee"), "total_fee",
                                    pa.array(fees, type=table.schema.field("total_fee").type)),
                   target)
    return target


def _state(db: Path, out: Path) -> tuple[list, list, dict[str, bytes]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        recs = con.execute("SELECT * FROM recommendations ORDER BY ALL").fetchall()
        plans = con.execute("SELECT * FROM plan_recommendations ORDER BY ALL").fetchall()
    finally:
        con.close()
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    return recs, plans, files


def test_a_newer_ingest_of_a_window_month_stops_every_step_that_reads_the_view(month_run) -> None:
    mk, db, out, tmp = month_run
    changed = _changed_copy(FIXTURES / "billing_2026-09.parquet", tmp / "new" / "billing_2026-09.parquet")
    assert mk("ingest", "--quiet", str(changed)).exit_code == 0
    before = _state(db, out)
    for args in (["matrix", "--month", M], ["plan", "--month", M],
                 ["export", "--month", M, "--date", "2026-11-01", "--out", str(out)],
                 ["explain", "13800000000", "--month", M]):
        result = mk(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "customer_view for 2026-10 is stale: billing 2026-09 was ingested at" in result.stderr, result.stderr
        assert "billing_2026-09.parquet" in result.stderr
        assert "mktool score --month 2026-10" in result.stderr
        assert "Traceback" not in result.output
    assert _state(db, out) == before  # nothing written, no list touched
    # score rebuilds the view; export still refuses the recommendations of the old view
    assert mk("score", "--quiet", "--month", M).exit_code == 0
    refused = mk("export", "--month", M, "--date", "2026-11-01", "--out", str(out))
    assert refused.exit_code == 1
    assert "table recommendations for 2026-10 was computed from an earlier customer_view" in refused.stderr
    assert "mktool matrix --month 2026-10" in refused.stderr
    assert mk("matrix", "--quiet", "--month", M).exit_code == 0
    refused = mk("export", "--month", M, "--date", "2026-11-01", "--out", str(out))
    assert refused.exit_code == 1 and "table plan_recommendations for 2026-10" in refused.stderr
    assert mk("plan", "--quiet", "--month", M).exit_code == 0
    assert mk("export", "--quiet", "--month", M, "--date", "2026-11-01", "--out", str(out)).exit_code == 0


def test_a_new_plan_catalogue_makes_the_view_stale(month_run) -> None:
    mk, db, out, tmp = month_run
    table = pq.read_table(FIXTURES / "plans.parquet")
    target = tmp / "new" / "plans.parquet"
    target.parent.mkdir()
    pq.write_table(table.slice(0, table.num_rows - 1), target)  # one plan withdrawn
    assert mk("ingest", "--quiet", str(target)).exit_code == 0
    result = mk("plan", "--month", M)
    assert result.exit_code == 1 and "customer_view for 2026-10 is stale: plans was ingested" in result.stderr


def test_loads_that_do_not_change_the_view_keep_it_valid(month_run) -> None:
    mk, db, out, tmp = month_run
    same = tmp / "same" / "billing_2026-10.parquet"
    same.parent.mkdir()
    shutil.copy(FIXTURES / "billing_2026-10.parquet", same)  # the very same bytes again
    assert mk("ingest", "--quiet", str(same)).exit_code == 0
    assert mk("ingest", "--quiet", str(FIXTURES / "contact_history.parquet")).exit_code == 0  # responses
    # a month outside 2026-10's window (2026-08..2026-10)
    later = _changed_copy(FIXTURES / "billing_2026-10.parquet", tmp / "later" / "billing_2026-11.parquet")
    t = pq.read_table(later)
    pq.write_table(t.set_column(t.schema.get_field_index("month"), "month",
                                pa.array(["2026-11"] * t.num_rows)), later)
    assert mk("ingest", "--quiet", str(later)).exit_code == 0
    for args in (["matrix", "--quiet", "--month", M], ["plan", "--quiet", "--month", M],
                 ["export", "--quiet", "--month", M, "--date", "2026-11-01", "--out", str(out)]):
        result = mk(*args)
        assert result.exit_code == 0, (args, result.output)


def test_matrix_only_refuses_to_keep_rows_of_an_older_view(month_run) -> None:
    mk, db, out, tmp = month_run
    changed = _changed_copy(FIXTURES / "billing_2026-10.parquet", tmp / "new" / "billing_2026-10.parquet")
    assert mk("ingest", "--quiet", str(changed)).exit_code == 0
    assert mk("score", "--quiet", "--month", M).exit_code == 0
    result = mk("matrix", "--month", M, "--only", "retention")
    assert result.exit_code == 1
    assert "evaluating only some matrices would keep the other matrices' rows from it" in result.stderr
    assert mk("matrix", "--quiet", "--month", M).exit_code == 0
    assert mk("matrix", "--quiet", "--month", M, "--only", "retention").exit_code == 0
