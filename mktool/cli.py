"""The `mktool` command line: a thin Typer layer over the library.

Each command parses its options, calls one library function and renders the result. The
options every command shares (--db, --matrices, resources, --quiet, --verbose) are declared
once in ``COMMON_OPTIONS`` and added to each command by the ``command`` decorator, which also
turns known errors into ``Error: …`` on stderr with a documented exit code.

Why the option types below: cron reads the exit code. A value that cannot be right (a month
``2026-7``, a ``--format`` nobody supports, ``--wait nan``) is a usage error, exit 2 with the
usual usage message naming the option, before any work starts; the library keeps its own
checks as a second line of defence for other callers.
"""

import contextlib
import csv
import dataclasses
import datetime as dt
import errno
import functools
import inspect
import io
import json
import math
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import duckdb
import typer
from rich.console import Console
from rich.markup import escape

from mktool import (
    __version__,
    campaign,
    evaluate,
    explain,
    export,
    ingest,
    matrices,
    pipeline,
    plan,
    report,
    scenewatch,
    view,
)
from mktool.config import (
    DECIMAL_RE,
    DEFAULT_SPARK_MASTER,
    DEFAULT_WAREHOUSE,
    ENGINES,
    ENV,
    WHOLE_RE,
    Settings,
    SparkOptions,
    check_lock_wait,
    check_memory_limit,
    check_threads,
)
from mktool.console import Reporter
from mktool.contract import TABLES, check_month
from mktool.database import Database
from mktool.diff import compare_folders, compare_rules, headline, render_csv, render_json, render_markdown, sections
from mktool.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    CheckFailed,
    ConfigError,
    MktoolError,
    engine_said,
)
from mktool.factors import DEFAULT_BINS, DEFAULT_TOP, MAX_BINS, MIN_BINS, factors_csv, factors_tables, rank_factors
from mktool.output import infer_format, write_query, write_text_file
from mktool.planconfig import parse_window as plan_window
from mktool.profile import DEFAULT_BY as DEFAULT_PROFILE_BY
from mktool.profile import TABLE_NUMERIC as PROFILE_TABLE_NUMERIC
from mktool.profile import profile_csv, profile_month, profile_tables
from mktool.project import Project, load_project, project_from_report, validate_all
from mktool.publish import newest_list
from mktool.render import print_table, render_table, render_test_report, tables_text
from mktool.rules import Problem
from mktool.ruletest.customers import default_customer_rows
from mktool.ruletest.judging import run_tests
from mktool.ruletest.reports import coverage_problems, junit_xml, result_document
from mktool.scenedelivery import run_scene_files
from mktool.schema import (
    CAMPAIGN_BY,
    CAMPAIGN_EVALUATION_TABLE,
    CHURN_BY,
    CHURN_EVALUATION_TABLE,
    CYCLES,
    DEFAULT_WINDOW_DAYS,
    EVALUATION_KINDS,
    FUNNEL_TABLE,
    LIST_FORMATS,
    PUSH_STAGES,
    RECOMMENDATIONS_TABLE,
    RESPONSE_FUNNEL_PREFIX,
    VIEW_TABLE,
)
from mktool.snapshot import DEFAULT_FIXTURES, change_rows, dumps, raise_if_moved, record
from mktool.snapshot import check as snapshot_check
from mktool.snapshot import write as snapshot_write
from mktool.spark import parse_conf

app = typer.Typer(
    name="mktool",
    help="Batch engine for telecom stock-customer precision marketing.\n\n"
    "ingest → score → matrix → plan → export, or all of it with `mktool run`.\n\n"
    "The engine options go before the command (docs/spark.md). --engine spark keeps the state "
    "tables as Parquet under --warehouse and runs on Spark (being built: see docs/spark.md for "
    "what works today); --spark-master, --spark-remote, --spark-conf and --warehouse are refused "
    "with --engine duckdb when given on the command line, and ignored when they come from the "
    "environment. `check` and `test` never start an engine.\n\n"
    "\b\nExamples:\n"
    "  mktool run --month 2026-10 --ingest fixtures/extracts\n"
    "  mktool --engine spark --warehouse hdfs:///mk run --month 2026-10 --ingest hdfs:///extracts\n"
    "  mktool --engine spark --spark-master yarn --spark-conf spark.executor.memory=8g score --month 2026-10",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])
#: The hint of an internal error (exit 4).
BUG_HINT = "this is a bug in mktool: run again with --verbose for the traceback and report it"


# -- option value types: each refuses a bad value as a usage error (exit 2) naming the option ---
def _bad(message: str) -> typer.BadParameter:
    """Raised from a parser, typer adds the option's name and the usage line."""
    return typer.BadParameter(message)


def parse_month(value: str) -> str:
    """``--month`` of every command: the data contract's month (``contract.check_month``, the one definition)."""
    try:
        return check_month(value)
    except MktoolError as exc:
        raise _bad(exc.message) from None


DATE_RE = re.compile(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


def parse_cycle_date(value: str | dt.date) -> dt.date:
    """``--date``: YYYY-MM-DD of a real day (2026-11-01, not 2026-11-1 or 2026-02-30)."""
    if isinstance(value, dt.date):
        return value
    if not DATE_RE.match(value):
        raise _bad(f"expected a date YYYY-MM-DD such as 2026-11-01, got {value!r}")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise _bad(f"{value!r} is not a day of the calendar ({exc})") from None


def choice(*names: str) -> Callable[[str], str]:
    """A fixed vocabulary, exact spelling (as the library compares it)."""

    def parse(value: str) -> str:
        if value not in names:
            raise _bad(f"{value!r} is not one of {', '.join(names)}")
        return value

    return parse


def metavar(*names: str) -> str:
    return "[" + "|".join(names) + "]"


def finite_number(*, minimum: float = 0.0) -> Callable[[str], float]:
    """A finite number of at least ``minimum`` (click's FLOAT takes nan and inf)."""

    def parse(value: str | float) -> float:
        if isinstance(value, str) and not DECIMAL_RE.match(value):
            raise _bad(f"expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise _bad(f"expected a number, got {value!r}") from None
        if not math.isfinite(number) or number < minimum:
            raise _bad(f"expected a finite number of at least {minimum:g}, got {value!r}")
        return number

    return parse


def whole_number(*, minimum: int = 1) -> Callable[[str], int]:
    def parse(value: str | int) -> int:
        if isinstance(value, str) and not WHOLE_RE.match(value):
            raise _bad(f"expected a whole number, got {value!r}")
        try:
            number = int(str(value).strip())
        except ValueError:
            raise _bad(f"expected a whole number, got {value!r}") from None
        if number < minimum:
            raise _bad(f"expected a whole number of at least {minimum}, got {value!r}")
        return number

    return parse


def _setting(check: Callable[..., Any]) -> Callable[[str], Any]:
    """The library's own settings check (config.py), raised as a usage error of the option."""

    def parse(value: str) -> Any:
        try:
            return check(value, where="value")
        except MktoolError as exc:
            raise _bad(exc.message) from None

    return parse


def parse_window(value: str) -> str:
    """``--total-change`` & co.: LO:HI of positive numbers, LO <= HI (the plan module's own rule)."""
    try:
        plan_window(value, where="window")
    except MktoolError as exc:
        raise _bad(exc.message.removeprefix("window: ")) from None
    if not all(DECIMAL_RE.match(part) for part in value.split(":")):  # what float() takes beyond decimals
        raise _bad(f"expected LO:HI of two decimal numbers such as 0.6:1.5, got {value!r}")
    return value


MSISDN_RE = re.compile(r"\A[0-9]{11}\Z")  # the data contract's msisdn: 11 ASCII digits


def parse_msisdn(value: str) -> str:
    """``explain``'s number: 11 digits, as the data contract stores it."""
    if not MSISDN_RE.match(value):
        raise _bad(f"expected a mobile number of 11 digits such as 13800000042, got {value!r}")
    return value


def parse_param(value: str) -> str:
    """``--param name=value``: the pair as given; its value is typed by ``parse_params``."""
    name, sep, _ = value.partition("=")
    if not sep or not name.strip():
        raise _bad(f"expected name=value, got {value!r}")
    return value


def positive_seconds(value: str | float) -> float:
    """``--interval``: a finite number of seconds above 0 (0.2 is fine; 0, -1, nan and inf are not)."""
    if isinstance(value, str) and not DECIMAL_RE.match(value):
        raise _bad(f"expected a number of seconds above 0 such as 30 or 0.5, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise _bad(f"expected a number of seconds above 0 such as 30 or 0.5, got {value!r}")
    return seconds


MONTHS_HELP = "YYYY-MM"
# --format: one vocabulary per family of output, each a tuple declared here once. A command's
# --format takes its family's through ``format_option`` (parser, metavar and the values its
# --help lists all come from the same tuple); the library checks list formats again (output.py).
OUTPUT_FORMATS = LIST_FORMATS  # files written with --out: score, matrix, export, run (FormatOpt)
TABLE_JSON = ("table", "json")  # a report for people, or the same on stdout as JSON: status, explain, test, snapshot
FUNNEL_FORMATS = ("table", "json", "csv")  # funnel
EVALUATE_FORMATS = ("table", "json", "csv")  # evaluate: a report for people, the document, or its figure lines
CHECK_FORMATS = ("text", "json")  # check: the problems as lines on stderr, or as JSON on stdout
DIFF_FORMATS = ("table", "json", "csv", "markdown")  # diff (markdown: a pull-request comment)
SWEEP_FORMATS = ("table", "csv", "json")  # plan --sweep prints its grid
PLAN_FORMATS = tuple(dict.fromkeys((*OUTPUT_FORMATS, *SWEEP_FORMATS)))  # plan: --out's lists, or --sweep's grid
SQL_DIALECTS = ("duckdb", "spark")  # matrix --show-sql


# -- options shared by every command ---------------------------------------------------------
def _opt(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


COMMON_OPTIONS = [
    _opt("db", Annotated[Path | None, typer.Option(
        "--db", envvar=ENV["db_path"], metavar="PATH",
        help="DuckDB database file [default: ./mktool.duckdb]", rich_help_panel="Common options")]),
    _opt("matrices", Annotated[Path | None, typer.Option(
        "--matrices", envvar=ENV["matrices_dir"], metavar="DIR",
        help="Folder of rule/model YAML files [default: ./matrices if present, else the shipped defaults]",
        rich_help_panel="Common options")]),
    _opt("memory_limit", Annotated[str | None, typer.Option(
        "--memory-limit", envvar=ENV["memory_limit"], parser=_setting(check_memory_limit), metavar="SIZE",
        help="DuckDB memory limit, e.g. 8GB, 512MiB or 50% [default: 75% of RAM]", rich_help_panel="Common options")]),
    _opt("threads", Annotated[int | None, typer.Option(
        "--threads", envvar=ENV["threads"], parser=_setting(check_threads), metavar="N",
        help="DuckDB worker threads, at least 1 [default: all cores]", rich_help_panel="Common options")]),
    _opt("temp_dir", Annotated[Path | None, typer.Option(
        "--temp-dir", envvar=ENV["temp_dir"], metavar="DIR",
        help="Where DuckDB spills to disk [default: <db>.tmp beside the database]", rich_help_panel="Common options")]),
    _opt("wait", Annotated[float | None, typer.Option(
        "--wait", envvar=ENV["lock_wait"], parser=_setting(check_lock_wait), metavar="SECONDS",
        help="Seconds to wait for another run's lock before refusing [default: 0]", rich_help_panel="Common options")]),
    _opt("quiet", Annotated[bool, typer.Option(
        "--quiet", "-q", help="Only warnings and errors on stderr (for cron)",
        rich_help_panel="Common options")], False),
    _opt("verbose", Annotated[bool, typer.Option(
        "--verbose", "-v", help="More detail; full traceback on errors", rich_help_panel="Common options")], False),
    _opt("ctx", typer.Context),
]
COMMON_NAMES = [p.name for p in COMMON_OPTIONS]


@dataclass
class Run:
    """What a command body gets: settings, a reporter, and a way to open the database."""

    settings: Settings
    reporter: Reporter
    verbose: bool
    ctx: typer.Context | None = None
    opened: list[Database] = field(default_factory=list)  # to tell an interrupt what was committed
    loaded: Project | None = None  # the project, once a command has asked for it

    def db(self, *, write: bool, must_exist: bool = False) -> Database:
        database = Database(self.settings, write=write, must_exist=must_exist)
        self.opened.append(database)
        return database

    def interrupted(self) -> str:
        """The Ctrl-C line: true about what earlier steps of this command committed."""
        if any(d.committed for d in self.opened):
            return ("Interrupted; the steps that finished before it stay committed, the one running was rolled "
                    "back: run the command again to finish")
        return "Interrupted; nothing was committed."

    def project(self) -> Project:
        """The matrices folder, loaded and validated once for this command."""
        if self.loaded is None:
            spark = self.settings.engine == "spark"
            loaded = load_project(self.settings.matrices_dir, spark=spark)
            if spark:
                loaded.require_spark_portable()
            self.loaded = loaded
        return self.loaded

    def usage_error(self, options: str | list[str], message: str) -> typer.BadParameter:
        """A combination or value only the command can judge (e.g. a channel of channels.yaml): exit 2."""
        hints = [options] if isinstance(options, str) else options
        return typer.BadParameter(message, ctx=self.ctx, param_hint=hints)


def _os_error_text(exc: OSError) -> str:
    """``<path>: <reason>``: the one line an OS error gets (no space left, read-only, not a folder …)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        reason += " (free some space, or point --temp-dir / --out at a larger disk)"
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def _duckdb_error_code(exc: duckdb.Error) -> int:
    """What a DuckDB failure means for cron: the machine or a file (1), else a bug of ours (4)."""
    text = str(exc).lower()
    if isinstance(exc, (duckdb.IOException, duckdb.OutOfMemoryException)) or "no space left" in text:
        return EXIT_BAD_INPUT
    if text.startswith("corrupt database file"):
        return EXIT_BAD_INPUT
    if isinstance(exc, duckdb.InvalidInputException) and "parquet" in text:  # a damaged extract DuckDB names
        return EXIT_BAD_INPUT
    return EXIT_INTERNAL


def command(name: str | None = None) -> Callable[[F], F]:
    """Register ``fn(run, **options)`` as a command with the common options and the error handler."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in list(sig.parameters.values())[1:]]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            common = {k: kwargs.pop(k) for k in COMMON_NAMES}
            reporter = Reporter(quiet=common["quiet"], verbose=common["verbose"])
            verbose = bool(common["verbose"])

            def fail(text: str, code: int, *, hint: str | None = None) -> typer.Exit:
                if verbose:
                    traceback.print_exc(file=sys.stderr)
                reporter.error(text)
                if hint:
                    reporter.console.print(f"  hint: {escape(hint)}", highlight=False)
                return typer.Exit(code)

            run: Run | None = None

            def interrupted(exc: BaseException | None = None) -> typer.Exit:
                global INTERRUPT_REPORTED
                INTERRUPT_REPORTED = True
                # A step that knows what it committed says so (mktool.errors.Interrupted: run, export's
                # publish); otherwise the command's own account of the databases it wrote.
                note = getattr(exc, "note", None)
                note = note or (run.interrupted() if run else "Interrupted; nothing was committed.")
                reporter.console.print(escape(note), highlight=False)
                return typer.Exit(EXIT_INTERRUPTED)

            try:
                root = common["ctx"].find_root().obj if common["ctx"] is not None else None
                engine = root if isinstance(root, EngineOptions) else EngineOptions()
                settings = Settings.from_options(
                    db=common["db"], matrices=common["matrices"], memory_limit=common["memory_limit"],
                    threads=common["threads"], temp_dir=common["temp_dir"], lock_wait=common["wait"],
                    engine=engine.engine, spark=engine.spark, warehouse=engine.warehouse,
                )
                if settings.engine == "spark":
                    load_spark_engine()
                run = Run(settings, reporter, verbose, common["ctx"])
                return fn(run, **kwargs)
            except (typer.Exit, typer.Abort, typer.TyperException):
                raise  # typer's own: usage errors (exit 2) and explicit exits
            except MktoolError as exc:
                raise fail(exc.render(), exc.exit_code) from None
            except (duckdb.InterruptException, KeyboardInterrupt) as exc:
                raise interrupted(exc) from None
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    raise  # the reader of stdout went away: typer exits 1 quietly
                raise fail(_os_error_text(exc), EXIT_BAD_INPUT) from None
            except duckdb.Error as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if "interrupted" in first.lower():
                    raise interrupted() from None
                code = _duckdb_error_code(exc)
                said = engine_said(first)
                raise fail(said if code != EXIT_INTERNAL else f"internal error: {said}", code,
                           hint=None if code != EXIT_INTERNAL or verbose else BUG_HINT) from None
            except Exception as exc:  # noqa: BLE001 - the one place a bug becomes exit 4
                if isinstance(exc, RuntimeError) and "interrupted" in str(exc).lower():
                    # DuckDB may report a Ctrl-C during a query as RuntimeError('Query interrupted').
                    raise interrupted() from None
                raise fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL,
                           hint=None if verbose else BUG_HINT) from None

        wrapper.__signature__ = sig.replace(parameters=own + COMMON_OPTIONS)  # type: ignore[attr-defined]
        app.command(name)(wrapper)
        return fn

    return decorate


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mktool {__version__}")
        raise typer.Exit()


def parse_spark_conf(value: str) -> str:
    """``--spark-conf KEY=VALUE``: mktool.spark's own check (pairs, no key mktool fixes), as a usage error."""
    try:
        parse_conf([value])
    except MktoolError as exc:
        raise _bad(exc.message) from None
    return value


@dataclass(frozen=True)
class EngineOptions:
    """The global options (before the command): which engine, and where Spark and its warehouse are.

    None: not given (Settings' default then). The command's wrapper hands them to Settings.from_options.
    """

    engine: str | None = None
    spark: SparkOptions | None = None
    warehouse: str | None = None


#: The options that mean something only with --engine spark (option name → parameter name).
SPARK_ONLY = {"--spark-master": "spark_master", "--spark-remote": "spark_remote", "--spark-conf": "spark_conf",
              "--warehouse": "warehouse"}


def _source(ctx: typer.Context, name: str) -> str:
    """Where a global option's value came from: COMMANDLINE, ENVIRONMENT or DEFAULT (click's names)."""
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else "DEFAULT"


def engine_options(ctx: typer.Context, engine: str | None, spark_master: str | None, spark_remote: str | None,
                   spark_conf: list[str] | None, warehouse: str | None) -> EngineOptions:
    """The global options checked together (each value is checked by its parser already).

    With --engine duckdb an option of Spark's typed on the command line is a usage error: the user
    meant Spark and forgot --engine, and a run that then silently writes the DuckDB file instead of
    the warehouse is worse for cron than one that stops. The same settings from the environment
    are ignored: a profile may export MKTOOL_WAREHOUSE for the Spark jobs of a machine that runs
    DuckDB jobs too. --spark-master and --spark-remote name two different places to run: both on
    the command line (or both in the environment) is a usage error; one on the command line wins
    over the other from the environment, as an option wins over its twin.
    """
    given = {flag: _source(ctx, name) for flag, name in SPARK_ONLY.items()
             if {"spark_master": spark_master, "spark_remote": spark_remote, "spark_conf": spark_conf,
                 "warehouse": warehouse}[name]}
    if (engine or "duckdb") != "spark":
        typed = [flag for flag, source in given.items() if source == "COMMANDLINE"]
        if typed:
            origin = f" (from {ENV['engine']})" if _source(ctx, "engine") == "ENVIRONMENT" else ""
            raise typer.BadParameter(
                f"only with --engine spark, and the engine is {engine or 'duckdb'}{origin}: add --engine spark "
                f"before the command, or drop {'it' if len(typed) == 1 else 'them'}", ctx=ctx, param_hint=typed)
        return EngineOptions(engine=engine)
    master_from, remote_from = given.get("--spark-master"), given.get("--spark-remote")
    if master_from and remote_from:
        if master_from == remote_from:
            where = "both on the command line" if master_from == "COMMANDLINE" else (
                f"{ENV['spark_master']} and {ENV['spark_remote']} are both set")
            raise typer.BadParameter(
                f"give one, not both ({where}): --spark-master starts Spark from here (local[*], yarn, "
                "spark://…), --spark-remote connects to a running Spark Connect server",
                ctx=ctx, param_hint=["--spark-master", "--spark-remote"])
        if master_from == "COMMANDLINE":
            spark_remote = None
        else:
            spark_master = None
    options = SparkOptions(master=spark_master or DEFAULT_SPARK_MASTER, remote=spark_remote,
                           conf=parse_conf(spark_conf or []))
    return EngineOptions(engine=engine, spark=options, warehouse=warehouse)


def load_spark_engine() -> None:
    """Register the Spark engine with database.Database (importing mktool.sparkdb does), for
    ``--engine spark`` only: its stack (pyarrow, the warehouse's Parquet layer) was a sixth of
    every DuckDB command's start-up."""
    from mktool import sparkdb  # noqa: F401, PLC0415 - loaded only when the engine is chosen (see above)


@app.callback()
def main_callback(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    engine: Annotated[str | None, typer.Option(
        "--engine", envvar=ENV["engine"], parser=choice(*ENGINES), metavar=metavar(*ENGINES),
        help="Where the month is computed: duckdb (the --db file) or spark (Parquet under --warehouse) "
             "[default: duckdb]", rich_help_panel="Engine")] = None,
    spark_master: Annotated[str | None, typer.Option(
        "--spark-master", envvar=ENV["spark_master"], metavar="URL",
        help="--engine spark: the master to start on, e.g. yarn or spark://host:7077 "
             f"[default: {DEFAULT_SPARK_MASTER}]",
        rich_help_panel="Engine")] = None,
    spark_remote: Annotated[str | None, typer.Option(
        "--spark-remote", envvar=ENV["spark_remote"], metavar="sc://HOST:PORT",
        help="--engine spark: a Spark Connect server to use instead of a master", rich_help_panel="Engine")] = None,
    spark_conf: Annotated[list[str] | None, typer.Option(
        "--spark-conf", parser=parse_spark_conf, metavar="KEY=VALUE",
        help="--engine spark: a Spark setting, e.g. spark.executor.memory=8g (repeatable; a later one wins; "
             "the settings mktool's results rest on are refused)", rich_help_panel="Engine")] = None,
    warehouse: Annotated[str | None, typer.Option(
        "--warehouse", envvar=ENV["warehouse"], metavar="PATH",
        help="--engine spark: the folder or URI (hdfs://, s3a://) of the state tables "
             f"[default: ./{DEFAULT_WAREHOUSE}]",
        rich_help_panel="Engine")] = None,
) -> None:
    """Batch engine for telecom stock-customer precision marketing.

    Exit codes: 0 ok · 1 bad input, rule, missing step or an OS error (path named) · 2 bad usage ·
    3 database locked · 4 internal error · 5 a check found differences · 130 interrupted (Ctrl-C).
    """
    ctx.obj = engine_options(ctx, engine, spark_master, spark_remote, spark_conf, warehouse)


# -- small rendering helpers ----------------------------------------------------------------
def optional_month(help: str) -> Any:
    """``--month`` of every command that takes one: the one month type (``parse_month``)."""
    return typer.Option("--month", "-m", parser=parse_month, metavar=MONTHS_HELP, help=help)


def format_option(names: tuple[str, ...], note: str = "", *, help: str | None = None) -> Any:
    """``--format`` of one family of output (the tuples above): refuses any other value, lists them in --help."""
    text = help if help is not None else " | ".join(names) + (f" {note}" if note else "")
    return typer.Option("--format", "-f", parser=choice(*names), metavar=metavar(*names), help=text)


MonthOpt = Annotated[str, optional_month("Month to work on, YYYY-MM")]
DateOpt = Annotated[dt.date | None, typer.Option(
    "--date", parser=parse_cycle_date, metavar="YYYY-MM-DD", help="The cycle's date, YYYY-MM-DD [default: today]")]
OutOpt = Annotated[str | None, typer.Option("--out", "-o", help="Write the result to FILE, or - for stdout")]
FormatOpt = Annotated[str | None, format_option(OUTPUT_FORMATS, "[default: from --out's extension, else csv]")]


def date_option(help: str) -> Any:
    return typer.Option("--date", parser=parse_cycle_date, metavar="YYYY-MM-DD", help=help)


def check_out_file(out: str | None) -> None:
    """``--out FILE``: refuse before the work what cannot be written (a folder, an unwritable place)."""
    if out is None or out == "-":
        return
    target = Path(out)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; --out wants a file name (or - for stdout)", out)
    _check_creatable(target.parent)


def check_out_folder(out: Path) -> None:
    """``--out DIR``: an existing file, or a place where the folder cannot be made, is refused up front."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is a file; --out wants a folder", str(out))
    _check_creatable(out)


def _check_creatable(folder: Path) -> None:
    """The nearest existing ancestor must be a writable folder (read-only disks fail here, not at the end)."""
    probe = folder if str(folder) else Path(".")
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder", str(probe))
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only_mount(probe) else errno.EACCES
        raise PermissionError(code, os.strerror(code), str(probe))


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:  # pragma: no cover - statvfs is POSIX
        return False


def require_rules_folder(folder: Path, option: str) -> None:
    """A rules folder that is not there is bad input (exit 1), not "no rule tests" and a green CI."""
    if not folder.exists():
        raise ConfigError("the matrices folder does not exist", file=str(folder),
                          hint=f"check {option} (or MKTOOL_MATRICES)")
    if not folder.is_dir():
        raise ConfigError("is a file, not a matrices folder", file=str(folder),
                          hint=f"check {option} (or MKTOOL_MATRICES)")


# -- commands -------------------------------------------------------------------------------
@command("ingest")
def ingest_cmd(
    run: Run,
    paths: Annotated[list[str], typer.Argument(
        help="Parquet files or folders of them: local paths, or with --engine spark any URI Spark reads "
             "(hdfs://, s3a://, file:/)")],
    table: Annotated[str | None, typer.Option(
        "--table", "-t", parser=choice(*TABLES), metavar="TABLE",
        help=f"Load every file into this table: {', '.join(TABLES)} (default: from each file name)")] = None,
) -> None:
    """Load Parquet extracts into the database under the data contract.

    The table is recognised from each file name (usage.parquet, usage_2026-10.parquet) or
    given with --table. All files of one call load or none do; a month already loaded is
    replaced, never duplicated.

    Example:  mktool ingest fixtures/extracts/    ·    mktool ingest --table usage /data/u_oct.parquet
    """
    with run.db(write=True) as db:
        result = ingest.ingest(db, paths, table=table, reporter=run.reporter)
    rows = [(f.table, ", ".join(f.months) or "-", f.rows, f.path.name) for f in result.files]
    render_table(run.reporter, f"Loaded {len(result.files)} file(s), {result.rows:,} rows",
                 ["table", "months", "rows", "file"], rows)


@command("status")
def status_cmd(
    run: Run,
    fmt: Annotated[str, format_option(TABLE_JSON)] = "table",
) -> None:
    """Show what is loaded: rows per table and month, and the file each came from.

    Example:  mktool status    ·    mktool status --format json | jq .
    """
    with run.db(write=False) as db:
        rows = ingest.status(db)
    if fmt == "json":
        typer.echo(json.dumps(rows, default=str, indent=2, ensure_ascii=False))
        return
    render_table(
        run.reporter, f"Database {run.settings.db_path}",
        ["table", "month", "rows", "file", "sha256", "loaded_at"],
        [(r["table"] + ("" if r["required"] else " (optional)"), r["month"] or "-", f"{r['rows']:,}",
          Path(r["file"]).name if r["file"] else "-", (r["sha256"] or "")[:12], r["loaded_at"]) for r in rows],
        to_stdout=True,
    )


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``--param name=value`` pairs; numbers become numbers, true/false booleans."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:  # the CLI's parse_param refuses it first (exit 2)
            raise MktoolError(f"--param expects name=value, got '{item}'")
        key, raw = item.split("=", 1)
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    pass
        out[key.strip()] = value
    return out


@command("score")
def score_cmd(
    run: Run,
    month: MonthOpt,
    out: OutOpt = None,
    fmt: FormatOpt = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", parser=parse_param, metavar="NAME=VALUE",
        help="Override a scores.yaml parameter, name=value (repeatable)")] = None,
) -> None:
    """Build the scored customer view (customer_view) for a month.

    One row per subscriber of the month, with the 3-month-window base columns, value /
    stickiness / churn scores, needs and segment as defined in scores.yaml.

    \b
    Examples:
      mktool score --month 2026-10
      mktool score --month 2026-10 --out view.parquet
      mktool score --month 2026-10 --param churn_flag_at=40 --out - | head
    """
    overrides = parse_params(param)
    project = run.project()
    if overrides:  # a name scores.yaml does not have is a usage error, like an unknown --channel
        known = project.scores.params
        unknown = [name for name in overrides if name not in known]
        if unknown:
            raise run.usage_error("--param", f"scores.yaml of {run.settings.matrices_dir} has no parameter "
                                             f"{', '.join(map(repr, unknown))} (it has: {', '.join(known) or 'none'})")
    check_out_file(out)
    with run.db(write=True) as db:
        result = view.score(db, project, month, reporter=run.reporter, params=overrides,
                            summary=not run.reporter.quiet)
        if out:
            write_query(db.c, f"SELECT * FROM {VIEW_TABLE} WHERE month = ? ORDER BY msisdn", out, fmt, [month])
    run.reporter.info(f"customer_view {month}: {result.rows:,} customers")
    weights = result.model.indicator_weights()
    render_table(run.reporter, f"Value score weights (AHP, CR = {result.model.ahp.consistency_ratio:.3f})",
                 ["criterion", "indicator", "weight"], [(c, i, f"{w:.4f}") for c, i, w in weights])
    if result.tiers:
        render_table(run.reporter, "Distribution", ["column", "value", "customers"],
                     [(c, v, f"{n:,}") for c, v, n in result.tiers])


@command("plan")
def plan_cmd(
    run: Run,
    month: MonthOpt,
    total_change: Annotated[str | None, typer.Option(
        "--total-change", metavar="LO:HI", parser=parse_window,
        help="Keep plans whose total-fee change (new total / current total) is in LO:HI, inclusive "
             "[default: plan.yaml's, 0.6:1.5]")] = None,
    rental_change: Annotated[str | None, typer.Option(
        "--rental-change", metavar="LO:HI", parser=parse_window,
        help="Keep plans whose rental change (new rental / current rental) is in LO:HI, inclusive "
             "[default: plan.yaml's, 1.0:2.0]")] = None,
    top: Annotated[int | None, typer.Option(
        "--top", "-k", metavar="K", parser=whole_number(minimum=1),
        help="Plans kept per customer, best first [default: plan.yaml's, 1]")] = None,
    min_data: Annotated[float | None, typer.Option(
        "--min-data", metavar="MB", parser=finite_number(minimum=0),
        help="Minimum 3-month average data use of a candidate [default: plan.yaml's, 5]")] = None,
    out: OutOpt = None,
    fmt: Annotated[str | None, format_option(
        PLAN_FORMATS, help=f"{' | '.join(OUTPUT_FORMATS)} for --out [default: from --out's extension, else csv]; "
                           f"with --sweep: {' | '.join(SWEEP_FORMATS)} [default: table]")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Compute and show the funnel and counts; write nothing")] = False,
    sweep: Annotated[bool, typer.Option(
        "--sweep", help="Print the targeted-customer count for a grid of windows on stdout; write nothing")] = False,
    sweep_total: Annotated[list[str] | None, typer.Option(
        "--sweep-total", metavar="LO:HI", parser=parse_window,
        help="A total-change window of the --sweep grid (repeatable) [default: plan.yaml's sweep grid]")] = None,
    sweep_rental: Annotated[list[str] | None, typer.Option(
        "--sweep-rental", metavar="LO:HI", parser=parse_window,
        help="A rental-change window of the --sweep grid (repeatable) [default: plan.yaml's sweep grid]")] = None,
) -> None:
    """Recommend plans: every candidate × every target plan, kept by rate windows (SPEC §5).

    Candidates are the month's active customers using at least --min-data MB a month (5 by
    default) on a mass-market plan, with a bill and a rental. Each is paired with every
    target plan, priced at their 3-month average usage, kept when both change rates are
    inside their windows, and ranked by how close the new bill is to today's. Stores
    plan_recommendations and the `plan` funnel (a rerun replaces the month); the windows,
    top-k and minimum data come from plan.yaml. --sweep shows how the number of targeted
    customers moves with the windows, before anything is written.

    \b
    Examples:
      mktool plan --month 2026-10
      mktool plan --month 2026-10 --total-change 0.7:1.3 --top 3 --out plans.csv
      mktool plan --month 2026-10 --dry-run
      mktool plan --month 2026-10 --sweep
      mktool plan --month 2026-10 --sweep --sweep-total 0.9:1.1 --sweep-rental 1.0:1.2 --format csv
    """
    if (sweep_total or sweep_rental) and not sweep:
        raise run.usage_error(["--sweep-total", "--sweep-rental"], "they only apply with --sweep")
    if sweep:
        if out:
            raise run.usage_error("--out", "--sweep prints to stdout; it does not take --out (redirect stdout instead)")
        sweep_fmt = fmt or "table"
        if sweep_fmt not in SWEEP_FORMATS:
            raise run.usage_error("--format", f"--sweep prints as {', '.join(SWEEP_FORMATS)}, not {sweep_fmt!r}")
    elif fmt is not None and fmt not in OUTPUT_FORMATS:
        raise run.usage_error("--format", f"{fmt!r} is only for --sweep; --out writes {', '.join(OUTPUT_FORMATS)}")
    if dry_run and out:
        raise run.usage_error(["--dry-run", "--out"], "--dry-run writes nothing; drop --out, or run without --dry-run")
    check_out_file(out)
    project = run.project()
    config = project.plan.with_overrides(
        total_change=total_change, rental_change=rental_change, top=top, min_data_mb=min_data)
    if sweep:
        for given, name, instead in ((total_change, "--total-change", "--sweep-total"),
                                     (rental_change, "--rental-change", "--sweep-rental"), (top, "--top", None)):
            if given is not None:
                run.reporter.warn(f"{name} is not used by --sweep"
                                  + (f" (give the grid with {instead})" if instead else ""))
        totals = [plan_window(w, where="--sweep-total") for w in sweep_total or []]
        rentals = [plan_window(w, where="--sweep-rental") for w in sweep_rental or []]
        with run.db(write=False) as db:
            cells = plan.sweep(db, project, month, totals or None, rentals or None, config=config)
        _print_sweep(run, month, config, cells, sweep_fmt)
        return
    if out:
        infer_format(out, fmt)  # refuse a bad --format before the work, not after
    with run.db(write=not dry_run) as db:
        result = plan.plan(db, project, month, config=config, reporter=run.reporter, dry_run=dry_run)
        if out:
            write_query(db.c, plan.EXPORT_SQL, out, fmt, [month])
    counts = dict(result.stages)
    previous: int | None = None
    rows = []
    for stage, n in result.stages:
        rows.append((stage, f"{n:,}", "" if previous is None else f"{previous - n:,}"))
        previous = n
    render_table(run.reporter, f"Plan funnel {month}" + (" (dry run)" if dry_run else ""),
                 ["stage", "customers", "dropped"], rows)
    settings = (f"total change {config.total_change}, rental change {config.rental_change}, "
                f"top {config.top}, min data {config.min_data_mb:g} MB")
    if dry_run:
        run.reporter.info(f"dry run, nothing written: plan_recommendations {month} would have {result.rows:,} rows "
                          f"for {counts['in_rate_window']:,} of {counts['base']:,} customers ({settings})")
    else:
        run.reporter.info(f"plan_recommendations {month}: {result.rows:,} rows for {counts['in_rate_window']:,} "
                          f"of {counts['base']:,} customers ({settings})")


def _print_sweep(run: Run, month: str, config: Any, cells: list[Any], fmt: str) -> None:
    """The sweep grid on stdout: a table for people (rows: total window, columns: rental window), csv or json."""
    if fmt in ("csv", "json"):
        records = [{"total_change_lo": c.total_change.lo, "total_change_hi": c.total_change.hi,
                    "rental_change_lo": c.rental_change.lo, "rental_change_hi": c.rental_change.hi,
                    "customers": c.customers} for c in cells]
        if fmt == "json":
            typer.echo(json.dumps(records, indent=2))
        else:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(records[0]) if records else ["customers"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)
            typer.echo(buf.getvalue(), nl=False)
        return
    totals = list(dict.fromkeys(c.total_change for c in cells))
    rentals = list(dict.fromkeys(c.rental_change for c in cells))
    count = {(c.total_change, c.rental_change): c.customers for c in cells}
    render_table(run.reporter, f"Customers targeted {month} (min data {config.min_data_mb:g} MB)",
                 ["total \\ rental change", *(str(r) for r in rentals)],
                 [(str(t), *(f"{count[(t, r)]:,}" for r in rentals)) for t in totals], to_stdout=True)


def cycle_date_or_today(value: dt.date | None) -> dt.date:
    """``--date`` (already a checked date) or, when not given, today."""
    return value if value is not None else dt.date.today()


def render_channel_funnels(run: Run, result: Any, *, title: str) -> None:
    """Stages as rows (the push funnel's, in order), channels as columns; "-" where a channel's
    kind has no such stage (a pop-up has no no_answer, contact_cap, dedupe or capacity)."""
    def cell(stages: dict[str, int], stage: str) -> str:
        return f"{stages[stage]:,}" if stage in stages else "-"
    rows = [(stage, *[cell(dict(ch.stages), stage) for ch in result.channels]) for stage in PUSH_STAGES]
    render_table(run.reporter, title, ["stage", *[ch.channel for ch in result.channels]], rows)


@command("export")
def export_cmd(
    run: Run,
    month: MonthOpt,
    out: Annotated[str, typer.Option(
        "--out", "-o", envvar=ENV["out_dir"],
        help="Output folder (lists go to <out>/<month>/<cycle-date>/), or - for stdout with --channel")] = "out",
    fmt: FormatOpt = None,
    channel: Annotated[str | None, typer.Option(
        "--channel", "-c", metavar="NAME",
        help="Export only this channel of channels.yaml (required with --out -)")] = None,
    cycle: Annotated[str | None, typer.Option(
        "--cycle", parser=choice(*CYCLES), metavar=metavar(*CYCLES),
        help="Export only the channels of this push cycle: daily | monthly")] = None,
    date: DateOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print what would be exported per channel and stage; write nothing")] = False,
) -> None:
    """Write per-channel target lists under the contact policy, with funnel.json and manifest.json.

    Each cycle (--date) has its own folder <out>/<month>/<cycle-date>/; <out>/<month>/latest and
    <out>/latest point at the newest one.

    Suppression, in order, each a funnel stage: do-not-disturb, unsubscribed, withdrawn after an
    acceptance, rejection cool-down, no_answer retry wait, contact caps, mutually exclusive
    policies, dedupe and capacity among push channels, hold-out control group. A pop-up
    (frontdesk, inbound) shows every current offer: no caps, dedupe or capacity. Exported push
    rows are recorded in contact_history; a pop-up's rows are not (a showing is not a contact).

    \b
    Examples:
      mktool export --month 2026-10 --date 2026-11-01
      mktool export --month 2026-10 --cycle daily --date 2026-11-02   # the day's slice
      mktool export --month 2026-10 --format parquet --out /data/lists
      mktool export --month 2026-10 --channel sms --out - | gateway-upload
    """
    to_stdout = out == "-"
    if to_stdout and not channel:
        raise run.usage_error(["--out", "--channel"], "--out - streams one list: add --channel NAME")
    project = run.project()
    if channel is not None:
        known = project.channels.names
        if channel not in known:
            raise run.usage_error("--channel", f"unknown channel {channel!r}; channels.yaml of "
                                              f"{run.settings.matrices_dir} has: {', '.join(known)}")
    if not to_stdout and not dry_run:
        check_out_folder(Path(out))
    with run.db(write=not dry_run) as db:
        result = export.run_export(
            db, project, month, out_dir=None if to_stdout else Path(out),
            cycle_date=cycle_date_or_today(date), only_channel=channel, only_cycle=cycle, fmt=fmt, dry_run=dry_run,
            stdout=to_stdout,
            reporter=run.reporter,
        )
    render_channel_funnels(run, result, title=f"Channel funnels {month} (cycle {result.cycle_date})"
                           + (" — dry run, nothing written" if dry_run else ""))
    if not dry_run and not to_stdout:
        written = [ch for ch in result.channels if ch.path is not None]
        run.reporter.info(f"wrote {len(written)} list(s) to {result.folder}: "
                          + ", ".join(f"{ch.path.name} ({ch.rows:,})" for ch in written if ch.path))


@command("scene")
def scene_cmd(
    run: Run,
    events: Annotated[Path | None, typer.Option(
        "--events", "-e", metavar="PATH",
        help="A Parquet event file, or a folder of them (its *.parquet, not recursive): each new file is one "
             "batch")] = None,
    watch: Annotated[Path | None, typer.Option(
        "--watch", "-w", metavar="DIR",
        help="Watch DIR: every --interval, process its new complete event files, until SIGTERM or Ctrl-C")] = None,
    interval: Annotated[float | None, typer.Option(
        "--interval", metavar="SECONDS", parser=positive_seconds,
        help="With --watch (required): seconds between polls; a file is complete when its modification time "
             "is this old or it did not change since the previous poll")] = None,
    once: Annotated[bool, typer.Option(
        "--once", help="With --watch: one poll, then exit (cron); takes only files one --interval old")] = False,
    out: Annotated[Path, typer.Option(
        "--out", "-o", envvar=ENV["out_dir"], metavar="DIR",
        help="Output folder: each batch goes to <out>/scenes/<cycle-date>/<batch>/")] = Path("out"),
) -> None:
    """Turn event files into trigger lists: one micro-batch per new file, under export's contact policy.

    Each file is processed exactly once (by its sha256, recorded in the scene_files ledger): a file
    seen before, or a renamed copy, is skipped and said so. New files go earliest events first, one
    committed batch at a time; each batch's lists, funnel.json and manifest.json are written to
    <out>/scenes/<cycle-date>/<batch>/ in the same unit as its ledger row and contacts. A file that
    cannot be read or breaks the events contract is refused (named, nothing of it recorded) and the
    others are still processed: exit 1 at the end. Hidden files and names ending .tmp, .part or
    .partial are never read (write a file under such a name, then rename it).

    --watch DIR --interval SECONDS keeps polling DIR, opening the database only while it processes
    (a locked database: busy, retried at the next poll). SIGTERM lets the batch running finish, then
    exits 0; Ctrl-C abandons it (nothing of it recorded) and exits 130. --once polls once, for cron.
    See docs/scenes.md.

    \b
    Examples:
      mktool scene --events fixtures/events/
      mktool scene --events /data/inbox/events-2026-10-05.parquet --out /data/lists
      mktool scene --watch /data/inbox --interval 30                   # under systemd
      mktool scene --watch /data/inbox --interval 60 --once --quiet    # cron, every minute
    """
    if (events is None) == (watch is None):
        raise run.usage_error(["--events", "--watch"], "give one of --events PATH (process the files once) or "
                                                       "--watch DIR --interval SECONDS (keep watching a folder)")
    if watch is None:
        for given, name in ((interval, "--interval"), (once or None, "--once")):
            if given is not None:
                raise run.usage_error(name, f"{name} only applies with --watch DIR")
    elif interval is None:
        raise run.usage_error("--interval", "--watch needs --interval SECONDS (how often to look at the folder)")
    project = run.project()
    check_out_folder(out)
    if events is not None:
        with run.db(write=True, must_exist=True) as db:
            result = run_scene_files(db, project, [events], out_dir=out, reporter=run.reporter)
            scenewatch.report_run(result, run.reporter, db)
        _raise_if_refused([scenewatch.file_of(item) for item in result.refused], len(result.batches))
        return
    assert watch is not None and interval is not None
    settings = run.settings
    watched = scenewatch.watch(
        watch, interval=interval, project=project, out_dir=out, once=once, runner=run_scene_files,
        open_db=lambda: Database(settings, write=True, must_exist=True), reporter=run.reporter)
    if once:
        _raise_if_refused(watched.refused, watched.batches)


def _raise_if_refused(refused: list[Path], delivered: int) -> None:
    """Exit 1 after the other files were processed when any was refused (each was named above)."""
    if refused:
        raise MktoolError(f"{len(refused)} event file{'s' if len(refused) != 1 else ''} refused "
                          f"({', '.join(p.name for p in refused)}); {delivered} batch"
                          f"{'es' if delivered != 1 else ''} delivered",
                          hint="fix or replace the refused files and run again: the delivered ones are skipped")


@command("funnel")
def funnel_cmd(
    run: Run,
    month: MonthOpt,
    date: Annotated[dt.date | None, date_option(
        "Only this export cycle's channel funnels, YYYY-MM-DD [default: every cycle of the month]")] = None,
    fmt: Annotated[str, format_option(FUNNEL_FORMATS)] = "table",
) -> None:
    """Print the funnels recorded for a month (plan, each matrix, each export cycle's channels).

    With --date, the channel funnels of that cycle only; --format json then prints exactly the
    funnel.json document that export wrote into <out>/<month>/<date>/. Without --date, every
    cycle's channel funnels, each named channel:<name>@<cycle-date>.

    \b
    Examples:
      mktool funnel --month 2026-10
      mktool funnel --month 2026-10 --date 2026-11-02
      mktool funnel --month 2026-10 --date 2026-11-01 --format json | jq '.funnels.plan'
    """
    with run.db(write=False) as db:
        if not db.table_exists(FUNNEL_TABLE):
            raise MktoolError(f"no funnels recorded for {month}",
                              hint=f"run `mktool plan/matrix --month {month}` first")
        doc = export.funnel_document(db.c, month, date)
        cycles = export.funnel_cycles(db.c, month) if date is not None else []
        has_responses = any(name.startswith(RESPONSE_FUNNEL_PREFIX) for name in doc["funnels"])
        responses = campaign.newest_run(db, month) if has_responses else None
        if responses is not None:
            doc["responses"] = responses
    if date is not None and date.isoformat() not in cycles and (cycles or doc["funnels"]):
        raise MktoolError(f"no export cycle on {date} for {month}",
                          hint=f"cycles of {month}: {', '.join(cycles)}" if cycles
                          else f"run `mktool export --month {month} --date {date}` first")
    if not doc["funnels"]:
        raise MktoolError(f"no funnels recorded for {month}",
                          hint=f"run `mktool plan/matrix/export --month {month}` first")
    if fmt == "json":
        typer.echo(json.dumps(doc, ensure_ascii=False, indent=2))
    elif fmt == "csv":
        typer.echo("month,funnel,stage_no,stage,count")
        for name, stages in doc["funnels"].items():
            for i, s in enumerate(stages, 1):
                typer.echo(f"{month},{name},{i},{s['stage']},{s['count']}")
    else:
        rows = []
        for name, stages in doc["funnels"].items():
            first = stages[0]["count"] if stages else 0
            for s in stages:
                share = f"{100 * s['count'] / first:.1f}%" if first else "-"
                rows.append((name, s["stage"], f"{s['count']:,}", share))
        title = f"Funnels {month}" + (f" (cycle {date})" if date is not None else "")
        if has_responses:
            title += f" ({RESPONSE_FUNNEL_PREFIX}* funnels count offers: customer × policy pairs, not customers"
            title += (f"; from evaluate run {responses['run_id']}, window {responses['window_days']} days)"
                      if responses else ")")
        render_table(run.reporter, title, ["funnel", "stage", "customers / offers", "of first"], rows,
                     to_stdout=True)


def parse_evaluate_by(run: Run, kind: str, by: str | None) -> tuple[str, ...]:
    """``--by COL[,COL…]``: names of the kind's group columns, each once (churn: one column)."""
    choices = CAMPAIGN_BY if kind == "campaign" else CHURN_BY
    if by is None:
        return ("policy_id",) if kind == "campaign" else ()
    names = tuple(name.strip() for name in by.split(","))
    bad = [name for name in names if name not in choices]
    if bad or not names:
        shown = ", ".join(repr(name) for name in bad) or repr(by)
        raise run.usage_error("--by", f"{shown} is not a column evaluate {kind} can split by; choose from "
                                      f"{', '.join(choices)}")
    if len(set(names)) != len(names):
        raise run.usage_error("--by", f"{by!r} names a column twice")
    if kind == "churn" and len(names) > 1:
        raise run.usage_error("--by", "evaluate churn splits by one column")
    return names


@command("evaluate")
def evaluate_cmd(
    run: Run,
    month: MonthOpt,
    kind: Annotated[str, typer.Argument(
        parser=choice(*EVALUATION_KINDS), metavar="KIND", show_default=False,
        help="What to evaluate: campaign (the default: export month --month's contacts against its hold-outs) "
             "or churn (churn_score and churn_flag of --month against who left by the next month)")] = "campaign",
    by: Annotated[str | None, typer.Option(
        "--by", metavar="COL[,COL…]",
        help=f"campaign: group the pairs by these columns ({', '.join(CAMPAIGN_BY)}) [default: policy_id]; "
             f"churn: also the same figures per group of {', '.join(CHURN_BY)}")] = None,
    window: Annotated[int | None, typer.Option(
        "--window", min=1, metavar="DAYS",
        help=f"campaign: days after the contact (or hold-out) date an order or response counts "
             f"[default: {DEFAULT_WINDOW_DAYS}]")] = None,
    fmt: Annotated[str, format_option(EVALUATE_FORMATS)] = "table",
    out: OutOpt = None,
) -> None:
    """Evaluate a month: the campaigns' take-up against their hold-outs, or the churn model's quality.

    campaign (the default): the customer × policy pairs contacted in the cycles that exported
    --month's lists (push lists and pop-up showings) against the held-out pairs: responses,
    orders within --window days, take-up, uplift with its 95% interval (Newcombe), 7-day
    cancellations, push contacts per customer, and a balance check of treated against held-out
    customers. Each run is stored in campaign_evaluation and refreshes the month's response
    funnels (`mktool funnel`).

    churn: the base is --month's customer_view without closed customers; a customer churned
    when the next month's subscribers do not have them or have them closed (ingest that month
    first). Each run is stored in churn_evaluation.

    Rates are exact quotients rounded half away from zero to 6 decimals (docs/evaluation.md).

    \b
    Examples:
      mktool evaluate --month 2026-10
      mktool evaluate campaign --month 2026-10 --by policy_id,channel --window 14
      mktool evaluate --month 2026-10 --format json | jq '.total.uplift_ci'
      mktool evaluate --month 2026-10 --by segment --format csv --out campaign-2026-10.csv
      mktool evaluate churn --month 2026-10
      mktool evaluate churn --month 2026-10 --by tenure_cohort --format json | jq '.by'
      mktool evaluate churn --month 2026-10 --format csv --out churn-2026-10.csv
    """
    names = parse_evaluate_by(run, kind, by)
    if kind == "churn" and window is not None:
        raise run.usage_error("--window", "--window applies to evaluate campaign only")
    check_out_file(out)
    if kind == "campaign":
        project = run.project()
        with run.db(write=True, must_exist=True) as db:
            result = campaign.evaluate_campaign(db, project, month, by=names, reporter=run.reporter,
                                                window=DEFAULT_WINDOW_DAYS if window is None else window)
        doc, run_id, table = result.document, result.run_id, CAMPAIGN_EVALUATION_TABLE
        if fmt == "json":
            text = json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
        elif fmt == "csv":
            text = campaign.campaign_csv(doc)
        else:
            text = tables_text(campaign.campaign_tables(doc), numeric=(
                "contacted", "ordered", "take_up", "held_out", "held_out_ordered", "take_up_control", "uplift",
                "accepted", "rejected", "no_answer", "opted_out", "success_rate", "cancelled_7d", "cancel_7d_rate",
                "contacts_per_customer", "customers", "arpu_3m mean", "p25", "median", "p75"))
    else:
        with run.db(write=True, must_exist=True) as db:
            churned = evaluate.evaluate_churn(db, month, by=names[0] if names else None, reporter=run.reporter)
        doc, run_id, table = churned.document, churned.run_id, CHURN_EVALUATION_TABLE
        if fmt == "json":
            text = json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
        elif fmt == "csv":
            text = evaluate.churn_csv(doc, names[0] if names else None)
        else:
            text = tables_text(evaluate.churn_tables(doc), numeric=(
                "base", "churned", "base_rate", "customers", "precision", "recall", "lift", "decile",
                "cumulative_churned", "cumulative_recall"))
    if out is None or out == "-":
        typer.echo(text, nl=False)
    else:
        write_text_file(Path(out), text)
    run.reporter.info(f"{kind} evaluation of {month} stored as run {run_id} in {table}"
                      + (f"; written to {out}" if out not in (None, "-") else ""))


@command("factors")
def factors_cmd(
    run: Run,
    month: MonthOpt,
    bins: Annotated[int, typer.Option(
        "--bins", min=MIN_BINS, max=MAX_BINS, metavar="B",
        help=f"Quantile bins of each numeric factor per cohort, {MIN_BINS} to {MAX_BINS} (equal values share a bin)",
    )] = DEFAULT_BINS,
    top: Annotated[int, typer.Option(
        "--top", min=0, metavar="N", help="Keep the N best factors of each cohort; 0 keeps every factor",
    )] = DEFAULT_TOP,
    fmt: Annotated[str, format_option(EVALUATE_FORMATS)] = "table",
    out: OutOpt = None,
) -> None:
    """Rank the customer view's columns by how much they tell next month's churners apart, per tenure cohort.

    The churn label is that of `mktool evaluate churn`: the base is --month's customer_view
    without closed customers; a customer churned when the next month's subscribers do not have
    them or have them closed (ingest that month first). Per tenure cohort every numeric column
    is cut into --bins quantile bins (equal values share a bin; NULL is a group of its own) and
    every text or true/false column is grouped by value; each is ranked by its information
    gain about churn (bits: the cohort's churn entropy minus the groups' weighted entropy).
    json and csv carry every group's churn rate; the table shows each factor's riskiest group.
    Nothing is stored (docs/evaluation.md).

    \b
    Examples:
      mktool factors --month 2026-10
      mktool factors --month 2026-10 --bins 5 --top 20
      mktool factors --month 2026-10 --format json | jq '.cohorts[0].factors[0]'
      mktool factors --month 2026-10 --top 0 --format csv --out factors-2026-10.csv
    """
    check_out_file(out)
    project = run.project()
    with run.db(write=False) as db:
        ranking = rank_factors(db, project, month, bins=bins, top=top)
    if fmt == "json":
        text = json.dumps(ranking.document(), ensure_ascii=False, indent=2) + "\n"
    elif fmt == "csv":
        text = factors_csv(ranking)
    else:
        text = tables_text(factors_tables(ranking), numeric=("rank", "information gain", "groups", "its churn rate"))
    if out is None or out == "-":
        typer.echo(text, nl=False)
    else:
        write_text_file(Path(out), text)
        run.reporter.info(f"churn factors of {month} written to {out}")


@command("latest")
def latest_cmd(
    run: Run,
    channel: Annotated[str, typer.Option(
        "--channel", "-c", metavar="NAME", help="The channel whose newest list to find")],
    out: Annotated[Path, typer.Option("--out", "-o", envvar=ENV["out_dir"],
                                      help="The output folder export writes into")] = Path("out"),
    month: Annotated[str | None, optional_month("Only this month's cycles [default: every month]")] = None,
) -> None:
    """Print the path of a channel's newest target list (for outbound tooling).

    The newest cycle folder <out>/<month>/<cycle-date>/ whose manifest names a list of the
    channel: a daily cycle's folder has only the daily channels, so <out>/latest/ may not hold
    a monthly channel's list. The path names the cycle folder, not the latest link.

    \b
    Examples:
      mktool latest --channel outbound --out /data/lists
      upload-to-crm "$(mktool latest --channel manager --out /data/lists)"
    """
    found = newest_list(out, channel, month)
    if found is None:
        raise MktoolError(f"no published list of channel {channel!r} under {out}"
                         + (f" for {month}" if month else ""),
                         hint="run `mktool export` (or `mktool run`) with this --out first")
    typer.echo(str(found))


PROFILE_FORMATS = ("table", "json", "csv")  # profile: a table for people, the document, or a csv row per class


@command("profile")
def profile_cmd(
    run: Run,
    month: MonthOpt,
    by: Annotated[str, typer.Option(
        "--by", metavar="COLUMN",
        help="The VARCHAR or BOOLEAN column of customer_view whose values are the classes, e.g. value_tier, "
             "stickiness_tier, tenure_cohort, payment, vnet")] = DEFAULT_PROFILE_BY,
    fmt: Annotated[str, format_option(PROFILE_FORMATS)] = "table",
    out: OutOpt = None,
) -> None:
    """Profile each class of customers of a month: size, ARPU, tenure, saturation, contracts, bundles,
    handsets and next month's churn.

    Per class of --by (NULL is "(none)") and in total, over every customer_view row of --month:
    customers and share, the mean ARPU, arpu_3m and tenure_months (2 decimals), the mean data and
    voice saturation (4 decimals, over the customers with one), the share with a contract running
    at the month's end, with a running bundle, with a bundle ending within 3 months, the handset
    generation mix, and the churn rate of the class's not-closed customers by the next month (as
    `mktool evaluate churn` counts it; empty until that month's subscribers are ingested).
    Means and shares are exact, rounded half away from zero (docs/profile.md). Nothing is stored.

    \b
    Examples:
      mktool profile --month 2026-10
      mktool profile --month 2026-10 --by value_tier
      mktool profile --month 2026-10 --format json | jq '.rows[] | {segment, churn_rate}'
      mktool profile --month 2026-10 --by tenure_cohort --format csv --out profile-2026-10.csv
    """
    check_out_file(out)
    project = run.project()
    with run.db(write=False) as db:
        result = profile_month(db, project, month, by=by)  # a --by it cannot split by: UsageError, exit 2
    if fmt == "json":
        text = json.dumps(result.document(), ensure_ascii=False, indent=2) + "\n"
    elif fmt == "csv":
        text = profile_csv(result)
    else:
        text = tables_text(profile_tables(result), numeric=PROFILE_TABLE_NUMERIC)
    if out is None or out == "-":
        typer.echo(text, nl=False)
    else:
        write_text_file(Path(out), text)
    if result.churn_note:
        run.reporter.warn(result.churn_note)
    run.reporter.info(f"profile of {month} by {by}: {len(result.classes)} class(es)"
                      + (f"; written to {out}" if out not in (None, "-") else ""))


@command("matrix")
def matrix_cmd(
    run: Run,
    month: MonthOpt,
    only: Annotated[str | None, typer.Option(
        "--only", metavar="A,B", help="Re-evaluate only these matrices (comma-separated); the priority matrix always "
                                      "runs, other matrices' stored rows are kept and re-ranked")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Evaluate and print the rule hit counts; write nothing")] = False,
    out: OutOpt = None,
    fmt: FormatOpt = None,
    show_sql: Annotated[str | None, typer.Option(
        "--show-sql", metavar="DIALECT", parser=choice(*SQL_DIALECTS),
        help="Print the generated queries (duckdb or spark) on stdout and exit")] = None,
) -> None:
    """Evaluate the marketing matrices (营销矩阵) into ranked recommendations.

    Every customer gets one order of the offer families from the priority matrix, and one
    row per recommended policy from the retention / new-service / traffic / … matrices,
    ranked 1..n by that order, then matrix name, then rule order. Stores recommendations,
    customer_priority, per-rule hit counts (rule_hits) and one funnel per matrix. Rule hit
    counts are printed on stderr.

    \b
    Examples:
      mktool matrix --month 2026-10
      mktool matrix --month 2026-10 --dry-run --only retention,traffic
      mktool matrix --month 2026-10 --out - --format jsonl | head
      mktool matrix --month 2026-10 --show-sql spark > matrices_spark.sql
    """
    if dry_run and out:
        raise run.usage_error(["--dry-run", "--out"], "--dry-run writes nothing; drop --out, or run without --dry-run")
    check_out_file(out)
    project = run.project()
    rules = project.rules
    names = [n.strip() for n in (only or "").split(",") if n.strip()] or None
    for name in names or []:
        try:
            rules.matrix(name)  # the rule set's own lookup, with its did-you-mean
        except MktoolError as exc:
            raise run.usage_error("--only", exc.message) from None
    if show_sql is not None:
        for name, sql in matrices.generated_sql(rules, month, only=names, dialect=show_sql).items():
            typer.echo(f"-- {name}\n{sql};\n")
        return
    if out:
        infer_format(out, fmt)  # refuse a bad --format before the work, not after
    for warning in rules.warnings:
        run.reporter.warn(str(warning))
    with run.db(write=not dry_run) as db:
        result = matrices.evaluate(db, project, month, only=names, dry_run=dry_run, reporter=run.reporter)
        if out:
            write_query(db.c, f"SELECT * FROM {RECOMMENDATIONS_TABLE} WHERE month = ? ORDER BY msisdn, rank", out, fmt,
                        [month])
    render_table(
        run.reporter, f"Rule hits {month}" + (" (dry run)" if dry_run else ""),
        ["matrix", "rule", "policy / order", "matches alone", "hits"],
        [(s.matrix, s.rule_id, s.policy_id or ", ".join(rules.matrix(s.matrix).rules[s.rule_no - 1].order),
          "-" if s.skipped else f"{s.alone:,}", f"skipped: {s.skipped}" if s.skipped else f"{s.hits:,}")
         for s in result.rules],
    )
    render_table(run.reporter, f"Matrix funnels {month}", ["matrix", "customers", "where", "matched", "recommended"],
                 [(m.matrix, f"{m.customers:,}", f"{m.passed:,}", f"{m.matched:,}", f"{m.recommended:,}")
                  for m in result.matrices])
    verb = "would have" if dry_run else "has"
    run.reporter.info(f"recommendations {month} {verb} {result.rows:,} rows for {result.customers:,} customers"
                      + (" (dry run, nothing written)" if dry_run else ""))


@command("check")
def check_cmd(
    run: Run,
    month: Annotated[str | None, optional_month(
        "Also evaluate the rules on this month's customer_view: warn about rules that never "
        "fire or are shadowed by earlier rules")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as failures (exit 5)")] = False,
    fmt: Annotated[str, format_option(CHECK_FORMATS, "(json: the problems on stdout)")] = "text",
) -> None:
    """Validate every rule and model file of the matrices folder, reporting all problems.

    scores.yaml, plan.yaml, policies.yaml, channels.yaml, every matrix and the scene files
    (scenes.yaml, scenes/*.yaml): YAML syntax,
    unknown keys, SQL (columns, types, forbidden constructs), policy and channel references,
    duplicates. Exit 1 on errors; warnings exit 0 unless --strict (exit 5).

    \b
    Examples:
      mktool check
      mktool check --month 2026-10 --strict
      mktool check --format json | jq '.errors'
    """
    if month is not None and run.settings.engine != "duckdb":
        # check validates files and never starts an engine; --month reads the month's customer_view.
        raise run.usage_error("--month", f"check --month reads the month's customer_view, and check never "
                                         f"starts Spark: with --engine {run.settings.engine}, check the files "
                                         "without --month")
    # The same rules run on Spark (issue 16): what would mean something else there is refused by a
    # Spark run, and said here as a warning on either engine.
    report = validate_all(run.settings.matrices_dir, spark=True)
    problems = [*report.problems, *(Problem("warning", text) for text in report.spark_divergences or ())]
    if month is not None and report.rules is not None:
        with run.db(write=False) as db:
            problems += matrices.diagnose(db, project_from_report(report), month, reporter=run.reporter)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    if fmt == "json":
        typer.echo(json.dumps({"matrices_dir": str(run.settings.matrices_dir), "month": month,
                               "files": report.files, "errors": [p.text for p in errors],
                               "warnings": [p.text for p in warnings]}, ensure_ascii=False, indent=2))
    else:
        for p in errors:
            run.reporter.error(p.text, label="error:")
        for p in warnings:
            run.reporter.warn(p.text)
    if errors:
        raise ConfigError(f"check found {len(errors)} error{'s' if len(errors) != 1 else ''}"
                          f" and {len(warnings)} warning{'s' if len(warnings) != 1 else ''}"
                          f" in {run.settings.matrices_dir}")
    if report.rules is not None:
        n_rules = sum(len(m.rules) for m in report.rules.matrices)
        run.reporter.info(f"{run.settings.matrices_dir}: {len(report.files)} files OK: "
                          f"{len(report.rules.matrices)} matrices, "
                          f"{n_rules} rules, {len(report.rules.policies)} policies, "
                          f"{len(report.rules.channels.channels)} channels"
                          + (f", {len(report.rules.scenes)} scene{'s' if len(report.rules.scenes) != 1 else ''}"
                             if report.rules.scenes else "")
                          + (f"; {len(warnings)} warning{'s' if len(warnings) != 1 else ''}" if warnings else ""))
    if warnings and strict:
        raise CheckFailed(f"check found {len(warnings)} warning{'s' if len(warnings) != 1 else ''} (--strict)")


@command("run")
def run_cmd(
    run: Run,
    month: MonthOpt,
    ingest_dir: Annotated[list[str] | None, typer.Option(
        "--ingest", "-i", help="Load these Parquet files/folders first (repeatable; with --engine spark also "
                               "hdfs://, s3a://, file:/ URIs)")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", envvar=ENV["out_dir"],
        help="Output folder: the lists go to <out>/<month>/<cycle-date>/")] = Path("out"),
    fmt: FormatOpt = None,
    date: Annotated[dt.date | None, date_option("The export cycle's date, YYYY-MM-DD [default: today]")] = None,
    no_report: Annotated[bool, typer.Option(
        "--no-report", help=f"Do not write {report.REPORT_FILE} into the cycle's folder")] = False,
) -> None:
    """Run the whole month: [ingest] → score → matrix → plan → export → evaluate, then print the funnels.

    Every rule file is validated before anything is written; the database stays locked for
    the whole run, so a second run waits (--wait) or refuses. Last, the month's report
    (`mktool report`) is written as report.html beside the lists, unless --no-report; a report
    that cannot be written is a warning: the lists are delivered by then.

    \b
    Examples:
      mktool run --month 2026-10 --ingest fixtures/extracts --date 2026-11-01
      MKTOOL_DB=/data/mk.duckdb mktool run --month 2026-10 --quiet   # cron
      mktool run --month 2026-10 --no-report
    """
    check_out_folder(out)
    project = run.project()  # every rule file, validated before the database is opened
    pipeline.check_before_run(project)  # and the salt of every hash-masked channel
    with run.db(write=True) as db:
        result = pipeline.run_pipeline(db, project, month, ingest_paths=ingest_dir,
                              cycle_date=cycle_date_or_today(date), out_dir=out, fmt=fmt, reporter=run.reporter)
        written = None if no_report or result.out_dir is None else write_run_report(run, db, project, month, result)
    rows = []
    for name, stages in result.funnels.items():
        rows.append((name, " → ".join(f"{s['stage']} {s['count']:,}" for s in stages)))
    render_table(run.reporter, f"Funnels {month}", ["funnel", "stages (customers)"], rows)
    if result.evaluation is not None and (result.evaluation.campaign or result.evaluation.churn):
        render_table(run.reporter, f"Evaluation {month} (stored; `mktool evaluate` for the details)",
                     ["figure", "value"], evaluation_rows(result.evaluation))
    run.reporter.info(
        f"done: {result.customers:,} customers scored, {result.recommendations:,} offers, "
        f"{result.plan_customers:,} plan changes; lists in {result.out_dir}: "
        + ", ".join(f"{ch} {n:,}" for ch, n in result.exported.items())
        + (f"; report {written}" if written else "")
    )


def write_run_report(run: Run, db: Database, project: Project, month: str,
                     result: pipeline.PipelineResult) -> Path | None:
    """report.html in the cycle's folder, after everything else committed and was published.

    A failure here loses nothing (the lists, contact records and evaluations are in place): it is a
    warning naming the command that writes the report later, and `run` still succeeds. Ctrl-C
    still interrupts (exit 130).
    """
    assert result.out_dir is not None
    lists_dir = result.out_dir.parent.parent
    cycle = dt.date.fromisoformat(result.out_dir.name)
    again = f"`mktool report --month {month} --lists {lists_dir} --cycle {cycle}`"
    try:
        return report.write_report(db, project, month, lists_dir=lists_dir, cycle=cycle)
    except MktoolError as exc:
        reason = exc.message
    except OSError as exc:
        reason = _os_error_text(exc)
    except (duckdb.InterruptException, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - a bug in the report must not fail a run whose lists are out
        if isinstance(exc, RuntimeError) and "interrupted" in str(exc).lower():
            raise
        if run.verbose:
            traceback.print_exc(file=sys.stderr)
        reason = f"internal error: {type(exc).__name__}: {exc} ({BUG_HINT})"
    run.reporter.warn(f"{report.REPORT_FILE} was not written: {reason}. The lists are delivered; write the report "
                      f"with {again}")
    return None


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.2f}%"


def evaluation_rows(evaluation: pipeline.MonthEvaluation) -> list[tuple[str, str]]:
    """run's summary of what it measured: the campaigns' totals and the churn flag's quality."""
    rows: list[tuple[str, str]] = []
    if evaluation.campaign is not None:
        doc = evaluation.campaign.document
        t = doc["total"]
        ci = t["uplift_ci"]
        uplift = "-" if t["uplift"] is None else f"{100 * t['uplift']:+.2f} pts" + (
            f" (95% CI {100 * ci[0]:+.2f} to {100 * ci[1]:+.2f})" if ci else "")
        rows.append(("contacted offers", f"{t['contacted']:,} ({t['accepted']:,} accepted: "
                                         f"{_percent(t['success_rate'])})"))
        if not evaluation.campaign.orders_loaded:
            rows.append(("orders", "not loaded: no take-up or uplift (`mktool ingest orders.parquet`)"))
        else:
            rows += [
                (f"ordered within {doc['window_days']} days", f"{t['ordered']:,} ({_percent(t['take_up'])})"),
                ("held-out offers ordered", f"{t['held_out_ordered']:,} of {t['held_out']:,} "
                                            f"({_percent(t['take_up_control'])})"),
                ("uplift", uplift),
                ("cancelled within 7 days", f"{t['cancelled_7d']:,} ({_percent(t['cancel_7d_rate'])})")]
        rows.append(("push contacts per customer", "-" if t["contacts_per_customer"] is None
                     else f"{t['contacts_per_customer']:.2f}"))
    if evaluation.churn is not None:
        doc = evaluation.churn.document
        flag = doc["flag"]
        rows += [("churned by the next month", f"{doc['churned']:,} of {doc['base']:,} ({_percent(doc['base_rate'])})"),
                 ("churn_flag precision / recall", f"{_percent(flag['precision'])} / {_percent(flag['recall'])}"
                                                   + ("" if flag["lift"] is None else f", lift {flag['lift']:.2f}"))]
    return rows


@command("report")
def report_cmd(
    run: Run,
    month: MonthOpt,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", metavar="FILE",
        help=f"Write the page to FILE, or - for stdout [default: {report.REPORT_FILE} in the cycle's folder "
             "<lists>/<month>/<cycle>/, else report-<month>.html here]")] = None,
    lists: Annotated[Path, typer.Option(
        "--lists", envvar=ENV["out_dir"], metavar="DIR",
        help="The output folder export and run write the lists into (its <month>/<cycle>/manifest.json is the "
             "provenance)")] = Path("out"),
    cycle: Annotated[dt.date | None, typer.Option(
        "--cycle", parser=parse_cycle_date, metavar="YYYY-MM-DD",
        help="The export cycle to describe [default: the month's newest published cycle]")] = None,
) -> None:
    """Write the month's report: one self-contained HTML page to read, forward and print.

    Provenance (manifest.json), every funnel as a chart, value-tier, stickiness and segment
    distributions, the segment profile, rule hits (0-hit rules flagged), the plan threshold
    sweep as a heatmap, the campaign evaluation with uplift and its 95% interval, the churn
    model's cumulative gains and the churn factors per tenure cohort. A section whose data is
    missing says what to load or run. The page has no script and makes no request: it opens
    offline and prints on A4. Only aggregates: no msisdn. The database is only read.

    \b
    Examples:
      mktool report --month 2026-10
      mktool report --month 2026-10 --lists /data/lists --cycle 2026-11-01 --out october.html
      mktool report --month 2026-10 --out - > report.html
    """
    check_out_file(out)
    project = run.project()
    with run.db(write=False) as db:
        if not report.scored_customers(db, month):
            run.reporter.warn(f"{month} is not scored (customer_view has no rows for it): every section of the "
                              f"report says what to load or run; is --month right?")
        if out == "-":
            text = report.build_report(db, project, month, lists_dir=lists, cycle=cycle)
        else:
            target = report.write_report(db, project, month, lists_dir=lists, cycle=cycle,
                                         out=Path(out) if out else None)
    if out == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    run.reporter.info(f"report of {month} written to {target}")


@command("explain")
def explain_cmd(
    run: Run,
    msisdn: Annotated[str, typer.Argument(
        parser=parse_msisdn, metavar="MSISDN", help="The customer's number (11 digits)")],
    month: MonthOpt,
    fmt: Annotated[str, format_option(TABLE_JSON)] = "table",
    date: Annotated[dt.date | None, date_option(
        "The cycle whose channel stages to explain, YYYY-MM-DD [default: today, as export's]")] = None,
) -> None:
    """Explain one customer: view and scores, every rule matched or not, plan bills, what was exported,
    for each offer × channel the contact-policy stage that kept or removed it, and the customer's
    last events of the scene batches with each scene's outcome and why (stale, not matched,
    once_per, fired: listed, held out, merged or blocked at a stage).

    \b
    Examples:
      mktool explain 13800000042 --month 2026-10
      mktool explain 13800000042 --month 2026-10 --date 2026-11-01
      mktool explain 13800000042 --month 2026-10 --format json | jq '.plan_pairs[0]'
    """
    project = run.project()
    cycle_date = cycle_date_or_today(date)
    with run.db(write=False) as db:
        ex = explain.explain(db, project, month, msisdn)
        verdicts = export.channel_verdicts(db.c, project, month, cycle_date, msisdn)
    if fmt == "json":
        doc = {**ex.to_dict(), "cycle_date": cycle_date.isoformat(),
               "channel_stages": [dataclasses.asdict(v) for v in verdicts]}
        typer.echo(json.dumps(doc, default=str, ensure_ascii=False, indent=2))
        return
    out = Console(highlight=False)
    v = ex.view
    out.print(f"[bold]{escape(str(ex.msisdn))}[/bold] " + escape(
        f"· {ex.month} · {v.get('city')} · plan {v.get('plan_id')} ({v.get('plan_name')}) · "
        f"{v.get('status')} · {v.get('payment')} · tenure {v.get('tenure_months')} months"))
    render_table(run.reporter, "Customer view (the key columns and every column the rules read; "
                               "--format json: all)", ["column", "value"],
                 [(k, explain.masked(str(v[k])) if k == "msisdn" else explain.display(v[k]))
                  for k in explain.view_columns(ex)], to_stdout=True)
    rows = []
    for r in ex.rules:
        target = " → ".join(r.order) if r.order else (r.policy_id or "")
        why = "\n".join(t for t in (explain.failure_label(r), explain.columns_label(r)) if t)
        rows.append((r.matrix, r.rule_id, explain.outcome_label(r), target, r.when, why))
    render_table(run.reporter, "Rules", ["matrix", "rule", "outcome", "policy / order", "when",
                                         "first failed condition; the customer's values"], rows, to_stdout=True)
    render_table(run.reporter, "Recommendations (stored)", ["rank", "matrix", "rule", "policy", "channels"],
                 [(r["rank"], r["matrix"], r["rule_id"], r["policy_id"], ", ".join(r.get("channels") or []))
                  for r in ex.recommendations], to_stdout=True)
    for note in ex.notes:
        out.print(escape(f"Note: {note}"))
    failed = next((s for s, ok in ex.plan_stages.items() if not ok), None)
    out.print(escape("Plan candidate: " + ("yes" if failed is None else f"no — dropped at stage {failed}")))
    if failed is None:
        render_table(run.reporter, "Plan pairs (3-month averages priced on each target plan)",
                     ["plan", "name", "rental", "voice ovg", "data ovg", "new total", "current", "total Δ", "rental Δ",
                      "verdict", "rank"],
                     [(p["plan_id"], p["plan_name"], explain.display(p["new_rental"]),
                       explain.display(p["new_voice_overage"]), explain.display(p["new_data_overage"]),
                       explain.display(p["new_total"]), explain.display(p["current_total"]),
                       explain.display(p["total_fee_change"], 4), explain.display(p["rental_change"], 4), p["verdict"],
                       p.get("rank") or "") for p in ex.plan_pairs], to_stdout=True)
    render_table(run.reporter, "Contacts (latest first)", ["date", "channel", "policy", "outcome", "cycle"],
                 [(c["contact_date"], c["channel"], c["policy_id"], c["outcome"], c.get("cycle")) for c in ex.contacts],
                 to_stdout=True)
    if ex.holdouts:
        render_table(run.reporter, "Held out (control group: universal, or the policy's)",
                     ["cycle", "channel", "policy", "kind"],
                     [(h["cycle"], h["channel"], h["policy_id"], h.get("kind") or "policy") for h in ex.holdouts],
                     to_stdout=True)
    render_channel_verdicts(run, verdicts, cycle_date)
    render_scene_events(run, ex)


def render_scene_events(run: Run, ex: explain.Explanation) -> None:
    """explain's "Events and scenes": the customer's last scene events, each scene's outcome and why.

    One line per event and an indented line per scene listening, not a table: the reasons are
    sentences, and eight columns left them a few characters each on an 80-column terminal."""
    console = Console(highlight=False)
    if ex.scene_note is not None:
        console.print(escape(f"Events and scenes: {ex.scene_note}"))
        return
    console.print(escape(f"Events and scenes (the last {explain.EVENTS_SHOWN} events, newest first):"))
    previous: tuple[Any, ...] | None = None
    for r in ex.scene_events:
        event = (r["event_time"], r["event_type"], r["value"], r["batch"])
        if event != previous:
            console.print(escape(f"  {r['event_time']}  {r['event_type']} {explain.display(r['value'])}"
                                 f"  (batch {r['batch']})"))
            previous = event
        scene = r["scene_id"] or "no scene"
        wave = f" (wave {r['wave']})" if r["wave"] else ""
        console.print(escape(f"    {scene}{wave}: {r['outcome']} — {r['why']}"), soft_wrap=False)


def render_channel_verdicts(run: Run, verdicts: list[export.ChannelVerdict], cycle_date: dt.date) -> None:
    """explain's "why (not) on this channel": each offer × candidate channel and the stage that decided."""
    render_table(run.reporter, f"Channels (cycle {cycle_date}): the contact-policy stage of each offer",
                 ["rank", "policy", "channel", "kind", "stage", "why"],
                 [(v.rank, v.policy_id, v.channel, v.kind, v.stage, v.detail) for v in verdicts], to_stdout=True)


# -- analyst workflow: rule tests, fixture regression, run-to-run diff ------------------------
@command("test")
def test_cmd(
    run: Run,
    pattern: Annotated[str | None, typer.Argument(
        help="Run only the cases whose file, name, matrix or rule contains PATTERN (or matches it as a glob)")] = None,
    month: Annotated[str | None, optional_month(
        "Evaluation month of test files that do not pin one [default: the current month]")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Also fail when a rule has no passing case where it fires and one where it does not")] = False,
    fmt: Annotated[str, format_option(TABLE_JSON, "(json: every case on stdout)")] = "table",
    junit: Annotated[Path | None, typer.Option(
        "--junit", metavar="FILE", help="Also write a JUnit XML report (CI)")] = None,
    defaults: Annotated[bool, typer.Option(
        "--defaults", help="Print the default test customer (every customer_view column) and exit")] = False,
) -> None:
    """Run the rule unit tests in <matrices>/tests/*.yaml, in memory: no extracts, no database.

    Each case is a partial customer (the customer_view columns that matter; the rest from the
    default customer, scores computed by scores.yaml) and the offers the matrices must give it
    in rank order, or `no offer`; plan cases expect the recommended plan with its bill and
    rates. Exit 0 when every case passes, 5 when any fails (each failure names the test file,
    case, matrix file and rule, with expected and actual rows side by side).

    \b
    Examples:
      mktool test
      mktool test retention          # one file, matrix or rule
      mktool test 'R6*' --month 2026-10
      mktool test --strict --junit rule-tests.xml
      mktool test --defaults
    """
    require_rules_folder(run.settings.matrices_dir, "--matrices")
    if junit is not None:
        check_out_file(str(junit))
    if defaults:
        render_table(run.reporter, "The default test customer (cases override any column; derived and scores.yaml "
                     "columns are computed from the others unless given)", ["column", "type", "value", "source"],
                     default_customer_rows(run.settings.matrices_dir, month), to_stdout=True)
        return
    result = run_tests(run.settings.matrices_dir, pattern=pattern, month=month, reporter=run.reporter)
    if not result.results:
        if pattern:
            raise MktoolError(f"no test case matches '{pattern}' in {run.settings.matrices_dir / 'tests'}")
        run.reporter.warn(f"no rule tests in {run.settings.matrices_dir / 'tests'} (see docs/analyst-workflow.md)")
        return
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(junit_xml(result), encoding="utf-8")
    if fmt == "json":
        typer.echo(json.dumps(result_document(result), ensure_ascii=False, indent=2, default=str))
        quiet = run.reporter.quiet
        run.reporter.quiet = True  # the table is the json; failures still go to stderr
        render_test_report(result, run.reporter)
        run.reporter.quiet = quiet
    else:
        render_test_report(result, run.reporter)
    uncovered = coverage_problems(result)
    for text in uncovered:
        if strict:
            run.reporter.error(text, label="error:")
        else:
            run.reporter.warn(text)
    failed = result.failed
    passed = len(result.results) - len(failed)
    summary = (f"{passed} of {len(result.results)} rule test{'s' if len(result.results) != 1 else ''} passed "
               f"({len(result.files)} file{'s' if len(result.files) != 1 else ''})")
    if failed:
        n_err = sum(r.status == "error" for r in failed)
        raise CheckFailed(f"{summary}: {len(failed) - n_err} failed" + (f", {n_err} could not run" if n_err else "")
                          + f"; first: {failed[0].case.label}")
    if uncovered and strict:
        raise CheckFailed(f"{summary}, but {len(uncovered)} rule{'s' if len(uncovered) != 1 else ''} lack a case "
                          "where they fire or one where they do not (--strict)")
    run.reporter.info(f"{summary}" + ("" if pattern else "; every rule has a case where it fires and one where it "
                                                         "does not" if not uncovered else ""))


@command("snapshot")
def snapshot_cmd(
    run: Run,
    month: Annotated[str | None, optional_month(
        "Month to record (with --check: check only this month) [--check default: every month in the file]")] = None,
    write: Annotated[bool, typer.Option(
        "--write", help="Record the snapshot into --file (add or replace the month)")] = False,
    check: Annotated[bool, typer.Option(
        "--check", help="Recompute every month of --file and fail (exit 5) with a table of what moved")] = False,
    file: Annotated[Path, typer.Option("--file", help="The committed snapshot")] = Path("fixtures/snapshot.json"),
    fixtures: Annotated[Path | None, typer.Option(
        "--fixtures",
        help="Fixture extracts [default: fixtures/extracts, with --check the folder the file names]")] = None,
    date: Annotated[dt.date | None, date_option(
        "The export cycle's date, YYYY-MM-DD [default: the 1st of the next month; --check: the "
        "recorded one]")] = None,
    fmt: Annotated[str, format_option(TABLE_JSON, "(--check's changes, or the snapshot)")] = "table",
) -> None:
    """Fixture regression: funnels, rule hits and target-list hashes of the bundled fixtures.

    Builds the fixture extracts through the whole month (ingest, score, matrix, plan, export)
    in a temporary database and folder with a fixed cycle date (never --db), and records each
    funnel's stage counts, each rule's hits and each target list's rows, customers and content
    hash. --check recomputes and, when anything moved, prints what, before, after and delta
    and exits 5. Run it from the project root.

    \b
    Examples:
      mktool snapshot --month 2026-10            # show what would be recorded
      mktool snapshot --month 2026-10 --write    # record it in fixtures/snapshot.json
      mktool snapshot --check                    # CI: fail when the rules moved the fixtures
    """
    if write and check:
        raise run.usage_error(["--write", "--check"], "--write records and --check compares: give one of them")
    cycle = date
    if write:
        check_out_file(str(file))
    if check:
        before, after, changes = snapshot_check(file, run.settings.matrices_dir, months=[month] if month else None,
                                                fixtures=fixtures, settings=run.settings, reporter=run.reporter)
        months = sorted(after["months"])
        if fmt == "json":
            typer.echo(json.dumps([c.as_dict() for c in changes], ensure_ascii=False, indent=2))
        elif changes:
            print_table(f"Snapshot check: what moved against {file} ({', '.join(months)}, rules "
                        f"{run.settings.matrices_dir})", ["month", "what", "before", "after", "delta"],
                        change_rows(changes), numeric=("before", "after", "delta"))
        raise_if_moved(changes, file, months, recorded_engines=before.get("engines"),
                       current_engines=after.get("engines"))
        n = sum(len(stages) for m in after["months"].values() for stages in m["funnels"].values())
        run.reporter.info(f"snapshot check passed: {', '.join(months)} match {file} ({n} funnel stages, "
                          f"{sum(len(r) for m in after['months'].values() for r in m['rule_hits'].values())} rules, "
                          f"{sum(len(m['lists']) for m in after['months'].values())} target lists)")
        return
    if month is None:
        raise run.usage_error("--month",
                              "give --month YYYY-MM to record (or --check to compare with the committed snapshot)")
    doc = record([month], run.settings.matrices_dir, fixtures or DEFAULT_FIXTURES, cycle_date=cycle,
                 settings=run.settings, reporter=run.reporter)
    if write:
        snapshot_write(file, doc)
        run.reporter.info(f"recorded {month} in {file}: commit it with the rule change")
        return
    if fmt == "json":
        typer.echo(dumps(doc), nl=False)
    else:
        m = doc["months"][month]
        rows = [(f"funnel {name}", " → ".join(f"{s} {n:,}" for s, n in stages.items()))
                for name, stages in m["funnels"].items()]
        rows += [(f"rules {matrix}", ", ".join(f"{r} {n:,}" for r, n in hits.items()))
                 for matrix, hits in m["rule_hits"].items()]
        rows += [(f"list {ch}", f"{info['rows']:,} rows, {info['customers'] if info['customers'] is not None else '-'} "
                                f"customers, sha256 {info['sha256'][:12]}") for ch, info in m["lists"].items()]
        print_table(f"Snapshot of {month} (cycle {m['cycle_date']}; not written: add --write)", ["what", "values"],
                    rows)


@command("diff")
def diff_cmd(
    run: Run,
    folders: Annotated[list[Path] | None, typer.Argument(
        help="Two export cycle folders <out>/<month>/<cycle-date>: before, then after", show_default=False)] = None,
    month: Annotated[str | None, optional_month("With --against-matrices: the month to run")] = None,
    against: Annotated[Path | None, typer.Option(
        "--against-matrices", metavar="DIR",
        help="Compare the current --matrices (after) with the rules in DIR (before) on the same data")] = None,
    fixtures: Annotated[Path | None, typer.Option(
        "--fixtures", metavar="DIR",
        help="With --against-matrices: build from these extracts instead of copying --db")] = None,
    date: Annotated[dt.date | None, date_option(
        "With --against-matrices: the export cycle's date [default: the 1st of the next month]")] = None,
    fmt: Annotated[str, format_option(DIFF_FORMATS)] = "table",
    exit_code: Annotated[bool, typer.Option("--exit-code", help="Exit 5 when there are differences")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", metavar="FILE",
        help="Write every row gained, lost or changed (msisdn, channel, policy, kind, before/after values) to FILE: "
             "csv, or JSON Lines when FILE ends in .jsonl")] = None,
) -> None:
    """Compare two runs: customers gained and lost, rows changed (script, money, plan ...) per channel and policy.

    Either two export folders, or the current rules (--matrices) against another matrices
    folder (e.g. a git worktree of main) run on the same data in temporary databases: built
    from --fixtures, or copied from --db (which is only read). json is stable (sorted keys
    and rows) and markdown is ready for a pull-request comment. "No differences" means every
    list is the same bytes on both sides. --out FILE lists the rows themselves: it holds msisdns.

    \b
    Examples:
      mktool diff out_main/2026-10/latest out_pr/2026-10/latest
      mktool diff out_main/2026-10/2026-11-01 out_pr/2026-10/2026-11-01 --out changed.csv
      mktool diff --month 2026-10 --against-matrices ../main/matrices --fixtures fixtures/extracts
      mktool diff --month 2026-10 --against-matrices ../main/matrices --format markdown > diff.md
    """
    folders = folders or []
    if out is not None:
        if str(out) == "-":
            raise run.usage_error("--out", "--out wants a file name (the rows hold msisdns), not -")
        if out.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder; --out wants a file name", str(out))
        check_out_file(str(out))
    if against is not None:
        if folders:
            raise run.usage_error("--against-matrices", "give two export folders, or --against-matrices DIR with "
                                                        "--month, not both")
        if month is None:
            raise run.usage_error("--month", "--against-matrices needs --month YYYY-MM (the month both rule sets run)")
        result = compare_rules(month, run.settings.matrices_dir, against, fixtures=fixtures,
                               db=None if fixtures is not None else run.settings.db_path,
                               cycle_date=date, settings=run.settings,
                               reporter=run.reporter, detail=out)
    else:
        if len(folders) != 2:
            raise run.usage_error("FOLDERS", "give two export folders (before, after), e.g. `mktool diff "
                                             "out_a/2026-10/latest out_b/2026-10/latest`, or --month M "
                                             "--against-matrices DIR")
        for given, name in ((month, "--month"), (fixtures, "--fixtures"), (date, "--date")):
            if given is not None:
                raise run.usage_error(name, f"{name} only applies with --against-matrices")
        result = compare_folders(folders[0], folders[1], detail=out)
    if fmt == "json":
        typer.echo(render_json(result), nl=False)
    elif fmt == "csv":
        typer.echo(render_csv(result), nl=False)
    elif fmt == "markdown":
        typer.echo(render_markdown(result), nl=False)
    else:
        typer.echo(headline(result))
        if not result.identical:
            for title, cols, rows in sections(result):
                if rows:
                    print_table(title, cols, rows, numeric=tuple(c for c in cols if c not in (
                        "channel", "policy", "funnel", "stage", "matrix", "rule", "same bytes", "changed columns")))
        for note in result.notes:
            run.reporter.info(note)
    if exit_code and not result.identical:
        raise CheckFailed("the two runs differ (--exit-code)")


INTERRUPT_REPORTED = False  # a command already printed its Ctrl-C line (and chose exit 130)


def main() -> None:
    """Console-script entry point: a Ctrl-C anywhere exits 130 with one line, never a traceback.

    A command reports its own Ctrl-C (what was committed). One that lands outside it, as typer
    parses the options or as the command returns (or a second SIGINT behind one DuckDB already
    turned into an interrupt), would otherwise kill Python by signal after a traceback. It is
    reported here without a claim about commits, which this level cannot know. Once the command
    is over, a Ctrl-C has nothing left to stop and is ignored while Python exits.
    """
    late = "Interrupted (while mktool was starting or finishing a command).\n"
    try:
        app()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not INTERRUPT_REPORTED:
            sys.stderr.write(late)
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as exc:
        # typer turns a Ctrl-C during option parsing into a silent exit 130: say what happened.
        if exc.code == EXIT_INTERRUPTED and not INTERRUPT_REPORTED:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            sys.stderr.write(late)
        raise
    finally:
        with contextlib.suppress(ValueError):  # not the main thread (an embedding caller)
            signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":  # pragma: no cover
    main()
