"""`mktool profile` (issue 15 item 2) on a crafted month of 8 customers, worked by hand.

The database is written straight into DuckDB (as tests/test_evaluate.py does): a customer_view
with the columns the profile reads, and subscribers of M+1 for the churn label.
M = 2026-10: month_end 2026-10-31, the last day of M+3 is 2027-01-31.

    no segment   status     arpu   arpu_3m    ten dsat   vsat   contract_end bundle    bundle_end hs  vnet  M+1
     1 gold      active    191.51 191.510000  12  0.2462 NULL   2026-11-30   fusion    NULL       4G  true  active
     2 gold      active    191.52 191.515000  13  0.2463 0.5000 2026-10-31   fusion    2026-10-31 5G  false closed
     3 gold      closed     NULL  191.520000   0  NULL   0.2500 NULL         fusion    2027-01-31 NULL NULL absent
     4 tidal     active     -0.01  10.004999   1  2.1780 NULL   2027-05-01   NULL      2026-12-15 2G  true  absent
     5 tidal     suspended   0.00  10.005000   2  NULL   NULL   2026-10-30   broadband 2027-02-01 3G  false suspended
     6 tidal     active     NULL   NULL        3  NULL   NULL   NULL         NULL      NULL       4G  NULL  active
     7 NULL      active    100.00 100.000000  24  0.9000 0.9000 2026-11-01   fusion    2026-11-01 4G  false active
     8 potential closed     50.00  50.000000   6  NULL   NULL   NULL         NULL      NULL       5G  true  closed

gold: arpu (19151 + 19152 fen) / 2 = 19151.5 fen → 191.52 (half away; DuckDB 2.0.1's round() of
the DOUBLE 191.515 gives 191.51, banker's rounding too); arpu_3m 574.545 / 3 = 191.515 → 191.52;
tenure 25 / 3 = 8.33; data saturation 0.49250 / 2 = 0.24625 → 0.2463 over 2 customers (round()
of the DOUBLE gives 0.2462); voice 0.75 / 2 = 0.375 over 2 (the closed customer counts: every row
of M). Contract: only 1 (2's contract ends exactly at month_end: not running) → 1/3; bundle: 1
(no end) and 3 (ends 2027-01-31) → 2/3 (2's ends at month_end); ending within 3 months: 3 only
(exactly the last day of M+3) → 1/3. Handsets 4G, 5G, NULL: a third each. Churn base 1, 2 (3 is
closed): 2 churned (closed in M+1) → 1/2.
tidal: arpu (−1 + 0) / 2 = −0.5 fen → −0.01 (away from zero, not 0); arpu_3m 20.009999 / 2 =
10.0049995 → 10.00 (a mean first rounded to 6 decimals, 10.005000, would give 10.01); tenure 2;
data saturation 2.1780 over 1; voice NULL over 0. Contract 4 → 1/3; bundle 5 (ends 2027-02-01,
after M+3: running, not ending) → 1/3, 4 has an end but no bundle type: neither. Churn base 3,
4 left → 1/3.
potential: only a closed customer: churn base 0, churn_rate null.
(none): 7, everything running; its bundle ends 2026-11-01, within 3 months.
Total: arpu 53302 fen / 6 = 8883.67 → 88.84; arpu_3m 744.554999 / 7 = 106.3649998… → 106.36;
tenure 61 / 8 = 7.625 → 7.63; data saturation 3.5705 / 4 = 0.892625 → 0.8926; voice 1.65 / 3 = 0.5500;
contract 1 4 7 → 3/8; bundle 1 3 5 7 → 1/2; ending 3 7 → 1/4; churn base 6, churned 2 and 4 → 1/3.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlglot
from conftest import MATRICES, write_table

from mktool.config import Settings
from mktool.database import Database
from mktool.errors import StateError, UsageError
from mktool.profile import CSV_COLUMNS, Profile, profile_csv, profile_month, profile_tables, queries
from mktool.project import Project, load_project

M, N = "2026-10", "2026-11"
D = dt.date.fromisoformat


def c(n: int) -> str:
    return f"138000000{n:02d}"


# (no, segment, status, arpu, arpu_3m, tenure, dsat, vsat, contract_end, bundle_type, bundle_end, handset, vnet,
#  status in M+1 or None when absent)
CUSTOMERS: list[tuple[Any, ...]] = [
    (1, "gold", "active", "191.51", "191.510000", 12, "0.2462", None, D("2026-11-30"), "fusion", None, "4G", True,
     "active"),
    (2, "gold", "active", "191.52", "191.515000", 13, "0.2463", "0.5000", D("2026-10-31"), "fusion", D("2026-10-31"),
     "5G", False, "closed"),
    (3, "gold", "closed", None, "191.520000", 0, None, "0.2500", None, "fusion", D("2027-01-31"), None, None, None),
    (4, "tidal", "active", "-0.01", "10.004999", 1, "2.1780", None, D("2027-05-01"), None, D("2026-12-15"), "2G",
     True, None),
    (5, "tidal", "suspended", "0.00", "10.005000", 2, None, None, D("2026-10-30"), "broadband", D("2027-02-01"), "3G",
     False, "suspended"),
    (6, "tidal", "active", None, None, 3, None, None, None, None, None, "4G", None, "active"),
    (7, None, "active", "100.00", "100.000000", 24, "0.9000", "0.9000", D("2026-11-01"), "fusion", D("2026-11-01"),
     "4G", False, "active"),
    (8, "potential", "closed", "50.00", "50.000000", 6, None, None, None, None, None, "5G", True, "closed"),
]

VIEW_DDL = ("CREATE TABLE customer_view (msisdn VARCHAR, month VARCHAR, segment VARCHAR, status VARCHAR, "
            "arpu DECIMAL(18,2), arpu_3m DECIMAL(38,6), tenure_months INTEGER, data_saturation DECIMAL(38,4), "
            "voice_saturation DECIMAL(38,4), contract_end DATE, bundle_type VARCHAR, bundle_end DATE, "
            "handset_gen VARCHAR, vnet BOOLEAN, value_tier VARCHAR)")


def make_db(path: Path, customers: list[tuple[Any, ...]] = CUSTOMERS, *, with_next: bool = True) -> Path:
    con = duckdb.connect(str(path))
    con.execute(VIEW_DDL)
    con.executemany("INSERT INTO customer_view VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'mid')",
                    [(c(n), M, *rest) for n, *rest, _ in customers])
    # another month's view must not leak in
    con.execute("INSERT INTO customer_view VALUES (?, '2026-09', 'gold', 'active', 9999.99, 9999, 99, 9, 9, "
                "DATE '2030-01-01', 'fusion', NULL, '2G', true, 'high')", [c(1)])
    con.execute("CREATE TABLE subscribers (msisdn VARCHAR, month VARCHAR, status VARCHAR)")
    con.executemany("INSERT INTO subscribers VALUES (?, ?, ?)", [(c(r[0]), M, r[2]) for r in customers])
    if with_next:
        con.executemany("INSERT INTO subscribers VALUES (?, ?, ?)",
                        [(c(r[0]), N, r[-1]) for r in customers if r[-1] is not None])
        con.execute("INSERT INTO subscribers VALUES ('13800000099', ?, 'active')", [N])  # a new joiner in M+1
    con.close()
    return path


def settings(db: Path) -> Settings:
    return Settings(db_path=db, memory_limit="1GB", threads=2)


PROJECT = load_project(MATRICES)


def profile(db: Path, by: str = "segment", month: str = M, project: Project = PROJECT) -> Profile:
    with Database(settings(db), write=False) as database:
        return profile_month(database, project, month, by=by)


def hs(g2: float, g3: float, g4: float, g5: float, none: float) -> dict[str, float]:
    return {"2G": g2, "3G": g3, "4G": g4, "5G": g5, "(none)": none}


def figures(customers: int, share: float, arpu: float | None, arpu_3m: float | None, tenure: float | None,
            dsat: float | None, dsat_n: int, vsat: float | None, vsat_n: int, contract: float, bundle: float,
            ending: float, handsets: dict[str, float], base: int | None, churned: int | None,
            rate: float | None) -> dict[str, Any]:
    return {"customers": customers, "share": share, "arpu_mean": arpu, "arpu_3m_mean": arpu_3m,
            "tenure_months_mean": tenure, "data_saturation_mean": dsat, "data_saturation_customers": dsat_n,
            "voice_saturation_mean": vsat, "voice_saturation_customers": vsat_n, "contract_share": contract,
            "bundle_share": bundle, "bundle_ending_3m_share": ending, "handset_gen": handsets, "churn_base": base,
            "churned": churned, "churn_rate": rate}


THIRD, TWO_THIRDS = 0.333333, 0.666667
GOLD = figures(3, 0.375, 191.52, 191.52, 8.33, 0.2463, 2, 0.375, 2, THIRD, TWO_THIRDS, THIRD,
               hs(0.0, 0.0, THIRD, THIRD, THIRD), 2, 1, 0.5)
POTENTIAL = figures(1, 0.125, 50.0, 50.0, 6.0, None, 0, None, 0, 0.0, 0.0, 0.0, hs(0.0, 0.0, 0.0, 1.0, 0.0), 0, 0,
                    None)
TIDAL = figures(3, 0.375, -0.01, 10.0, 2.0, 2.178, 1, None, 0, THIRD, THIRD, 0.0, hs(THIRD, THIRD, THIRD, 0.0, 0.0),
                3, 1, THIRD)
NONE = figures(1, 0.125, 100.0, 100.0, 24.0, 0.9, 1, 0.9, 1, 1.0, 1.0, 1.0, hs(0.0, 0.0, 1.0, 0.0, 0.0), 1, 0, 0.0)
TOTAL = figures(8, 1.0, 88.84, 106.36, 7.63, 0.8926, 4, 0.55, 3, 0.375, 0.5, 0.25, hs(0.125, 0.125, 0.375, 0.25, 0.125),
                6, 2, THIRD)
EXPECTED = {
    "month": M, "by": "segment", "next_month": N, "next_month_loaded": True,
    "rows": [{"segment": "gold", **GOLD}, {"segment": "potential", **POTENTIAL}, {"segment": "tidal", **TIDAL},
             {"segment": "(none)", **NONE}],
    "total": TOTAL,
}


def without_churn(f: dict[str, Any]) -> dict[str, Any]:
    return {**f, "churn_base": None, "churned": None, "churn_rate": None}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_db(tmp_path_factory.mktemp("profile") / "profile.duckdb")


@pytest.fixture(scope="module")
def db_no_next(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_db(tmp_path_factory.mktemp("profile") / "no_next.duckdb", with_next=False)


def test_profile_document_of_the_crafted_month(db: Path) -> None:
    result = profile(db)
    assert result.document() == EXPECTED
    assert list(result.document()) == ["month", "by", "next_month", "next_month_loaded", "rows", "total"]
    assert list(result.document()["rows"][0]) == ["segment", *GOLD]
    assert result.churn_note is None


def test_means_are_exact_decimals_rounded_half_away_from_zero(db: Path) -> None:
    """The Profile keeps SQL's exact decimals: the money means to the fen, the saturations to 4 places."""
    result = profile(db)
    gold, tidal = result.classes[0][1], result.classes[2][1]
    assert (str(gold["arpu_mean"]), str(gold["arpu_3m_mean"]), str(gold["data_saturation_mean"])) == (
        "191.52", "191.52", "0.2463")
    assert (str(tidal["arpu_mean"]), str(tidal["arpu_3m_mean"]), str(tidal["tenure_months_mean"])) == (
        "-0.01", "10.00", "2.00")
    assert str(result.total["data_saturation_mean"]) == "0.8926" and str(result.total["share"]) == "1.000000"


def test_churn_fields_are_null_when_the_next_month_is_not_loaded(db_no_next: Path) -> None:
    result = profile(db_no_next)
    doc = result.document()
    assert doc == {**EXPECTED, "next_month_loaded": False,
                   "rows": [without_churn(r) for r in EXPECTED["rows"]], "total": without_churn(TOTAL)}
    assert result.churn_note is not None and "2026-11's subscribers are not loaded" in result.churn_note
    assert "mktool ingest subscribers_2026-11.parquet" in result.churn_note


def test_by_a_boolean_column(db: Path) -> None:
    """vnet false: 2 5 7, true: 1 4 8, NULL: 3 6. arpu false (19152 + 0 + 10000) / 3 = 9717.33 fen → 97.17;
    true (19151 − 1 + 5000) / 3 = 8050 → 80.50; (none) has no arpu. Churn false 1 of 3, true 1 of 2 (8 closed),
    (none) 0 of 1 (3 closed)."""
    doc = profile(db, by="vnet").document()
    assert [(r["vnet"], r["customers"], r["arpu_mean"], r["churn_base"], r["churned"], r["churn_rate"])
            for r in doc["rows"]] == [("false", 3, 97.17, 3, 1, THIRD), ("true", 3, 80.5, 2, 1, 0.5),
                                      ("(none)", 2, None, 1, 0, 0.0)]
    assert doc["by"] == "vnet" and doc["total"] == TOTAL


def test_by_handset_gen_keeps_the_mix_under_its_own_key(db: Path) -> None:
    doc = profile(db, by="handset_gen").document()
    assert [(r["class"], r["customers"], r["handset_gen"][r["class"]]) for r in doc["rows"]] == [
        ("2G", 1, 1.0), ("3G", 1, 1.0), ("4G", 3, 1.0), ("5G", 2, 1.0), ("(none)", 1, 1.0)]


@pytest.mark.parametrize(("by", "message"), [
    ("arpu", "arpu is a DECIMAL(18,2) column"), ("tenure_months", "is a INTEGER column"),
    ("no_such", "has no column 'no_such'"), ("msisdn", "personal data")])
def test_a_column_it_cannot_split_by_is_a_usage_error(db: Path, by: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        profile(db, by=by)
    assert message in err.value.message and "segment" in err.value.message and "vnet" in err.value.message


def test_a_score_column_missing_from_the_view_asks_for_a_rebuild(db: Path) -> None:
    with pytest.raises(StateError) as err:
        profile(db, by="stickiness_tier")
    assert "scores.yaml defines" in err.value.render() and "mktool score --month 2026-10" in err.value.render()


def test_a_view_without_the_saturations_is_refused(tmp_path: Path) -> None:
    path = make_db(tmp_path / "old.duckdb")
    con = duckdb.connect(str(path))
    con.execute("ALTER TABLE customer_view DROP COLUMN data_saturation")
    con.close()
    with pytest.raises(StateError, match="lacks column data_saturation that the profile reads"):
        profile(path)


def test_a_month_without_a_view_is_refused(db: Path) -> None:
    with pytest.raises(StateError, match="customer_view has no rows for month 2026-08"):
        profile(db, month="2026-08")


def test_csv_has_one_row_per_class_and_the_total(db: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(profile_csv(profile(db)))))
    assert [(r["by"], r["class"]) for r in rows] == [("segment", "gold"), ("segment", "potential"),
                                                    ("segment", "tidal"), ("segment", "(none)"), ("", "total")]
    gold, tidal, total = rows[0], rows[2], rows[4]
    assert (gold["arpu_mean"], gold["arpu_3m_mean"], gold["data_saturation_mean"], gold["contract_share"]) == (
        "191.52", "191.52", "0.2463", "0.333333")
    assert (gold["handset_2G"], gold["handset_4G"], gold["handset_none"], gold["churn_rate"]) == (
        "0.000000", "0.333333", "0.333333", "0.500000")
    assert (tidal["arpu_mean"], tidal["voice_saturation_mean"], tidal["voice_saturation_customers"]) == (
        "-0.01", "", "0")
    assert rows[1]["churn_rate"] == "" and rows[1]["churn_base"] == "0"
    assert (total["month"], total["customers"], total["share"], total["arpu_mean"], total["churned"]) == (
        M, "8", "1.000000", "88.84", "2")
    assert tuple(rows[0]) == CSV_COLUMNS


def test_table_shows_percentages_from_the_counts(db: Path) -> None:
    [(title, columns, rows)] = profile_tables(profile(db))
    assert title == ("Profile of 2026-10 by segment (churn = left by 2026-11; ends ≤3m = a bundle ending within 3 "
                     "months)")
    assert columns[0] == "class" and columns[-2:] == ("4G+5G", "churn")
    assert rows[0] == ("gold", "3", "37.5%", "191.52", "191.52", "8.33", "24.63%", "37.50%", "33.3%", "66.7%",
                       "33.3%", "66.7%", "50.00%")
    assert rows[1][-1] == "" and rows[-1][0] == "total" and rows[-1][-1] == "33.33%"


def test_queries_render_for_spark_and_bind_their_months() -> None:
    qs = queries(M)
    assert qs["profile"].params == {"month": M, "month_end": "2026-10-31", "horizon_3m": "2027-01-31",
                                    "next_month": N}
    assert "next_month" not in qs["profile:no_next_month"].params
    assert queries("2026-12")["profile"].params["horizon_3m"] == "2027-03-31"
    for q in qs.values():
        assert M not in q.sql and q.render("spark")
        sqlglot.transpile(q.sql, read="duckdb", write="spark", unsupported_level=sqlglot.ErrorLevel.RAISE)


# -- the command line ---------------------------------------------------------------------------------
def test_cli_json_is_the_document(cli: Any, db: Path) -> None:
    result = cli("profile", "--month", M, "--format", "json", db_path=db)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == EXPECTED


def test_cli_csv_to_a_file_by_vnet(cli: Any, db: Path, tmp_path: Path) -> None:
    target = tmp_path / "reports" / "profile.csv"
    result = cli("profile", "--month", M, "--by", "vnet", "--format", "csv", "--out", str(target), db_path=db)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert [(r["by"], r["class"], r["customers"]) for r in rows] == [
        ("vnet", "false", "3"), ("vnet", "true", "3"), ("vnet", "(none)", "2"), ("", "total", "8")]
    assert f"written to {target}" in result.stderr


def test_cli_table(cli: Any, db: Path) -> None:
    result = cli("profile", "--month", M, db_path=db)
    assert result.exit_code == 0, result.output
    assert "Profile of 2026-10 by segment" in result.stdout and "high_risk" not in result.stdout
    assert "gold" in result.stdout and "-0.01" in result.stdout and "(none)" in result.stdout
    assert "4 class(es)" in result.stderr


def test_cli_says_why_the_churn_fields_are_empty(cli: Any, db_no_next: Path) -> None:
    result = cli("profile", "--month", M, "--format", "json", "--quiet", db_path=db_no_next)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["next_month_loaded"] is False
    assert "2026-11's subscribers are not loaded" in result.stderr


def test_cli_usage_errors(cli: Any, db: Path) -> None:
    refused = cli("profile", "--month", M, "--by", "arpu", db_path=db)
    assert refused.exit_code == 2 and "VARCHAR or BOOLEAN" in refused.output and "Traceback" not in refused.output
    assert cli("profile", "--month", M, "--by", "no_such", db_path=db).exit_code == 2
    assert cli("profile", "--month", M, "--format", "parquet", db_path=db).exit_code == 2
    assert cli("profile", "--month", "2026-13", db_path=db).exit_code == 2
    missing = cli("profile", "--month", "2026-08", db_path=db)
    assert missing.exit_code == 1 and "mktool score --month 2026-08" in missing.output


def test_end_to_end_on_a_scored_view(cli: Any, tmp_path: Path) -> None:
    """ingest → score → ingest M+1 → profile: the real view's columns and types. a and b on plan P600 (600 MB,
    650 min), 300 MB and 130 minutes a month: saturation 0.5000 and 0.2000. a pays 100.00 a month, b 100.01:
    arpu mean 10001 fen / 2 = 100.005 → 100.01. b is closed in M+1: churn 1 of 2."""
    a, b = "13900000001", "13900000002"
    months = ["2026-08", "2026-09", M]
    extracts = tmp_path / "extracts"
    write_table(extracts / "subscribers.parquet", "subscribers",
                [{"msisdn": x, "month": m, "plan_id": "P600", "handset_gen": "5G" if x == a else "3G"}
                 for x in (a, b) for m in months])
    write_table(extracts / "usage.parquet", "usage",
                [{"msisdn": x, "month": m, "data_mb": 300.0, "voice_out_min": 130.0} for x in (a, b) for m in months])
    write_table(extracts / "billing.parquet", "billing",
                [{"msisdn": x, "month": m, "total_fee": 100.0 if x == a else 100.01} for x in (a, b) for m in months])
    write_table(extracts / "plans.parquet", "plans", [{"plan_id": "P600"}])
    assert cli("ingest", str(extracts)).exit_code == 0
    assert cli("score", "--month", M).exit_code == 0
    nxt = write_table(tmp_path / "next" / "subscribers_2026-11.parquet", "subscribers",
                      [{"msisdn": a, "month": N}, {"msisdn": b, "month": N, "status": "closed"}])
    assert cli("ingest", str(nxt)).exit_code == 0
    result = cli("profile", "--month", M, "--by", "handset_gen", "--format", "json")
    assert result.exit_code == 0, result.output
    total = json.loads(result.stdout)["total"]
    assert (total["customers"], total["arpu_mean"], total["arpu_3m_mean"], total["data_saturation_mean"],
            total["voice_saturation_mean"], total["churn_base"], total["churned"], total["churn_rate"]) == (
        2, 100.01, 100.01, 0.5, 0.2, 2, 1, 0.5)
    assert total["handset_gen"] == hs(0.0, 0.5, 0.0, 0.5, 0.0)
