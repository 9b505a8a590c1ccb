"""mktool.warehouse (issue 16): tables as Parquet under a root, published by a journal.

Every test takes the session-scoped ``spark`` fixture and a fresh root in tmp_path; expectations
are written out by hand (rows, folder names, _table.json), not computed by the code under test.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from mktool.warehouse import Warehouse

USAGE = [("msisdn", "VARCHAR"), ("month", "VARCHAR"), ("fee", "DECIMAL(18,2)"), ("sms", "BIGINT")]


def rows(df: Any) -> list[tuple[Any, ...]]:
    """A DataFrame's rows as sorted tuples (the warehouse promises no order)."""
    return sorted(tuple(r) for r in df.collect())


def usage_df(spark: Any, data: list[tuple[str, str, str, int]]) -> Any:
    return spark.createDataFrame(data, "msisdn string, month string, fee string, sms bigint")


def test_put_commit_read_roundtrip(spark: Any, tmp_path: Path) -> None:
    wh = Warehouse(spark, str(tmp_path / "wh"))
    tx = wh.begin("run1")
    tx.put("usage", usage_df(spark, [("138", "2026-10", "1.50", 3), ("139", "2026-11", "2.25", 4)]), USAGE,
           partitions=["2026-10", "2026-11"])
    assert not wh.exists("usage")  # staged only: invisible to readers
    assert rows(tx.read("usage")) == [("138", "2026-10", Decimal("1.50"), 3), ("139", "2026-11", Decimal("2.25"), 4)]
    tx.commit()
    assert wh.tables() == ["usage"]
    assert wh.exists("usage") and wh.columns("usage") == USAGE
    assert wh.partitions("usage") == ["2026-10", "2026-11"]
    got = wh.read("usage")
    assert got.columns == ["msisdn", "month", "fee", "sms"]
    assert rows(got) == [("138", "2026-10", Decimal("1.50"), 3), ("139", "2026-11", Decimal("2.25"), 4)]
    meta = json.loads((tmp_path / "wh" / "usage" / "_table.json").read_text())
    assert meta == {"columns": [["msisdn", "VARCHAR"], ["month", "VARCHAR"], ["fee", "DECIMAL(18,2)"],
                                ["sms", "BIGINT"]], "partitioned_by": "month", "version": 1}
    assert sorted(p.name for p in (tmp_path / "wh").iterdir()) == ["_journal", "_staging", "usage"]
    assert not list((tmp_path / "wh" / "_staging").iterdir()) and not list((tmp_path / "wh" / "_journal").iterdir())


def test_table_without_month_lives_in_data(spark: Any, tmp_path: Path) -> None:
    wh = Warehouse(spark, str(tmp_path / "wh"))
    with wh.begin() as tx:
        tx.put("plans", spark.createDataFrame([("ZX128", 128)], "plan_id string, rental int"),
               [("plan_id", "VARCHAR"), ("rental", "INTEGER")], partitions=None)
    assert wh.partitions("plans") == ["data"]
    assert (tmp_path / "wh" / "plans" / "data").is_dir()
    assert rows(wh.read("plans")) == [("ZX128", 128)]
    assert json.loads((tmp_path / "wh" / "plans" / "_table.json").read_text())["partitioned_by"] is None
