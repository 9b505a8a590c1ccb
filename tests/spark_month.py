"""The fixtures' month on both engines as one folder per engine, for the Spark parity tests of the
commands that come after export (tests/test_spark_evaluate.py, tests/test_spark_scene.py).

Not a conftest fixture: a helper module the tests import (issue 16). :func:`fixtures_month` lays out
the session's one run of the month (tests/conftest.py's ``fixtures_month``: ingest → export by the CLI
on each engine); a test module takes :func:`copy_of` it, so that what its commands write
(evaluations, scene batches, contacts) is its own whatever the order the modules run in.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import MATRICES, SPARK_MASTER, MonthRun
from typer.testing import CliRunner, Result

from mktool.cli import app

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


def fixtures_month(run: MonthRun, factory: pytest.TempPathFactory) -> Site:
    """The fixtures' month through export on both engines as a :class:`Site`: the very run of
    tests/conftest.py's ``fixtures_month`` (ingest → export by the CLI, once per test session), laid out
    in one folder per engine. A Spark month costs minutes: the parity tests never build a second one."""
    site = Site(factory.mktemp("spark-month"))
    for engine in ENGINES:
        site.home(engine).mkdir(parents=True)
        # run.folders[engine] is <out>/<month>/<date>: the export's --out is two levels up
        shutil.copytree(run.folders[engine].parent.parent, site.out(engine))
    shutil.copy2(run.duckdb.db_path, site.db())
    shutil.copytree(run.spark.warehouse, site.warehouse(), ignore=shutil.ignore_patterns("_scratch"))
    return site


def copy_of(site: Site, dest: Path) -> Site:
    """A private copy of both engines' state and outputs under ``dest``."""
    shutil.copytree(site.root, dest, ignore=shutil.ignore_patterns("_scratch"))
    return Site(dest)
