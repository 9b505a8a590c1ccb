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
from conftest import MATRICES

from mktool.config import Settings
from mktool.database import Database
from mktool.errors import StateError
from mktool.factors import factors_csv, information_gain, rank_factors
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
    if with_next:
        con.executemany("INSERT INTO subscribers VALUES (?, ?, ?)",
                        [(c(no), N, after) for no, *_, after in customers if after is not None])
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
