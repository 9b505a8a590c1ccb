"""Workflow building blocks shared by ``mktool snapshot`` and ``mktool diff``.

A whole month in a temporary place (:func:`temporary_run`: ingest from fixtures or a copy of
the user's database, then score → matrix → plan → export, all removed on exit), and reading
the target lists an export folder holds (:func:`target_lists`, :func:`list_reader`). Neither
command depends on the other; both depend on this.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from mktool.config import Settings
from mktool.console import QUIET, Reporter
from mktool.contract import check_month
from mktool.database import Database
from mktool.errors import MktoolError, StateError
from mktool.pipeline import check_before_run, run_pipeline
from mktool.project import load_project
from mktool.sqlquote import quote_literal

__all__ = [
    "LIST_SUFFIXES",
    "MonthRun",
    "copy_database",
    "default_cycle_date",
    "list_reader",
    "target_lists",
    "temporary_run",
]

LIST_SUFFIXES = (".csv", ".parquet", ".jsonl")


def default_cycle_date(month: str) -> dt.date:
    """The first day of the month after ``month``: the usual month-end export date."""
    y, m = int(month[:4]), int(month[5:7])
    return dt.date(y + (m == 12), m % 12 + 1, 1)


# -- reading target lists back ----------------------------------------------------------------------
def list_reader(path: Path) -> str:
    """The DuckDB table function that reads one target list as written (csv as text, parquet, jsonl)."""
    quoted = quote_literal(str(path))
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return f"read_csv({quoted}, header = true, all_varchar = true)"
    if suffix == ".parquet":
        return f"read_parquet({quoted})"
    return f"read_json({quoted}, format = 'newline_delimited')"


def target_lists(folder: Path) -> list[Path]:
    """The target lists of one export folder (<out>/<month>): every csv / parquet / jsonl file."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in LIST_SUFFIXES and not p.name.startswith("."))


# -- one month through the whole pipeline, in a temporary place ----------------------------------------
@dataclass
class MonthRun:
    """What one temporary run left behind (valid inside :func:`temporary_run`)."""

    month: str
    cycle_date: dt.date
    db_path: Path
    out_dir: Path  # <out>/<month>: the lists, funnel.json, manifest.json
    matrices_dir: Path


@contextlib.contextmanager
def temporary_run(month: str, matrices_dir: Path, *, fixtures: Path | None = None, source_db: Path | None = None,
                  cycle_date: dt.date | None = None, settings: Settings | None = None, reporter: Reporter = QUIET,
                  label: str = "run") -> Iterator[MonthRun]:
    """Run ingest (from ``fixtures``) or copy ``source_db``, then score → matrix → plan → export.

    Everything lives in a temporary folder that is removed on exit; the user's database is
    only ever read (under the shared lock, via DuckDB's COPY FROM DATABASE).
    """
    check_month(month)
    if (fixtures is None) == (source_db is None):
        raise MktoolError("give either fixture extracts or a database to copy")
    cycle_date = cycle_date or default_cycle_date(month)
    base = settings or Settings()
    with tempfile.TemporaryDirectory(prefix=f"mktool-{label}-") as tmp:
        tmpdir = Path(tmp)
        db_path = tmpdir / f"{label}.duckdb"
        run_settings = Settings(db_path=db_path, matrices_dir=Path(matrices_dir), memory_limit=base.memory_limit,
                                threads=base.threads, temp_dir=tmpdir / "spill", lock_wait=0)
        project = load_project(Path(matrices_dir))
        check_before_run(project)
        if source_db is not None:
            copy_database(source_db, db_path, base)
        with Database(run_settings, write=True) as db:
            run_pipeline(db, project, month,
                         ingest_paths=[Path(fixtures)] if fixtures is not None else None,
                         cycle_date=cycle_date, out_dir=tmpdir / "out", reporter=reporter)
        yield MonthRun(month, cycle_date, db_path, tmpdir / "out" / month, Path(matrices_dir))


def copy_database(source: Path, target: Path, settings: Settings) -> None:
    """A consistent copy of the user's database (read-only, under mktool's shared lock)."""
    if not Path(source).exists():
        raise StateError(f"no database at {source}",
                         hint="run `mktool ingest` first, or give --fixtures DIR to build from extracts")
    reader = Settings(db_path=Path(source), matrices_dir=settings.matrices_dir, memory_limit=settings.memory_limit,
                      threads=settings.threads, temp_dir=target.parent / "spill-copy", lock_wait=settings.lock_wait)
    with Database(reader, write=False):  # holds the shared lock: no mktool writer meanwhile
        con = duckdb.connect(":memory:")
        try:
            con.execute(f"ATTACH {quote_literal(str(source))} AS mk_src (READ_ONLY)")
            con.execute(f"ATTACH {quote_literal(str(target))} AS mk_dst")
            con.execute("COPY FROM DATABASE mk_src TO mk_dst")
        finally:
            con.close()
