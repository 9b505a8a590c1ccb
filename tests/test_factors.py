"""`mktool factors` (issue 15 item 1, /work/report-definitions.md §1) on crafted views, worked by hand.

Each database is written straight into DuckDB: a customer_view with only the columns a test
needs, and the subscribers of M (bookkeeping only) and M+1 (the churn label). M = 2026-10.

The hand-computed example (``EXAMPLE``, --bins 2): two cohorts, a numeric factor ``usage`` and a
categorical one ``payment`` (``status`` is a categorical factor too, like every VARCHAR column);
``join_date`` (DATE) and ``month_end`` are not factors.

    no  cohort    status   usage payment   M+1      churned
     1  under_6m  active      1  prepaid   absent   yes
     2  under_6m  active      2  postpaid  closed   yes
     3  under_6m  active      2  NULL      active   no
     4  under_6m  NULL        3  postpaid  active   no    (a NULL status is not closed: in the base)
     5  over_12m  active     10  prepaid   active   no
     6  over_12m  active     20  prepaid   absent   yes
     7  over_12m  active     20  postpaid  active   no
     8  over_12m  active     20  postpaid  active   no
     9  over_12m  active     30  postpaid  closed   yes
    10  over_12m  active     30  postpaid  active   no
    11  over_12m  active   NULL  prepaid   absent   yes
    12  over_12m  closed   1000  prepaid   absent   -     (closed in M: not in the base)

Bins: r = 1 + the cohort's values below v, bin = ⌊(r − 1)·2 / n⌋ + 1.
* under_6m, n = 4: 1 → r 1 → bin 1; 2, 2 → r 2 → ⌊2/4⌋ + 1 = 1; 3 → r 4 → ⌊6/4⌋ + 1 = 2. The two 2s
  sit at positions 2 and 3, across the edge of two equal halves: both go to bin 1 ({1, 2, 2}, {3}).
* over_12m, n = 6 (11 is NULL): 10 → r 1 → 1; 20 ×3 → r 2 → ⌊2/6⌋ + 1 = 1; 30 ×2 → r 5 → ⌊8/6⌋ + 1 = 2.
  The three 20s fill positions 2–4 across the edge after position 3: bins {10, 20, 20, 20}, {30, 30},
  and (null) {11}.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import FIXTURES, MATRICES

from mktool.config import Settings
from mktool.database import Database
from mktool.errors import StateError, UsageError
from mktool.evaluate import evaluate_churn
from mktool.factors import (
    Factor,
    Group,
    cohorts_query,
    factors_csv,
    factors_query,
    information_gain,
    rank_factors,
    shown_bound,
)
from mktool.project import load_project

M, N = "2026-10", "2026-11"
L3, L7 = math.log2(3), math.log2(7)

#: columns of the example view besides msisdn, month, status and tenure_cohort
EXAMPLE_COLUMNS = {"usage": "INTEGER", "payment": "VARCHAR", "join_date": "DATE", "month_end": "DATE"}
# (no, cohort, status, usage, payment, status in M+1 or None when absent)
EXAMPLE: list[tuple[Any, ...]] = [
    (1, "under_6m", "active", 1, "prepaid", None),
    (2, "under_6m", "active", 2, "postpaid", "closed"),
    (3, "under_6m", "active", 2, None, "active"),
    (4, "under_6m", None, 3, "postpaid", "active"),
    (5, "over_12m", "active", 10, "prepaid", "active"),
    (6, "over_12m", "active", 20, "prepaid", None),
    (7, "over_12m", "active", 20, "postpaid", "active"),
    (8, "over_12m", "active", 20, "postpaid", "active"),
    (9, "over_12m", "active", 30, "postpaid", "closed"),
    (10, "over_12m", "active", 30, "postpaid", "active"),
    (11, "over_12m", "active", None, "prepaid", None),
    (12, "over_12m", "closed", 1000, "prepaid", None),
]


def c(n: int) -> str:
    return f"139{n:08d}"


def make_db(path: Path, columns: dict[str, str], customers: Sequence[tuple[Any, ...]], *,
            with_next: bool = True) -> Path:
    """customer_view (msisdn, month, status, tenure_cohort, *columns) and subscribers of M and M+1.
    Each customer is (no, cohort, status, *values of columns in order, status in M+1 or None); columns
    without a value (the last ones) are NULL."""
    con = duckdb.connect(str(path))
    extra = "".join(f", {duckdb_ident(name)} {type_}" for name, type_ in columns.items())
    con.execute(f"CREATE TABLE customer_view (msisdn VARCHAR, month VARCHAR, status VARCHAR, "
                f"tenure_cohort VARCHAR{extra})")
    marks = ", ".join("?" * (4 + len(columns)))
    padded = [(no, cohort, status, *values, *[None] * (len(columns) - len(values)))
              for no, cohort, status, *values, _ in customers]
    con.executemany(f"INSERT INTO customer_view VALUES ({marks})",
                    [(c(no), M, status, cohort, *values) for no, cohort, status, *values in padded])
    # another month's view must not leak in (the first customer again, in another cohort)
    if padded:
        no, _, status, *values = padded[0]
        con.execute(f"INSERT INTO customer_view VALUES ({marks})", [c(no), "2026-09", status, "6_12m", *values])
    con.execute("CREATE TABLE subscribers (msisdn VARCHAR, month VARCHAR, status VARCHAR)")
    con.executemany("INSERT INTO subscribers VALUES (?, ?, ?)",
                    [(c(no), M, status or "active") for no, _, status, *_ in customers])
    stayed = [(c(no), N, after) for no, *_, after in customers if after is not None]
    if with_next and stayed:
        con.executemany("INSERT INTO subscribers VALUES (?, ?, ?)", stayed)
    if with_next:
        con.execute("INSERT INTO subscribers VALUES (?, ?, 'active')", [c(99_999), N])  # a new joiner in M+1
    con.close()
    return path


def duckdb_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def settings(db: Path) -> Settings:
    return Settings(db_path=db, memory_limit="1GB", threads=2)


@pytest.fixture(scope="module")
def project() -> Any:
    return load_project(MATRICES)


@pytest.fixture(scope="module")
def example_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_db(tmp_path_factory.mktemp("factors") / "example.duckdb", EXAMPLE_COLUMNS, EXAMPLE)


def ranked(db: Path, project: Any, **options: Any) -> dict[str, Any]:
    with Database(settings(db), write=False) as database:
        return rank_factors(database, project, M, **options).document()


def group(bin_: str, label: str, low: Any, high: Any, customers: int, churned: int,
          churn_rate: float | None) -> dict[str, Any]:
    return {"bin": bin_, "label": label, "low": low, "high": high, "customers": customers, "churned": churned,
            "churn_rate": churn_rate}


def cat(value: str, customers: int, churned: int, churn_rate: float) -> dict[str, Any]:
    return group(value, value, None, None, customers, churned, churn_rate)


def factor(rank: int, name: str, kind: str, gain: float, bins: list[dict[str, Any]]) -> dict[str, Any]:
    return {"rank": rank, "factor": name, "kind": kind, "information_gain": gain, "groups": len(bins), "bins": bins}


def h(p: float) -> float:
    """Binary entropy in bits, written out here apart from mktool's own."""
    return sum(-x * math.log2(x) for x in (p, 1 - p) if x > 0)


# Hand computation (bits). H(1/2) = 1, H(2/3) = H(1/3) = log2 3 − 2/3, H(1/4) = 2 − ¾·log2 3,
# H(3/7) = log2 7 − (3/7)·log2 3 − 8/7.
# under_6m: 4 customers, 2 churned (1, 2): entropy 1.
#   usage:   {1, 2, 2}: 2 of 3, {3}: 0 of 1 → IG = 1 − ¾·H(2/3) = 1 − ¾·log2 3 + ½ = 3/2 − ¾·log2 3 = 0.311278
#   payment: postpaid {2, 4}: 1 of 2, prepaid {1}: 1 of 1, (null) {3}: 0 of 1 → IG = 1 − ½·1 = 0.5
#   status (a VARCHAR column like any other): active {1, 2, 3}: 2 of 3, (null) {4}: 0 of 1 → the usage split
# over_12m: 7 customers (12 is closed in M), 3 churned (6, 9, 11): entropy H(3/7) = 0.985228.
#   usage:   {10, 20, 20, 20}: 1 of 4, {30, 30}: 1 of 2, (null) {11}: 1 of 1
#            IG = H(3/7) − (4/7)·H(1/4) − (2/7)·1 − 0 = log2 7 − 18/7 = 0.235926
#   payment: prepaid {5, 6, 11}: 2 of 3, postpaid {7, 8, 9, 10}: 1 of 4
#            IG = H(3/7) − (3/7)·H(2/3) − (4/7)·H(1/4) = log2 7 − (3/7)·log2 3 − 2 = 0.128085
#   status:  active {5 … 11}: one group → IG = 0
GAIN_UNDER_USAGE = 3 / 2 - 3 / 4 * L3
GAIN_OVER_USAGE = L7 - 18 / 7
GAIN_OVER_PAYMENT = L7 - 3 / 7 * L3 - 2
ENTROPY_OVER = L7 - 3 / 7 * L3 - 8 / 7

EXPECTED = {
    "month": M, "next_month": N, "bins": 2, "top": None,
    "cohorts": [
        {"cohort": "under_6m", "customers": 4, "churned": 2, "churn_rate": 0.5, "entropy": 1.0, "factors": [
            factor(1, "payment", "categorical", 0.5, [
                cat("postpaid", 2, 1, 0.5), cat("prepaid", 1, 1, 1.0), cat("(null)", 1, 0, 0.0)]),
            # status ties with usage to the last bit (the same split): the name decides
            factor(2, "status", "categorical", round(GAIN_UNDER_USAGE, 6), [
                cat("active", 3, 2, 0.666667), cat("(null)", 1, 0, 0.0)]),
            factor(3, "usage", "numeric", round(GAIN_UNDER_USAGE, 6), [
                group("1", "1 – 2", 1, 2, 3, 2, 0.666667), group("2", "3 – 3", 3, 3, 1, 0, 0.0)]),
        ]},
        {"cohort": "over_12m", "customers": 7, "churned": 3, "churn_rate": 0.428571, "entropy": round(ENTROPY_OVER, 6),
         "factors": [
             factor(1, "usage", "numeric", round(GAIN_OVER_USAGE, 6), [
                 group("1", "10 – 20", 10, 20, 4, 1, 0.25), group("2", "30 – 30", 30, 30, 2, 1, 0.5),
                 group("(null)", "(null)", None, None, 1, 1, 1.0)]),
             factor(2, "payment", "categorical", round(GAIN_OVER_PAYMENT, 6), [
                 cat("postpaid", 4, 1, 0.25), cat("prepaid", 3, 2, 0.666667)]),
             factor(3, "status", "categorical", 0.0, [cat("active", 7, 3, 0.428571)]),
         ]},
    ],
    "skipped": [],
}


def test_hand_computed_values_are_what_the_comment_says() -> None:
    """The closed forms above against the definition, and their 6-decimal values."""
    assert math.isclose(GAIN_UNDER_USAGE, 1 - 3 / 4 * h(2 / 3), abs_tol=1e-12)
    assert math.isclose(GAIN_OVER_USAGE, h(3 / 7) - 4 / 7 * h(1 / 4) - 2 / 7 * h(1 / 2), abs_tol=1e-12)
    assert math.isclose(GAIN_OVER_PAYMENT, h(3 / 7) - 3 / 7 * h(2 / 3) - 4 / 7 * h(1 / 4), abs_tol=1e-12)
    assert math.isclose(ENTROPY_OVER, h(3 / 7), abs_tol=1e-12)
    assert [round(x, 6) for x in (GAIN_UNDER_USAGE, GAIN_OVER_USAGE, GAIN_OVER_PAYMENT, ENTROPY_OVER)] == [
        0.311278, 0.235926, 0.128085, 0.985228]


def test_hand_computed_entropy_example(example_db: Path, project: Any) -> None:
    assert ranked(example_db, project, bins=2, top=None) == EXPECTED


def test_information_gain_of_the_counts() -> None:
    # over_12m's usage from its (churned, customers) groups, in any order: one fsum of all the terms
    groups = [(1, 4), (1, 2), (1, 1)]
    assert round(information_gain(3, 7, groups), 6) == round(GAIN_OVER_USAGE, 6)
    assert information_gain(3, 7, groups) == information_gain(3, 7, groups[::-1])
    assert information_gain(0, 5, [(0, 2), (0, 3)]) == 0.0  # nobody churned: no uncertainty to reduce
    assert information_gain(2, 4, [(2, 2), (0, 2)]) == 1.0  # a perfect split removes all of it


def test_next_month_not_loaded_is_refused(tmp_path: Path, project: Any) -> None:
    db = make_db(tmp_path / "no_next.duckdb", EXAMPLE_COLUMNS, EXAMPLE, with_next=False)
    with Database(settings(db), write=False) as database, pytest.raises(StateError) as err:
        rank_factors(database, project, M)
    assert ("factors need 2026-11's subscribers for the churn label: ingest them (mktool ingest "
            "subscribers_2026-11.parquet), then run again") in err.value.render()


def test_cli_refuses_without_next_month_with_exit_1(cli, tmp_path: Path) -> None:
    db = make_db(tmp_path / "no_next.duckdb", EXAMPLE_COLUMNS, EXAMPLE, with_next=False)
    result = cli("factors", "--month", M, db_path=db)
    assert result.exit_code == 1
    assert "Error:" in result.output and "factors need 2026-11's subscribers for the churn label" in result.output
    assert "Traceback" not in result.output


def test_cli_json_is_the_document(cli, example_db: Path) -> None:
    result = cli("factors", "--month", M, "--bins", "2", "--top", "0", "--format", "json", db_path=example_db)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == EXPECTED


def test_csv_has_a_row_per_cohort_factor_and_group(example_db: Path, project: Any) -> None:
    with Database(settings(example_db), write=False) as database:
        text = factors_csv(rank_factors(database, project, M, bins=2))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == (3 + 2 + 2) + (3 + 2 + 1)
    assert rows[5] == {"cohort": "under_6m", "rank": "3", "factor": "usage", "kind": "numeric",
                       "information_gain": "0.311278", "bin": "1", "label": "1 – 2", "low": "1", "high": "2",
                       "customers": "3", "churned": "2", "churn_rate": "0.666667"}


def test_top_keeps_the_best_of_each_cohort(example_db: Path, project: Any) -> None:
    one = ranked(example_db, project, bins=2, top=1)
    assert one["top"] == 1
    assert [[f["factor"] for f in c["factors"]] for c in one["cohorts"]] == [["payment"], ["usage"]]
    assert one["cohorts"][1]["factors"][0] == EXPECTED["cohorts"][1]["factors"][0]
    assert ranked(example_db, project, bins=2, top=0) == EXPECTED  # 0: every factor, shown as no limit
    default = ranked(example_db, project, bins=2)
    assert default["top"] == 10 and default["cohorts"] == EXPECTED["cohorts"]  # 3 factors < 10


def test_ties_share_a_bin_and_an_empty_bin_is_not_listed(tmp_path: Path, project: Any) -> None:
    """--bins 4 over 8 customers: six 5s (r = 1 → bin 1), 7 (r = 7 → ⌊6·4/8⌋ + 1 = 4), 8 (r = 8 → ⌊7·4/8⌋ + 1 = 4).
    Positions 2–6 would fill bins 1–3 without ties: bins 2 and 3 are empty and not listed.
    --bins 10 over three distinct values: r = 1, 2, 3 → bins ⌊0⌋ + 1 = 1, ⌊10/3⌋ + 1 = 4, ⌊20/3⌋ + 1 = 7."""
    values = [5, 5, 5, 5, 5, 5, 7, 8]
    customers = [(i, "over_12m", "active", v, None if i in (1, 7) else "active") for i, v in enumerate(values, 1)]
    db = make_db(tmp_path / "ties.duckdb", {"x": "BIGINT"}, customers)
    x = next(f for f in ranked(db, project, bins=4)["cohorts"][0]["factors"] if f["factor"] == "x")
    assert x["groups"] == 2
    assert x["bins"] == [group("1", "5 – 5", 5, 5, 6, 1, 0.166667), group("4", "7 – 8", 7, 8, 2, 1, 0.5)]
    # H(2/8) − (6/8)·H(1/6) − (2/8)·H(1/2)
    assert x["information_gain"] == round(h(2 / 8) - 6 / 8 * h(1 / 6) - 2 / 8 * h(1 / 2), 6)

    small = [(i, "over_12m", "active", v, "active") for i, v in enumerate([3, 1, 2], 1)]
    db = make_db(tmp_path / "small.duckdb", {"x": "SMALLINT"}, small)
    x = next(f for f in ranked(db, project, bins=10)["cohorts"][0]["factors"] if f["factor"] == "x")
    assert [(g["bin"], g["low"], g["customers"]) for g in x["bins"]] == [("1", 1, 1), ("4", 2, 1), ("7", 3, 1)]
    assert x["information_gain"] == 0.0  # nobody churned


TYPED_COLUMNS = {"amount": "DECIMAL(18,2)", "ratio": "DOUBLE", "share": "REAL", "flag": "BOOLEAN",
                 "tags": "INTEGER[]", "seen": "TIME", "stamp": "TIMESTAMP", "stamp_tz": "TIMESTAMPTZ",
                 "joined": "DATE"}
# (no, cohort, status, amount, ratio, share, flag, M+1); the other columns NULL
TYPED = [
    (1, "over_12m", "active", "12.50", 0.1, 0.1, True, None),
    (2, "over_12m", "active", "30.00", 2.5, 0.5, False, "active"),
    (3, "over_12m", "active", "7.05", None, 0.1, None, "active"),
    (4, "over_12m", "active", None, 0.1, 2.0, True, "closed"),
]


def test_values_of_every_type_and_what_is_skipped(tmp_path: Path, project: Any) -> None:
    """One cohort of 4, 2 churned (1, 4): entropy 1. --bins 2.
    amount (DECIMAL): 7.05 r 1 → 1, 12.50 r 2 → ⌊2/3⌋ + 1 = 1, 30.00 r 3 → ⌊4/3⌋ + 1 = 2, (null) {4}:
        {3, 1}: 1 of 2 → IG = 1 − ½ = 0.5; low and high exact (12.5, never 12.4999…), labels to the scale.
    ratio (DOUBLE): 0.1 ×2 r 1 → 1, 2.5 r 3 → 2, (null) {3}: every group pure → IG = 1.
    share (REAL): 0.1 ×2 → 1, 0.5 r 3 → ⌊4/4⌋ + 1 = 2, 2.0 r 4 → 2: {1, 3} and {2, 4} 1 of 2 each → IG = 0;
        its 0.1 is the float 0.1 its text reads as, not the single-precision 0.100000001490116.
    flag (BOOLEAN): false {2}, true {1, 4}, (null) {3}: pure → IG = 1. status: one value → 0.
    Ties at 1 (flag, ratio) and at 0 (share, status) go by name. tags (a list) and seen (TIME) are
    skipped and said so; stamp, stamp_tz and joined (TIMESTAMP/DATE) are not factors."""
    db = make_db(tmp_path / "typed.duckdb", TYPED_COLUMNS, TYPED)
    doc = ranked(db, project, bins=2)
    (cohort,) = doc["cohorts"]
    assert (cohort["customers"], cohort["churned"], cohort["entropy"]) == (4, 2, 1.0)
    by_name = {f["factor"]: f for f in cohort["factors"]}
    assert [(f["rank"], f["factor"], f["information_gain"]) for f in cohort["factors"]] == [
        (1, "flag", 1.0), (2, "ratio", 1.0), (3, "amount", 0.5), (4, "share", 0.0), (5, "status", 0.0)]
    assert by_name["amount"]["bins"] == [
        group("1", "7.05 – 12.50", 7.05, 12.5, 2, 1, 0.5), group("2", "30.00 – 30.00", 30.0, 30.0, 1, 0, 0.0),
        group("(null)", "(null)", None, None, 1, 1, 1.0)]
    assert by_name["ratio"]["bins"] == [
        group("1", "0.1 – 0.1", 0.1, 0.1, 2, 2, 1.0), group("2", "2.5 – 2.5", 2.5, 2.5, 1, 0, 0.0),
        group("(null)", "(null)", None, None, 1, 0, 0.0)]
    assert by_name["share"]["bins"] == [group("1", "0.1 – 0.1", 0.1, 0.1, 2, 1, 0.5),
                                        group("2", "0.5 – 2.0", 0.5, 2.0, 2, 1, 0.5)]
    assert by_name["flag"]["bins"] == [cat("false", 1, 0, 0.0), cat("true", 2, 2, 1.0), cat("(null)", 1, 0, 0.0)]
    assert [s["factor"] for s in doc["skipped"]] == ["tags", "seen"]
    assert "INTEGER[]" in doc["skipped"][0]["reason"] and "TIME" in doc["skipped"][1]["reason"]


def test_cohorts_in_their_order_and_an_all_closed_cohort_is_not_listed(tmp_path: Path, project: Any) -> None:
    names = ["zeta", "over_12m", None, "alpha", "6_12m", "under_6m"]
    customers = [(i, name, "active", i, "active") for i, name in enumerate(names, 1)]
    customers.append((7, "gone", "closed", 7, None))
    db = make_db(tmp_path / "cohorts.duckdb", {"x": "INTEGER"}, customers)
    doc = ranked(db, project)
    assert [c["cohort"] for c in doc["cohorts"]] == ["under_6m", "6_12m", "over_12m", "alpha", "zeta", "(none)"]
    assert all(c["customers"] == 1 and c["churn_rate"] == 0.0 and c["entropy"] == 0.0 for c in doc["cohorts"])


def test_column_names_are_quoted_and_cannot_clash(tmp_path: Path, project: Any) -> None:
    """Columns named like the query's own (cohort, churned, v) or with a quote, a space and a newline."""
    columns = {"cohort": "INTEGER", "churned": "VARCHAR", 'odd "name"\n--x': "INTEGER", "v": "INTEGER"}
    customers = [(1, "over_12m", "active", 1, "a", 1, 1, None), (2, "over_12m", "active", 2, "b", 1, 1, "active")]
    db = make_db(tmp_path / "names.duckdb", columns, customers)
    cohort = ranked(db, project, bins=2)["cohorts"][0]
    gains = {f["factor"]: f["information_gain"] for f in cohort["factors"]}
    assert gains == {"cohort": 1.0, "churned": 1.0, 'odd "name"\n--x': 0.0, "v": 0.0, "status": 0.0}
    assert [f["factor"] for f in cohort["factors"]][:2] == ["churned", "cohort"]


def test_a_view_without_tenure_cohort_is_refused(cli, tmp_path: Path) -> None:
    db = make_db(tmp_path / "old.duckdb", EXAMPLE_COLUMNS, EXAMPLE)
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE customer_view DROP COLUMN tenure_cohort")
    con.close()
    result = cli("factors", "--month", M, db_path=db)
    assert result.exit_code == 1, result.output
    assert "customer_view has no column tenure_cohort" in result.output and "Traceback" not in result.output


def test_a_base_of_closed_customers_only_is_refused(tmp_path: Path, project: Any) -> None:
    db = make_db(tmp_path / "closed.duckdb", {"x": "INTEGER"}, [(1, "over_12m", "closed", 1, None)])
    with Database(settings(db), write=False) as database, pytest.raises(StateError, match="no customer whose status"):
        rank_factors(database, project, M)


def test_missing_view_month_is_refused(example_db: Path, project: Any) -> None:
    with Database(settings(example_db), write=False) as database, pytest.raises(
            StateError, match="customer_view has no rows for month 2026-08"):
        rank_factors(database, project, "2026-08")


@pytest.mark.parametrize("args", [["--bins", "1"], ["--bins", "101"], ["--bins", "ten"], ["--top", "-1"],
                                  ["--format", "xml"]])
def test_usage_errors_exit_2(cli, example_db: Path, args: list[str]) -> None:
    result = cli("factors", "--month", M, *args, db_path=example_db)
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.stderr and "Traceback" not in result.output


def test_library_refuses_bins_outside_2_to_100(example_db: Path, project: Any) -> None:
    with Database(settings(example_db), write=False) as database:
        for bad in (1, 101):
            with pytest.raises(UsageError, match="bins must be a whole number from 2 to 100"):
                rank_factors(database, project, M, bins=bad)
        with pytest.raises(UsageError, match="top"):
            rank_factors(database, project, M, top=-1)


def test_cli_csv_to_a_file_and_table_on_stdout(cli, example_db: Path, tmp_path: Path) -> None:
    target = tmp_path / "reports" / "factors.csv"
    result = cli("factors", "--month", M, "--bins", "2", "--format", "csv", "--out", str(target), db_path=example_db)
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and f"written to {target}" in result.stderr
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert list(rows[0]) == ["cohort", "rank", "factor", "kind", "information_gain", "bin", "label", "low", "high",
                             "customers", "churned", "churn_rate"]
    assert [(r["cohort"], r["factor"], r["bin"]) for r in rows if r["cohort"] == "over_12m"] == [
        ("over_12m", "usage", "1"), ("over_12m", "usage", "2"), ("over_12m", "usage", "(null)"),
        ("over_12m", "payment", "postpaid"), ("over_12m", "payment", "prepaid"), ("over_12m", "status", "active")]
    assert not list(target.parent.glob(".*partial"))

    table = cli("factors", "--month", M, "--bins", "2", db_path=example_db)
    assert table.exit_code == 0, table.output
    out = table.stdout
    titles = " ".join(out.split())  # a title may wrap
    assert "Churn factors 2026-10, cohort under_6m: 4 customers, 2 churned by 2026-11 (0.500000)" in titles
    assert "cohort over_12m: 7 customers, 3 churned by 2026-11 (0.428571), entropy 0.985228 bits" in titles
    # payment's riskiest group in under_6m is prepaid (1 of 1); usage's in over_12m is (null) (1 of 1)
    line = next(x for x in out.splitlines() if " payment " in x)
    assert "0.500000" in line and "prepaid" in line and "1.000000" in line
    assert "0.235926" in out and "(null)" in out


def test_queries_bind_the_months(project: Any) -> None:
    q = factors_query(M, [Factor("usage", "numeric", "integer"), Factor("payment", "categorical", "text")], 10)
    assert q.params == {"month": M, "next_month": N} == cohorts_query(M).params
    assert M not in q.sql and N not in q.sql and "$next_month" in q.sql


def test_on_the_scored_fixture_view_against_evaluate_churn(cli, project: Any) -> None:
    """The shipped fixtures ingested and scored: every column of the real view is a factor or excluded
    (none skipped), each factor's groups hold the whole cohort, and the cohorts' base and churned are
    those of `evaluate churn --by tenure_cohort` (the same label, computed by evaluate's own query)."""
    assert cli("ingest", str(FIXTURES), "--quiet").exit_code == 0
    assert cli("score", "--month", M, "--quiet").exit_code == 0
    result = cli("factors", "--month", M, "--top", "0", "--format", "json", "--quiet")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    with Database(settings(cli.db), write=True) as database:
        described = dict(database.c.execute("SELECT column_name, data_type FROM information_schema.columns "
                                            "WHERE table_name = 'customer_view'").fetchall())
        churn = evaluate_churn(database, M, by="tenure_cohort").document
    expected = sorted(name for name, type_ in described.items()
                      if name not in ("msisdn", "month", "month_end", "tenure_cohort") and type_ != "DATE")
    assert doc["skipped"] == [] and len(expected) > 60
    assert [c["cohort"] for c in doc["cohorts"]] == ["under_6m", "6_12m", "over_12m"]
    for cohort in doc["cohorts"]:
        assert sorted(f["factor"] for f in cohort["factors"]) == expected
        assert (cohort["customers"], cohort["churned"], cohort["churn_rate"]) == (
            churn["by"][cohort["cohort"]]["base"], churn["by"][cohort["cohort"]]["churned"],
            churn["by"][cohort["cohort"]]["base_rate"])
        assert [f["rank"] for f in cohort["factors"]] == list(range(1, len(expected) + 1))
        gains = [(-f["information_gain"], f["factor"]) for f in cohort["factors"]]
        assert gains == sorted(gains)
        for f in cohort["factors"]:
            assert sum(g["customers"] for g in f["bins"]) == cohort["customers"], f["factor"]
            assert sum(g["churned"] for g in f["bins"]) == cohort["churned"], f["factor"]
            assert 0.0 <= f["information_gain"] <= cohort["entropy"] + 1e-6
            if f["kind"] == "numeric":
                numbered = [g for g in f["bins"] if g["bin"] != "(null)"]
                assert all(1 <= int(g["bin"]) <= 10 for g in numbered)
                assert all(a["high"] < b["low"] for a, b in zip(numbered, numbered[1:]))  # ties never split
    tenure = next(f for f in doc["cohorts"][2]["factors"] if f["factor"] == "tenure_months")
    assert tenure["kind"] == "numeric" and tenure["bins"][0]["low"] >= 12  # over_12m: 12 months and more


@pytest.mark.parametrize(("text", "shown"), [
    ("38.000000", "38"), ("1024.0", "1024"), ("1711.4233333333332", "1711.42"), ("12.505", "12.51"),
    ("-12.505", "-12.51"), ("0.48451", "0.4845"), ("0.5", "0.5"), ("-0.25", "-0.25"), ("7", "7"),
    ("nan", "nan"), ("inf", "inf"), ("abc", "abc")])
def test_a_bin_bound_is_shortened_for_people_only(text: str, shown: str) -> None:
    """The table and the report show 38 and 1711.42; the documents keep the exact label and bounds."""
    assert shown_bound(text) == shown
    group = Group("1", f"{text} – {text}", text, text, 3, 1, None)
    assert group.shown == f"{shown} – {shown}" and group.label == f"{text} – {text}"
    assert Group("(null)", "(null)", None, None, 1, 0, None).shown == "(null)"
