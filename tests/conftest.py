"""Shared test helpers: tiny contract-shaped extracts written as Parquet into tmp_path.

Tests state only the columns that matter for them; every other contract column gets a
plain default so that the files always satisfy the contract unless a test breaks it on purpose.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mktool.cli import app
from mktool.contract import TABLES

#: Contract type → the Arrow type test extracts are written in. Money (DECIMAL in the
#: contract) is written as DOUBLE, as warehouses send it: ingest rounds it to the fen.
ARROW_TYPES = {
    "VARCHAR": pa.string(), "DOUBLE": pa.float64(), "BIGINT": pa.int64(), "DATE": pa.date32(),
    "BOOLEAN": pa.bool_(), "TIMESTAMP": pa.timestamp("us"), "DECIMAL(18,2)": pa.float64(),
    "DECIMAL(18,6)": pa.float64(),
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "subscribers": dict(city="杭州", plan_id="ZX128", join_date=dt.date(2020, 1, 15), status="active",
                        payment="postpaid", handset_gen="4G", contract_end=None, bundle_type=None, bundle_end=None,
                        vnet=False, group_id=None, balance=50.0),
    "usage": dict(voice_out_min=300.0, voice_local_min=250.0, voice_ld_out_min=30.0, voice_ld_in_min=10.0,
                  voice_roam_min=10.0, ld_top_province=None, sms_count=20, data_mb=700.0, contacts=40,
                  contacts_in_net=30),
    "billing": dict(total_fee=150.0, rental_fee=128.0, voice_overage_fee=0.0, data_overage_fee=12.0,
                    addon_fee=10.0, ld_fee=0.0, discount_fee=0.0),
    "plans": dict(plan_name="plan", monthly_rental=128.0, included_data_mb=600.0, included_voice_min=650.0,
                  data_overage_per_mb=0.29, voice_overage_per_min=0.19, product_status=1, is_target=True),
    "vas": dict(active=True, uses=1),
    "contact_history": dict(outcome="sent"),
    "dnd": dict(),
    "events": dict(value=1.0),
}


def write_table(path: Path, table: str, rows: list[dict[str, Any]], *, types: dict[str, pa.DataType] | None = None,
                drop: tuple[str, ...] = ()) -> Path:
    """Write ``rows`` (completed with defaults) as a contract-typed Parquet file."""
    contract = TABLES[table]
    full = [{**DEFAULTS[table], **r} for r in rows]
    names: list[str] = [c.name for c in contract.columns if c.name not in drop]
    for r in full:
        for k in r:
            if k not in names and k not in drop:
                names.append(k)
    fields = []
    for name in names:
        if types and name in types:
            fields.append(pa.field(name, types[name]))
        elif name in contract.column_names:
            fields.append(pa.field(name, ARROW_TYPES[contract.column(name).type]))
        else:
            fields.append(pa.field(name, pa.array([r.get(name) for r in full]).type))
    schema = pa.schema(fields)
    data = {name: [r.get(name) for r in full] for name in names}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(data, schema=schema), path)
    return path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli(runner: CliRunner, tmp_path: Path):
    """Invoke mktool with --db in tmp_path; returns the click Result."""
    db = tmp_path / "test.duckdb"

    def invoke(*args: str, db_path: Path | None = None, **kwargs: Any):
        return runner.invoke(app, [*args, "--db", str(db_path or db)], **kwargs)

    invoke.db = db  # type: ignore[attr-defined]
    return invoke


def month_rows(msisdn: str, months: list[str], **values: Any) -> list[dict[str, Any]]:
    return [{"msisdn": msisdn, "month": m, **values} for m in months]
