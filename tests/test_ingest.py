"""Ingest: the data contract, refusals that name file/table/column/row, and all-or-nothing loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from conftest import M, fetch, write_table

from mktool import export, freshness


def good_extracts(folder: Path) -> Path:
    write_table(folder / f"subscribers_{M}.parquet", "subscribers",
                [{"msisdn": "13800000001", "month": M}, {"msisdn": "13800000002", "month": M, "status": "suspended"}])
    write_table(folder / f"usage_{M}.parquet", "usage",
                [{"msisdn": "13800000001", "month": M}, {"msisdn": "13800000002", "month": M}])
    write_table(folder / f"billing_{M}.parquet", "billing",
                [{"msisdn": "13800000001", "month": M}, {"msisdn": "13800000002", "month": M}])
    write_table(folder / "plans.parquet", "plans",
                [{"plan_id": "ZX128"}, {"plan_id": "ZX158", "monthly_rental": 158.0}])
    return folder


def snapshot(db: Path) -> list[tuple]:
    """Everything a refusal must leave untouched: every table's row count and the load log."""
    if not db.exists():
        return []
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
        return [(t, con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables]
    finally:
        con.close()


def test_ingest_loads_and_status_reports(cli, tmp_path):
    result = cli("ingest", str(good_extracts(tmp_path / "x")))
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(cli.db), read_only=True)
    assert con.execute("SELECT count(*) FROM subscribers").fetchone() == (2,)
    assert con.execute("SELECT typeof(msisdn), typeof(join_date), typeof(vnet) FROM subscribers LIMIT 1"
                       ).fetchone() == ("VARCHAR", "DATE", "BOOLEAN")
    assert con.execute("SELECT count(*), count(DISTINCT sha256), min(rows) FROM ingest_log").fetchone() == (4, 4, 2)
    con.close()
    status = cli("status", "--format", "json")
    assert status.exit_code == 0
    assert '"table": "subscribers"' in status.stdout and '"month": "2026-10"' in status.stdout


def test_reloading_a_month_replaces_it(cli, tmp_path):
    folder = good_extracts(tmp_path / "x")
    assert cli("ingest", str(folder)).exit_code == 0
    write_table(folder / f"subscribers_{M}.parquet", "subscribers", [{"msisdn": "13800000009", "month": M}])
    write_table(tmp_path / "y" / "subscribers_2026-09.parquet", "subscribers",
                [{"msisdn": "13800000001", "month": "2026-09"}])
    assert cli("ingest", str(folder / f"subscribers_{M}.parquet"), str(tmp_path / "y")).exit_code == 0
    con = duckdb.connect(str(cli.db), read_only=True)
    assert con.execute("SELECT month, list(msisdn ORDER BY msisdn) FROM subscribers GROUP BY 1 ORDER BY 1"
                       ).fetchall() == [("2026-09", ["13800000001"]), ("2026-10", ["13800000009"])]
    assert con.execute("SELECT count(*) FROM ingest_log WHERE table_name = 'subscribers'").fetchone() == (3,)


def test_extra_columns_are_kept_and_lossless_casts_accepted(cli, tmp_path):
    path = write_table(tmp_path / "billing.parquet", "billing",
                       [{"msisdn": "13800000001", "month": M, "total_fee": "12.5", "region_code": "ZJ"}],
                       types={"total_fee": pa.string()})
    write_table(tmp_path / "usage.parquet", "usage", [{"msisdn": "13800000001", "month": M, "sms_count": 3.0}],
                types={"sms_count": pa.float64()})
    assert cli("ingest", str(path), str(tmp_path / "usage.parquet")).exit_code == 0
    con = duckdb.connect(str(cli.db), read_only=True)
    assert con.execute("SELECT total_fee, region_code FROM billing").fetchone() == (12.5, "ZJ")
    assert con.execute("SELECT sms_count, typeof(sms_count) FROM usage").fetchone() == (3, "BIGINT")


@pytest.mark.parametrize(
    "case, make, expected",
    [
        ("missing column",
         lambda d: write_table(d / "billing.parquet", "billing", [{"msisdn": "13800000001", "month": M}],
                               drop=("total_fee",)),
         ["billing.parquet: table billing: missing required column total_fee"]),
        ("duplicate key",
         lambda d: write_table(d / "usage_2026-10.parquet", "usage",
                               [{"msisdn": "13800000001", "month": M}, {"msisdn": "13800000001", "month": M}]),
         ["usage_2026-10.parquet: table usage: column msisdn, month: duplicate key (msisdn, month) = "
          "(13800000001, 2026-10) appears 2 times",
          "example row: msisdn=13800000001, month=2026-10"]),
        ("bad month",
         lambda d: write_table(d / "usage.parquet", "usage", [{"msisdn": "13800000001", "month": "2026/10"}]),
         ["usage.parquet: table usage: column month: month is not in YYYY-MM form (1 row; e.g. '2026/10')",
          "example row: msisdn=13800000001, month=2026/10"]),
        ("non-numeric",
         lambda d: write_table(d / "billing.parquet", "billing",
                               [{"msisdn": "13800000001", "month": M, "total_fee": "12.5"},
                                {"msisdn": "13800000002", "month": M, "total_fee": "abc"}],
                               types={"total_fee": pa.string()}),
         ["billing.parquet: table billing: column total_fee: value cannot be read as DECIMAL(18,2) without loss "
          "(1 row; e.g. 'abc')",
          "example row: msisdn=13800000002"]),
        ("fractional count",
         lambda d: write_table(d / "usage.parquet", "usage", [{"msisdn": "13800000001", "month": M, "sms_count": 3.5}],
                               types={"sms_count": pa.float64()}),
         ["column sms_count: value cannot be read as BIGINT without loss (1 row; e.g. 3.5)"]),
        ("integer msisdn",
         lambda d: write_table(d / "dnd.parquet", "dnd", [{"msisdn": 13800000001, "channel": "*"}],
                               types={"msisdn": pa.int64()}),
         ["dnd.parquet: table dnd: column msisdn: msisdn must be a string column, got BIGINT"]),
        ("corrupt file",
         lambda d: (d / "plans.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1"),
         ["plans.parquet: table plans: not a readable Parquet file"]),
        ("truncated file",
         lambda d: (d / "plans.parquet").write_bytes(
             write_table(d / "p0" / "plans.parquet", "plans", [{"plan_id": "A"}]).read_bytes()[:-20]),
         ["plans.parquet: table plans: not a readable Parquet file"]),
        ("zero bytes",
         lambda d: (d / "plans.parquet").write_bytes(b""),
         ["plans.parquet: table plans: empty file (0 bytes)"]),
        ("no rows",
         lambda d: write_table(d / "plans.parquet", "plans", []),
         ["plans.parquet: table plans: file has no rows"]),
        ("unknown file name",
         lambda d: write_table(d / "customers_2026-10.parquet", "subscribers", [{"msisdn": "13800000001", "month": M}]),
         ["customers_2026-10.parquet: cannot tell which table this file is for", "known tables: subscribers, usage"]),
        ("null key",
         lambda d: write_table(d / "usage.parquet", "usage", [{"msisdn": None, "month": M}]),
         ["column msisdn: key column is NULL or empty"]),
    ],
)
def test_bad_input_is_refused_clearly_and_changes_nothing(cli, tmp_path, case, make, expected):
    assert cli("ingest", str(good_extracts(tmp_path / "good"))).exit_code == 0
    before = snapshot(cli.db)
    bad = tmp_path / "bad"
    bad.mkdir()
    make(bad)
    target = [p for p in sorted(bad.glob("*.parquet"))]
    # A good file loaded together with the bad one must not land either (all or nothing).
    good_too = write_table(tmp_path / "more" / "subscribers_2026-11.parquet", "subscribers",
                           [{"msisdn": "13800000001", "month": "2026-11"}])
    result = cli("ingest", str(good_too), *map(str, target))
    assert result.exit_code == 1, result.output
    err = result.stderr
    assert err.startswith("Error: ")
    for text in expected:
        assert text in err, (case, err)
    assert "Traceback" not in err
    assert snapshot(cli.db) == before


def test_verbose_shows_the_traceback(cli, tmp_path):
    (tmp_path / "plans.parquet").write_bytes(b"")
    result = cli("ingest", str(tmp_path / "plans.parquet"), "--verbose")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr


def test_duplicate_across_files_of_one_call_is_refused(cli, tmp_path):
    a = write_table(tmp_path / "usage_a.parquet", "usage", [{"msisdn": "13800000001", "month": M}])
    b = write_table(tmp_path / "usage_b.parquet", "usage", [{"msisdn": "13800000001", "month": M}])
    result = cli("ingest", str(a), str(b))
    assert result.exit_code == 1
    assert "appears in more than one of the files loaded together" in result.stderr
    assert not cli.db.exists()  # a refused first ingest leaves no database behind


def test_contact_history_reload_updates_by_key(cli, tmp_path):
    row = {"msisdn": "13800000001", "contact_date": __import__("datetime").date(2026, 10, 3), "channel": "sms",
           "policy_id": "P1"}
    assert cli("ingest", str(write_table(tmp_path / "a" / "contact_history.parquet", "contact_history",
                                         [row]))).exit_code == 0
    assert cli("ingest", str(write_table(tmp_path / "b" / "contact_history.parquet", "contact_history",
                                         [{**row, "outcome": "rejected"}]))).exit_code == 0
    con = duckdb.connect(str(cli.db), read_only=True)
    assert con.execute("SELECT outcome FROM contact_history").fetchall() == [("rejected",)]


def test_real_subprocess_run(tmp_path):
    folder = good_extracts(tmp_path / "x")
    env = {**os.environ, "MKTOOL_DB": str(tmp_path / "sub.duckdb"), "NO_COLOR": "1"}
    ok = subprocess.run([sys.executable, "-m", "mktool", "ingest", str(folder), "--quiet"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "" and ok.stderr == ""
    bad = subprocess.run([sys.executable, "-m", "mktool", "ingest", str(tmp_path / "nope")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.startswith("Error: ") and "no such file or folder" in bad.stderr
    assert "\x1b[" not in bad.stderr  # NO_COLOR
    version = subprocess.run([sys.executable, "-m", "mktool", "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("mktool ")


def test_a_large_load_is_readable_on_the_same_connection(tmp_path):
    """Regression: DuckDB 2.0.0 hid rows of a table created and filled (> 1 row group) in one
    transaction from grouped reads on the same connection, so `mktool run` saw no subscribers."""
    from mktool.config import Settings
    from mktool.database import Database
    from mktool.ingest import ingest

    path = tmp_path / "subscribers_2026-10.parquet"
    duckdb.execute(f"""COPY (SELECT '138' || lpad(CAST(i AS VARCHAR), 8, '0') AS msisdn, '2026-10' AS month,
        'HZ' AS city, 'ZX128' AS plan_id, DATE '2020-01-01' AS join_date, 'active' AS status, 'postpaid' AS payment,
        false AS vnet, 0.0 AS balance FROM range(200000) t(i)) TO '{path}' (FORMAT parquet)""")
    with Database(Settings.from_options(db=tmp_path / "big.duckdb"), write=True) as db:
        ingest(db, [path])
        assert db.months("subscribers") == ["2026-10"]
        assert db.c.execute("SELECT month, count(*) FROM subscribers GROUP BY 1").fetchall() == [("2026-10", 200000)]


def _big_usage(path: Path, month: str, first: int, rows: int, *, repeat_first_at_end: bool = False) -> Path:
    """A usage extract of ``rows`` customers (several DuckDB row groups), optionally with the
    first key repeated as the last row."""
    extra = f"UNION ALL SELECT '138' || lpad(CAST({first} AS VARCHAR), 8, '0'), '{month}', 1.0, 1.0, 0.0, 0.0, 0.0, " \
            "NULL, 0, 1.0, 1, 1" if repeat_first_at_end else ""
    duckdb.execute(f"""COPY (SELECT '138' || lpad(CAST(i AS VARCHAR), 8, '0') AS msisdn, '{month}' AS month,
        1.0 AS voice_out_min, 1.0 AS voice_local_min, 0.0 AS voice_ld_out_min, 0.0 AS voice_ld_in_min,
        0.0 AS voice_roam_min, CAST(NULL AS VARCHAR) AS ld_top_province, 0 AS sms_count, 1.0 AS data_mb,
        1 AS contacts, 1 AS contacts_in_net FROM range({first}, {first + rows}) t(i) {extra})
        TO '{path}' (FORMAT parquet)""")
    return path


def test_a_duplicate_deep_in_a_large_file_is_refused(cli, tmp_path):
    """Regression: the key check used to read the table inside the load transaction, where
    DuckDB 2.0.0 returned no rows once a file spanned several row groups: duplicates passed."""
    big = _big_usage(tmp_path / f"usage_{M}.parquet", M, 0, 300_000, repeat_first_at_end=True)
    before = snapshot(cli.db)
    result = cli("ingest", str(big))
    assert result.exit_code == 1, result.stderr
    assert "duplicate key (msisdn, month) = (13800000000, 2026-10) appears 2 times" in result.stderr
    assert f"usage_{M}.parquet" in result.stderr
    assert snapshot(cli.db) == before


def test_a_duplicate_across_large_files_is_refused(cli, tmp_path):
    a = _big_usage(tmp_path / "usage_a.parquet", M, 0, 200_000)
    b = _big_usage(tmp_path / "usage_b.parquet", M, 199_999, 200_000)  # shares one customer with a
    prior = _big_usage(tmp_path / "usage_2026-09.parquet", "2026-09", 0, 200_000)
    assert cli("ingest", str(prior)).exit_code == 0
    result = cli("ingest", str(a), str(b))
    assert result.exit_code == 1, result.stderr
    assert "duplicate key (msisdn, month) = (13800199999, 2026-10)" in result.stderr
    assert "appears in more than one of the files loaded together" in result.stderr
    con = duckdb.connect(str(cli.db), read_only=True)
    assert con.execute("SELECT month, count(*) FROM usage GROUP BY 1").fetchall() == [("2026-09", 200_000)]


def test_the_cheap_blank_key_check_matches_trim_exactly():
    """The blank-key condition's prefilter must never skip a value that trim() empties."""
    from mktool.contract import WHITESPACE
    from mktool.ingest import WS, _blank_condition

    fast = _blank_condition("k", "VARCHAR")
    diff = duckdb.execute(f"""
        WITH chars AS (SELECT chr(CAST(i AS INTEGER)) AS ch FROM range(1, 196608) t(i)
                       WHERE i NOT BETWEEN 55296 AND 57343),
        vals AS (SELECT ch AS k FROM chars UNION ALL SELECT ch || ch FROM chars UNION ALL SELECT ' ' || ch FROM chars
                 UNION ALL SELECT ch || ' ' FROM chars UNION ALL SELECT '' UNION ALL SELECT NULL
                 UNION ALL SELECT ? UNION ALL SELECT ? || '1')
        SELECT count(*), count(*) FILTER (WHERE ({fast}) IS DISTINCT FROM (k IS NULL OR trim(k, {WS}) = '')),
               count(*) FILTER (WHERE k IS NOT NULL AND trim(k, {WS}) = '') FROM vals""",
                          [WHITESPACE, WHITESPACE]).fetchone()
    assert diff[0] > 700_000 and diff[1] == 0
    # every whitespace character of the contract, alone and all together, is blank; '1' is not
    blank = duckdb.execute(f"SELECT list({fast}) FROM (SELECT unnest(?) AS k)",
                           [[*WHITESPACE, WHITESPACE, WHITESPACE + "1", "\u3000a\u3000"]]).fetchone()[0]
    assert blank == [True] * (len(WHITESPACE) + 1) + [False, False]


@pytest.mark.parametrize(("month", "problem"), [
    ("2026-10\n1", "month is not in YYYY-MM form"),
    ("\u0662\u0660\u0662\u0666-10", "month is not in YYYY-MM form"),  # Arabic-Indic digits
    ("2026-1O", "month is not in YYYY-MM form"),  # letter O
    ("\t", "key column is NULL or empty"),  # trimmed: tabs are whitespace
    ("  ", "key column is NULL or empty"),
])
def test_months_must_be_ascii_yyyy_mm_exactly(cli, tmp_path, month, problem):
    """Months are trimmed ('2026-10\\n' is 2026-10, see test_ingest_contract), then must be YYYY-MM."""
    path = write_table(tmp_path / "usage.parquet", "usage",
                       [{"msisdn": "13800000001", "month": M}, {"msisdn": "13800000002", "month": month}])
    result = cli("ingest", str(path))
    assert result.exit_code == 1, result.stderr
    assert f"column month: {problem}" in result.stderr
    assert "13800000002" in result.stderr  # the example row
    assert not cli.db.exists()


def test_month_option_is_ascii_yyyy_mm_exactly(cli):
    assert cli("score", "--month", "2026-10\n").exit_code != 0


def test_responses_in_a_later_file_of_the_same_call_update_the_contacts(cli, tmp_path):
    row = {"msisdn": "13800000001", "contact_date": __import__("datetime").date(2026, 10, 3), "channel": "sms",
           "policy_id": "P1", "outcome": "sent"}
    a = write_table(tmp_path / "x" / "contact_history_a_sent.parquet", "contact_history", [row])
    b = write_table(tmp_path / "x" / "contact_history_b_responses.parquet", "contact_history",
                    [{**row, "outcome": "accepted"}])
    result = cli("ingest", str(tmp_path / "x"))
    assert result.exit_code == 0, result.stderr
    con = duckdb.connect(str(cli.db), read_only=True)
    assert con.execute("SELECT outcome FROM contact_history").fetchall() == [("accepted",)]
    assert a.exists() and b.exists()


def test_a_duplicate_inside_one_upsert_file_is_refused(cli, tmp_path):
    row = {"msisdn": "13800000001", "contact_date": __import__("datetime").date(2026, 10, 3), "channel": "sms",
           "policy_id": "P1", "outcome": "sent"}
    a = write_table(tmp_path / "contact_history_a.parquet", "contact_history", [row, {**row, "outcome": "accepted"}])
    b = write_table(tmp_path / "contact_history_b.parquet", "contact_history", [{**row, "channel": "app"}])
    result = cli("ingest", str(a), str(b))
    assert result.exit_code == 1
    assert "contact_history_a.parquet" in result.stderr and "appears 2 times" in result.stderr


def test_upsert_order_is_by_file_name_and_a_helper_column_name_is_free(cli, tmp_path):
    row = {"msisdn": "13800000001", "contact_date": __import__("datetime").date(2026, 10, 3), "channel": "sms",
           "policy_id": "P1", "outcome": "sent", "_mk_file_no": 7}
    b = write_table(tmp_path / "contact_history_b.parquet", "contact_history", [{**row, "outcome": "accepted"}])
    a = write_table(tmp_path / "contact_history_a.parquet", "contact_history", [row])
    result = cli("ingest", str(b), str(a))  # given in reverse: b still wins, being later by name
    assert result.exit_code == 0, result.stderr
    con = duckdb.connect(str(cli.db), read_only=True)
    assert con.execute("SELECT outcome, _mk_file_no FROM contact_history").fetchall() == [("accepted", 7)]


def test_keys_equal_after_the_lossless_cast_are_named_as_a_duplicate_of_the_file(cli, tmp_path):
    rows = [{"msisdn": "13800000001", "contact_date": "2026-10-03", "channel": "sms", "policy_id": "P1",
             "outcome": "sent"},
            {"msisdn": "13800000001", "contact_date": "2026-10-3", "channel": "sms", "policy_id": "P1",
             "outcome": "sent"}]
    path = write_table(tmp_path / "contact_history.parquet", "contact_history", rows,
                       types={"contact_date": pa.string()})
    result = cli("ingest", str(path))
    assert result.exit_code == 1
    assert "contact_history.parquet" in result.stderr and "appears 2 times" in result.stderr
    assert "more than one of the files" not in result.stderr


# -- ingest_log's load order: an explicit seq, never DuckDB's rowid --------------------------------------
def _subscribers(folder: Path, msisdn: str) -> Path:
    return write_table(folder / f"subscribers_{M}.parquet", "subscribers", [{"msisdn": msisdn, "month": M}])


def test_ingest_log_numbers_every_file_in_load_order(cli, tmp_path):
    assert cli("ingest", str(good_extracts(tmp_path / "x"))).exit_code == 0  # 4 files in name order
    assert cli("ingest", str(_subscribers(tmp_path / "y", "13800000009"))).exit_code == 0
    rows = fetch(cli.db, "SELECT seq, table_name FROM ingest_log ORDER BY seq")
    assert rows == [(1, "billing"), (2, "plans"), (3, "subscribers"), (4, "usage"), (5, "subscribers")]


def test_old_ingest_log_is_read_in_rowid_order_and_numbered_on_the_next_load(cli, tmp_path):
    """A database from before seq: readers order by rowid; the next ingest adds seq in rowid order, once."""
    first, second = _subscribers(tmp_path / "a", "13800000001"), _subscribers(tmp_path / "b", "13800000002")
    assert cli("ingest", str(first)).exit_code == 0
    assert cli("ingest", str(second)).exit_code == 0
    con = duckdb.connect(str(cli.db))
    # the old shape, with both loads in the same second: only the append order tells them apart
    con.execute("ALTER TABLE ingest_log DROP COLUMN seq")
    con.execute("UPDATE ingest_log SET loaded_at = TIMESTAMP '2026-11-01 08:00:00'")
    sha_second = con.execute("SELECT sha256 FROM ingest_log WHERE file = ?", [str(second.resolve())]).fetchone()[0]
    con.close()
    con = duckdb.connect(str(cli.db), read_only=True)
    assert freshness.view_inputs(con, M) == f"subscribers/{M}/{sha_second}"
    assert [r[1] for r in export._live_loads(con)] == [str(second.resolve())]
    con.close()
    assert "seq" not in [r[0] for r in fetch(cli.db, "DESCRIBE ingest_log")]  # readers change nothing
    third = write_table(tmp_path / "c" / "plans.parquet", "plans", [{"plan_id": "ZX128"}])
    assert cli("ingest", str(third)).exit_code == 0
    assert fetch(cli.db, "SELECT seq, file FROM ingest_log ORDER BY rowid") == [
        (1, str(first.resolve())), (2, str(second.resolve())), (3, str(third.resolve()))]
    con = duckdb.connect(str(cli.db), read_only=True)
    plans_sha = con.execute("SELECT sha256 FROM ingest_log WHERE seq = 3").fetchone()[0]
    assert freshness.view_inputs(con, M) == f"plans//{plans_sha},subscribers/{M}/{sha_second}"
    con.close()


def test_a_refused_load_leaves_an_old_ingest_log_unnumbered(cli, tmp_path):
    assert cli("ingest", str(_subscribers(tmp_path / "a", "13800000001"))).exit_code == 0
    con = duckdb.connect(str(cli.db))
    con.execute("ALTER TABLE ingest_log DROP COLUMN seq")
    con.close()
    # a duplicate key is refused inside the load transaction, after ingest_log was given seq
    bad = write_table(tmp_path / "b" / f"subscribers_{M}.parquet", "subscribers",
                      [{"msisdn": "13800000002", "month": M}, {"msisdn": "13800000002", "month": M}])
    result = cli("ingest", str(bad))
    assert result.exit_code == 1 and "duplicate key" in result.output
    assert "seq" not in [r[0] for r in fetch(cli.db, "DESCRIBE ingest_log")]
