"""mktool.warehouse (issue 16): tables as Parquet under a root, published by a journal.

Every test takes the session-scoped ``spark`` fixture and a fresh root in tmp_path; expectations
are written out by hand (rows, folder names, _table.json), not computed by the code under test.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mktool import warehouse
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


# -- helpers for the state on disk ----------------------------------------------------------------------
def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: "the previous state exactly" is this being equal."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    """What a finished or recovered publish must not leave: anything under _staging, _journal, _trash."""
    return sorted(str(p.relative_to(root)) for d in ("_staging", "_journal", "_trash") for p in (root / d).rglob("*"))


OLD = [("138", "2026-10", "1.50", 3), ("139", "2026-11", "2.25", 4)]
OLD_ROWS = [("138", "2026-10", Decimal("1.50"), 3), ("139", "2026-11", Decimal("2.25"), 4)]


def seeded(spark: Any, root: Path) -> Warehouse:
    """A warehouse with usage for 2026-10 and 2026-11, committed by run 'seed' (version 1)."""
    wh = Warehouse(spark, str(root))
    tx = wh.begin("seed")
    tx.put("usage", usage_df(spark, OLD), USAGE, partitions=["2026-10", "2026-11"])
    tx.commit()
    return wh


def test_rerun_replaces_only_its_own_partitions(spark: Any, tmp_path: Path) -> None:
    root = tmp_path / "wh"
    wh = seeded(spark, root)
    november = {k: v for k, v in files(root).items() if k.startswith("usage/month=2026-11/")}
    tx = wh.begin("rerun")
    tx.put("usage", usage_df(spark, [("140", "2026-10", "9.99", 7), ("141", "2026-10", "0.01", 0)]), USAGE,
           partitions=["2026-10"])
    # the transaction sees its own October and the committed November
    assert rows(tx.read("usage")) == [("139", "2026-11", Decimal("2.25"), 4), ("140", "2026-10", Decimal("9.99"), 7),
                                      ("141", "2026-10", Decimal("0.01"), 0)]
    assert rows(wh.read("usage")) == OLD_ROWS
    tx.commit()
    assert rows(wh.read("usage")) == [("139", "2026-11", Decimal("2.25"), 4), ("140", "2026-10", Decimal("9.99"), 7),
                                      ("141", "2026-10", Decimal("0.01"), 0)]
    assert {k: v for k, v in files(root).items() if k.startswith("usage/month=2026-11/")} == november
    assert wh.version("usage") == 2 and leftovers(root) == []


def test_two_months_are_independent(spark: Any, tmp_path: Path) -> None:
    root = tmp_path / "wh"
    wh = Warehouse(spark, str(root))
    october, november = wh.begin("oct"), wh.begin("nov")
    october.put("usage", usage_df(spark, [OLD[0]]), USAGE, partitions=["2026-10"])
    november.put("usage", usage_df(spark, [OLD[1]]), USAGE, partitions=["2026-11"])
    november.rollback()  # one month's failure takes nothing from the other
    october.commit()
    assert wh.partitions("usage") == ["2026-10"] and rows(wh.read("usage")) == [OLD_ROWS[0]]
    again = wh.begin("nov2")
    again.put("usage", usage_df(spark, [OLD[1]]), USAGE, partitions=["2026-11"])
    again.commit()
    assert wh.partitions("usage") == ["2026-10", "2026-11"] and rows(wh.read("usage")) == OLD_ROWS
    assert leftovers(root) == []


def test_a_partition_without_rows_is_a_folder_with_a_zero_row_file(spark: Any, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    root = tmp_path / "wh"
    wh = Warehouse(spark, str(root))
    with wh.begin() as tx:
        tx.put("usage", usage_df(spark, [OLD[0]]), USAGE, partitions=["2026-10", "2026-12"])
    assert wh.partitions("usage") == ["2026-10", "2026-12"]
    parquet = sorted((root / "usage" / "month=2026-12").glob("*.parquet"))
    assert len(parquet) == 1
    table = pq.read_table(parquet[0])
    assert table.num_rows == 0 and table.column_names == ["msisdn", "fee", "sms"]  # month is the folder's
    assert str(table.schema.field("fee").type) == "decimal128(18, 2)"
    assert rows(wh.read("usage")) == [OLD_ROWS[0]]
    # a put of nothing at all into named months still records them as computed and empty
    with wh.begin() as tx:
        tx.put("usage", usage_df(spark, []), USAGE, partitions=["2026-10"])
    assert wh.partitions("usage") == ["2026-10", "2026-12"] and rows(wh.read("usage")) == []


def test_whole_table_replace_removes_every_old_partition(spark: Any, tmp_path: Path) -> None:
    root = tmp_path / "wh"
    wh = seeded(spark, root)
    tx = wh.begin("whole")
    tx.put("usage", usage_df(spark, [("150", "2026-12", "3.00", 1)]), USAGE, partitions=None)
    assert tx.partitions("usage") == ["2026-12"] and rows(tx.read("usage")) == [("150", "2026-12", Decimal("3.00"), 1)]
    tx.commit()
    assert wh.partitions("usage") == ["2026-12"]
    assert sorted(p.name for p in (root / "usage").iterdir() if not p.name.startswith(".")) == \
        ["_table.json", "month=2026-12"]
    assert rows(wh.read("usage")) == [("150", "2026-12", Decimal("3.00"), 1)]
    assert leftovers(root) == []


def test_whole_replace_may_change_the_columns(spark: Any, tmp_path: Path) -> None:
    wh = seeded(spark, tmp_path / "wh")
    wider = [*USAGE, ("vnet", "BOOLEAN")]
    with wh.begin() as tx:
        tx.put("usage", wh.read("usage").selectExpr("*", "sms > 3 AS vnet"), wider, partitions=None)
    assert wh.columns("usage") == wider
    assert rows(wh.read("usage")) == [(*OLD_ROWS[0], False), (*OLD_ROWS[1], True)]


def test_drop(spark: Any, tmp_path: Path) -> None:
    from mktool.warehouse import WarehouseError

    root = tmp_path / "wh"
    wh = seeded(spark, root)
    tx = wh.begin("drop")
    tx.drop("USAGE")  # names compare as DuckDB's do: case-insensitively
    assert not tx.exists("usage") and wh.exists("usage")
    with pytest.raises(WarehouseError, match="dropped"):
        tx.read("usage")
    tx.commit()
    assert not wh.exists("usage") and wh.tables() == [] and not (root / "usage").exists()
    assert leftovers(root) == []
    with pytest.raises(WarehouseError, match="no table usage"):
        wh.begin().drop("usage")
    with pytest.raises(WarehouseError, match="no table usage"):
        wh.read("usage")


def test_drop_then_put_in_one_transaction_replaces_the_table(spark: Any, tmp_path: Path) -> None:
    wh = seeded(spark, tmp_path / "wh")
    with wh.begin() as tx:
        tx.drop("usage")
        tx.put("usage", spark.createDataFrame([("x",)], "msisdn string"), [("msisdn", "VARCHAR")], partitions=None)
    assert wh.columns("usage") == [("msisdn", "VARCHAR")] and wh.partitions("usage") == ["data"]
    assert rows(wh.read("usage")) == [("x",)] and wh.version("usage") == 2
    assert not (tmp_path / "wh" / "usage" / "month=2026-10").exists()


def test_rows_outside_the_partitions_put_are_refused(spark: Any, tmp_path: Path) -> None:
    from mktool.warehouse import WarehouseError

    root = tmp_path / "wh"
    wh = seeded(spark, root)
    before = files(root)
    tx = wh.begin("bad")
    with pytest.raises(WarehouseError, match=r"rows outside the partitions put \(2026-11; put 2026-10\)"):
        tx.put("usage", usage_df(spark, OLD), USAGE, partitions=["2026-10"])
    with pytest.raises(WarehouseError, match="__HIVE_DEFAULT_PARTITION__"):
        tx.put("usage", usage_df(spark, [("1", None, "1", 1)]), USAGE, partitions=None)  # type: ignore[list-item]
    with pytest.raises(WarehouseError, match="columns differ from the table's"):
        tx.put("usage", usage_df(spark, OLD).drop("sms"), USAGE[:3], partitions=["2026-10"])
    with pytest.raises(WarehouseError, match=r"missing \['sms'\]"):
        tx.put("usage", usage_df(spark, OLD).drop("sms"), USAGE, partitions=["2026-10"])
    assert tx.pending == {} and rows(tx.read("usage")) == OLD_ROWS
    assert not [p for p in (root / "_staging").rglob("*") if p.is_file()]  # a refused put keeps nothing
    tx.commit()
    assert files(root) == before


def test_rollback_leaves_the_previous_state(spark: Any, tmp_path: Path) -> None:
    root = tmp_path / "wh"
    wh = seeded(spark, root)
    before = files(root)
    tx = wh.begin("undo")
    tx.put("usage", usage_df(spark, [("9", "2026-10", "1", 1)]), USAGE, partitions=None)
    tx.drop("usage")
    tx.rollback()
    assert files(root) == before and leftovers(root) == []
    assert rows(wh.read("usage")) == OLD_ROWS


# -- types ------------------------------------------------------------------------------------------------
TYPES = [("VARCHAR", "string"), ("BIGINT", "bigint"), ("INTEGER", "int"), ("DOUBLE", "double"),
         ("DECIMAL(18,2)", "decimal(18,2)"), ("DECIMAL(18,6)", "decimal(18,6)"), ("DATE", "date"),
         ("TIMESTAMP", "timestamp_ntz"), ("BOOLEAN", "boolean"), ("VARCHAR[]", "array<string>")]


@pytest.mark.parametrize(("duck", "spark_name"), TYPES)
def test_type_map_both_ways(duck: str, spark_name: str) -> None:
    from mktool.warehouse import duckdb_type, spark_type

    assert spark_type(duck) == spark_name
    assert duckdb_type(spark_name) == duck


def test_type_spellings_are_normalised_as_duckdb_lists_them() -> None:
    from mktool.warehouse import WarehouseError, duckdb_type, normal_type, spark_type

    assert normal_type("decimal(18, 2)") == "DECIMAL(18,2)"
    assert normal_type("text[]") == "VARCHAR[]" and normal_type("int") == "INTEGER"
    assert normal_type("DECIMAL") == "DECIMAL(18,3)"  # DuckDB's default width
    assert spark_type("BIGINT[][]") == "array<array<bigint>>" and duckdb_type("array<array<bigint>>") == "BIGINT[][]"
    assert duckdb_type("timestamp") == "TIMESTAMP"  # mktool's CAST(… AS TIMESTAMP) as Spark renders it
    assert duckdb_type("void") == "INTEGER"  # DuckDB types a bare NULL as INTEGER
    with pytest.raises(WarehouseError, match="no Spark counterpart"):
        spark_type("UNION(a INTEGER)")
    with pytest.raises(WarehouseError, match="no DuckDB counterpart"):
        duckdb_type("variant")
    # nested types, field names keeping their case (DuckDB's DESCRIBE spelling)
    assert normal_type("struct(a integer, B text[])") == "STRUCT(a INTEGER, B VARCHAR[])"
    assert spark_type("STRUCT(a INTEGER, B VARCHAR[])") == "struct<`a`:int,`B`:array<string>>"
    assert duckdb_type("struct<a:int,B:array<string>>") == "STRUCT(a INTEGER, B VARCHAR[])"
    assert spark_type("map(text, decimal(18, 2))") == "map<string,decimal(18,2)>"
    assert duckdb_type("map<string,decimal(18,2)>") == "MAP(VARCHAR, DECIMAL(18,2))"


def test_every_type_and_the_column_order_survive_a_roundtrip(spark: Any, tmp_path: Path) -> None:
    from mktool.warehouse import duckdb_type

    columns = [("z_text", "VARCHAR"), ("month", "VARCHAR"), ("a_big", "BIGINT"), ("m_int", "INTEGER"),
               ("d", "DOUBLE"), ("fen", "DECIMAL(18,2)"), ("rate", "DECIMAL(18,6)"), ("day", "DATE"),
               ("at", "TIMESTAMP"), ("flag", "BOOLEAN"), ("tags", "VARCHAR[]"),
               ("kv", "MAP(VARCHAR, BIGINT)"), ("pair", "STRUCT(k VARCHAR, n INTEGER)")]
    df = spark.sql("SELECT '杭州' AS z_text, 9007199254740993 AS a_big, 7 AS m_int, 0.1D AS d, "
                   "'191.515' AS fen, 0.758861 AS rate, DATE'2026-10-31' AS day, "
                   "TIMESTAMP_NTZ'2026-11-01 08:00:00' AS at, true AS flag, array('x', 'y') AS tags, "
                   "map('a', 1) AS kv, named_struct('k', 'z', 'n', 2) AS pair, "
                   "'2026-10' AS month")  # columns in another order than the table's, fen as text
    wh = Warehouse(spark, str(tmp_path / "wh"))
    with wh.begin() as tx:
        tx.put("every", df, columns, partitions=["2026-10"])
    got = wh.read("every")
    assert [(f.name, duckdb_type(f.dataType)) for f in got.schema.fields] == columns
    assert wh.columns("every") == columns
    assert [tuple(r) for r in got.collect()] == [
        ("杭州", "2026-10", 9007199254740993, 7, 0.1, Decimal("191.52"), Decimal("0.758861"), dt.date(2026, 10, 31),
         dt.datetime(2026, 11, 1, 8, 0), True, ["x", "y"], {"a": 1}, ("z", 2))]


def test_a_spark_connect_session_gets_a_local_folder_and_a_hadoop_uri_is_refused_clearly(tmp_path: Path) -> None:
    from mktool.warehouse import LocalFS, WarehouseError

    class ConnectSession:  # what a Spark Connect session lacks: a JVM on the client's side
        @property
        def _jvm(self) -> Any:
            raise AttributeError("[JVM_ATTRIBUTE_NOT_SUPPORTED] Attribute `_jvm` is not supported in Spark Connect")

    wh = Warehouse(ConnectSession(), str(tmp_path / "wh"))
    assert isinstance(wh.fs, LocalFS) and (tmp_path / "wh").is_dir()
    with pytest.raises(WarehouseError, match="a Spark Connect session has no Hadoop FileSystem") as caught:
        Warehouse(ConnectSession(), "hdfs://namenode/mk")
    assert "hdfs://namenode/mk" in caught.value.message
    assert "spark-submit or --spark-master instead of --spark-remote" in (caught.value.hint or "")


# -- crashes at each publish point ----------------------------------------------------------------------
# The change every crash test commits: October and November replaced, December new (three partitions,
# so that a crash can come after one of several).
NEW = [("240", "2026-10", "10.00", 1), ("241", "2026-11", "11.00", 2), ("242", "2026-12", "12.00", 3)]
NEW_ROWS = [("240", "2026-10", Decimal("10.00"), 1), ("241", "2026-11", Decimal("11.00"), 2),
            ("242", "2026-12", Decimal("12.00"), 3)]
MONTHS = ["2026-10", "2026-11", "2026-12"]


def crash_commit(spark: Any, wh: Warehouse, point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commit NEW with a disk error planted at ``point`` (mktool.publish.fault's MKTOOL_FAULT)."""
    tx = wh.begin("crash")
    tx.put("usage", usage_df(spark, NEW), USAGE, partitions=MONTHS)
    monkeypatch.setenv("MKTOOL_FAULT", f"{point}:eio")
    with pytest.raises(OSError, match=point):
        tx.commit()
    monkeypatch.delenv("MKTOOL_FAULT")


@pytest.mark.parametrize("point", ["warehouse_before_journal", "warehouse_journal"])
def test_a_crash_before_the_commit_point_leaves_the_previous_state_exactly(
        spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    root = tmp_path / "wh"
    wh = seeded(spark, root)
    before = files(root)
    crash_commit(spark, wh, point, monkeypatch)
    assert files(root) == before and rows(wh.read("usage")) == OLD_ROWS
    again = Warehouse(spark, str(root))  # recovery has nothing to roll forward
    assert files(root) == before and rows(again.read("usage")) == OLD_ROWS and again.version("usage") == 1


def test_a_killed_transaction_leaves_staging_and_a_cut_journal_that_recovery_deletes(
        spark: Any, tmp_path: Path) -> None:
    root = tmp_path / "wh"
    wh = seeded(spark, root)
    before = files(root)
    tx = wh.begin("killed")
    tx.put("usage", usage_df(spark, NEW), USAGE, partitions=MONTHS)
    (root / "_journal" / "killed.json.partial").write_text('{"run_id": "killed", "tab')  # cut by the kill
    warehouse._OPEN.discard((wh.root, "killed"))  # the process that had it open is gone
    assert rows(wh.read("usage")) == OLD_ROWS  # readers never look at staging
    again = Warehouse(spark, str(root))
    assert files(root) == before and leftovers(root) == [] and rows(again.read("usage")) == OLD_ROWS


#: After the commit point: where the crash leaves the folders before recovery (the month folders in place).
AFTER_COMMIT = {
    "warehouse_after_journal": ["2026-10", "2026-11"],  # nothing renamed yet
    "warehouse_between_renames": ["2026-11"],  # old October in the trash, the new one not yet in place
    "warehouse_after_partition": ["2026-10", "2026-11"],  # October is the new one, November the old
    "warehouse_before_cleanup": MONTHS,  # everything in place, staging and journal not yet deleted
}


@pytest.mark.parametrize("point", sorted(AFTER_COMMIT))
def test_a_crash_after_the_commit_point_is_finished_by_recovery(
        spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    root = tmp_path / "wh"
    wh = seeded(spark, root)
    crash_commit(spark, wh, point, monkeypatch)
    assert (root / "_journal" / "crash.json").is_file()  # committed
    assert sorted(p.name for p in (root / "usage").glob("month=*")) == [f"month={m}" for m in AFTER_COMMIT[point]]
    if point == "warehouse_between_renames":
        assert (root / "_trash" / "crash" / "usage" / "month=2026-10").is_dir()
    again = Warehouse(spark, str(root))
    assert rows(again.read("usage")) == NEW_ROWS and again.partitions("usage") == MONTHS
    assert again.version("usage") == 2 and leftovers(root) == []
    converged = files(root)
    again.recover()  # idempotent: a second recovery changes nothing
    assert files(root) == converged


def test_a_crash_during_recovery_is_finished_by_the_next_one(
        spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "wh"
    wh = seeded(spark, root)
    crash_commit(spark, wh, "warehouse_between_renames", monkeypatch)
    monkeypatch.setenv("MKTOOL_FAULT", "warehouse_after_partition:eio")
    with pytest.raises(OSError, match="warehouse_after_partition"):
        Warehouse(spark, str(root))  # recovery itself dies after placing October
    monkeypatch.delenv("MKTOOL_FAULT")
    again = Warehouse(spark, str(root))
    assert rows(again.read("usage")) == NEW_ROWS and again.version("usage") == 2 and leftovers(root) == []


def test_a_dropped_table_crashed_after_the_commit_point_is_gone_after_recovery(
        spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "wh"
    wh = seeded(spark, root)
    tx = wh.begin("dropcrash")
    tx.drop("usage")
    tx.put("plans", spark.createDataFrame([("P1",)], "plan_id string"), [("plan_id", "VARCHAR")], partitions=None)
    monkeypatch.setenv("MKTOOL_FAULT", "warehouse_after_journal:eio")
    with pytest.raises(OSError):
        tx.commit()
    monkeypatch.delenv("MKTOOL_FAULT")
    again = Warehouse(spark, str(root))
    assert again.tables() == ["plans"] and rows(again.read("plans")) == [("P1",)] and leftovers(root) == []


def test_a_second_warehouse_in_the_process_leaves_an_open_transaction_alone(spark: Any, tmp_path: Path) -> None:
    root = tmp_path / "wh"
    wh = seeded(spark, root)
    tx = wh.begin("open")
    tx.put("usage", usage_df(spark, NEW), USAGE, partitions=MONTHS)
    reader = Warehouse(spark, str(root))  # its recovery must not take the writer's staging
    assert rows(reader.read("usage")) == OLD_ROWS
    tx.commit()
    assert rows(reader.read("usage")) == NEW_ROWS and leftovers(root) == []


def test_the_same_rows_give_the_same_file_contents(spark: Any, tmp_path: Path) -> None:
    contents = []
    for name in ("a", "b"):
        wh = Warehouse(spark, str(tmp_path / name))
        with wh.begin() as tx:
            tx.put("usage", usage_df(spark, NEW), USAGE, partitions=MONTHS)
        contents.append(sorted(p.read_bytes() for p in (tmp_path / name / "usage").rglob("part-*.parquet")))
    assert len(contents[0]) >= 3 and contents[0] == contents[1]


def test_a_table_without_month_takes_no_month_partitions(spark: Any, tmp_path: Path) -> None:
    from mktool.warehouse import WarehouseError

    wh = Warehouse(spark, str(tmp_path / "wh"))
    tx = wh.begin()
    with pytest.raises(WarehouseError, match="one partition 'data'"):
        tx.put("plans", spark.createDataFrame([("P",)], "plan_id string"), [("plan_id", "VARCHAR")],
               partitions=["2026-10"])
    tx.put("plans", spark.createDataFrame([("P",)], "plan_id string"), [("plan_id", "VARCHAR")], partitions=["data"])
    tx.commit()
    assert wh.partitions("plans") == ["data"] and rows(wh.read("plans")) == [("P",)]


KILLED_CHILD = """
import sys
from mktool.spark import SparkOptions, open_session
from mktool.warehouse import Warehouse
session = open_session(SparkOptions(master="local[1]"))
wh = Warehouse(session, sys.argv[1])
tx = wh.begin("killed")
tx.put("usage", session.createDataFrame(%r, "msisdn string, month string, fee string, sms bigint"),
       %r, partitions=%r)
tx.commit()
"""


def test_a_real_kill_between_the_two_renames_is_finished_by_the_next_warehouse(spark: Any, tmp_path: Path) -> None:
    """SIGKILL (no finally block, no atexit; the child's JVM goes with it) at the worst point: October's
    old folder is in the trash and the new one still in staging, so October is missing."""
    from conftest import ENV

    root = tmp_path / "wh"
    seeded(spark, root)
    child = subprocess.run([sys.executable, "-c", KILLED_CHILD % (NEW, USAGE, MONTHS), str(root)],
                           env={**ENV, "MKTOOL_FAULT": "warehouse_between_renames:kill"},
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr[-2000:]
    assert sorted(p.name for p in (root / "usage").glob("month=*")) == ["month=2026-11"]
    again = Warehouse(spark, str(root))
    assert rows(again.read("usage")) == NEW_ROWS and again.version("usage") == 2 and leftovers(root) == []
