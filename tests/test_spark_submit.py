"""spark-submit (issue 16): ``spark-submit --master … <mktool/__main__.py> --engine spark … ingest``
runs mktool as the Python driver spark-submit starts, keeping spark-submit's master and conf (the
session builder's side of that is tested in test_spark_session.py without a JVM).

One cheap run: the fixtures' plans extract ingested through PySpark's own bin/spark-submit on
local[2], its rows compared with DuckDB's ingest of the same file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from conftest import ENV, FIXTURES, MATRICES, _spark_missing, require
from typer.testing import CliRunner

import mktool.__main__
from mktool.cli import app

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.spark


def test_spark_submit_runs_mktools_entry_script_on_its_master(tmp_path: Path) -> None:
    require(_spark_missing(), "the spark-submit test")
    from pyspark.find_spark_home import _find_spark_home

    home = _find_spark_home()
    extracts = tmp_path / "extracts"
    extracts.mkdir()
    shutil.copy(FIXTURES / "plans.parquet", extracts / "plans.parquet")
    warehouse = tmp_path / "wh"
    # spark-submit starts the driver with the python3 on PATH: this interpreter's, as in an activated venv
    env = {**ENV, "SPARK_HOME": home, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]),
           "PYSPARK_PYTHON": sys.executable}
    entry = mktool.__main__.__file__  # what docs/spark.md tells a user to hand spark-submit
    done = subprocess.run(
        [os.path.join(home, "bin", "spark-submit"), "--master", "local[2]", "--conf", "spark.sql.shuffle.partitions=3",
         entry, "--engine", "spark", "--warehouse", str(warehouse), "ingest", str(extracts),
         "--matrices", str(MATRICES)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Loaded 1 file(s), 28 rows" in done.stdout + done.stderr

    db = tmp_path / "mk.duckdb"
    result = CliRunner().invoke(app, ["ingest", str(extracts), "--db", str(db), "--matrices", str(MATRICES)])
    assert result.exit_code == 0, result.output
    with duckdb.connect(str(db), read_only=True) as duck:
        columns = ", ".join(f'"{r[0]}"' for r in duck.execute('DESCRIBE "plans"').fetchall())
        expected = sorted(duck.execute(f'SELECT {columns} FROM "plans"').fetchall(), key=repr)
        got = sorted(duck.execute(f"SELECT {columns} FROM read_parquet(?)",
                                  [str(warehouse / "plans" / "data" / "*.parquet")]).fetchall(), key=repr)
    assert len(expected) == 28 and got == expected
