"""Plan recommendation (SPEC §5): hand-computed expectations on tiny databases.

Most tests write a ``customer_view`` (only the columns `plan` reads) and a ``plans`` table
straight into a DuckDB file in tmp_path; one test goes through ingest → score → plan so
that the 3-month averages (short history, 5.93/5.54/3.53 MB) come from the real view.
"""

from __future__ import annotations

import csv
import functools
import json
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlglot
from conftest import MATRICES, ROOT, M, month_rows, write_table
from conftest import fetch as query

from mktool.config import Settings
from mktool.database import Database
from mktool.errors import ConfigError, MktoolError, StateError
from mktool.plan import (
    EXPORT_COLUMNS,
    EXPORT_SQL,
    STAGES,
    TABLE_COLUMNS,
    funnel_query,
    plan,
    recommend_query,
    sweep,
    sweep_query,
)
from mktool.planconfig import PlanConfig, Window, load_plan_config, script_sql
from mktool.project import Project, load_project
from mktool.schema import MONEY_COLUMNS, RATE_COLUMNS

SEED_PLANS = ROOT / "fixtures" / "reference" / "plans_4g_seed.csv"

CSV_HEADER = ("msisdn,month,rank,current_plan_id,plan_id,new_rental,new_voice_overage,new_data_overage,"
              "new_total,current_total,total_fee_change,rental_change")


# -- tiny databases ---------------------------------------------------------------------------------
def cust(msisdn: str, plan_id: str = "ZX128", *, status: str | None = "active", data: float | None = 737.93,
         voice: float | None = 300.0, rental: float | None = 128.0, total: float | None = 220.0,
         addon: float | None = 30.0, month: str = M) -> tuple[Any, ...]:
    """One customer_view row; the defaults are SPEC §5's worked example."""
    return (msisdn, month, status, plan_id, data, voice, rental, total, addon)


def tariff(plan_id: str, rental: float, data_mb: float = 100_000.0, voice_min: float = 100_000.0, *,
           data_rate: float = 0.29, voice_rate: float = 0.19, status: int = 1, target: bool = True,
           name: str | None = None) -> tuple[Any, ...]:
    """One plans row; by default allowances so large that there is never an overage."""
    return (plan_id, name or plan_id, rental, data_mb, voice_min, data_rate, voice_rate, status, target)


ZX128 = tariff("ZX128", 128, 600, 650, name="自选组合128")
ZX158 = tariff("ZX158", 158, 600, 900, name="自选组合158")


def make_db(path: Path, customers: list[tuple[Any, ...]], plans: list[tuple[Any, ...]]) -> Path:
    con = duckdb.connect(str(path))
    con.execute("""CREATE TABLE customer_view (msisdn VARCHAR, month VARCHAR, status VARCHAR, plan_id VARCHAR,
                   data_mb_3m DOUBLE, voice_min_3m DOUBLE, rental_3m DOUBLE, current_total_3m DOUBLE, """
                "addon_3m DOUBLE)")
    con.execute("""CREATE TABLE plans (plan_id VARCHAR, plan_name VARCHAR, monthly_rental DOUBLE,
                   included_data_mb DOUBLE, included_voice_min DOUBLE, data_overage_per_mb DOUBLE,
                   voice_overage_per_min DOUBLE, product_status BIGINT, is_target BOOLEAN)""")
    if customers:
        con.executemany("INSERT INTO customer_view VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", customers)
    if plans:
        con.executemany("INSERT INTO plans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", plans)
    con.close()
    return path


def settings(path: Path) -> Settings:
    return Settings(db_path=path, matrices_dir=MATRICES, memory_limit="1GB", threads=2)


@functools.cache
def shipped_project() -> Project:
    return load_project(MATRICES)


def run_plan(path: Path, config: PlanConfig | None = None, *, dry_run: bool = False, month: str = M):
    with Database(settings(path), write=not dry_run) as db:
        return plan(db, shipped_project(), month, config=config or PlanConfig(), dry_run=dry_run)


def recs(path: Path, month: str = M) -> list[tuple[str, int, str]]:
    """(msisdn, rank, plan_id) of the stored recommendations."""
    return query(path, "SELECT msisdn, rank, plan_id FROM plan_recommendations WHERE month = ? ORDER BY 1, 2", [month])


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "plan.duckdb"


# -- SPEC §5 worked example -------------------------------------------------------------------------
def test_worked_example_exact_in_table(db_path):
    make_db(db_path, [cust("13800000001")], [ZX128, ZX158])
    result = run_plan(db_path)
    assert result.rows == 1 and result.customers == 1
    row = query(db_path, "SELECT * FROM plan_recommendations")[0]
    described = query(db_path, "DESCRIBE plan_recommendations")
    assert [r[0] for r in described] == list(TABLE_COLUMNS)
    types = {r[0]: r[1] for r in described}
    assert {types[c] for c in MONEY_COLUMNS} == {"DECIMAL(18,2)"}
    assert {types[c] for c in RATE_COLUMNS} == {"DECIMAL(38,12)"}
    got = dict(zip(TABLE_COLUMNS, row))
    assert (got["msisdn"], got["month"], got["rank"], got["current_plan_id"], got["plan_id"], got["plan_name"]) == (
        "13800000001", M, 1, "ZX128", "ZX158", "自选组合158")
    # 137.93 MB over × 0.29 = 39.9997 exactly, stored as the bill: 40.00; 300 of 900 minutes: no voice overage.
    assert got["new_data_overage"] == Decimal("40.00")
    assert got["new_voice_overage"] == Decimal("0.00")
    assert got["new_total"] == Decimal("228.00")
    assert got["current_total"] == Decimal("220.00")
    # the rates come from the exact bill: 227.9997 / 220 = 1.036362272727… stored truncated to 12
    # decimals (compared as 1.036362, shown as 1.0364); 158 / 128 = 1.234375 exactly, not 1.2344
    assert str(got["total_fee_change"]) == "1.036362272727"
    assert got["rental_change"] == Decimal("1.234375")


def test_worked_example_csv_on_stdout(cli, db_path):
    make_db(cli.db, [cust("13800000001")], [ZX128, ZX158])
    result = cli("plan", "--month", M, "--out", "-", "--matrices", str(MATRICES))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines == [CSV_HEADER, "13800000001,2026-10,1,ZX128,ZX158,158.00,0.00,40.00,228.00,220.00,1.0364,1.2344"]
    assert "Plan funnel" in result.stderr and "in_rate_window" in result.stderr
    assert "plan_recommendations 2026-10: 1 rows for 1 of 1 customers" in result.stderr


def test_shown_rate_rounds_the_exact_rate_not_the_6_decimal_one(cli):
    """Double rounding: 116.194996 / 100 = 1.16194996 is 1.161950 at 6 decimals (compared) but
    1.1619 at 4 (shown); rounding the 6-decimal value again would show 1.1620. The bills too:
    0.194996 of data overage is 0.19, the bill 116.194996 is 116.19."""
    make_db(cli.db, [cust("13800000001", "CUR", data=10.194996, voice=0, rental=100, total=100, addon=0)],
            [tariff("CUR", 100), tariff("P", 116, data_mb=10, data_rate=1.0)])
    result = cli("plan", "--month", M, "--out", "-", "--matrices", str(MATRICES))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == "13800000001,2026-10,1,CUR,P,116.00,0.00,0.19,116.19,100.00,1.1619,1.1600"
    stored = query(cli.db, "SELECT total_fee_change FROM plan_recommendations")[0][0]
    assert stored == Decimal("1.16194996")


def test_export_columns_and_formats(cli, tmp_path):
    make_db(cli.db, [cust("13800000001")], [ZX128, ZX158])
    out = tmp_path / "out" / "plans.jsonl"
    result = cli("plan", "--month", M, "--out", str(out), "--matrices", str(MATRICES))
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert tuple(record) == EXPORT_COLUMNS and "plan_name" not in record
    assert float(record["new_total"]) == 228.0 and float(record["total_fee_change"]) == 1.0364
    pq_out = tmp_path / "plans.parquet"
    assert cli("plan", "--month", M, "--out", str(pq_out), "--matrices", str(MATRICES)).exit_code == 0
    assert query(cli.db, f"SELECT typeof(new_total), typeof(rental_change) FROM '{pq_out}'") == [
        ("DECIMAL(18,2)", "DECIMAL(18,4)")]


# -- funnel stages ----------------------------------------------------------------------------------
FUNNEL_CUSTOMERS = [
    cust("13800000001"),                                    # worked example: ZX158 kept
    cust("13800000002", status="suspended"),                # dropped at active
    cust("13800000003", status=None),                       # no status: not active
    cust("13800000004", data=4.99),                         # dropped at data_ge_min
    cust("13800000005", data=(5.93 + 5.54 + 3.53) / 3),    # 4.999999999999999: rounds to 5, passes
    cust("13800000006", data=None),                         # no usage: dropped at data_ge_min
    cust("13800000007", plan_id="IP58"),                    # special tariff (product_status 2): eligible_plan
    cust("13800000008", plan_id="XX999"),                   # not in plans at all: eligible_plan
    cust("13800000009", plan_id=None),                      # no plan: eligible_plan
    cust("13800000010", rental=0.0),                        # zero rental: dropped at billable
    cust("13800000011", total=0.0),                         # zero bill: dropped at billable
    cust("13800000012", rental=None),                       # no billing: dropped at billable
    cust("13800000013", total=1000.0),                      # 188/1000, 228/1000: below 0.6, no plan in window
    cust("13800000014", month="2026-09"),                   # another month: not in the base
]
FUNNEL_PLANS = [ZX128, ZX158, tariff("IP58", 58, status=2, target=False)]


def test_funnel_stages_hand_counted(db_path):
    make_db(db_path, FUNNEL_CUSTOMERS, FUNNEL_PLANS)
    result = run_plan(db_path)
    expected = [("base", 13), ("active", 11), ("data_ge_min", 9), ("eligible_plan", 6), ("billable", 3),
                ("in_rate_window", 2)]
    assert result.stages == expected
    assert [s for s, _ in result.stages] == list(STAGES)
    assert query(db_path, "SELECT stage, count FROM funnel_counts WHERE month = ? AND funnel = 'plan' "
                 "ORDER BY stage_no", [M]) == expected
    counts = [n for _, n in result.stages]
    assert counts == sorted(counts, reverse=True)  # non-increasing
    assert query(db_path, "SELECT count(DISTINCT msisdn) FROM plan_recommendations")[0][0] == result.customers == 2
    assert recs(db_path) == [("13800000001", 1, "ZX158"), ("13800000005", 1, "ZX158")]


def test_five_mb_minimum_uses_rounded_average(db_path):
    assert (5.93 + 5.54 + 3.53) / 3 < 5  # the float average is just below 5 …
    make_db(db_path, [cust("13800000005", data=(5.93 + 5.54 + 3.53) / 3), cust("13800000004", data=4.9999994),
                      cust("13800000003", data=4.9999996)], [ZX128, ZX158])
    result = run_plan(db_path)
    # … but 4.999999999999999 and 4.9999996 round to 5.000000 and pass; 4.9999994 rounds to 4.999999.
    assert dict(result.stages)["data_ge_min"] == 2
    assert [r[0] for r in recs(db_path)] == ["13800000003", "13800000005"]
    # --min-data moves the threshold
    assert dict(run_plan(db_path, PlanConfig().with_overrides(min_data_mb=738)).stages)["data_ge_min"] == 0


# -- rate windows at their edges ---------------------------------------------------------------------
def test_rental_change_exactly_two_is_kept_just_above_is_dropped(db_path):
    # no overage, no add-on: total_fee_change = rental / 250 (0.8), always inside.
    make_db(db_path, [
        cust("13800000001", "CUR", data=10, voice=0, rental=100, total=250, addon=0),
        cust("13800000002", "CUR", data=10, voice=0, rental=99.99998, total=250, addon=0),
        cust("13800000003", "CUR", data=10, voice=0, rental=99.99997, total=250, addon=0),
    ], [
        tariff("CUR", 100),
        tariff("R200", 200),        # 200 / 100 = 2.0 exactly: kept; 200 / 99.99998 = 2.0000004 → 2.000000: kept
        tariff("R200_01", 200.01),  # 200.01 / 100 = 2.0001: dropped; and for the others
        tariff("R250", 250),        # 2.5: dropped
    ])
    run_plan(db_path, PlanConfig(top=10))
    # 200 / 99.99997 = 2.0000006 → 2.000001 at 6 decimals: just above, dropped (SPEC §5 rule 5)
    assert recs(db_path) == [("13800000001", 1, "R200"), ("13800000002", 1, "R200")]


@pytest.mark.parametrize("rental, kept", [(300, True), (300.01, False), (120, True), (119.99, False)])
def test_total_fee_change_on_the_window_edges_in_fen(db_path, rental, kept):
    # bill 200, rental 100: 300 / 200 = 1.5 and 120 / 200 = 0.6 exactly are inside [0.60, 1.50];
    # one fen more (1.50005) or less (0.59995) is outside — exact money, no float near-miss.
    make_db(db_path, [cust("13800000001", "CUR", data=10, voice=0, rental=100, total=200, addon=0)],
            [tariff("CUR", 100), tariff("P", rental)])
    run_plan(db_path, PlanConfig(rental_change=Window(1.0, 3.0)))
    assert [p for _, _, p in recs(db_path)] == (["P"] if kept else [])


def test_total_fee_change_just_above_one_is_on_the_edge_inside(db_path):
    # Bill 100, each plan's rental 100, 10 MB used at 1 yuan per MB over the allowance:
    # T04 includes 9.99996 MB → 0.00004 over → new_total 100.00004 → 1.0000004 → 1.000000: inside;
    # T06 includes 9.99994 MB → 100.00006 → 1.0000006 → 1.000001: outside the window 0.6-1.0.
    make_db(db_path, [cust("13800000001", "CUR", data=10, voice=0, rental=100, total=100, addon=0)],
            [tariff("CUR", 1.0), tariff("T04", 100, data_mb=9.99996, data_rate=1.0),
             tariff("T06", 100, data_mb=9.99994, data_rate=1.0)])
    result = run_plan(db_path, PlanConfig(total_change=Window(0.6, 1.0), top=10))
    assert result.stages[-1] == ("in_rate_window", 1)
    assert query(db_path, "SELECT plan_id, new_data_overage, new_total, total_fee_change, rental_change "
                          "FROM plan_recommendations") == [
        ("T04", Decimal("0.00"), Decimal("100.00"), Decimal("1.0000004"), Decimal("1"))]  # compared as 1.000000


def test_current_plan_and_non_targets_are_never_offered(db_path):
    make_db(db_path, [cust("13800000001", "A", data=10, voice=0, rental=100, total=100, addon=0)],
            [tariff("A", 100), tariff("B", 110, target=False), tariff("C", 120), tariff("D", 130, status=2)])
    run_plan(db_path, PlanConfig(top=10))
    # A is the current plan, B is not a target; D is a special tariff but a target, so it may be offered.
    assert recs(db_path) == [("13800000001", 1, "C"), ("13800000001", 2, "D")]


def test_overage_and_add_on_pricing(db_path):
    # 1000 min over 400 included at 0.25 = 150; 2048 MB over 1024 at 0.5 = 512; add-on 10 stays.
    make_db(db_path, [cust("13800000001", "A", data=2048, voice=1000, rental=100, total=800, addon=10)],
            [tariff("A", 100), tariff("B", 150, data_mb=1024, voice_min=400, data_rate=0.5, voice_rate=0.25)])
    run_plan(db_path)
    assert query(db_path, "SELECT new_voice_overage, new_data_overage, new_total, total_fee_change, rental_change "
                          "FROM plan_recommendations") == [
        (Decimal("150.00"), Decimal("512.00"), Decimal("822.00"), Decimal("1.027500"), Decimal("1.500000"))]


# -- ranking and top-k ----------------------------------------------------------------------------------
def tie_db(path: Path) -> Path:
    # bill 200, rental 100: P2 gives 1.2, P1 and P0 give 0.8 — all |change − 1| = 0.2.
    return make_db(path, [cust("13800000001", "CUR", data=10, voice=0, rental=100, total=200, addon=0)],
                   [tariff("CUR", 100), tariff("P1", 160), tariff("P2", 240), tariff("P0", 160), tariff("P9", 190)])


def test_ranking_ties_higher_rental_then_plan_id(db_path):
    tie_db(db_path)
    run_plan(db_path, PlanConfig(rental_change=Window(1.0, 3.0), top=10))
    # P9: 0.95 is closest; then the 0.2 ties: P2 (240) before P0 and P1 (160, by plan_id).
    assert [p for _, _, p in recs(db_path)] == ["P9", "P2", "P0", "P1"]


@pytest.mark.parametrize("top, expected", [(1, ["P9"]), (2, ["P9", "P2"]), (3, ["P9", "P2", "P0"]),
                                           (9, ["P9", "P2", "P0", "P1"])])
def test_top_k(db_path, top, expected):
    tie_db(db_path)
    result = run_plan(db_path, PlanConfig(rental_change=Window(1.0, 3.0), top=top))
    assert [p for _, _, p in recs(db_path)] == expected
    assert [r for _, r, _ in recs(db_path)] == list(range(1, len(expected) + 1))
    assert result.rows == len(expected) and result.customers == 1


def test_ranking_uses_rounded_distance(db_path):
    # 0.63/0.7 = 0.9 (distance 0.09999999999999998) and 0.77/0.7 = 1.1000000000000001 (distance
    # 0.10000000000000009): equal at 6 decimals, so the higher rental wins.
    assert abs(0.77 / 0.7 - 1) > abs(0.63 / 0.7 - 1)
    make_db(db_path, [cust("13800000001", "CUR", data=10, voice=0, rental=0.6, total=0.7, addon=0)],
            [tariff("CUR", 1), tariff("LOW", 0.63), tariff("HIGH", 0.77)])
    run_plan(db_path, PlanConfig(top=2))
    assert [p for _, _, p in recs(db_path)] == ["HIGH", "LOW"]


def test_seed_catalogue_ranking(db_path):
    """The worked-example customer against all 18 real 4G plans, ranked by hand."""
    plans = [
        tariff(r["plan_id"], float(r["monthly_rental"]), float(r["included_data_mb"]), float(r["included_voice_min"]),
               data_rate=float(r["data_overage_per_mb"]), voice_rate=float(r["voice_overage_per_min"]),
               name=r["plan_name"])
        for r in csv.DictReader(SEED_PLANS.open(encoding="utf-8"))]
    make_db(db_path, [cust("13800000001")], plans)
    run_plan(db_path, PlanConfig(top=10))
    # rental 128..256 (window 1.0-2.0): FX138, FX158, FX238, ZX158, ZX188 (ZX128 is current);
    # totals 168, 188, 268, 227.9997, 218 over 220 → distances .2364, .1455, .2182, .0364, .0091.
    assert [p for _, _, p in recs(db_path)] == ["ZX188", "ZX158", "FX158", "FX238", "FX138"]


# -- writing ----------------------------------------------------------------------------------------
def test_rerun_replaces_the_month_and_keeps_others(db_path):
    make_db(db_path, [cust("13800000001"), cust("13800000001", month="2026-09")], [ZX128, ZX158])
    run_plan(db_path, month="2026-09")
    run_plan(db_path, PlanConfig(top=3))
    run_plan(db_path, PlanConfig(top=3))
    assert query(db_path, "SELECT month, count(*) FROM plan_recommendations GROUP BY 1 ORDER BY 1") == [
        ("2026-09", 1), (M, 1)]
    run_plan(db_path, PlanConfig(total_change=Window(0.6, 1.0)))  # ZX158 (1.036) now outside
    assert query(db_path, "SELECT month, count(*) FROM plan_recommendations GROUP BY 1 ORDER BY 1") == [("2026-09", 1)]
    assert query(db_path, "SELECT stage, count FROM funnel_counts WHERE month = ? ORDER BY stage_no", [M])[-1] == (
        "in_rate_window", 0)


def test_dry_run_writes_nothing(cli, db_path):
    make_db(cli.db, FUNNEL_CUSTOMERS, FUNNEL_PLANS)
    result = run_plan(cli.db, dry_run=True)
    assert result.dry_run and result.rows == 2 and result.stages[-1] == ("in_rate_window", 2)
    tables = {r[0] for r in query(cli.db, "SELECT table_name FROM information_schema.tables")}
    assert "plan_recommendations" not in tables and "funnel_counts" not in tables
    out = cli("plan", "--month", M, "--dry-run", "--matrices", str(MATRICES))
    assert out.exit_code == 0, out.output
    assert "dry run, nothing written" in out.stderr and "would have 2 rows" in out.stderr
    assert out.stdout == ""
    tables = {r[0] for r in query(cli.db, "SELECT table_name FROM information_schema.tables")}
    assert "plan_recommendations" not in tables
    assert cli("plan", "--month", M, "--dry-run", "--out", "-", "--matrices", str(MATRICES)).exit_code == 2  # usage


def test_missing_customer_view_is_a_state_error(cli, db_path):
    make_db(db_path, [cust("13800000001", month="2026-09")], [ZX128])
    with pytest.raises(StateError, match=r"customer_view has no rows for month 2026-10 \(months present: 2026-09\)"):
        run_plan(db_path)
    make_db(cli.db, [], [ZX128])
    result = cli("plan", "--month", M, "--matrices", str(MATRICES))
    assert result.exit_code == 1
    assert "Error: customer_view has no rows for month 2026-10" in result.stderr
    assert "run `mktool score --month 2026-10` first" in result.stderr


# -- sweep ----------------------------------------------------------------------------------------------
SWEEP_CUSTOMERS = [  # against T (120): (total_fee_change, rental_change)
    cust("13800000001", "CUR", data=10, voice=0, rental=100, total=120, addon=0),  # (1.0, 1.2)
    cust("13800000002", "CUR", data=10, voice=0, rental=100, total=200, addon=0),  # (0.6, 1.2)
    cust("13800000003", "CUR", data=10, voice=0, rental=60, total=240, addon=0),   # (0.5, 2.0)
    cust("13800000004", "CUR", data=10, voice=0, rental=50, total=80, addon=0),    # (1.5, 2.4)
    cust("13800000005", "CUR", data=10, voice=0, rental=120, total=100, addon=0),  # (1.2, 1.0)
    cust("13800000006", "CUR", data=1, voice=0, rental=100, total=120, addon=0),   # under 5 MB: never
]
# T2 (121) adds a second pair for most customers without changing which windows they reach.
SWEEP_PLANS = [tariff("CUR", 100, target=False), tariff("T", 120), tariff("T2", 121)]
SWEEP_EXPECTED = {  # by hand from the (tfc, rc) above
    ("0.5:1.3", "1.0:1.5"): 3, ("0.5:1.3", "1.0:2.0"): 4, ("0.5:1.3", "1.0:2.5"): 4,
    ("0.6:1.3", "1.0:1.5"): 3, ("0.6:1.3", "1.0:2.0"): 3, ("0.6:1.3", "1.0:2.5"): 3,
    ("0.6:1.5", "1.0:1.5"): 3, ("0.6:1.5", "1.0:2.0"): 3, ("0.6:1.5", "1.0:2.5"): 4,
    ("0.7:1.5", "1.0:1.5"): 2, ("0.7:1.5", "1.0:2.0"): 2, ("0.7:1.5", "1.0:2.5"): 3,
    ("0.8:1.2", "1.0:1.5"): 2, ("0.8:1.2", "1.0:2.0"): 2, ("0.8:1.2", "1.0:2.5"): 2,
}


def test_sweep_grid_hand_counted_and_equal_to_plan_runs(db_path):
    make_db(db_path, SWEEP_CUSTOMERS, SWEEP_PLANS)
    config = load_plan_config(MATRICES)
    with Database(settings(db_path), write=False) as db:
        cells = sweep(db, shipped_project(), M, config=config)
    assert {(str(c.total_change), str(c.rental_change)): c.customers for c in cells} == SWEEP_EXPECTED
    assert [(str(c.total_change), str(c.rental_change)) for c in cells] == list(SWEEP_EXPECTED)  # grid order
    for cell in cells:  # the sweep counts exactly what `plan` would target with those windows
        result = run_plan(db_path, PlanConfig(total_change=cell.total_change, rental_change=cell.rental_change),
                          dry_run=True)
        assert result.customers == cell.customers
    assert not any(r[0] == "plan_recommendations" for r in query(db_path, "SHOW TABLES"))


def test_sweep_cli_table_csv_json(cli):
    make_db(cli.db, SWEEP_CUSTOMERS, SWEEP_PLANS)
    table = cli("plan", "--month", M, "--sweep", "--matrices", str(MATRICES))
    assert table.exit_code == 0, table.output
    assert "1.0:1.5" in table.stdout and "0.8:1.2" in table.stdout and "Customers targeted" in table.stdout
    out = cli("plan", "--month", M, "--sweep", "--format", "csv", "--matrices", str(MATRICES),
              "--sweep-total", "0.6:1.5", "--sweep-total", "0.5:1.3", "--sweep-rental", "1.0:2.0")
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines() == [
        "total_change_lo,total_change_hi,rental_change_lo,rental_change_hi,customers",
        "0.6,1.5,1.0,2.0,3",
        "0.5,1.3,1.0,2.0,4",
    ]
    js = cli("plan", "--month", M, "--sweep", "--format", "json", "--matrices", str(MATRICES))
    assert js.exit_code == 0, js.output
    records = json.loads(js.stdout)
    assert {(f"{r['total_change_lo']}:{r['total_change_hi']}", f"{r['rental_change_lo']}:{r['rental_change_hi']}"):
            r["customers"] for r in records} == SWEEP_EXPECTED
    assert "plan_recommendations" not in {r[0] for r in query(cli.db, "SHOW TABLES")}
    bad = cli("plan", "--month", M, "--sweep", "--sweep-rental", "2:1", "--matrices", str(MATRICES))
    assert bad.exit_code == 2 and "'--sweep-rental': LO (2.0) is greater than HI (1.0)" in bad.stderr


# -- options and plan.yaml ----------------------------------------------------------------------------
def test_bad_total_change_option_exits_2(cli):
    """A malformed option value is a usage error (exit 2, like click's), refused before any work."""
    make_db(cli.db, [cust("13800000001")], [ZX128, ZX158])
    result = cli("plan", "--month", M, "--total-change", "1.5:0.6", "--matrices", str(MATRICES))
    assert result.exit_code == 2
    assert "Invalid value for '--total-change': LO (1.5) is greater than HI (0.6)" in result.stderr
    for args, message in [
        (["--total-change", "0.6-1.5"], "'--total-change': expected LO:HI such as 0.6:1.5, got '0.6-1.5'"),
        (["--rental-change", "0:2"], "'--rental-change': LO: must be a positive number"),
        (["--rental-change", "a:2"], "'--rental-change': LO: expected a number, got 'a'"),
        (["--top", "0"], "'--top' / '-k': expected a whole number of at least 1, got '0'"),
        (["--min-data", "-1"], "'--min-data': expected a finite number of at least 0, got '-1'"),
        (["--format", "xml", "--out", "x.xml"], "'--format' / '-f': 'xml' is not one of csv, parquet, jsonl"),
    ]:
        bad = cli("plan", "--month", M, *args, "--matrices", str(MATRICES))
        assert bad.exit_code == 2, (args, bad.output)
        assert message in bad.stderr, (args, bad.stderr)
    assert "plan_recommendations" not in {r[0] for r in query(cli.db, "SHOW TABLES")}


def test_cli_overrides_apply(cli):
    tie_db(cli.db)
    result = cli("plan", "--month", M, "--rental-change", "1.0:3.0", "--top", "2", "--out", "-",
                 "--matrices", str(MATRICES))
    assert result.exit_code == 0, result.output
    assert [line.split(",")[4] for line in result.stdout.splitlines()[1:]] == ["P9", "P2"]


def test_shipped_plan_yaml_is_spec_defaults():
    config = load_plan_config(MATRICES)
    assert (config.total_change, config.rental_change, config.top, config.min_data_mb) == (
        Window(0.6, 1.5), Window(1.0, 2.0), 1, 5.0)
    assert config.policy == "PLAN_CHANGE" and config.channels == ("inbound", "outbound", "sms")
    assert all(f in config.script for f in ("{plan_name}", "{new_rental}", "{new_total}"))
    assert [str(w) for w in config.sweep_total] == ["0.5:1.3", "0.6:1.3", "0.6:1.5", "0.7:1.5", "0.8:1.2"]
    assert [str(w) for w in config.sweep_rental] == ["1.0:1.5", "1.0:2.0", "1.0:2.5"]


@pytest.mark.parametrize("text, message", [
    ("total_change: '1.5:0.6'\n", "plan.yaml:1 @ total_change: LO (1.5) is greater than HI (0.6)"),
    ("rental_change: 1:2\n", "plan.yaml:1 @ rental_change: expected \"LO:HI\" such as \"0.6:1.5\", got 62 (quote it"),
    ("rental_change: [1, -2]\n", "plan.yaml:1 @ rental_change: HI: must be a positive number, got -2"),
    ("top: 0\n", "plan.yaml:1 @ top: must be a whole number >= 1, got 0"),
    ("top: 1.5\n", "plan.yaml:1 @ top: must be a whole number >= 1, got 1.5"),
    ("min_data_mb: -5\n", "plan.yaml:1 @ min_data_mb: must be a number of MB >= 0, got -5"),
    ("channels: [outbound, fax]\n", "plan.yaml:1 @ channels[1]: unknown channel 'fax'"),
    ("top: 1\n\n# the plan's channels\nchannels:\n  - outbound\n  - fax\n",
     "plan.yaml:6 @ channels[1]: unknown channel 'fax'"),
    ("policy: ''\n", "plan.yaml:1 @ policy: expected a policy id"),
    ("script: '改用{plan}'\n", "plan.yaml:1 @ script: unknown placeholder {plan} (allowed: {plan_name}, {new_rental}, "
                             "{new_total})"),
    ("script: '月租{new_rental:.0f}'\n", "plan.yaml:1 @ script: placeholder {new_rental} takes no format"),
    ("sweep:\n  total_change: ['0.6:1.5', '2:1']\n",
     "plan.yaml:2 @ sweep.total_change[1]: LO (2.0) is greater than HI (1.0)"),
    ("sweep:\n  rental: []\n", "plan.yaml:2 @ sweep: unknown key 'rental' (did you mean 'rental_change'?)"),
    ("top: 1\ntotl_change: '0.6:1.5'\n", "plan.yaml:2: unknown key 'totl_change' (did you mean 'total_change'?)"),
    ("top: [1\n", "plan.yaml:2:1: invalid YAML"),
])
def test_plan_yaml_errors_are_located(tmp_path, text, message):
    (tmp_path / "plan.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_plan_config(tmp_path)
    assert message in info.value.render().replace(str(tmp_path) + "/", "")


def test_plan_yaml_missing_and_partial(tmp_path):
    with pytest.raises(ConfigError, match="missing plan.yaml"):
        load_plan_config(tmp_path)
    (tmp_path / "plan.yaml").write_text("top: 3\ntotal_change: [0.7, 1.3]\n", encoding="utf-8")
    config = load_plan_config(tmp_path)
    assert (config.top, config.total_change, config.rental_change) == (3, Window(0.7, 1.3), Window(1.0, 2.0))
    with pytest.raises(MktoolError, match="^total_change: LO"):
        config.with_overrides(total_change="x:1")


def test_bad_plan_yaml_through_cli(cli, tmp_path):
    make_db(cli.db, [cust("13800000001")], [ZX128, ZX158])
    shutil.copytree(MATRICES, tmp_path / "m")  # the command loads (and validates) the whole rules folder
    (tmp_path / "m" / "plan.yaml").write_text("top: 0\n", encoding="utf-8")
    result = cli("plan", "--month", M, "--matrices", str(tmp_path / "m"))
    assert result.exit_code == 1
    assert f"Error: {tmp_path / 'm' / 'plan.yaml'}:1 @ top: must be a whole number >= 1, got 0" in result.stderr


# -- the SQL ------------------------------------------------------------------------------------------
def test_sql_transpiles_to_spark():
    config = PlanConfig()
    for q in (funnel_query(M, config), recommend_query(M, config),
              sweep_query(M, config, config.sweep_total, config.sweep_rental)):
        spark = sqlglot.transpile(q.sql, read="duckdb", write="spark", unsupported_level=sqlglot.ErrorLevel.RAISE)[0]
        assert "QUALIFY" not in spark.upper()
    for sql in (EXPORT_SQL, f"SELECT {script_sql(config.script)} FROM plan_recommendations"):
        sqlglot.transpile(sql, read="duckdb", write="spark", unsupported_level=sqlglot.ErrorLevel.RAISE)


def test_script_sql_renders_the_phrase(db_path):
    make_db(db_path, [cust("13800000001")], [ZX128, ZX158])
    run_plan(db_path)
    template = "改用{plan_name}，月租{new_rental}元，约{new_total}元/月 (it's {{fine}})"
    assert query(db_path, f"SELECT {script_sql(template)} FROM plan_recommendations") == [
        ("改用自选组合158，月租158.00元，约228.00元/月 (it's {fine})",)]


# -- end to end: ingest → score → plan ---------------------------------------------------------------------
def test_end_to_end_short_history_and_rounded_average(cli, tmp_path):
    """Averages come from the real customer view: over the months present in the window."""
    months = ["2026-08", "2026-09", M]
    x = tmp_path / "extracts"
    subs = [{"msisdn": "13800000001", "month": M}, {"msisdn": "13800000002", "month": M},
            {"msisdn": "13800000003", "month": M, "status": "suspended"},
            {"msisdn": "13800000004", "month": M, "plan_id": "IP58"}]
    write_table(x / f"subscribers_{M}.parquet", "subscribers", subs)
    # 01: three months of 5.93, 5.54, 3.53 MB (average 4.999999999999999 → 5 MB, passes);
    #     bills 128 + 12 data + 10 add-on = 150 every month.
    # 02: joined this month: one month of usage and billing = the SPEC worked example.
    usage = [{"msisdn": "13800000001", "month": m, "data_mb": d} for m, d in zip(months, (5.93, 5.54, 3.53))]
    usage += [{"msisdn": "13800000002", "month": M, "data_mb": 737.93, "voice_out_min": 300.0}]
    usage += month_rows("13800000003", [M]) + month_rows("13800000004", [M])
    billing = month_rows("13800000001", months)
    billing += [{"msisdn": "13800000002", "month": M, "total_fee": 220.0, "rental_fee": 128.0,
                 "voice_overage_fee": 0.0, "data_overage_fee": 62.0, "addon_fee": 30.0}]
    billing += month_rows("13800000003", [M]) + month_rows("13800000004", [M], rental_fee=58.0)
    write_table(x / "usage.parquet", "usage", usage)
    write_table(x / "billing.parquet", "billing", billing)
    plans = [{k: (float(v) if k not in ("plan_id", "plan_name", "family") else v) for k, v in r.items()}
             for r in csv.DictReader(SEED_PLANS.open(encoding="utf-8"))]
    plans = [{k: v for k, v in r.items() if k != "family"} for r in plans]
    plans.append({"plan_id": "IP58", "plan_name": "IP专用58", "monthly_rental": 58.0, "product_status": 2,
                  "is_target": False})
    write_table(x / "plans.parquet", "plans", plans)
    for args in (("ingest", str(x)), ("score", "--month", M)):
        step = cli(*args, "--matrices", str(MATRICES))
        assert step.exit_code == 0, step.output
    result = cli("plan", "--month", M, "--top", "5", "--out", "-", "--matrices", str(MATRICES))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == CSV_HEADER
    # 01 (bill 150, rental 128, add-on 10, 300 min, ~5 MB): FX138 148 → 0.9867; FX158 and ZX158 both
    #    168 → 1.12 (same rental: by plan_id); ZX188 198 → 1.32; FX238 248 → 1.6533 is outside.
    # 02 (bill 220): ZX188 218 → 0.9909; ZX158 227.9997 → 1.0364; FX158 188; FX238 268; FX138 168.
    assert lines[1:] == [
        "13800000001,2026-10,1,ZX128,FX138,138.00,0.00,0.00,148.00,150.00,0.9867,1.0781",
        "13800000001,2026-10,2,ZX128,FX158,158.00,0.00,0.00,168.00,150.00,1.1200,1.2344",
        "13800000001,2026-10,3,ZX128,ZX158,158.00,0.00,0.00,168.00,150.00,1.1200,1.2344",
        "13800000001,2026-10,4,ZX128,ZX188,188.00,0.00,0.00,198.00,150.00,1.3200,1.4688",
        "13800000002,2026-10,1,ZX128,ZX188,188.00,0.00,0.00,218.00,220.00,0.9909,1.4688",
        "13800000002,2026-10,2,ZX128,ZX158,158.00,0.00,40.00,228.00,220.00,1.0364,1.2344",
        "13800000002,2026-10,3,ZX128,FX158,158.00,0.00,0.00,188.00,220.00,0.8545,1.2344",
        "13800000002,2026-10,4,ZX128,FX238,238.00,0.00,0.00,268.00,220.00,1.2182,1.8594",
        "13800000002,2026-10,5,ZX128,FX138,138.00,0.00,0.00,168.00,220.00,0.7636,1.0781",
    ]
    funnel = query(cli.db, "SELECT stage, count FROM funnel_counts WHERE month = ? AND funnel = 'plan' "
                   "ORDER BY stage_no", [M])
    assert funnel == [("base", 4), ("active", 3), ("data_ge_min", 3), ("eligible_plan", 2), ("billable", 2),
                      ("in_rate_window", 2)]
