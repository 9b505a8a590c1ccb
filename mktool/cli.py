"""The `mktool` command line: a thin Typer layer over the library.

Each command parses its options, calls one library function and renders the result. The
options every command shares (--db, --matrices, resources, --quiet, --verbose) are declared
once in ``COMMON_OPTIONS`` and added to each command by the ``command`` decorator, which also
turns known errors into ``Error: …`` on stderr with a documented exit code.
"""

import functools
import inspect
import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import duckdb
import typer
from rich.table import Table

from mktool import __version__
from mktool.config import Settings
from mktool.console import Reporter
from mktool.database import Database
from mktool.errors import EXIT_INTERNAL, MktoolError
from mktool.output import write_query

app = typer.Typer(
    name="mktool",
    help="Batch engine for telecom stock-customer precision marketing.\n\n"
    "ingest → score → matrix → plan → export, or all of it with `mktool run`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])


# -- options shared by every command ---------------------------------------------------------
def _opt(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


COMMON_OPTIONS = [
    _opt("db", Annotated[Optional[Path], typer.Option(
        "--db", envvar="MKTOOL_DB", help="DuckDB database file [default: ./mktool.duckdb]",
        rich_help_panel="Common options")]),
    _opt("matrices", Annotated[Optional[Path], typer.Option(
        "--matrices", envvar="MKTOOL_MATRICES",
        help="Folder of rule/model YAML files [default: ./matrices if present, else the shipped defaults]",
        rich_help_panel="Common options")]),
    _opt("memory_limit", Annotated[Optional[str], typer.Option(
        "--memory-limit", envvar="MKTOOL_MEMORY_LIMIT", help="DuckDB memory limit, e.g. 8GB [default: 75% of RAM]",
        rich_help_panel="Common options")]),
    _opt("threads", Annotated[Optional[int], typer.Option(
        "--threads", envvar="MKTOOL_THREADS", help="DuckDB worker threads [default: all cores]",
        rich_help_panel="Common options")]),
    _opt("temp_dir", Annotated[Optional[Path], typer.Option(
        "--temp-dir", envvar="MKTOOL_TEMP_DIR", help="Where DuckDB spills to disk [default: <db>.tmp beside the database]",
        rich_help_panel="Common options")]),
    _opt("wait", Annotated[Optional[float], typer.Option(
        "--wait", envvar="MKTOOL_LOCK_WAIT", help="Seconds to wait for another run's lock before refusing [default: 0]",
        rich_help_panel="Common options")]),
    _opt("quiet", Annotated[bool, typer.Option(
        "--quiet", "-q", help="Only warnings and errors on stderr (for cron)", rich_help_panel="Common options")], False),
    _opt("verbose", Annotated[bool, typer.Option(
        "--verbose", "-v", help="More detail; full traceback on errors", rich_help_panel="Common options")], False),
]
COMMON_NAMES = [p.name for p in COMMON_OPTIONS]


@dataclass
class Run:
    """What a command body gets: settings, a reporter, and a way to open the database."""

    settings: Settings
    reporter: Reporter
    verbose: bool

    def db(self, *, write: bool) -> Database:
        return Database(self.settings, write=write)


def command(name: str | None = None) -> Callable[[F], F]:
    """Register ``fn(run, **options)`` as a command with the common options and the error handler."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in list(sig.parameters.values())[1:]]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            common = {k: kwargs.pop(k) for k in COMMON_NAMES}
            settings = Settings.from_options(
                db=common["db"], matrices=common["matrices"], memory_limit=common["memory_limit"],
                threads=common["threads"], temp_dir=common["temp_dir"], lock_wait=common["wait"],
            )
            reporter = Reporter(quiet=common["quiet"], verbose=common["verbose"])
            run = Run(settings, reporter, common["verbose"])
            try:
                return fn(run, **kwargs)
            except MktoolError as exc:
                if run.verbose:
                    traceback.print_exc(file=sys.stderr)
                reporter.console.print(f"[bold red]Error:[/bold red] {exc.render()}", markup=True, highlight=False)
                raise typer.Exit(exc.exit_code) from None
            except duckdb.Error as exc:
                if run.verbose:
                    traceback.print_exc(file=sys.stderr)
                reporter.console.print(f"[bold red]Error:[/bold red] DuckDB: {str(exc).splitlines()[0]}")
                raise typer.Exit(EXIT_INTERNAL) from None
            except KeyboardInterrupt:
                reporter.console.print("Interrupted; nothing was committed.")
                raise typer.Exit(130) from None

        wrapper.__signature__ = sig.replace(parameters=own + COMMON_OPTIONS)  # type: ignore[attr-defined]
        app.command(name)(wrapper)
        return fn

    return decorate


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mktool {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Batch engine for telecom stock-customer precision marketing.

    Exit codes: 0 ok · 1 bad input, rule or missing step · 2 bad usage · 3 database locked ·
    4 internal error · 5 a check found differences.
    """


# -- small rendering helpers ----------------------------------------------------------------
MonthOpt = Annotated[str, typer.Option("--month", "-m", help="Month to work on, YYYY-MM")]
OutOpt = Annotated[Optional[str], typer.Option("--out", "-o", help="Write the result to FILE, or - for stdout")]
FormatOpt = Annotated[Optional[str], typer.Option("--format", "-f", help="csv | parquet | jsonl [default: from --out's extension, else csv]")]


def render_table(reporter: Reporter, title: str | None, columns: list[str], rows: list[tuple[Any, ...]],
                 *, to_stdout: bool = False) -> None:
    """A rich table for people (on stderr unless it *is* the requested output)."""
    table = Table(title=title, show_lines=False, header_style="bold")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    if to_stdout:
        from rich.console import Console

        Console(highlight=False).print(table)
    elif not reporter.quiet:
        reporter.console.print(table)


def check_month(month: str) -> str:
    from mktool.contract import MONTH_RE

    if not MONTH_RE.match(month):
        raise MktoolError(f"--month must be YYYY-MM, got '{month}'")
    return month


# -- commands -------------------------------------------------------------------------------
@command("ingest")
def ingest_cmd(
    run: Run,
    paths: Annotated[list[Path], typer.Argument(help="Parquet files or folders of them")],
    table: Annotated[Optional[str], typer.Option("--table", "-t", help="Load every file into this table (default: from each file name)")] = None,
) -> None:
    """Load Parquet extracts into the database under the data contract.

    The table is recognised from each file name (usage.parquet, usage_2026-10.parquet) or
    given with --table. All files of one call load or none do; a month already loaded is
    replaced, never duplicated.

    Example:  mktool ingest fixtures/extracts/    ·    mktool ingest --table usage /data/u_oct.parquet
    """
    from mktool.ingest import ingest

    with run.db(write=True) as db:
        result = ingest(db, paths, table=table, reporter=run.reporter)
    rows = [(f.table, ", ".join(f.months) or "-", f.rows, f.path.name) for f in result.files]
    render_table(run.reporter, f"Loaded {len(result.files)} file(s), {result.rows:,} rows", ["table", "months", "rows", "file"], rows)


@command("status")
def status_cmd(
    run: Run,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | json")] = "table",
) -> None:
    """Show what is loaded: rows per table and month, and the file each came from.

    Example:  mktool status    ·    mktool status --format json | jq .
    """
    from mktool.ingest import status

    with run.db(write=False) as db:
        rows = status(db)
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
        if "=" not in item:
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
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="Override a scores.yaml parameter, name=value (repeatable)")] = None,
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
    from mktool.view import VIEW_TABLE, score

    check_month(month)
    with run.db(write=True) as db:
        result = score(db, month, matrices_dir=run.settings.matrices_dir, reporter=run.reporter, params=parse_params(param))
        if out:
            write_query(db.c, f"SELECT * FROM {VIEW_TABLE} WHERE month = ? ORDER BY msisdn", out, fmt, [month])
    run.reporter.info(f"customer_view {month}: {result.rows:,} customers")
    weights = result.model.indicator_weights()
    render_table(run.reporter, f"Value score weights (AHP, CR = {result.model.ahp.consistency_ratio:.3f})",
                 ["criterion", "indicator", "weight"], [(c, i, f"{w:.4f}") for c, i, w in weights])
    if result.tiers:
        render_table(run.reporter, "Distribution", ["column", "value", "customers"],
                     [(c, v, f"{n:,}") for c, v, n in result.tiers])


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
