"""Shared test helpers: tiny contract-shaped extracts written as Parquet into tmp_path.

Tests state only the columns that matter for them; every other contract column gets a
plain default so that the files always satisfy the contract unless a test breaks it on purpose.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner, Result

from mktool.cli import app
from mktool.config import Settings
from mktool.contract import TABLES
from mktool.database import Database
from mktool.spark import LOG4J_SOURCES

# A test run started in the background by a non-interactive shell (`cmd &`, nohup) inherits SIGINT
# ignored, and so would every mktool the Ctrl-C tests start: Python installs no KeyboardInterrupt
# handler where SIGINT is ignored at start-up, the signal does nothing and those tests fail. A
# handler here (in each xdist worker too) makes every child start with the default disposition.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# -- the shipped project and the month the tests run -------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
MATRICES = ROOT / "matrices"
FIXTURES = ROOT / "fixtures" / "extracts"
M = "2026-10"
D = "2026-11-01"  # the cycle date of most exports
CYCLE_DATE = dt.date.fromisoformat(D)
NEXT_DAY = "2026-11-02"  # a new cycle of the daily channels: different lists, new contacts



def cycle_dir(out: Path, month: str = M, date: str | dt.date = D) -> Path:
    """One export cycle's folder, ``<out>/<month>/<cycle-date>/``: its lists, funnel.json and manifest.json."""
    return Path(out) / month / (date.isoformat() if isinstance(date, dt.date) else date)

#: The environment of a real mktool process: plain output, small engine settings, this checkout
#: first on the path, and no fault planted unless a test asks for one.
ENV = {**os.environ, "NO_COLOR": "1", "MKTOOL_THREADS": "2", "MKTOOL_MEMORY_LIMIT": "1GB",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
ENV.pop("MKTOOL_FAULT", None)

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
    "orders": dict(policy_id="MI_PACK_10", action="order", channel=None),
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


def mktool(*args: str, fault: str | None = None, timeout: float = 180,
           **popen: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mktool args`` to its end in ENV; ``fault`` plants MKTOOL_FAULT."""
    env = {**ENV, **({"MKTOOL_FAULT": fault} if fault else {})}
    return subprocess.run([sys.executable, "-m", "mktool", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, **popen)


def mktool_here(*args: str) -> Result:
    """Run ``mktool args`` in this process (Typer's runner): for the command that follows a killed or
    failed one, where what it finds on disk is the subject, not the process. It saves starting
    Python and importing mktool's libraries (~0.5 s of CPU a command) over :func:`mktool`."""
    return CliRunner().invoke(app, list(args))


def edit(path: Path, old: str, new: str, *, count: int = 1) -> None:
    """Replace ``old`` (which must be there) by ``new`` in a text file; ``count=-1`` replaces every one."""
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count), encoding="utf-8")


def fetch(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows of one query on a database file opened read-only (so that the test changes nothing)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working folder, so that relative paths in messages read as a user sees them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def matrices(tmp_path: Path) -> Path:
    """A private copy of the shipped matrices folder (rules and their tests), free to edit."""
    target = tmp_path / "matrices"
    shutil.copytree(MATRICES, target)
    return target


# -- slow: in CI, not in the default run -----------------------------------------------------------
def slow_beyond(values: Any, fast: int | set[Any]) -> list[Any]:
    """``values`` as parameters of which the ``fast`` ones (the first ``fast``, or those in the set) run
    by default, and the rest are marked ``slow``; a tuple is one case of several arguments, its id
    the values joined by ``-``.

    The many-case sweeps (a fault at every publish point and of every kind, a reference comparison
    on many random databases) keep a few cases in the default run, which a developer runs on every
    change (about 10 minutes on 2 cores is its budget), and the whole sweep in CI (.ci/run runs
    ``pytest -m slow`` as a stage of its own)."""
    values = list(values)
    assert isinstance(fast, int) or fast <= set(values), f"not a case of the sweep: {fast - set(values)}"
    params = []
    for i, v in enumerate(values):
        marks = () if (i < fast if isinstance(fast, int) else v in fast) else (pytest.mark.slow,)
        args, name = (v, "-".join(map(str, v))) if isinstance(v, tuple) else ((v,), None)
        params.append(pytest.param(*args, id=name, marks=marks))
    return params


# -- Spark (issue 16) ----------------------------------------------------------------------------------
# Every test that takes the `spark` fixture is marked `spark` (below): `pytest -m "not spark"` skips
# them on a laptop without Java. Without PySpark or Java they skip, except in CI (CI set), where a
# missing runtime is a failure: the parity suite must never pass by not running.
SPARK_MASTER = "local[2]"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.spark)


def require(missing: str | None, what: str = "the Spark parity tests") -> None:
    """Skip a test whose runtime is ``missing`` (a laptop without Java), but fail it under CI: the
    parity tests must never pass by not running."""
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{what} must run in CI: {missing}")
        pytest.skip(missing)


def plain_jvm_env() -> dict[str, str]:
    """ENV less every log4j2 setup a user may have (mktool.spark.LOG4J_SOURCES): a JVM mktool starts
    with it gets mktool's own quiet setup."""
    return {k: v for k, v in ENV.items() if k not in LOG4J_SOURCES}


def jvm_noise(stderr: str) -> list[str]:
    """The lines of ``stderr`` that Spark's default log4j profile prints (banner, WARN lines)."""
    return [line for line in stderr.splitlines()
            if "log4j" in line or "Setting default log level" in line or " WARN " in line]


def _spark_missing() -> str | None:
    import importlib.util
    if importlib.util.find_spec("pyspark") is None:
        return 'PySpark is not installed (pip install -e ".[spark]")'
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        return "no Java runtime (apt-get install openjdk-17-jre-headless)"
    return None


@pytest.fixture(scope="session")
def spark():
    """The test process's SparkSession (one per xdist worker: a session costs 20–40 s to start),
    built as ``--engine spark`` builds it, on local[2] with two shuffle partitions."""
    from mktool.spark import SparkOptions, open_session
    require(_spark_missing())
    session = open_session(SparkOptions(master=SPARK_MASTER, conf=(("spark.sql.shuffle.partitions", "2"),)))
    yield session
    session.stop()


@dataclass
class MonthRun:
    """The fixtures' month run once per test session on each engine (ingest → score → matrix → plan →
    export, by the CLI in this process): the Spark parity tests read its results and never run a
    pipeline of their own (a Spark run of the month takes minutes, DuckDB's seconds)."""

    duckdb: Settings
    spark: Settings
    folders: dict[str, Path]  # engine → the export cycle's folder
    #: engine → table → (columns, sorted rows) right after the ingest
    ingested: dict[str, dict[str, tuple[list[tuple[str, str]], list[tuple[Any, ...]]]]]
    seconds: dict[str, float]  # "spark ingest" … : the Spark steps' wall time


def table_snapshot(con: Any, table: str) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]]:
    """(DESCRIBE's (name, type) pairs, the rows sorted) of one table."""
    described = [(r[0], r[1]) for r in con.execute(f'DESCRIBE "{table}"').fetchall()]
    rows = con.execute(f'SELECT * FROM "{table}"').fetchall()
    return described, sorted((tuple(r) for r in rows), key=repr)


@pytest.fixture(scope="session")
def fixtures_month(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> MonthRun:
    """:class:`MonthRun` of the shipped fixtures (month M, cycle date D), built on first use."""
    tmp = tmp_path_factory.mktemp("fixtures-month")
    duck = Settings(db_path=tmp / "mk.duckdb", memory_limit="1GB", threads=2)
    on_spark = Settings(db_path=tmp / "unused.duckdb", engine="spark", warehouse=str(tmp / "wh"))
    engine_args = {"duckdb": ["--db", str(duck.db_path)], "spark": []}
    prefix = {"duckdb": [], "spark": ["--engine", "spark", "--warehouse", str(on_spark.warehouse)]}
    steps = [("ingest", [str(FIXTURES)]), ("score", ["--month", M]), ("matrix", ["--month", M]),
             ("plan", ["--month", M]), ("export", ["--month", M, "--date", D])]
    seconds: dict[str, float] = {}
    ingested: dict[str, dict[str, Any]] = {}
    for step, args in steps:
        for engine, settings in (("duckdb", duck), ("spark", on_spark)):
            extra = ["--out", str(tmp / f"out-{engine}")] if step == "export" else []
            started = time.monotonic()
            result = CliRunner().invoke(app, [*prefix[engine], step, *args, *extra, *engine_args[engine]])
            seconds[f"{engine} {step}"] = time.monotonic() - started
            assert result.exit_code == 0, (engine, step, result.output)
            if step == "ingest":
                with Database(settings, write=False) as database:
                    tables = [r[0] for r in database.c.execute(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()]
                    ingested[engine] = {t: table_snapshot(database.c, t) for t in tables}
    print("fixtures month:", ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    return MonthRun(duck, on_spark, {e: cycle_dir(tmp / f"out-{e}") for e in ("duckdb", "spark")}, ingested, seconds)
