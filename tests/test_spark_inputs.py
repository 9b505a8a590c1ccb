"""Extracts from any path Spark reads, and runs that never corrupt each other (issue 16, item 2).

No HDFS here: ``file:`` URIs take the same road as ``hdfs://`` and ``s3a://`` (the session's Hadoop
file system for listing, sizes, checksums and Parquet footers; the Hadoop lock file for a URI
warehouse), and a local folder keeps the local road. What ingest records about a file, and how it
refuses one, must not depend on the engine or the road.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from conftest import ENV, ROOT, M, jvm_noise, plain_jvm_env, write_table
from typer.testing import CliRunner

from mktool import ingest, sparkdb
from mktool.cli import app
from mktool.config import Settings
from mktool.database import Database
from mktool.errors import EXIT_LOCKED, InputError
from mktool.publish import file_sha256
from mktool.warehouse import LOCK_FILE, READERS, SCRATCH, HadoopFS, HadoopLock, Warehouse

#: Names whose characters Hadoop's glob reads specially ({a,b}, [set]) or DuckDB's does (*, ?, [):
#: each must load exactly its own rows. usage_2026-10a.parquet is what {a,b} would also match.
ODD_NAMES = (f"usage_{M}{{a,b}}.parquet", f"usage_{M}[1].parquet", f"usage_{M}a.parquet")


def _extracts(folder: Path) -> Path:
    write_table(folder / "plans.parquet", "plans", [{"plan_id": "ZX128"}, {"plan_id": "ZX58"}])
    for i, name in enumerate(ODD_NAMES):
        write_table(folder / "usage" / name, "usage", [
            {"msisdn": f"1380000{i}001", "month": M, "sms_count": 10 + i},
            {"msisdn": f"1380000{i}002", "month": M, "sms_count": 20 + i}], types={"sms_count": pa.int64()})
    return folder


def _uri(path: Path) -> str:
    return f"file://{path}"  # file:///abs/path, as a user would type it


def _listing(root: Path) -> list[tuple[str, int, str]]:
    """Every folder and file under ``root`` with its size and sha256: 'exactly as before', byte for byte."""
    return [(str(p.relative_to(root)), -1, "") if p.is_dir() else
            (str(p.relative_to(root)), p.stat().st_size, file_sha256(p)) for p in sorted(root.rglob("*"))]


def _spark_settings(warehouse: str) -> Settings:
    return Settings(db_path=Path("unused.duckdb"), engine="spark", warehouse=warehouse)


@pytest.fixture(scope="module")
def loaded(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One folder ingested by DuckDB (a local path) and by Spark (its file:/// URI into a file:/// warehouse)."""
    tmp = tmp_path_factory.mktemp("inputs")
    folder = _extracts(tmp / "in")
    db, wh = tmp / "mk.duckdb", tmp / "wh"
    duck = CliRunner().invoke(app, ["ingest", str(folder), "--db", str(db)])
    assert duck.exit_code == 0, duck.output
    on_spark = CliRunner().invoke(app, ["--engine", "spark", "--warehouse", _uri(wh), "ingest", _uri(folder)])
    assert on_spark.exit_code == 0, on_spark.output
    return {"tmp": tmp, "folder": folder, "db": db, "wh": wh}


# -- listing, sizes, checksums: the Hadoop road gives what the local road gives ---------------------
def test_a_file_uri_lists_the_files_a_local_folder_does(spark: Any, tmp_path: Path) -> None:
    folder = _extracts(tmp_path / "in")
    fs = HadoopFS(spark, _uri(tmp_path / "wh"))
    local = ingest.discover([folder])
    for given in (_uri(folder), f"file:{folder}"):  # file:///a and file:/a
        remote = ingest.discover([given], fs=fs)
        assert [(s.table, s.where, s.recorded, s.path.name) for s in remote] == \
            [(s.table, s.where, s.recorded, s.path.name) for s in local]
        assert all(s.uri.startswith("file:/") for s in remote)
        assert [s.size for s in remote] == [s.path.stat().st_size for s in local]
        assert [fs.sha256(s.uri) for s in remote] == [file_sha256(s.path) for s in local]
    one = ingest.discover([_uri(folder / "plans.parquet")], fs=fs)
    assert [(s.table, s.where) for s in one] == [("plans", str(folder / "plans.parquet"))]
    # the same refusals, naming the same path
    (tmp_path / "empty").mkdir()
    for missing in ("nowhere", "empty"):
        with pytest.raises(InputError) as on_disk:
            ingest.discover([tmp_path / missing])
        with pytest.raises(InputError) as through_hadoop:
            ingest.discover([_uri(tmp_path / missing)], fs=fs)
        assert str(through_hadoop.value) == str(on_disk.value)
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / "plans.parquet").write_bytes(b"")  # sizes: a 0-byte extract, listed either way
    refusals = []
    for src in (*ingest.discover([tmp_path / "zero"]), *ingest.discover([_uri(tmp_path / "zero")], fs=fs)):
        with pytest.raises(InputError) as refused:
            ingest.read_schema(duckdb.connect(), src)
        refusals.append(str(refused.value))
    assert len(refusals) == 2 and refusals[0] == refusals[1] and "empty file (0 bytes)" in refusals[0]
    with pytest.raises(InputError, match="a URI is read through Spark: DuckDB reads local files only"):
        ingest.discover([_uri(folder)])  # DuckDB has no Hadoop file system: a URI is refused, never guessed


def test_literal_file_names_read_only_themselves_on_spark(spark: Any, tmp_path: Path) -> None:
    """{a,b} and [1] in a file name are characters, not patterns, on both roads; the Parquet footer read
    through Hadoop gives DuckDB's parquet_schema rows."""
    folder = _extracts(tmp_path / "in")
    duck = duckdb.connect()
    spark_con = sparkdb.connect_session(spark, Warehouse(spark, _uri(tmp_path / "wh")))
    try:
        for name in ODD_NAMES:
            local = ingest.SourceFile(path=folder / "usage" / name, table="usage")
            (remote,) = ingest.discover([_uri(folder / "usage" / name)], fs=spark_con.input_fs)
            ingest.read_schema(duck, local)
            for src in (local, remote):
                ingest.read_schema(spark_con, src)  # refuses a name that reads as a pattern of != 1 file
                assert (src.rows, src.schema) == (local.rows, local.schema), (name, src.where)
            rows = f"SELECT msisdn FROM {remote.scan} ORDER BY 1"
            assert spark_con.execute(rows).fetchall() == duck.execute(f"SELECT msisdn FROM {local.scan} ORDER BY 1"
                                                                      ).fetchall() and len(remote.schema) > 3
            tree = f"SELECT name, num_children FROM parquet_schema('{remote.sql_path}')"
            assert spark_con.execute(tree).fetchall() == \
                duck.execute(f"SELECT name, num_children FROM parquet_schema('{local.sql_path}')").fetchall()
    finally:
        spark_con.close()


def test_ingest_from_a_file_uri_records_what_duckdb_records(loaded: dict[str, Any]) -> None:
    duck_settings = Settings(db_path=loaded["db"], memory_limit="1GB", threads=2)
    with Database(duck_settings, write=False) as d, Database(_spark_settings(_uri(loaded["wh"])), write=False) as s:
        log = "SELECT table_name, file, sha256, rows, months FROM ingest_log ORDER BY seq"
        duck_log, spark_log = d.c.execute(log).fetchall(), s.c.execute(log).fetchall()
        assert spark_log == duck_log
        assert {Path(f).name for _, f, *_ in duck_log} == {*ODD_NAMES, "plans.parquet"}
        assert all(f.startswith(str(loaded["folder"])) for _, f, *_ in spark_log)  # the local path, not file:
        for table in ("usage", "plans"):
            sql = f'SELECT * FROM "{table}" ORDER BY ALL'
            assert s.c.execute(sql).fetchall() == d.c.execute(sql).fetchall(), table
        assert s.c.execute("SELECT count(*) FROM usage").fetchone() == (2 * len(ODD_NAMES),)


# -- a refused or read-only command leaves the warehouse exactly as it was --------------------------
def _bad_folder(tmp: Path) -> Path:
    write_table(tmp / "bad" / f"usage_{M}.parquet", "usage", [
        {"msisdn": "13800000001", "month": M, "sms_count": 3.0},
        {"msisdn": "13800000002", "month": M, "sms_count": 3.5}], types={"sms_count": pa.float64()})
    return tmp / "bad"


def test_a_refused_ingest_leaves_the_warehouse_byte_for_byte(loaded: dict[str, Any]) -> None:
    tmp, wh = loaded["tmp"], loaded["wh"]
    bad = _bad_folder(tmp)
    before = _listing(wh)
    assert any(name.startswith("ingest_log/") for name, *_ in before)
    duck = CliRunner().invoke(app, ["ingest", str(bad), "--db", str(tmp / "other.duckdb")])
    for given in (_uri(bad), str(bad)):  # the Hadoop road and the local road
        on_spark = CliRunner().invoke(app, ["--engine", "spark", "--warehouse", _uri(wh), "ingest", given])
        assert duck.exit_code == on_spark.exit_code == 1, on_spark.output
        assert on_spark.output == duck.output and "13800000002" in duck.output
        assert _listing(wh) == before, given


@pytest.mark.parametrize("uri", [True, False], ids=["file-uri", "local-folder"])
def test_a_refused_ingest_into_a_new_warehouse_leaves_none(spark: Any, tmp_path: Path, uri: bool) -> None:
    wh = tmp_path / "new-wh"
    root = _uri(wh) if uri else str(wh)
    result = CliRunner().invoke(app, ["--engine", "spark", "--warehouse", root, "ingest", str(_bad_folder(tmp_path))])
    assert result.exit_code == 1, result.output
    assert not wh.exists()  # no folder, no lock file, no empty bookkeeping tables


@pytest.mark.parametrize("command", [["status"], ["report", "--month", M]])
def test_a_read_only_command_on_a_missing_local_warehouse_creates_nothing(tmp_path: Path, command: list[str]) -> None:
    """Refused before Spark starts: nothing to read, and no folder or _mktool.lock is made."""
    wh = tmp_path / "missing" / "wh"
    result = CliRunner().invoke(app, ["--engine", "spark", "--warehouse", str(wh), *command])
    assert result.exit_code != 0 and f"no warehouse at {wh}" in result.output, result.output
    assert not (tmp_path / "missing").exists()


def test_a_read_only_command_on_a_missing_uri_warehouse_creates_nothing(spark: Any, tmp_path: Path) -> None:
    wh = tmp_path / "missing"
    result = CliRunner().invoke(app, ["--engine", "spark", "--warehouse", _uri(wh), "status"])
    assert result.exit_code != 0 and f"no warehouse at {_uri(wh)}" in result.output, result.output
    assert not wh.exists()


def test_a_writer_removes_the_scratch_of_runs_that_are_gone(loaded: dict[str, Any]) -> None:
    wh = loaded["wh"]
    stale = wh / SCRATCH / "0123456789ab" / "t0"
    stale.mkdir(parents=True)
    (stale / "part-0.parquet").write_bytes(b"left by a killed run")
    with Database(_spark_settings(_uri(wh)), write=False):
        pass
    assert stale.exists()  # a reader cannot tell a dead run's scratch from a live reader's
    with Database(_spark_settings(_uri(wh)), write=True) as db:
        assert db.c.execute("SELECT count(*) FROM plans").fetchone() == (2,)
        assert not (wh / SCRATCH / "0123456789ab").exists()
    assert not (wh / SCRATCH).exists()  # and no empty folder is left either


# -- the run lock of a URI warehouse ---------------------------------------------------------------
def _holder(wh: Path, **fields: Any) -> None:
    (wh / LOCK_FILE).write_text(json.dumps(fields) + "\n", encoding="utf-8")


def test_a_held_uri_warehouse_refuses_a_writer_and_a_reader(loaded: dict[str, Any], spark: Any) -> None:
    wh = loaded["wh"]
    fs = HadoopFS(spark, _uri(wh))
    writer = HadoopLock(fs, _uri(wh), exclusive=True, wait=0).acquire()
    try:
        assert (wh / LOCK_FILE).exists()
        for command in (["status"], ["ingest", _uri(loaded["folder"] / "plans.parquet")]):
            result = CliRunner().invoke(app, ["--engine", "spark", "--warehouse", _uri(wh), *command])
            assert result.exit_code == EXIT_LOCKED, result.output
            assert f"warehouse is locked by another mktool run (pid {os.getpid()} on host " \
                   f"{socket.gethostname()}" in result.output
    finally:
        writer.release()
    assert not (wh / LOCK_FILE).exists()
    reader = HadoopLock(fs, _uri(wh), exclusive=False, wait=0).acquire()
    try:
        other_reader = CliRunner().invoke(app, ["--engine", "spark", "--warehouse", _uri(wh), "status"])
        assert other_reader.exit_code == 0, other_reader.output  # readers share
        with pytest.raises(Exception, match="warehouse is locked by another mktool run"):
            HadoopLock(fs, _uri(wh), exclusive=True, wait=0).acquire()  # a writer waits for readers
        assert not (wh / LOCK_FILE).exists()  # and takes nothing meanwhile
    finally:
        reader.release()
    assert not (wh / READERS).exists()


def test_a_dead_runs_lock_is_taken_over_and_a_foreign_hosts_is_named(loaded: dict[str, Any], spark: Any) -> None:
    wh = loaded["wh"]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no process has now (a killed run's)
    _holder(wh, host=socket.gethostname(), pid=gone.pid, since="2026-12-01T00:00:00+00:00", command="mktool run")
    result = CliRunner().invoke(app, ["--engine", "spark", "--warehouse", _uri(wh), "status"])
    assert result.exit_code == 0, result.output
    assert not (wh / LOCK_FILE).exists()
    _holder(wh, host="node-7.cluster", pid=4242, since="2026-12-01T00:00:00+00:00", command="mktool run")
    try:
        result = CliRunner().invoke(app, ["--engine", "spark", "--warehouse", _uri(wh), "status"])
        assert result.exit_code == EXIT_LOCKED, result.output
        text = " ".join(result.output.split())
        assert "pid 4242 on host node-7.cluster since 2026-12-01T00:00:00+00:00: mktool run" in text
        assert f"remove {_uri(wh)}/{LOCK_FILE}" in text.replace(f"file:{wh}", _uri(wh))
    finally:
        (wh / LOCK_FILE).unlink()


def test_two_processes_on_one_file_uri_warehouse(loaded: dict[str, Any], spark: Any) -> None:
    """This process holds the warehouse's lock; another mktool process is refused, naming it, and
    leaves the warehouse as it was; once the lock is given back, it runs."""
    wh = loaded["wh"]
    lock = HadoopLock(HadoopFS(spark, _uri(wh)), _uri(wh), exclusive=True, wait=0).acquire()
    command = [sys.executable, "-m", "mktool", "--engine", "spark", "--spark-master", "local[1]",
               "--warehouse", _uri(wh), "ingest", _uri(loaded["folder"] / "plans.parquet")]
    before = _listing(wh)
    try:
        child = subprocess.run(command, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    finally:
        lock.release()
    assert child.returncode == EXIT_LOCKED, child.stderr
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in " ".join(child.stderr.split())
    assert [e for e in _listing(wh) if e[0] != LOCK_FILE] == [e for e in before if e[0] != LOCK_FILE]
    # A user without a log4j2 setup of their own: the driver JVM's banner and WARN lines stay off stderr.
    child = subprocess.run(command, env=plain_jvm_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr
    assert jvm_noise(child.stderr) == [], child.stderr
    with Database(_spark_settings(_uri(wh)), write=False) as db:
        assert db.c.execute("SELECT count(DISTINCT load_id) FROM ingest_log").fetchone() == (2,)
