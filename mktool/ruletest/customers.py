"""The synthetic customer view: partial case customers completed into customer_view rows.

How a case customer is completed is in :mod:`mktool.ruletest`'s docstring; the rows live in
a private in-memory DuckDB (:class:`MemoryDatabase`) that the library steps accept as a
:class:`~mktool.database.Database`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from mktool.config import Settings
from mktool.contract import TABLES, month_from_index, month_index
from mktool.database import BOOKKEEPING_DDL, Database
from mktool.dialect import py_round_half_away, quantity_ratio
from mktool.errors import ConfigError
from mktool.ruletest.cases import Case, current_month, suggest
from mktool.scoremodel import SATURATION_SCALE, ScoreModel, load_score_model, view_params, view_sql

#: The default customer: an active postpaid 4G customer of two years on 自选组合128, paying
#: 128 yuan a month with no overage or add-on, 300 minutes and 600 MB a month (the plan's 650
#: minutes and 600 MB: saturations 0.4615 and 1.0000), 20 contacts (10 on our network), no
#: bundle, contract, group or virtual network, no value-added service.
#: With the shipped scores.yaml that is stickiness none, no churn signal, no new-service
#: potential, traffic group local, segment potential. Columns of :data:`DERIVED` are computed.
DEFAULT_CUSTOMER: dict[str, Any] = {
    "city": "杭州", "plan_id": "ZX128", "status": "active", "payment": "postpaid", "handset_gen": "4G",
    "vnet": False, "group_id": None, "balance": 0.0, "bundle_type": None, "bundle_end": None, "contract_end": None,
    "tenure_months": 24,
    "arpu": 128.0, "arpu_3m": 128.0, "rental_3m": 128.0, "voice_overage_3m": 0.0, "data_overage_3m": 0.0,
    "addon_3m": 0.0, "return_rate": 100.0, "voice_min_3m": 300.0, "data_mb_3m": 600.0, "months_in_window": 3,
    "billing_months": 3, "arpu_prev": 128.0, "ld_fee": 0.0,
    "voice_out_min": 300.0, "voice_local_min": 300.0, "voice_ld_out_min": 0.0, "voice_ld_in_min": 0.0,
    "voice_roam_min": 0.0, "ld_top_province": None, "sms_count": 10, "data_mb": 600.0, "contacts": 20,
    "contacts_in_net": 10, "voice_min_prev": 300.0, "data_mb_prev": 600.0, "contacts_prev": 20,
    "plan_name": "自选组合128", "plan_rental": 128.0, "product_status": 1, "included_data_mb": 600.0,
    "included_voice_min": 650.0,
    "vas_active": 0, "has_newspaper": False, "has_crbt": False, "has_ring_change": False, "has_mobile_internet": False,
    "value_score": 50.0, "value_tier": "mid",
}

#: Base columns computed from their parts unless a case gives them: the formulas of
#: sql/customer_view_base.sql (tests/test_ruletest.py checks them against the real view).
#: ``{month_index}``, ``{month_end}``, ``{horizon_3m}`` are the month's :func:`view_params`.
DERIVED: dict[str, str] = {
    "tenure_months": "CAST({month_index} - (year(join_date) * 12 + month(join_date)) AS INTEGER)",
    "current_total_3m": "rental_3m + voice_overage_3m + data_overage_3m + addon_3m",
    "in_net_share": "contacts_in_net / nullif(contacts, 0)",
    "voice_total_min": "voice_local_min + voice_ld_out_min + voice_ld_in_min + voice_roam_min",
    "ld_unit_price": "ld_fee / nullif(voice_ld_out_min, 0)",
    "data_saturation": quantity_ratio("data_mb_3m", "included_data_mb", SATURATION_SCALE),
    "voice_saturation": quantity_ratio("voice_min_3m", "included_voice_min", SATURATION_SCALE),
    "month_end": "CAST('{month_end}' AS DATE)",
    "contract_ends_3m": "contract_end IS NOT NULL AND contract_end <= CAST('{horizon_3m}' AS DATE)",
    "bundle_ends_3m": "bundle_end IS NOT NULL AND bundle_end <= CAST('{horizon_3m}' AS DATE)",
}
ASSIGNED = ("msisdn", "month")  # set by the runner, never by a case


# -- a private in-memory database, as a Database ---------------------------------------------------
class MemoryDatabase:
    """A private in-memory DuckDB that the library steps accept as a :class:`Database`.

    No file, no lock: nothing outlives the ``with`` block, nothing touches the user's
    database. ``with MemoryDatabase() as db`` gives the :class:`Database` (:meth:`Database.wrap`
    over this object's connection); the connection closes on exit.
    """

    def __init__(self) -> None:
        self.con = duckdb.connect(":memory:")
        try:
            self.con.execute("SET threads = 2")
            for ddl in BOOKKEEPING_DDL:
                self.con.execute(ddl)
        except BaseException:
            self.con.close()
            raise
        self.database = Database.wrap(self.con, Settings(db_path=Path(":memory:"), threads=2), write=True)

    def __enter__(self) -> Database:
        return self.database

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()


# -- building the case customers ---------------------------------------------------------------------
def view_column_types(model: ScoreModel) -> dict[str, str]:
    """customer_view's columns and DuckDB types: DESCRIBE of the real view query on empty tables."""
    con = duckdb.connect(":memory:")
    try:
        for t in TABLES.values():
            con.execute(f'CREATE TABLE "{t.name}" (' + ", ".join(f'"{c.name}" {c.type}' for c in t.columns) + ")")
        rows = con.execute(f"DESCRIBE {view_sql(model, has_vas=True)}", view_params("2000-01")).fetchall()
    finally:
        con.close()
    return {str(r[0]): str(r[1]) for r in rows}


def _join_date(month: str, tenure: Any) -> dt.date | None:
    if tenure is None:
        return None
    first = month_from_index(month_index(month) - int(tenure))
    return dt.date(int(first[:4]), int(first[5:7]), 1)


_DECIMAL_RE = re.compile(r"DECIMAL\(\d+,\s*(\d+)\)")


def _decimal(value: Any, type_: str) -> Any:
    """A number for a DECIMAL(p,s) column (money): the decimal written (100.01 is 100.01, not
    the float 100.0100000000000051…), rounded half away from zero to s decimals like the view."""
    m = _DECIMAL_RE.fullmatch(type_.upper().replace(" ", ""))
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or m is None:
        return value
    return py_round_half_away(value, int(m.group(1)))


def convert_value(value: Any, type_: str, where: str, file: str) -> Any:
    """A YAML value for a column of DuckDB type ``type_`` (None stays NULL); refused naming ``where``."""
    if value is None:
        return None
    t = type_.upper()
    if t == "BOOLEAN":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}", file=file)
    if t in ("DOUBLE", "FLOAT", "REAL") or t.startswith("DECIMAL"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _decimal(value, t) if t.startswith("DECIMAL") else float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}", file=file)
    if t in ("INTEGER", "BIGINT", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected a whole number, got {value!r}", file=file)
    if t == "VARCHAR":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected text, got {value!r}", file=file)
        return str(value)
    if t == "DATE":
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a date YYYY-MM-DD, got {value!r}", file=file)
    return value  # another type (a score column of a custom scores.yaml): DuckDB casts or refuses


class CustomerBuilder:
    """Completes partial case customers into customer_view rows (see the module docstring)."""

    def __init__(self, model: ScoreModel, types: dict[str, str] | None = None) -> None:
        self.model = model
        self.types = types if types is not None else view_column_types(model)
        self.columns = list(model.output_columns)
        self.score_columns = [c.name for c in model.columns]
        self.flagged = [c for c in self.columns if c in DERIVED or c in self.score_columns]

    def check(self, case: Case, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` with every value converted to its column's type; unknown columns refused."""
        out = {}
        known = [c for c in self.columns if c not in ASSIGNED]
        for col, value in given.items():
            where = f'case "{case.name}": customer: {col}'
            if col in ASSIGNED:
                raise ConfigError(f"{where}: is set by mktool test (one customer per case; month from the file or "
                                  "--month)", file=case.file)
            if col not in self.types:
                raise ConfigError(f"{where}: unknown customer_view column{suggest(col, known)}", file=case.file)
            out[col] = convert_value(value, self.types[col], where, case.file)
        return out

    def row(self, month: str, msisdn: str, given: dict[str, Any]) -> list[Any]:
        """One row of the raw table: values, then a given-flag per derived / score column."""
        values = {**DEFAULT_CUSTOMER, **given, "msisdn": msisdn, "month": month}
        values = {c: _decimal(v, self.types[c]) if c in self.types else v for c, v in values.items()}
        flags = {c: c in given for c in self.flagged}
        if "join_date" not in given:
            values["join_date"] = _join_date(month, values.get("tenure_months"))
            flags["tenure_months"] = True
        return [values.get(c) for c in self.columns] + [flags[c] for c in self.flagged]

    def sql(self, month: str) -> str:
        """The SELECT that turns the raw table into customer_view rows."""
        p = view_params(month)
        fill = {"month_index": p["month_index"], "month_end": p["month_end"], "horizon_3m": p["horizon_3m"]}
        score = set(self.score_columns)
        base_cols = []
        for c in self.columns:
            if c in score:
                base_cols.append(f'"{c}" AS "_v_{c}"')
            elif c in DERIVED:
                base_cols.append(f'CASE WHEN "_g_{c}" THEN "{c}" ELSE ({DERIVED[c].format(**fill)}) END AS "{c}"')
            else:
                base_cols.append(f'"{c}"')
        base_cols += [f'"_g_{c}"' for c in self.score_columns]
        layers = [f"base AS (SELECT {', '.join(base_cols)} FROM _mk_case_raw)"]
        prev = "base"
        for i, col in enumerate(self.model.columns):
            layers.append(f'c{i} AS (SELECT *, CASE WHEN "_g_{col.name}" THEN "_v_{col.name}" ELSE ({col.sql}) END '
                          f'AS "{col.name}" FROM {prev})')
            prev = f"c{i}"
        select = ", ".join(f'CAST("{c}" AS {self.types[c]}) AS "{c}"' for c in self.columns)
        return "WITH " + ",\n".join(layers) + f"\nSELECT {select} FROM {prev} ORDER BY msisdn"

    def create(self, con: duckdb.DuckDBPyConnection, month: str, customers: Sequence[tuple[str, dict[str, Any]]],
               table: str = "customer_view") -> None:
        cols = [f'"{c}" {self.types[c]}' for c in self.columns] + [f'"_g_{c}" BOOLEAN' for c in self.flagged]
        con.execute(f"CREATE OR REPLACE TEMP TABLE _mk_case_raw ({', '.join(cols)})")
        rows = [self.row(month, msisdn, given) for msisdn, given in customers]
        if rows:  # through Arrow: binding thousands of parameters is slow in DuckDB
            import pyarrow as pa  # noqa: PLC0415 - heavy (numpy with it, 80 ms): only `mktool test` needs it

            names = [*self.columns, *(f"_g_{c}" for c in self.flagged)]
            arrow = pa.table({f"c{i}": pa.array([row[i] for row in rows]) for i in range(len(names))})
            con.register("_mk_case_rows", arrow)
            try:
                con.execute("INSERT INTO _mk_case_raw SELECT * FROM _mk_case_rows")
            finally:
                con.unregister("_mk_case_rows")
        con.execute(f'CREATE OR REPLACE TABLE "{table}" AS {self.sql(month)}')
        con.execute("DROP TABLE _mk_case_raw")


def build_customer_view(con: duckdb.DuckDBPyConnection, model: ScoreModel, month: str,
                        customers: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """customer_view on ``con`` from (msisdn, given columns) pairs, completed as a case customer."""
    CustomerBuilder(model).create(con, month, customers)


def default_customer_rows(matrices_dir: Path, month: str | None = None) -> list[tuple[str, str, str, str]]:
    """(column, type, value, source) of the default customer, completed exactly as a case customer."""
    model = load_score_model(Path(matrices_dir))
    builder = CustomerBuilder(model)
    month = month or current_month()
    with MemoryDatabase() as db:
        builder.create(db.c, month, [("13900000000", {})])
        cur = db.c.execute("SELECT * FROM customer_view")
        names = [d[0] for d in cur.description]
        row = cur.fetchone()
    assert row is not None
    score = set(builder.score_columns)
    out = []
    for name, value in zip(names, row):
        source = ("assigned" if name in ASSIGNED else "scores.yaml" if name in score
                  else "derived" if name == "join_date" or (name in DERIVED and name != "tenure_months")
                  else "default")
        out.append((name, builder.types[name], "NULL" if value is None else str(value), source))
    return out
