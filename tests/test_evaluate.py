"""`mktool evaluate churn` (issue 13 item 4) on a crafted month of 20 customers, worked by hand.

The database is written straight into DuckDB: a customer_view with the columns the evaluation
reads, and subscribers rows of M+1 (the only month of subscribers the evaluation reads).

M = 2026-10, M+1 = 2026-11. Customers 13800000001 … 20 (``c(n)``); 19 and 20 are closed in M
(scores 95 and 90, flagged: not in the base, so never counted however high their score).
The base of 18 in evaluation order (churn_score descending, NULL last, ties by msisdn):

    pos  no  score flag   cohort    M+1          churned
     1   04   80   true   under_6m  absent       yes
     2   07   80   true   6_12m     active       no    (04, 07, 09 tie at 80: msisdn order)
     3   09   80   true   over_12m  closed       yes
     4   12   65   true   over_12m  active       no
     5   01   50   true   under_6m  closed       yes
     6   15   45   true   6_12m     suspended    no    (suspended in M too: in the base)
     7   06   30   true   over_12m  active       no
     8   10   30   NULL   over_12m  absent       yes   (a NULL flag is not flagged)
     9   02   25   false  under_6m  active       no
    10   03   20   false  6_12m     active       no
    11   11   20   false  over_12m  absent       yes
    12   13   15   false  over_12m  active       no
    13   05   10   false  under_6m  active       no
    14   08   10   false  6_12m     active       no
    15   14    5   false  over_12m  active       no
    16   16    0   false  over_12m  active       no
    17   17    0   false  under_6m  absent       yes
    18   18  NULL  false  6_12m     active       no    (a NULL score is last)

Base 18, churned 6 (04 09 01 10 11 17), base_rate 6/18 = 0.333333.
Flag: 7 flagged (pos 1-7), 3 churned (04 09 01): precision 3/7 = 0.428571, recall 3/6 = 0.5,
lift 3·18 / (7·6) = 1.285714.
Top 5%: round(0.9) = 1 → {04}: 1 churned: precision 1, recall 1/6, lift 18/6 = 3.
Top 10%: round(1.8) = 2 → {04, 07}: 1 churned: precision 0.5, recall 1/6, lift 18/12 = 1.5.
(A tie-break by msisdn descending would take 09 first and move both.)
Deciles d = ⌈10p/18⌉: sizes 1,2,2,2,2,1,2,2,2,2 (p = 9 gives exactly 5: decile 5).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import fetch, write_table

from mktool.config import Settings
from mktool.database import Database
from mktool.errors import StateError
from mktool.evaluate import evaluate_churn, figures_query, next_month, queries

M, N = "2026-10", "2026-11"


def c(n: int) -> str:
    return f"138000000{n:02d}"


# (no, status in M, churn_score, churn_flag, tenure_cohort, status in M+1 or None when absent)
CUSTOMERS: list[tuple[int, str, int | None, bool | None, str, str | None]] = [
    (4, "active", 80, True, "under_6m", None),
    (7, "active", 80, True, "6_12m", "active"),
    (9, "active", 80, True, "over_12m", "closed"),
    (12, "active", 65, True, "over_12m", "active"),
    (1, "active", 50, True, "under_6m", "closed"),
    (15, "suspended", 45, True, "6_12m", "suspended"),
    (6, "active", 30, True, "over_12m", "active"),
    (10, "active", 30, None, "over_12m", None),
    (2, "active", 25, False, "under_6m", "active"),
    (3, "active", 20, False, "6_12m", "active"),
    (11, "active", 20, False, "over_12m", None),
    (13, "active", 15, False, "over_12m", "active"),
    (5, "active", 10, False, "under_6m", "active"),
    (8, "active", 10, False, "6_12m", "active"),
    (14, "active", 5, False, "over_12m", "active"),
    (16, "active", 0, False, "over_12m", "active"),
    (17, "active", 0, False, "under_6m", None),
    (18, "active", None, False, "6_12m", "active"),
    (19, "closed", 95, True, "over_12m", "closed"),
    (20, "closed", 90, True, "under_6m", None),
]


def make_db(path: Path, customers: list[tuple[Any, ...]] = CUSTOMERS, *, with_next: bool = True) -> Path:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE customer_view (msisdn VARCHAR, month VARCHAR, status VARCHAR, churn_score DOUBLE, "
                "churn_flag BOOLEAN, tenure_cohort VARCHAR)")
    con.executemany("INSERT INTO customer_view VALUES (?, ?, ?, ?, ?, ?)",
                    [(c(n), M, status, score, flag, cohort) for n, status, score, flag, cohort, _ in customers])
    # another month's view must not leak in
    con.execute("INSERT INTO customer_view VALUES (?, '2026-09', 'active', 99, true, 'over_12m')", [c(3)])
    con.execute("CREATE TABLE subscribers (msisdn VARCHAR, month VARCHAR, status VARCHAR)")
    con.executemany("INSERT INTO subscribers VALUES (?, ?, ?)", [(c(n), M, status) for n, status, *_ in customers])
    if with_next:
        con.executemany("INSERT INTO subscribers VALUES (?, ?, ?)",
                        [(c(n), N, after) for n, *_, after in customers if after is not None])
        con.execute("INSERT INTO subscribers VALUES ('13800000021', ?, 'active')", [N])  # a new joiner in M+1
    con.close()
    return path


def settings(db: Path) -> Settings:
    return Settings(db_path=db, memory_limit="1GB", threads=2)


def gains(*rows: tuple[int, int, int, int, float | None, float | None]) -> list[dict[str, Any]]:
    keys = ("decile", "customers", "churned", "cumulative_churned", "cumulative_recall", "lift")
    return [dict(zip(keys, r)) for r in rows]


def top(share: float, customers: int, churned: int, precision: float | None, recall: float | None,
        lift: float | None) -> dict[str, Any]:
    return {"share": share, "customers": customers, "churned": churned, "precision": precision, "recall": recall,
            "lift": lift}


def flag(flagged: int, churned: int, precision: float | None, recall: float | None,
         lift: float | None) -> dict[str, Any]:
    return {"flagged": flagged, "churned": churned, "precision": precision, "recall": recall, "lift": lift}


WHOLE = {
    "base": 18, "churned": 6, "base_rate": 0.333333,
    "flag": flag(7, 3, 0.428571, 0.5, 1.285714),
    "top": [top(0.05, 1, 1, 1.0, 0.166667, 3.0), top(0.1, 2, 1, 0.5, 0.166667, 1.5)],
    # cumulative (customers, churned) per decile: (1,1) (3,2) (5,3) (7,3) (9,4) (10,4) (12,5) (14,5) (16,5) (18,6)
    # lift = cum_churned · 18 / (cum_customers · 6)
    "gains": gains((1, 1, 1, 1, 0.166667, 3.0), (2, 2, 1, 2, 0.333333, 2.0), (3, 2, 1, 3, 0.5, 1.8),
                   (4, 2, 0, 3, 0.5, 1.285714), (5, 2, 1, 4, 0.666667, 1.333333), (6, 1, 0, 4, 0.666667, 1.2),
                   (7, 2, 1, 5, 0.833333, 1.25), (8, 2, 0, 5, 0.833333, 1.071429), (9, 2, 0, 5, 0.833333, 0.9375),
                   (10, 2, 1, 6, 1.0, 1.0)),
}
EXPECTED = {"month": M, **WHOLE}

BY_COHORT = {
    # 6_12m: 07 15 03 08 18, nobody churned: base_rate 0, every recall and lift has a 0 denominator.
    # Top 5% of 5: round(0.25) = 0 customers; top 10%: round(0.5) = 1 (half away from zero; banker's gives 0).
    # Deciles of 5: d = 2p, so 1, 3, 5, 7, 9 are empty.
    "6_12m": {
        "base": 5, "churned": 0, "base_rate": 0.0,
        "flag": flag(2, 0, 0.0, None, None),
        "top": [top(0.05, 0, 0, None, None, None), top(0.1, 1, 0, 0.0, None, None)],
        "gains": gains(*[(d, d % 2 == 0, 0, 0, None, None) for d in range(1, 11)]),
    },
    # over_12m: 09 12 06 10 11 13 14 16 (06 before 10 at 30: msisdn); churned 09 10 11: 3 of 8.
    # Flag 09 12 06: 1 churned: 1/3, 1/3, lift 8/9. Top 5%: round(0.4) = 0; 10%: round(0.8) = 1 → {09}: lift 8/3.
    # Deciles ⌈10p/8⌉ = 2,3,4,5,7,8,9,10 (1 and 6 empty); lift = cum_churned · 8 / (cum_customers · 3).
    "over_12m": {
        "base": 8, "churned": 3, "base_rate": 0.375,
        "flag": flag(3, 1, 0.333333, 0.333333, 0.888889),
        "top": [top(0.05, 0, 0, None, 0.0, None), top(0.1, 1, 1, 1.0, 0.333333, 2.666667)],
        "gains": gains((1, 0, 0, 0, 0.0, None), (2, 1, 1, 1, 0.333333, 2.666667), (3, 1, 0, 1, 0.333333, 1.333333),
                       (4, 1, 0, 1, 0.333333, 0.888889), (5, 1, 1, 2, 0.666667, 1.333333),
                       (6, 0, 0, 2, 0.666667, 1.333333), (7, 1, 1, 3, 1.0, 1.6), (8, 1, 0, 3, 1.0, 1.333333),
                       (9, 1, 0, 3, 1.0, 1.142857), (10, 1, 0, 3, 1.0, 1.0)),
    },
    # under_6m: 04 01 02 05 17; churned 04 01 17: 3 of 5 (0.6). Flag 04 01: precision 1, recall 2/3, lift 10/6.
    # Top 5%: 0 customers; 10%: round(0.5) = 1 → {04}. Deciles d = 2p; lift = cum_churned · 5 / (cum_customers · 3).
    "under_6m": {
        "base": 5, "churned": 3, "base_rate": 0.6,
        "flag": flag(2, 2, 1.0, 0.666667, 1.666667),
        "top": [top(0.05, 0, 0, None, 0.0, None), top(0.1, 1, 1, 1.0, 0.333333, 1.666667)],
        "gains": gains((1, 0, 0, 0, 0.0, None), (2, 1, 1, 1, 0.333333, 1.666667), (3, 0, 0, 1, 0.333333, 1.666667),
                       (4, 1, 1, 2, 0.666667, 1.666667), (5, 0, 0, 2, 0.666667, 1.666667),
                       (6, 1, 0, 2, 0.666667, 1.111111), (7, 0, 0, 2, 0.666667, 1.111111),
                       (8, 1, 0, 2, 0.666667, 0.833333), (9, 0, 0, 2, 0.666667, 0.833333), (10, 1, 1, 3, 1.0, 1.0)),
    },
}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "churn.duckdb")


def test_churn_document_of_the_crafted_base(db: Path) -> None:
    with Database(settings(db), write=True) as database:
        result = evaluate_churn(database, M)
    assert result.document == EXPECTED
    assert list(result.document) == ["month", "base", "churned", "base_rate", "flag", "top", "gains"]


def test_by_tenure_cohort_adds_each_cohort_with_its_own_order_and_base_rate(db: Path) -> None:
    with Database(settings(db), write=True) as database:
        result = evaluate_churn(database, M, by="tenure_cohort")
    assert result.document == {**EXPECTED, "by": BY_COHORT}
    assert list(result.document["by"]) == ["6_12m", "over_12m", "under_6m"]


def test_runs_are_stored_side_by_side_with_their_documents(db: Path) -> None:
    with Database(settings(db), write=True) as database:
        first = evaluate_churn(database, M)
        second = evaluate_churn(database, M, by="tenure_cohort")
    rows = fetch(db, "SELECT month, run_id, by_column, base, churned, base_rate, document, created_at "
                     "FROM churn_evaluation ORDER BY created_at, by_column NULLS FIRST")
    assert [(r[0], r[1], r[2], r[3], r[4], str(r[5])) for r in rows] == [
        (M, first.run_id, None, 18, 6, "0.333333"), (M, second.run_id, "tenure_cohort", 18, 6, "0.333333")]
    assert first.run_id != second.run_id
    assert json.loads(rows[0][6]) == EXPECTED and json.loads(rows[1][6])["by"] == BY_COHORT
    assert all(r[7] is not None for r in rows)


def test_missing_next_month_is_refused_naming_the_month_to_ingest(tmp_path: Path) -> None:
    db = make_db(tmp_path / "no_next.duckdb", with_next=False)
    with Database(settings(db), write=True) as database, pytest.raises(StateError) as err:
        evaluate_churn(database, M)
    text = err.value.render()
    assert "needs month 2026-11's subscribers" in text and "months loaded: 2026-10" in text
    assert "ingest subscribers_2026-11.parquet" in text
    assert not fetch(db, "SELECT 1 FROM information_schema.tables WHERE table_name = 'churn_evaluation'")


def test_cli_refuses_missing_next_month_with_exit_1(cli, tmp_path: Path) -> None:
    db = make_db(tmp_path / "no_next.duckdb", with_next=False)
    result = cli("evaluate", "churn", "--month", M, db_path=db)
    assert result.exit_code == 1
    assert "Error:" in result.output and "needs month 2026-11's subscribers" in result.output
    assert "Traceback" not in result.output


def test_missing_view_month_is_refused(db: Path) -> None:
    with Database(settings(db), write=True) as database, pytest.raises(StateError, match="customer_view has no rows "
                                                                                          "for month 2026-08"):
        evaluate_churn(database, "2026-08")


def test_cli_json_is_the_document(cli, db: Path) -> None:
    result = cli("evaluate", "churn", "--month", M, "--format", "json", "--by", "tenure_cohort", "--quiet",
                 db_path=db)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {**EXPECTED, "by": BY_COHORT}


def test_cli_csv_to_a_file(cli, db: Path, tmp_path: Path) -> None:
    target = tmp_path / "reports" / "churn.csv"
    result = cli("evaluate", "churn", "--month", M, "--format", "csv", "--out", str(target), db_path=db)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert len(rows) == 1 + 1 + 2 + 10  # base, flag, two top shares, ten deciles
    assert rows[0] == {"month": M, "by": "", "group": "", "section": "base", "share": "", "decile": "",
                       "customers": "18", "churned": "6", "cumulative_churned": "", "base_rate": "0.333333",
                       "precision": "", "recall": "", "cumulative_recall": "", "lift": ""}
    assert rows[1]["section"] == "flag" and (rows[1]["customers"], rows[1]["precision"], rows[1]["lift"]) == (
        "7", "0.428571", "1.285714")
    assert [(r["share"], r["customers"], r["lift"]) for r in rows[2:4]] == [("0.05", "1", "3.000000"),
                                                                            ("0.1", "2", "1.500000")]
    assert [(r["decile"], r["cumulative_churned"], r["cumulative_recall"]) for r in rows[4:6]] == [
        ("1", "1", "0.166667"), ("2", "2", "0.333333")]
    assert not list(target.parent.glob(".*partial"))


def test_cli_csv_by_cohort_marks_each_group(cli, db: Path) -> None:
    result = cli("evaluate", "churn", "--month", M, "--format", "csv", "--by", "tenure_cohort", "--quiet", db_path=db)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 4 * 14
    assert {(r["by"], r["group"]) for r in rows} == {("", ""), ("tenure_cohort", "6_12m"),
                                                    ("tenure_cohort", "over_12m"), ("tenure_cohort", "under_6m")}
    empty = next(r for r in rows if r["group"] == "6_12m" and r["section"] == "top" and r["share"] == "0.05")
    assert (empty["customers"], empty["precision"], empty["recall"], empty["lift"]) == ("0", "", "", "")


def test_cli_table(cli, db: Path) -> None:
    result = cli("evaluate", "churn", "--month", M, db_path=db)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Churn model 2026-10 against 2026-11" in out and "Cumulative gains by decile" in out
    assert "0.333333" in out and "1.285714" in out and "top 5%" in out and "top 10%" in out
    assert "stored as run" in result.stderr


def test_cli_usage_errors(cli, db: Path) -> None:
    assert cli("evaluate", "campaigns", "--month", M, db_path=db).exit_code == 2
    assert cli("evaluate", "churn", "--month", M, "--by", "segment", db_path=db).exit_code == 2
    assert cli("evaluate", "churn", "--month", M, "--format", "parquet", db_path=db).exit_code == 2


def test_next_month_wraps_the_year() -> None:
    assert next_month("2026-12") == "2027-01" and next_month("2026-10") == "2026-11"


def test_half_away_from_zero_for_the_top_share(tmp_path: Path) -> None:
    """5% of a base of 10 is 0.5 customers: 1 (half away from zero), where banker's rounding gives 0.
    Scores 10 … 1: 01 has 10; 01 churned, the rest stay."""
    customers = [(n, "active", 11 - n, False, "over_12m", None if n == 1 else "active") for n in range(1, 11)]
    db = make_db(tmp_path / "ten.duckdb", customers)
    with Database(settings(db), write=True) as database:
        doc = evaluate_churn(database, M).document
    assert doc["top"] == [top(0.05, 1, 1, 1.0, 1.0, 10.0), top(0.1, 1, 1, 1.0, 1.0, 10.0)]
    assert [g["customers"] for g in doc["gains"]] == [1] * 10  # base 10: one position per decile
    assert doc["flag"] == flag(0, 0, None, 0.0, None)


def test_queries_bind_the_months() -> None:
    q = figures_query(M, "tenure_cohort")
    assert q.params == {"month": M, "next_month": N}
    assert "$month" in q.sql and "$next_month" in q.sql and M not in q.sql.split("\n", 1)[1]
    assert set(queries(M)) == {"churn", "churn:by:tenure_cohort", "churn_store"}


def test_view_without_the_by_column_is_refused(tmp_path: Path) -> None:
    db = make_db(tmp_path / "old.duckdb")
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE customer_view DROP COLUMN tenure_cohort")
    con.close()
    with Database(settings(db), write=True) as database, pytest.raises(StateError) as err:
        evaluate_churn(database, M, by="tenure_cohort")
    assert "customer_view lacks column tenure_cohort" in err.value.render()


def test_a_base_of_closed_customers_only_is_refused(tmp_path: Path) -> None:
    db = make_db(tmp_path / "closed.duckdb",
                 [(1, "closed", 50, True, "over_12m", None), (2, "closed", 9, False, "over_12m", "closed")])
    with Database(settings(db), write=True) as database, pytest.raises(StateError, match="no customer whose status"):
        evaluate_churn(database, M)


def test_end_to_end_on_a_scored_view_with_next_month_ingested_afterwards(cli, tmp_path: Path) -> None:
    """ingest M → score M → ingest M+1's subscribers alone → evaluate: the real view's columns, and the later
    load of M+1 does not make M's view stale. A suspended prepaid customer with a low balance scores
    20 + 15 = 35 (flagged) and leaves; the two others score 0 and one of them is closed in M+1."""
    a, b, s = "13900000001", "13900000002", "13900000003"
    months = ["2026-08", "2026-09", M]
    subs = [{"msisdn": x, "month": m} for x in (a, b) for m in months]
    subs += [{"msisdn": s, "month": m, "payment": "prepaid", "balance": 5.0,
              "status": "suspended" if m == M else "active"} for m in months]
    extracts = tmp_path / "extracts"
    write_table(extracts / "subscribers.parquet", "subscribers", subs)
    write_table(extracts / "usage.parquet", "usage", [{"msisdn": x, "month": m} for x in (a, b, s) for m in months])
    write_table(extracts / "billing.parquet", "billing", [{"msisdn": x, "month": m} for x in (a, b, s) for m in months])
    write_table(extracts / "plans.parquet", "plans", [{"plan_id": "ZX128"}])
    assert cli("ingest", str(extracts)).exit_code == 0
    assert cli("score", "--month", M).exit_code == 0
    refused = cli("evaluate", "churn", "--month", M)
    assert refused.exit_code == 1 and "needs month 2026-11's subscribers" in refused.output
    nxt = write_table(tmp_path / "next" / "subscribers_2026-11.parquet", "subscribers",
                      [{"msisdn": a, "month": N}, {"msisdn": b, "month": N, "status": "closed"}])
    assert cli("ingest", str(nxt)).exit_code == 0
    result = cli("evaluate", "churn", "--month", M, "--format", "json", "--quiet")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    # order: s (35), a (0), b (0); churned s (absent) and b (closed): 2 of 3
    assert (doc["base"], doc["churned"], doc["base_rate"]) == (3, 2, 0.666667)
    assert doc["flag"] == flag(1, 1, 1.0, 0.5, 1.5)
    assert doc["top"] == [top(0.05, 0, 0, None, 0.0, None), top(0.1, 0, 0, None, 0.0, None)]
    assert [(g["customers"], g["cumulative_churned"]) for g in doc["gains"]] == [
        (0, 0), (0, 0), (0, 0), (1, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (1, 2)]  # ⌈10p/3⌉ = 4, 7, 10
