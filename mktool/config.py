"""Run settings: where the database and the rule files are, and how much of the machine DuckDB may use.

Every setting has a command-line option and an environment twin (``MKTOOL_DB``,
``MKTOOL_MATRICES``, ``MKTOOL_MEMORY_LIMIT``, ``MKTOOL_THREADS``, ``MKTOOL_TEMP_DIR``,
``MKTOOL_LOCK_WAIT``) so that cron jobs and CI can set them once. The twins are named here
(``ENV``) and read in one place, the command line (click's ``envvar``: option, else
environment, else default; a bad value is a usage error naming the option and the
variable). This module takes values: ``Settings.from_options`` fills what was not given
with the defaults and never looks at the environment itself.

The values reach DuckDB ``SET`` statements, so each is validated here, whatever its source
(option, environment, a library caller): the command line refuses a bad value first (exit 2),
and these checks are the second line of defence for every other way in. Their messages
speak of the setting ("threads must be …"); the caller adds the option or variable.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mktool.errors import StateError, UsageError

DEFAULT_DB = Path("mktool.duckdb")
ENGINES = ("duckdb", "spark")
DEFAULT_SPARK_MASTER = "local[*]"
#: Where ``--engine spark`` keeps its state tables when --warehouse is not given (docs/spark.md).
DEFAULT_WAREHOUSE = "mktool-warehouse"
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def is_uri(location: str) -> bool:
    """A warehouse or an input named by a URI (``hdfs://…``, ``s3a://…``, ``file:/…``): read through
    Spark's Hadoop file system, where a local path is this machine's (a ``C:\\`` drive is a path)."""
    text = str(location)
    return bool(_SCHEME_RE.match(text)) and not re.match(r"^[A-Za-z]:[\\/]", text)


def local_path(location: str) -> str:
    """``file:/a/b`` or ``file:///a/b`` → ``/a/b``; a plain path as it is (what Python and DuckDB open)."""
    text = str(location)
    if text.startswith("file:"):
        rest = text[len("file:"):]
        return "/" + rest.lstrip("/") if rest.startswith("/") else rest
    return text


def no_warehouse(root: str) -> StateError:
    """A read-only command's refusal of a warehouse that is not there (it creates nothing)."""
    return StateError(f"no warehouse at {root}",
                      hint="run `mktool --engine spark ingest PATH...` first, or point --warehouse / "
                           "MKTOOL_WAREHOUSE at an existing warehouse")
PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_matrices_dir() -> Path:
    """The default rule files shipped with the package.

    A wheel carries them as ``mktool/_matrices``; an editable install or a source checkout
    uses the repository's top-level ``matrices/`` folder.
    """
    packaged = PACKAGE_DIR / "_matrices"
    if packaged.is_dir():
        return packaged
    return PACKAGE_DIR.parent / "matrices"


#: The environment twin of each setting (a ``Settings`` field), read by the command line only.
ENV: Mapping[str, str] = {
    "db_path": "MKTOOL_DB",
    "matrices_dir": "MKTOOL_MATRICES",
    "memory_limit": "MKTOOL_MEMORY_LIMIT",
    "threads": "MKTOOL_THREADS",
    "temp_dir": "MKTOOL_TEMP_DIR",
    "lock_wait": "MKTOOL_LOCK_WAIT",
    "out_dir": "MKTOOL_OUT",
    "engine": "MKTOOL_ENGINE",
    "spark_master": "MKTOOL_SPARK_MASTER",
    "spark_remote": "MKTOOL_SPARK_REMOTE",
    "warehouse": "MKTOOL_WAREHOUSE",
}


def resolve_matrices_dir(given: Path | None) -> Path:
    """The folder given (an option or its environment twin), else ``./matrices`` when present, else the shipped ones."""
    if given is not None:
        return given
    local = Path("matrices")
    if local.is_dir():
        return local
    return shipped_matrices_dir()


def default_memory_limit() -> str:
    """Three quarters of physical memory: leaves room for the OS and Python while DuckDB spills the rest."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return "4GB"
    return f"{max(1, int(total * 0.75 / 2**30))}GB"


# DuckDB's memory size syntax: a decimal number and a unit (1000- or 1024-based), or a share of RAM.
MEMORY_LIMIT_RE = re.compile(
    r"\A\s*(?P<number>[0-9]+(?:\.[0-9]+)?)\s*"
    r"(?P<unit>%|b|bytes?|k|kb|kilobytes?|m|mb|megabytes?|g|gb|gigabytes?|t|tb|terabytes?|kib|mib|gib|tib)\s*\Z",
    re.IGNORECASE,
)
MEMORY_UNITS = {"b": 1, "byte": 1, "bytes": 1, "k": 10**3, "kb": 10**3, "kilobyte": 10**3, "kilobytes": 10**3,
                "m": 10**6, "mb": 10**6, "megabyte": 10**6, "megabytes": 10**6, "g": 10**9, "gb": 10**9,
                "gigabyte": 10**9, "gigabytes": 10**9, "t": 10**12, "tb": 10**12, "terabyte": 10**12,
                "terabytes": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
MIN_MEMORY_LIMIT = 16 * 2**20  # below this DuckDB cannot even set the limit ("Out of Memory Error")
MEMORY_LIMIT_HELP = "a size such as 8GB, 512MB, 1.5GiB or 75%"


def check_memory_limit(value: str, *, where: str = "memory limit") -> str:
    """``8GB``, ``512 MiB``, ``75%``: a positive size in DuckDB's syntax, never free text for SQL."""
    match = MEMORY_LIMIT_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise UsageError(f"{where} must be {MEMORY_LIMIT_HELP}, got {value!r}")
    number, unit = float(match["number"]), match["unit"].lower()
    if unit == "%":
        if not 0 < number <= 100:
            raise UsageError(f"{where} must be more than 0 and at most 100%, got {value!r}")
    elif number * MEMORY_UNITS[unit] < MIN_MEMORY_LIMIT:
        raise UsageError(f"{where} must be at least 16MiB (more than 0, and DuckDB needs room to work), got {value!r}")
    return value.strip()


# Numbers as a person or a cron line writes them: ASCII digits, a point, an exponent. Python's own
# int()/float() also take "1_000", "٣" (Arabic-Indic three) and other digits nobody means here.
# nan and inf pass the spelling, to be refused by the finiteness check with its own message.
DECIMAL_RE = re.compile(r"\A\s*[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)\s*\Z",
                        re.IGNORECASE)
WHOLE_RE = re.compile(r"\A\s*\+?[0-9]+\s*\Z")


def check_threads(value: object, *, where: str = "threads") -> int:
    """A whole number of worker threads, at least 1 (DuckDB refuses 0 and below)."""
    if isinstance(value, bool) or (isinstance(value, str) and not WHOLE_RE.match(value)):
        raise UsageError(f"{where} must be a whole number of at least 1, got {value!r}")
    try:
        number = int(str(value).strip()) if isinstance(value, str) else int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise UsageError(f"{where} must be a whole number of at least 1, got {value!r}") from None
    if number < 1 or (isinstance(value, float) and value != number):
        raise UsageError(f"{where} must be a whole number of at least 1, got {value!r}")
    return number


def check_lock_wait(value: object, *, where: str = "lock wait") -> float:
    """Seconds to wait for the lock: finite and not negative (``nan`` would wait forever)."""
    if isinstance(value, str) and not DECIMAL_RE.match(value):
        raise UsageError(f"{where} must be a number of seconds, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UsageError(f"{where} must be a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise UsageError(f"{where} must be a finite number of seconds, 0 or more, got {value!r}")
    return number


@dataclass(frozen=True)
class SparkOptions:
    """Where ``--engine spark`` runs: a master URL (local[*], yarn, spark://…) or a Spark Connect
    server (``remote``), and the user's --spark-conf pairs (mktool.spark builds the session)."""

    master: str = DEFAULT_SPARK_MASTER
    remote: str | None = None
    conf: tuple[tuple[str, str], ...] = ()
    app_name: str = "mktool"


@dataclass
class Settings:
    """Everything a library call needs to know about its environment."""

    db_path: Path = DEFAULT_DB
    matrices_dir: Path = field(default_factory=lambda: resolve_matrices_dir(None))
    memory_limit: str = field(default_factory=default_memory_limit)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    temp_dir: Path | None = None  # None: "<db>.tmp" beside the database
    lock_wait: float = 0.0  # seconds to wait for another run's lock before refusing
    engine: str = "duckdb"  # "duckdb" (the database file) or "spark" (the warehouse, issue 16)
    spark: SparkOptions = field(default_factory=SparkOptions)
    warehouse: str = DEFAULT_WAREHOUSE  # a folder or a Hadoop URI (hdfs://, s3a://) of Parquet tables

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise UsageError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        self.memory_limit = check_memory_limit(self.memory_limit)
        self.threads = check_threads(self.threads)
        self.lock_wait = check_lock_wait(self.lock_wait)

    @property
    def spill_dir(self) -> Path:
        return self.temp_dir if self.temp_dir is not None else self.db_path.with_name(self.db_path.name + ".tmp")

    @classmethod
    def from_options(
        cls,
        db: Path | None = None,
        matrices: Path | None = None,
        memory_limit: str | None = None,
        threads: int | None = None,
        temp_dir: Path | None = None,
        lock_wait: float | None = None,
        engine: str | None = None,
        spark: SparkOptions | None = None,
        warehouse: str | None = None,
    ) -> Settings:
        """The values given (on the command line: an option or its environment twin), defaults for the rest.

        None means "not given". The environment is not read here: the command line has read it
        once already, and a second reading could disagree with the first (an option given as
        well, or a value the first reading refused naming the option).
        """
        given: dict[str, Any] = {"db_path": db, "matrices_dir": matrices, "memory_limit": memory_limit,
                                 "threads": threads, "temp_dir": temp_dir, "lock_wait": lock_wait,
                                 "engine": engine, "spark": spark, "warehouse": warehouse}
        return cls(**{name: value for name, value in given.items() if value is not None})
