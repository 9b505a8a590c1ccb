"""The current plan's allowances and the saturations (流量饱和度 / 语音饱和度, seed 000) in the
customer view, against values computed by hand; and a rule reading them, through `mktool check`
and `mktool test`.

data_saturation = data_mb_3m / included_data_mb and voice_saturation = voice_min_3m /
included_voice_min of the plan the subscriber is on in month M: the view's 3-month averages
(over the months with a value), each read to 6 decimals, the quotient rounded half away from
zero to 4 decimals (DECIMAL(38,4)); NULL for an unknown plan, an allowance of 0, or no usage.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import MATRICES, write_table
from typer.testing import CliRunner

from mktool.cli import app
from mktool.dialect import quantity_ratio
from mktool.ruletest import run_tests
from mktool.ruletest.customers import MemoryDatabase, build_customer_view
from mktool.scoremodel import SATURATION_SCALE, load_score_model

M, P1, P2 = "2026-10", "2026-09", "2026-08"
FULL, ONE, GAP, NONE, ZERO, VOICE_ONLY, GONE, HALF, TIE, AVG5 = (f"1380000{i:04d}" for i in range(1, 11))

PLANS = [
    {"plan_id": "P600", "included_data_mb": 600.0, "included_voice_min": 650.0},
    {"plan_id": "UNLIMITED", "included_data_mb": 0.0, "included_voice_min": 0.0},  # no allowance to measure
    {"plan_id": "IPCARD", "included_data_mb": 0.0, "included_voice_min": 100.0},  # voice only
    {"plan_id": "P1000", "included_data_mb": 1000.0, "included_voice_min": 3.0},
    {"plan_id": "P2048", "included_data_mb": 2048.0, "included_voice_min": 500.0},
    {"plan_id": "TINY", "included_data_mb": 5.0, "included_voice_min": 10.0},
]

# (msisdn, plan in M, {month: (data_mb, voice_out_min)}); subscribers in every month they have usage, and M
CUSTOMERS: list[tuple[str, str, dict[str, tuple[float, float]]]] = [
    (FULL, "P600", {P2: (500.0, 300.0), P1: (600.0, 200.0), M: (700.0, 100.0)}),
    (ONE, "P600", {M: (540.0, 65.0)}),  # joined in M: the average is M's value, not a third of it
    (GAP, "P600", {P2: (300.0, 100.0), M: (600.0, 200.0)}),  # no usage row in M-1: two months
    (NONE, "P600", {}),  # no usage row in the window
    (ZERO, "UNLIMITED", {M: (100.0, 50.0)}),
    (VOICE_ONLY, "IPCARD", {M: (100.0, 50.0)}),
    (GONE, "OLD_PLAN", {M: (100.0, 50.0)}),  # plan id not in the catalogue
    (HALF, "P1000", {M: (500.05, 1.0)}),  # 0.50005 exactly: half away → 0.5001 (DuckDB's round gives 0.5000)
    (TIE, "P2048", {M: (504.32, 250.0)}),  # 0.24625 exactly → 0.2463 (DuckDB's round gives 0.2462)
    (AVG5, "TINY", {P2: (5.93, 10.0), P1: (5.54, 10.0), M: (3.53, 10.0)}),  # 4.999999999999999 as a DOUBLE
]


def build(folder: Path) -> Path:
    subs, usage, billing = [], [], []
    for msisdn, plan, months in CUSTOMERS:
        for month in sorted(set(months) | {M}):
            subs.append({"msisdn": msisdn, "month": month, "plan_id": plan, "join_date": dt.date(2020, 1, 15)})
            billing.append({"msisdn": msisdn, "month": month})
        for month, (data, voice) in months.items():
            usage.append({"msisdn": msisdn, "month": month, "data_mb": data, "voice_out_min": voice})
    # a plan change in M counts from M: FULL was on TINY before (its saturation reads P600's allowance)
    subs = [{**s, "plan_id": "TINY"} if s["msisdn"] == FULL and s["month"] != M else s for s in subs]
    write_table(folder / "subscribers.parquet", "subscribers", subs)
    write_table(folder / "usage.parquet", "usage", usage)
    write_table(folder / "billing.parquet", "billing", billing)
    write_table(folder / "plans.parquet", "plans", PLANS)
    return folder


@pytest.fixture(scope="module")
def view(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("saturation")
    db = tmp / "t.duckdb"
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(build(tmp / "x")), "--db", str(db)]).exit_code == 0
    result = runner.invoke(app, ["score", "--month", M, "--db", str(db)])
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * FROM customer_view ORDER BY msisdn")
        names = [d[0] for d in cur.description]
        rows = {r[0]: dict(zip(names, r)) for r in cur.fetchall()}
        types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = 'customer_view'").fetchall())
    finally:
        con.close()
    rows["_types"] = types
    return rows


def test_types(view: dict[str, dict[str, Any]]) -> None:
    types = view["_types"]
    assert types["data_saturation"] == types["voice_saturation"] == "DECIMAL(38,4)"
    assert types["included_data_mb"] == types["included_voice_min"] == "DOUBLE"  # as the plans extract has them


def test_three_months_of_usage(view: dict[str, dict[str, Any]]) -> None:
    row = view[FULL]
    assert (row["included_data_mb"], row["included_voice_min"]) == (600.0, 650.0)  # M's plan, not M-1's TINY
    assert row["data_saturation"] == Decimal("1.0000")  # (500 + 600 + 700) / 3 = 600 of 600
    assert row["voice_saturation"] == Decimal("0.3077")  # (300 + 200 + 100) / 3 = 200 of 650 = 0.307692…


def test_one_month_of_usage_averages_over_that_month(view: dict[str, dict[str, Any]]) -> None:
    row = view[ONE]
    assert row["data_saturation"] == Decimal("0.9000")  # 540 / 600, not (540 / 3) / 600
    assert row["voice_saturation"] == Decimal("0.1000")  # 65 / 650


def test_a_month_without_usage_is_left_out_of_the_average(view: dict[str, dict[str, Any]]) -> None:
    row = view[GAP]
    assert row["data_saturation"] == Decimal("0.7500")  # (300 + 600) / 2 = 450 of 600
    assert row["voice_saturation"] == Decimal("0.2308")  # (100 + 200) / 2 = 150 of 650 = 0.230769…


def test_no_usage_in_the_window_is_null(view: dict[str, dict[str, Any]]) -> None:
    row = view[NONE]
    assert row["included_data_mb"] == 600.0
    assert row["data_saturation"] is None and row["voice_saturation"] is None


def test_a_zero_allowance_is_null(view: dict[str, dict[str, Any]]) -> None:
    row = view[ZERO]
    assert (row["included_data_mb"], row["included_voice_min"]) == (0.0, 0.0)
    assert row["data_saturation"] is None and row["voice_saturation"] is None
    row = view[VOICE_ONLY]  # a plan with minutes and no data: only the data saturation is NULL
    assert row["data_saturation"] is None and row["voice_saturation"] == Decimal("0.5000")


def test_an_unknown_plan_has_no_allowances(view: dict[str, dict[str, Any]]) -> None:
    row = view[GONE]
    assert row["plan_id"] == "OLD_PLAN" and row["plan_name"] is None
    assert row["included_data_mb"] is None and row["included_voice_min"] is None
    assert row["data_saturation"] is None and row["voice_saturation"] is None


def test_rounding_at_the_fourth_decimal_is_half_away_from_zero(view: dict[str, dict[str, Any]]) -> None:
    assert view[HALF]["data_saturation"] == Decimal("0.5001")  # 500.05 / 1000 = 0.50005
    assert view[HALF]["voice_saturation"] == Decimal("0.3333")  # 1 / 3
    assert view[TIE]["data_saturation"] == Decimal("0.2463")  # 504.32 / 2048 = 0.24625
    assert view[TIE]["voice_saturation"] == Decimal("0.5000")
    con = duckdb.connect()  # what the engine's own rounding would have given: the reason for the helper
    assert con.execute("SELECT round(500.05::DOUBLE / 1000, 4), round(504.32::DOUBLE / 2048, 4)").fetchone() == \
        (0.5, 0.2462)


def test_the_average_is_read_to_six_decimals_first(view: dict[str, dict[str, Any]]) -> None:
    row = view[AVG5]
    assert row["data_mb_3m"] < 5.0  # (5.93 + 5.54 + 3.53) / 3 in DOUBLE is 4.999999999999999
    assert row["data_saturation"] == Decimal("1.0000")  # read as 5.000000 MB: exactly the allowance
    assert row["voice_saturation"] == Decimal("1.0000")


# -- the helper itself, against exact fractions ---------------------------------------------------------
def reference(use: float | None, allowance: float | None, scale: int = SATURATION_SCALE) -> Decimal | None:
    """The definition in Python: both read to 6 decimals half away from zero, the exact quotient half away."""
    if use is None or allowance is None:
        return None
    u, a = _read6(use), _read6(allowance)
    if a <= 0:
        return None
    q = abs(u / a) * 10 ** scale
    units = int(q + Fraction(1, 2))  # floor(q + 1/2) of a non-negative quotient: half away from zero
    return Decimal(-units if u < 0 else units).scaleb(-scale)


def _read6(x: float) -> Fraction:
    units = int(Fraction(abs(x)) * 10 ** 6 + Fraction(1, 2))  # the exact decimal value of the DOUBLE, half away
    return Fraction(-units if x < 0 else units, 10 ** 6)


@pytest.mark.parametrize(("use", "allowance", "expected"), [
    (450.45, 1000.0, "0.4505"), (0.5, 3.0, "0.1667"), (2.0, 3.0, "0.6667"), (0.00005, 1.0, "0.0001"),
    (0.00004, 1.0, "0.0000"), (1.0, 4e-7, None), (1.0, 6e-7, "1000000.0000"), (1.0, -5.0, None),
    (None, 5.0, None), (5.0, None, None), (5.0, 1e13, "0.0000"), (1e300, 1e-5, None),
    (-0.00005, 1.0, "-0.0001"), (-1.0, 3.0, "-0.3333"), (1e9, 2.0, "500000000.0000"),
])
def test_quantity_ratio(use: float | None, allowance: float | None, expected: str | None) -> None:
    con = duckdb.connect()
    got = con.execute(f"SELECT {quantity_ratio('$u', '$a', SATURATION_SCALE)}", {"u": use, "a": allowance}).fetchone()
    assert got == (None if expected is None else Decimal(expected),)
    if expected is not None and abs(use or 0) < 1e8 and (allowance or 0) < 1e12:
        assert reference(use, allowance) == Decimal(expected)


def test_quantity_ratio_agrees_with_exact_fractions_on_many_values() -> None:
    rng = random.Random(14)
    pairs = [(round(rng.uniform(0, 20000), rng.choice((0, 1, 2, 3))), float(rng.choice((50, 150, 300, 600, 1024,
              2048, 3072, 6144, 11264, 3, 7)))) for _ in range(3000)]
    pairs += [(a * k / 10000, float(a)) for a in (1000, 2048, 650) for k in range(1, 400)]  # many exact ties
    con = duckdb.connect()
    con.execute("CREATE TABLE t (i INTEGER, u DOUBLE, a DOUBLE)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, u, a) for i, (u, a) in enumerate(pairs)])
    got = dict(con.execute(f"SELECT i, {quantity_ratio('u', 'a', SATURATION_SCALE)} FROM t").fetchall())
    bad = [(u, a, got[i], reference(u, a)) for i, (u, a) in enumerate(pairs) if got[i] != reference(u, a)]
    assert bad == []


def test_quantity_ratio_refuses_a_scale_it_cannot_keep_exact() -> None:
    with pytest.raises(ValueError, match="0 to 12 decimals"):
        quantity_ratio("u", "a", 13)


# -- in rules: the sandbox knows the columns; `mktool check` and `mktool test` -----------------------------
RULE = """\
  - id: N9
    doc: 90% of the plan's data used on average (流量饱和度 >= 90%), light voice use -> data pack
    when: data_saturation >= 0.9 AND voice_saturation < 0.5 AND handset_gen = '5G'
    policy: MI_PACK_20
    script: 流量快用完了：20元手机上网包
    channels: [sms]
"""

CASES = """\
month: "2026-10"
matrix: new_service
customer: {handset_gen: 5G, has_mobile_internet: true}
cases:
  - case: 540 of 600 MB is 0.9000
    customer: {data_mb_3m: 540}
    expect: [{policy: MI_PACK_20, rule: N9}]
  - case: 539.97 of 600 MB is 0.89995, which rounds half away to 0.9000
    customer: {data_mb_3m: 539.97}
    expect: [{policy: MI_PACK_20, rule: N9}]
  - case: 539.96 of 600 MB is 0.8999
    customer: {data_mb_3m: 539.96}
    expect: no offer
  - case: the voice saturation is the plan's too (325 of 650 minutes is 0.5000)
    customer: {data_mb_3m: 600, voice_min_3m: 325}
    expect: no offer
  - case: a plan the catalogue does not know has no saturation
    customer: {data_mb_3m: 600, included_data_mb: null, included_voice_min: null}
    expect: no offer
  - case: a given saturation is used as given
    customer: {data_mb_3m: 10, data_saturation: 0.95}
    expect: [{policy: MI_PACK_20, rule: N9}]
"""


@pytest.fixture
def matrices(tmp_path: Path) -> Path:
    folder = tmp_path / "matrices"
    shutil.copytree(MATRICES, folder)
    path = folder / "new_service.yaml"
    path.write_text(path.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + RULE, encoding="utf-8")
    (folder / "tests" / "saturation.yaml").write_text(CASES, encoding="utf-8")
    return folder


def test_check_accepts_a_rule_on_saturation(cli: Any, matrices: Path) -> None:
    result = cli("check", "--matrices", str(matrices))
    assert result.exit_code == 0, result.output


def test_check_refuses_a_saturation_compared_with_text(cli: Any, matrices: Path) -> None:
    path = matrices / "new_service.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("data_saturation >= 0.9", "data_saturation >= 'x'"),
                    encoding="utf-8")
    result = cli("check", "--matrices", str(matrices))
    assert result.exit_code == 1, result.output
    assert "(rule N9): 'x' is used as a DECIMAL(38, 4) here" in result.output, result.output


def test_rule_cases_on_saturation_pass(matrices: Path) -> None:
    run = run_tests(matrices, pattern="saturation.yaml")
    assert run.rule_errors == [] and len(run.results) == 6, run.rule_errors
    assert run.failed == [], [r.message for r in run.failed]


def test_case_customer_derives_the_saturations() -> None:
    model = load_score_model(MATRICES)
    with MemoryDatabase() as db:
        build_customer_view(db.c, model, M, [
            ("13900000001", {}),  # the default customer: 600 of 600 MB, 300 of 650 minutes
            ("13900000002", {"data_mb_3m": 539.97, "included_voice_min": 0.0}),
            ("13900000003", {"voice_saturation": 2.5}),
        ])
        rows = db.c.execute("SELECT msisdn, data_saturation, voice_saturation FROM customer_view "
                            "ORDER BY msisdn").fetchall()
    assert rows == [("13900000001", Decimal("1.0000"), Decimal("0.4615")),
                    ("13900000002", Decimal("0.9000"), None),
                    ("13900000003", Decimal("1.0000"), Decimal("2.5000"))]

