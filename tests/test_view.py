"""The customer view's SPEC §3 base columns against values computed by hand, and the score model."""

from __future__ import annotations

import datetime as dt
import shutil
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from conftest import write_table

from mktool.ahp import ahp_weights
from mktool.config import shipped_matrices_dir

M, P1, P2, P3 = "2026-10", "2026-09", "2026-08", "2026-07"
A, B, C, D = "13800000001", "13800000002", "13800000003", "13800000004"


def build(folder: Path) -> Path:
    """Four customers; A full history, B only month M (short history), C misses M-1, D left before M."""
    subs = [
        {"msisdn": A, "month": m, "join_date": dt.date(2025, 11, 15)} for m in (P3, P2, P1, M)
    ] + [
        {"msisdn": B, "month": M, "join_date": dt.date(2026, 10, 2), "status": "suspended"},
        {"msisdn": C, "month": M, "join_date": dt.date(2010, 1, 31)},
        {"msisdn": C, "month": P2, "join_date": dt.date(2010, 1, 31)},
        {"msisdn": D, "month": P1},
    ]
    billing = [
        # A: M-3 is outside the window and must not count.
        {"msisdn": A, "month": P3, "total_fee": 999.0, "rental_fee": 999.0, "discount_fee": 999.0},
        {"msisdn": A, "month": P2, "total_fee": 100.0, "rental_fee": 58.0, "voice_overage_fee": 2.0,
         "data_overage_fee": 30.0, "addon_fee": 10.0, "discount_fee": 10.0},
        {"msisdn": A, "month": P1, "total_fee": 120.0, "rental_fee": 58.0, "voice_overage_fee": 4.0,
         "data_overage_fee": 38.0, "addon_fee": 20.0, "discount_fee": 0.0},
        {"msisdn": A, "month": M, "total_fee": 110.0, "rental_fee": 88.0, "voice_overage_fee": 0.0,
         "data_overage_fee": 2.0, "addon_fee": 20.0, "discount_fee": 20.0},
        {"msisdn": B, "month": M, "total_fee": 40.0, "rental_fee": 38.0, "voice_overage_fee": 1.0,
         "data_overage_fee": 0.0, "addon_fee": 1.0, "discount_fee": 4.0},
        {"msisdn": C, "month": P2, "total_fee": 60.0, "rental_fee": 0.0, "voice_overage_fee": 0.0,
         "data_overage_fee": 0.0, "addon_fee": 0.0, "discount_fee": 0.0},
        {"msisdn": C, "month": M, "total_fee": 0.0, "rental_fee": 0.0, "voice_overage_fee": 0.0,
         "data_overage_fee": 0.0, "addon_fee": 0.0, "discount_fee": 0.0},
        {"msisdn": D, "month": P1, "total_fee": 10.0},
    ]
    usage = [
        {"msisdn": A, "month": P3, "voice_out_min": 9999.0, "data_mb": 9999.0},
        {"msisdn": A, "month": P2, "voice_out_min": 300.0, "data_mb": 5.93},
        {"msisdn": A, "month": P1, "voice_out_min": 200.0, "data_mb": 5.54},
        {"msisdn": A, "month": M, "voice_out_min": 100.0, "data_mb": 3.53, "contacts": 50, "contacts_in_net": 20},
        {"msisdn": B, "month": M, "voice_out_min": 12.5, "data_mb": 100.0},
        {"msisdn": C, "month": P2, "voice_out_min": 30.0, "data_mb": 1.0},
        {"msisdn": D, "month": P1},
    ]
    write_table(folder / "subscribers.parquet", "subscribers", subs)
    write_table(folder / "billing.parquet", "billing", billing)
    write_table(folder / "usage.parquet", "usage", usage)
    write_table(folder / "plans.parquet", "plans", [{"plan_id": "ZX128"}])
    return folder


@pytest.fixture
def view(cli, tmp_path):
    assert cli("ingest", str(build(tmp_path / "x"))).exit_code == 0
    result = cli("score", "--month", M)
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(cli.db), read_only=True)
    cur = con.execute("SELECT * FROM customer_view ORDER BY msisdn")
    names = [d[0] for d in cur.description]
    rows = {r[0]: dict(zip(names, r)) for r in cur.fetchall()}
    con.close()
    return rows


def test_one_row_per_subscriber_of_the_month(view):
    assert sorted(view) == [A, B, C]  # D is not a subscriber in M


def test_full_history_customer(view):
    a = view[A]
    assert a["tenure_months"] == 11  # (2026*12+10) - (2025*12+11)
    # money is exact: amounts DECIMAL(18,2), averages DECIMAL(38,6) rounded half away from zero
    assert a["arpu"] == Decimal("110.00")
    assert a["arpu_3m"] == Decimal("110.000000")  # (100 + 120 + 110) / 3
    assert a["rental_3m"] == Decimal("68.000000")  # (58 + 58 + 88) / 3
    assert a["voice_overage_3m"] == Decimal("2.000000")
    assert a["data_overage_3m"] == Decimal("23.333333")  # 70 / 3
    assert a["addon_3m"] == Decimal("16.666667")  # 50 / 3
    assert a["current_total_3m"] == Decimal("110.000000")  # 100, 120, 110 are the three-item sums here
    assert a["return_rate"] == Decimal("90.909091")  # 100 × 300 / 330 = 90.9090…
    assert a["voice_min_3m"] == pytest.approx(200.0)
    assert round(a["data_mb_3m"], 6) == 5.0  # SPEC §5: 5.93, 5.54, 3.53 average to 5 MB
    assert a["months_in_window"] == 3
    assert a["in_net_share"] == pytest.approx(0.4)


def test_short_history_customer(view):
    b = view[B]
    assert b["tenure_months"] == 0
    assert b["status"] == "suspended"
    assert (b["arpu"], b["arpu_3m"], b["rental_3m"]) == (Decimal("40.00"), Decimal("40.000000"), Decimal("38.000000"))
    assert b["current_total_3m"] == Decimal("40.000000")  # 38 + 1 + 0 + 1
    assert b["return_rate"] == Decimal("90.000000")
    assert b["months_in_window"] == 1
    assert b["voice_min_3m"] == 12.5


def test_gap_in_window_and_zero_bill(view):
    c = view[C]
    assert c["tenure_months"] == (2026 * 12 + 10) - (2010 * 12 + 1)
    assert c["arpu"] == Decimal("0.00")
    assert c["arpu_3m"] == Decimal("30.000000")  # two billing months present: 60 and 0
    assert c["return_rate"] == Decimal("100.000000")  # no discount: exactly 100
    assert c["months_in_window"] == 1  # usage only in M-2
    assert c["data_mb_3m"] == 1.0


def test_value_tiers_split_10_20_60_10(cli, tmp_path):
    subs = [{"msisdn": f"1380000{i:04d}", "month": M} for i in range(20)]
    bills = [{"msisdn": f"1380000{i:04d}", "month": M, "total_fee": float(10 * i)} for i in range(20)]
    folder = tmp_path / "t"
    write_table(folder / "subscribers.parquet", "subscribers", subs)
    write_table(folder / "billing.parquet", "billing", bills)
    write_table(folder / "usage.parquet", "usage", [{"msisdn": s["msisdn"], "month": M} for s in subs])
    write_table(folder / "plans.parquet", "plans", [{"plan_id": "ZX128"}])
    assert cli("ingest", str(folder)).exit_code == 0
    assert cli("score", "--month", M).exit_code == 0
    con = duckdb.connect(str(cli.db), read_only=True)
    tiers = dict(con.execute("SELECT value_tier, count(*) FROM customer_view GROUP BY 1").fetchall())
    assert tiers == {"high": 2, "mid_high": 4, "mid": 12, "low": 2}
    # Only arpu differs, so the highest bills are the high tier.
    assert con.execute("SELECT list(total_fee ORDER BY total_fee) FROM customer_view v "
                       "JOIN billing b USING (msisdn, month) "
                       "WHERE value_tier = 'high'").fetchone()[0] == [180.0, 190.0]
    scores = con.execute("SELECT min(value_score), max(value_score) FROM customer_view").fetchone()
    assert 0 <= scores[0] <= scores[1] <= 100


def test_ahp_principal_eigenvector_and_consistency():
    r = ahp_weights([[1, 2, 3], [1 / 2, 1, 2], [1 / 3, 1 / 2, 1]])
    assert [round(w, 4) for w in r.weights] == [0.5396, 0.297, 0.1634]
    assert round(r.lambda_max, 4) == 3.0092
    assert round(r.consistency_ratio, 4) == 0.0079
    bad = ahp_weights([[1, 3, 1 / 3], [1 / 3, 1, 3], [3, 1 / 3, 1]])
    assert bad.consistency_ratio >= 0.10


def _matrices_copy(tmp_path: Path) -> Path:
    target = tmp_path / "matrices"
    shutil.copytree(shipped_matrices_dir(), target)
    return target


def test_inconsistent_pairwise_matrix_is_refused(cli, tmp_path):
    mdir = _matrices_copy(tmp_path)
    text = (mdir / "scores.yaml").read_text(encoding="utf-8")
    text = text.replace("    - [1,   2,   4]\n    - [1/2, 1,   2]\n    - [1/4, 1/2, 1]",
                        "    - [1,   9,   1/9]\n    - [1/9, 1,   9]\n    - [9, 1/9, 1]")
    (mdir / "scores.yaml").write_text(text, encoding="utf-8")
    assert cli("ingest", str(build(tmp_path / "x"))).exit_code == 0
    result = cli("score", "--month", M, "--matrices", str(mdir))
    assert result.exit_code == 1
    assert "scores.yaml:38 @ value.pairwise: consistency ratio" in result.stderr
    assert "is ≥ 0.10" in result.stderr


def test_unknown_column_in_score_expression(cli, tmp_path):
    mdir = _matrices_copy(tmp_path)
    text = (mdir / "scores.yaml").read_text(encoding="utf-8").replace("churn_score >= ${churn_flag_at}",
                                                                      "churn_scor >= 1")
    (mdir / "scores.yaml").write_text(text, encoding="utf-8")
    assert cli("ingest", str(build(tmp_path / "x"))).exit_code == 0
    result = cli("score", "--month", M, "--matrices", str(mdir))
    assert result.exit_code == 1
    assert "scores.yaml:82 @ columns[4].expr (churn_flag): unknown column" in result.stderr
    assert "unknown column 'churn_scor'" in result.stderr


def test_score_needs_the_month_loaded(cli, tmp_path):
    assert cli("ingest", str(build(tmp_path / "x"))).exit_code == 0
    result = cli("score", "--month", "2027-01")
    assert result.exit_code == 1
    assert "subscribers has no rows for month 2027-01" in result.stderr
    assert cli("score", "--month", "2026-13").exit_code == 2  # a usage error, refused by the option's type


def test_score_out_to_stdout_and_params(cli, tmp_path):
    assert cli("ingest", str(build(tmp_path / "x"))).exit_code == 0
    result = cli("score", "--month", M, "--out", "-", "--format", "csv", "--param", "churn_flag_at=0", "--quiet")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("msisdn,month,city,plan_id,status,payment")
    assert len(lines) == 4 and lines[1].startswith(A)
    assert ",true," in lines[1]  # churn_flag true for everyone at threshold 0
    # --quiet keeps warnings (vas is not loaded here) but no info lines or tables.
    assert result.stderr.splitlines() == [
        "Warning: table vas is not loaded: value-added-service columns (vas_active, has_*) are 0/false"]


def exact6(numerator: int, denominator: int) -> Decimal:
    """numerator / denominator rounded half away from zero to 6 decimals, computed exactly in integers
    (the fraction need not be reduced; integers, not Fraction objects: the at-scale test calls this 450k times)."""
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    units = (2 * abs(numerator) * 10**6 + denominator) // (2 * denominator)
    return Decimal(units if numerator >= 0 else -units).scaleb(-6)


def test_window_sums_are_taken_in_month_order_at_scale(cli, tmp_path):
    """Regression: avg() in a parallel GROUP BY added a customer's months in thread order, so
    arpu_3m and return_rate differed in the last bit between runs (and broke percentile ties).
    With 150k customers per month (several row groups, two threads) every average must equal
    the sequential sum oldest month first, and two runs must give the same view."""
    folder = tmp_path / "x"
    folder.mkdir()
    n = 150_000
    for k, month in enumerate((P2, P1, M)):
        fee = f"(hash(i, {k}) % 40000) / 100.0 + 0.01"
        half_fee = f"(hash(i, {k}) % 40000 // 2) / 100.0"  # whole fen, like every amount of the contract
        duckdb.execute(f"""COPY (SELECT '138' || lpad(CAST(i AS VARCHAR), 8, '0') AS msisdn, '{month}' AS month,
            {fee} AS total_fee, {half_fee} AS rental_fee, 0.1 AS voice_overage_fee, 0.2 AS data_overage_fee,
            0.3 AS addon_fee, 0.0 AS ld_fee, CASE WHEN i % 2 = 0 THEN 0.0 ELSE 1.11 END AS discount_fee
            FROM range({n}) t(i)) TO '{folder}/billing_{month}.parquet' (FORMAT parquet)""")
        duckdb.execute(f"""COPY (SELECT '138' || lpad(CAST(i AS VARCHAR), 8, '0') AS msisdn, '{month}' AS month,
            (hash(i, {k}, 1) % 100000) / 100.0 AS voice_out_min, 1.0 AS voice_local_min, 0.0 AS voice_ld_out_min,
            0.0 AS voice_ld_in_min, 0.0 AS voice_roam_min, CAST(NULL AS VARCHAR) AS ld_top_province, 0 AS sms_count,
            (hash(i, {k}, 2) % 100000) / 100.0 AS data_mb, 1 AS contacts, 1 AS contacts_in_net
            FROM range({n}) t(i)) TO '{folder}/usage_{month}.parquet' (FORMAT parquet)""")
    duckdb.execute(f"""COPY (SELECT '138' || lpad(CAST(i AS VARCHAR), 8, '0') AS msisdn, '{M}' AS month, 'HZ' AS city,
        'ZX128' AS plan_id, DATE '2020-01-01' AS join_date, 'active' AS status, 'postpaid' AS payment,
        false AS vnet, 0.0 AS balance FROM range({n}) t(i)) TO '{folder}/subscribers_{M}.parquet' (FORMAT parquet)""")
    write_table(folder / "plans.parquet", "plans", [{"plan_id": "ZX128"}])
    assert cli("ingest", str(folder)).exit_code == 0
    # The expected view, from the ingested bills and usage (score does not change them): computed
    # once and checked against the view of both runs.
    con = duckdb.connect(str(cli.db), read_only=True)
    bills = con.execute("SELECT msisdn, list(total_fee ORDER BY month), list(discount_fee ORDER BY month), "
                        "list([rental_fee, voice_overage_fee, data_overage_fee, addon_fee] ORDER BY month) "
                        "FROM billing GROUP BY msisdn").fetchall()
    data = dict(con.execute("SELECT msisdn, list(data_mb ORDER BY month) FROM usage GROUP BY msisdn").fetchall())
    con.close()
    expected = {}
    for msisdn, totals, discounts, three_item in bills:
        # money: exact sums in whole fen, averages rounded half away from zero to 6 decimals;
        # usage: the sequential double sum, oldest month first
        s, d = (sum(round(v * 100) for v in vs) for vs in (totals, discounts))  # fen
        c = sum(round(v * 100) for fees in three_item for v in fees)
        m = 0.0
        for z in data[msisdn]:
            m += z
        expected[msisdn] = (exact6(s, 300), exact6(100 * (s - d), s), exact6(c, 300), m / 3)
    digests = []
    for _ in range(2):
        assert cli("score", "--month", M, "--quiet").exit_code == 0
        con = duckdb.connect(str(cli.db), read_only=True)
        digests.append(con.execute("SELECT sum(hash(columns(*))) FROM customer_view").fetchone())
        view = dict(((r[0]), r[1:]) for r in con.execute(
            "SELECT msisdn, arpu_3m, return_rate, current_total_3m, data_mb_3m FROM customer_view").fetchall())
        con.close()
        assert len(expected) == n
        wrong = sum(view[msisdn] != want for msisdn, want in expected.items())
        assert wrong == 0
    assert digests[0] == digests[1]


def test_extra_subscriber_columns_do_not_shadow_computed_ones(cli, tmp_path):
    """An extract's extra columns are kept; one named like a computed column (arpu, contacts)
    must not replace it in the view."""
    folder = build(tmp_path / "x")
    subs = [{"msisdn": A, "month": M, "join_date": dt.date(2025, 11, 15), "arpu": 5.0, "contacts": 999}]
    write_table(folder / "subscribers.parquet", "subscribers", subs)
    assert cli("ingest", str(folder)).exit_code == 0
    assert cli("score", "--month", M).exit_code == 0
    con = duckdb.connect(str(cli.db), read_only=True)
    assert con.execute("SELECT arpu, contacts FROM customer_view WHERE msisdn = ?", [A]).fetchone() == (110.0, 50)
