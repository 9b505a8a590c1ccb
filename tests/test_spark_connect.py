"""Spark Connect (``--spark-remote sc://…``, issue 16): the warehouse's local-folder backend, and the
fixtures' ingest and score run by the CLI against a real Connect server, giving DuckDB's tables.

The LocalFS tests need no Spark. The Connect tests start one Connect server (PySpark ships it:
``spark-connect_2.13-*.jar``) on 127.0.0.1 for this module, and run ``python -m mktool`` as a user
would, in a subprocess: a Connect client in this process would switch PySpark's functions to Connect
for the classic session the other Spark tests share. Without the Connect client's packages (``pip
install -e ".[spark]"`` brings them) or Java they skip, except in CI, where that is a failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import ENV, FIXTURES, MATRICES, M, _spark_missing, require
from typer.testing import CliRunner

from mktool.cli import app
from mktool.warehouse import LocalFS

ROOT = Path(__file__).resolve().parents[1]
#: Bounded waits: the server starts in 20–60 s on a loaded 2-core machine; a step over Connect in minutes.
SERVER_START_S = 240
STEP_S = 900


# -- LocalFS: the warehouse's file operations where the session has no JVM ------------------------------
def test_local_fs_hides_and_drops_hadoops_checksum_files(tmp_path: Path) -> None:
    fs = LocalFS(f"file:{tmp_path}")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "_table.json").write_text("{}")
    (tmp_path / "t" / "._table.json.crc").write_bytes(b"stale")  # as Hadoop's local file system writes it
    assert fs.listdir(f"file:{tmp_path}/t") == ["_table.json"]
    fs.write_text(f"file:{tmp_path}/t/_table.json.run", '{"version": 2}\n')
    fs.replace(f"file:{tmp_path}/t/_table.json.run", f"file://{tmp_path}/t/_table.json")
    # a checksum of the old bytes would make a classic session's read fail: it goes with them
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["_table.json"]
    assert fs.read_text(f"file:{tmp_path}/t/_table.json") == '{"version": 2}\n'


def test_local_fs_rename_never_moves_into_an_existing_folder(tmp_path: Path) -> None:
    fs = LocalFS(f"file:{tmp_path}")
    fs.mkdirs(f"file:{tmp_path}/a/month=2026-10")
    fs.mkdirs(f"file:{tmp_path}/b")
    with pytest.raises(OSError, match="exists"):
        fs.rename(f"file:{tmp_path}/a", f"file:{tmp_path}/b")
    fs.rename(f"file:{tmp_path}/a", f"file:{tmp_path}/deep/er/a")  # parents made, as Hadoop's mkdirs
    assert fs.list_dirs(f"file:{tmp_path}/deep/er/a") == ["month=2026-10"]
    fs.delete(f"file:{tmp_path}/deep")
    fs.delete(f"file:{tmp_path}/not-there")  # nothing to delete is not an error
    assert not fs.exists(f"file:{tmp_path}/deep") and fs.listdir(f"file:{tmp_path}/nope") == []


def test_local_fs_glob_lists_files_as_uris_with_escaped_characters(tmp_path: Path) -> None:
    fs = LocalFS(f"file:{tmp_path}")
    for name in ("billing_2026-09.parquet", "billing_*.parquet", ".billing_x.parquet.crc"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "billing_dir.parquet").mkdir()
    assert fs.glob(f"{tmp_path}/billing_*.parquet") == [f"file:{tmp_path}/billing_*.parquet",
                                                        f"file:{tmp_path}/billing_2026-09.parquet"]
    assert fs.glob(f"{tmp_path}/billing_[*].parquet") == [f"file:{tmp_path}/billing_*.parquet"]  # ingest's escaping
    assert fs.glob(f"{tmp_path}/none_*.parquet") == []


# -- a Connect server for this module ------------------------------------------------------------------
def _connect_missing() -> str | None:
    missing = _spark_missing()
    if missing is not None:
        return missing
    try:
        from pyspark.sql.connect.utils import check_dependencies

        with warnings.catch_warnings():  # "does not yet fully support pandas >= 3": mktool filters it too
            warnings.simplefilter("ignore", FutureWarning)
            check_dependencies()
    except ImportError as exc:
        return f"the Spark Connect client's packages are missing ({exc}): pip install -e \".[spark]\""
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``sc://127.0.0.1:PORT`` of a Spark Connect server on local[2] (2 shuffle partitions), stopped after."""
    require(_connect_missing(), "the Spark Connect tests")
    from pyspark.find_spark_home import _find_spark_home

    home = _find_spark_home()
    folder = tmp_path_factory.mktemp("connect-server")
    port = _free_port()
    log = (folder / "server.log").open("wb")
    server = subprocess.Popen(
        [os.path.join(home, "bin", "spark-submit"),
         "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
         "--name", "mktool tests: Spark Connect server", "--master", "local[2]",
         "--conf", "spark.connect.grpc.binding.address=127.0.0.1", "--conf", f"spark.connect.grpc.binding.port={port}",
         "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.shuffle.partitions=2"],
        cwd=folder, env={**os.environ, "SPARK_HOME": home}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not _listening(port):
            if server.poll() is not None or time.monotonic() > deadline:
                tail = (folder / "server.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"the Spark Connect server did not start (exit {server.poll()}):\n{tail}")
            time.sleep(1)
        yield f"sc://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
        log.close()


def mktool(remote: str, warehouse: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m mktool --engine spark --spark-remote … --warehouse … ARGS``, as a user runs it."""
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), ENV.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.run([sys.executable, "-m", "mktool", "--engine", "spark", "--spark-remote", remote,
                           "--warehouse", str(warehouse), *args, "--matrices", str(MATRICES)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=STEP_S)


def _parquet_rows(warehouse: Path, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    """A warehouse table's rows read straight from its Parquet files by DuckDB (month from the folder)."""
    if not list((warehouse / table).glob("*/*.parquet")):
        return []  # a monthly table with no month yet (a bookkeeping table score does not fill)
    with duckdb.connect(":memory:") as duck:
        files = str(warehouse / table / "*" / "*.parquet")
        select = ", ".join(f'"{c}"' for c in columns)
        rows = duck.execute(f"SELECT {select} FROM read_parquet(?, hive_partitioning = true, "
                            "hive_types = {'month': VARCHAR})" if "month" in columns else
                            f"SELECT {select} FROM read_parquet(?)", [files]).fetchall()
    return sorted(rows, key=repr)


@pytest.mark.spark
def test_ingest_and_score_over_spark_connect_give_duckdbs_tables(connect_server: str, tmp_path: Path) -> None:
    warehouse = tmp_path / "wh"
    started = time.monotonic()
    ingested = mktool(connect_server, warehouse, "ingest", str(FIXTURES))
    assert ingested.returncode == 0, ingested.stderr[-3000:]
    scored = mktool(connect_server, warehouse, "score", "--month", M)
    assert scored.returncode == 0, scored.stderr[-3000:]
    print(f"ingest + score over Spark Connect: {time.monotonic() - started:.0f} s")  # the suite budget (-s)
    assert same_as_duckdb(warehouse, tmp_path / "mk.duckdb") > 20_000  # contract tables, log, customer view


#: What two runs of the same steps record differently: their ids, times and command lines.
_VARIES = {"ingest_log": {"load_id", "loaded_at"}, "step_log": {"build_id", "command_line", "recorded_at"}}


def same_as_duckdb(warehouse: Path, db: Path) -> int:
    """Ingest and score the fixtures on DuckDB into ``db``, and check that every table DuckDB then has
    is in the warehouse with the same rows; returns how many rows were compared."""
    runner = CliRunner()
    for args in (["ingest", str(FIXTURES)], ["score", "--month", M]):
        result = runner.invoke(app, [*args, "--db", str(db), "--matrices", str(MATRICES)])
        assert result.exit_code == 0, result.output
    with duckdb.connect(str(db), read_only=True) as duck:
        tables = [r[0] for r in duck.execute("SELECT table_name FROM information_schema.tables "
                                             "WHERE table_schema = 'main' ORDER BY 1").fetchall()]
        for table in ("customer_view", "subscribers", "billing", "usage", "ingest_log"):
            assert table in tables, table
        compared = 0
        for table in tables:
            columns = [r[0] for r in duck.execute(f'DESCRIBE "{table}"').fetchall()]
            columns = [c for c in columns if c not in _VARIES.get(table, ())]
            assert (warehouse / table / "_table.json").is_file(), table
            select = ", ".join(f'"{c}"' for c in columns)
            expected = sorted(duck.execute(f'SELECT {select} FROM "{table}"').fetchall(), key=repr)
            got = _parquet_rows(warehouse, table, columns)
            assert len(got) == len(expected), table
            assert got == expected, table
            compared += len(expected)
    return compared


@pytest.mark.spark
def test_a_hadoop_warehouse_over_spark_connect_is_refused_saying_what_to_do(connect_server: str) -> None:
    done = mktool(connect_server, "hdfs://namenode:8020/mk", "status")
    assert done.returncode == 1, done.stderr
    text = " ".join(done.stderr.split())  # as the user reads it, whatever the terminal's width
    assert "the warehouse hdfs://namenode:8020/mk is a Hadoop URI, and a Spark Connect session has no " \
           "Hadoop FileSystem on this side" in text
    assert "spark-submit or --spark-master instead of --spark-remote" in text
