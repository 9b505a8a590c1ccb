"""The fixtures' month on both engines, computed once per test process and shared by the Spark parity
tests of the commands that come after export (tests/test_spark_evaluate.py, tests/test_spark_scene.py).

Not a conftest fixture: a helper module the tests import (issue 16; tests/test_spark_connection.py keeps
its own month). :func:`fixtures_month` builds it the first time it is asked for, in one process-wide
folder: DuckDB ingests the fixtures, the warehouse gets the very same contract tables (ingest's parity
is tested by tests/test_spark_ingest.py), then ``score``, ``matrix``, ``plan`` and ``export --date D``
run through the CLI on each engine. A test module takes :func:`copy_of` it, so that what its commands
write (evaluations, scene batches, contacts) is its own whatever the order the modules run in.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import FIXTURES, MATRICES, SPARK_MASTER, D, M
from typer.testing import CliRunner, Result

from mktool.cli import app
from mktool.warehouse import Warehouse

ENGINES = ("duckdb", "spark")


@dataclass(frozen=True)
class Site:
    """One folder per engine under ``root``: ``duckdb/mk.duckdb`` or ``spark/wh`` (the warehouse), and
    each engine's ``out`` (the lists, the scene batches)."""

    root: Path

    def home(self, engine: str) -> Path:
        return self.root / engine

    def db(self) -> Path:
        return self.home("duckdb") / "mk.duckdb"

    def warehouse(self) -> Path:
        return self.home("spark") / "wh"

    def out(self, engine: str) -> Path:
        return self.home(engine) / "out"

    def mktool(self, engine: str, *args: str) -> Result:
        """``mktool args`` on ``engine``, in this process: the Spark command takes the test session
        (getOrCreate) instead of starting a JVM of its own."""
        if engine == "spark":
            argv = ["--engine", "spark", "--spark-master", SPARK_MASTER, "--warehouse", str(self.warehouse()),
                    *args, "--matrices", str(MATRICES)]
        else:
            argv = [*args, "--matrices", str(MATRICES), "--db", str(self.db())]
        return CliRunner().invoke(app, argv)

    def both(self, *args: str) -> dict[str, Result]:
        """The same command on each engine; each must succeed."""
        results = {engine: self.mktool(engine, *args) for engine in ENGINES}
        for engine, result in results.items():
            assert result.exit_code == 0, (engine, args, result.output)
        return results

    def mask(self, text: str, engine: str) -> str:
        """``text`` with the engine's folder written ``<home>``: the one place two engines' outputs name
        where they were made."""
        return text.replace(str(self.home(engine)), "<home>")


_MONTHS: dict[str, Site] = {}


def fixtures_month(spark: Any, factory: pytest.TempPathFactory) -> Site:
    """The fixtures' month through export on both engines (see the module doc), built once."""
    if "month" in _MONTHS:
        return _MONTHS["month"]
    site = Site(factory.mktemp("spark-month"))
    for engine in ENGINES:
        site.home(engine).mkdir(parents=True)
    loaded = site.mktool("duckdb", "ingest", str(FIXTURES))
    assert loaded.exit_code == 0, loaded.output
    _copy_contract_tables(spark, site.db(), site.warehouse())
    for step in (("score", "--month", M), ("matrix", "--month", M), ("plan", "--month", M)):
        site.both(*step, "-q")
    for engine in ENGINES:
        result = site.mktool(engine, "export", "--month", M, "--date", D, "--out", str(site.out(engine)), "-q")
        assert result.exit_code == 0, (engine, result.output)
    _MONTHS["month"] = site
    return site


def _copy_contract_tables(spark: Any, db: Path, root: Path) -> None:
    """Every table DuckDB's ingest wrote, as it is, into the warehouse (one transaction)."""
    warehouse = Warehouse(spark, str(root))
    with duckdb.connect(str(db), read_only=True) as duck:
        tables = [r[0] for r in duck.execute("SELECT table_name FROM information_schema.tables "
                                             "WHERE table_schema = 'main' ORDER BY 1").fetchall()]
        tx = warehouse.begin()
        for table in tables:
            columns = [(r[0], r[1]) for r in duck.execute(f'DESCRIBE "{table}"').fetchall()]
            tx.put(table, spark.createDataFrame(duck.sql(f'SELECT * FROM "{table}"').to_arrow_table()), columns,
                   partitions=None)
        tx.commit()


def copy_of(site: Site, dest: Path) -> Site:
    """A private copy of both engines' state and outputs under ``dest``."""
    shutil.copytree(site.root, dest, ignore=shutil.ignore_patterns("_scratch"))
    return Site(dest)
