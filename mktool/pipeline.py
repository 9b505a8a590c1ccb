"""`mktool run`: the whole month in one cron-safe command.

Takes the project validated once (every rule file, and the hash salt of every channel it
will export: nothing is touched if one is broken or missing), then holds the
database lock for the whole run while ingest → score → matrix → plan → export → evaluate each
commit their own step; a failure stops the run with the earlier steps' results intact and the
failing step rolled back, so re-running after a fix picks up cleanly. A Ctrl-C says which
steps had committed before it came (never "nothing was committed" after ingest or score did).

Also the workflow's building block shared by ``mktool snapshot`` and ``mktool diff``: a whole
month in a temporary place (:func:`temporary_run`: ingest from fixtures or a copy of the
user's database, then the pipeline, all removed on exit), and reading the target lists an
export folder holds (:func:`target_lists`, :func:`list_reader`). Neither command depends on
the other; both depend on this.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import duckdb

from mktool import campaign, evaluate, export, ingest, matrices, plan, view
from mktool.config import Settings
from mktool.console import QUIET, Reporter
from mktool.contract import check_month
from mktool.database import Database
from mktool.errors import Interrupted, MktoolError, StateError
from mktool.output import write_text_file
from mktool.project import Project, load_project
from mktool.publish import folder_lock
from mktool.sqlquote import quote_literal

STEPS = ("ingest", "score", "matrix", "plan", "export", "evaluate")
T = TypeVar("T")


@dataclass
class PipelineResult:
    month: str
    ingested_files: int
    customers: int
    recommendations: int
    plan_customers: int
    exported: dict[str, int]
    out_dir: Path | None
    funnels: dict[str, list[dict[str, int | str]]]
    evaluation: MonthEvaluation | None = None


@dataclass(frozen=True)
class MonthEvaluation:
    """What `run` measured after exporting: the campaigns (when something answered the month's
    lists) and the churn model (when M+1's subscribers are loaded); None where it could not."""

    campaign: campaign.CampaignEvaluation | None = None
    churn: evaluate.ChurnEvaluation | None = None

    def manifest_entry(self) -> dict[str, object]:
        """The figures manifest.json carries: each evaluation's stored run id and its document."""
        entry: dict[str, object] = {}
        if self.campaign is not None:
            entry["campaign"] = {"run_id": self.campaign.run_id, **self.campaign.document}
        if self.churn is not None:
            entry["churn"] = {"run_id": self.churn.run_id, **self.churn.document}
        return entry


def evaluate_month(db: Database, project: Project, month: str, *, reporter: Reporter = QUIET) -> MonthEvaluation:
    """The evaluations `run` can make of ``month`` now, each stored as `mktool evaluate` stores it."""
    judged = campaign.evaluate_campaign(db, project, month, reporter=reporter) \
        if campaign.responses_exist(db, month) else None
    churn = evaluate.evaluate_churn(db, month, reporter=reporter) if evaluate.next_month_loaded(db, month) else None
    return MonthEvaluation(judged, churn)


def record_evaluation(folder: Path, evaluation: MonthEvaluation) -> None:
    """Add the evaluation's figures to the cycle's manifest.json (rewritten whole, under the folder's
    publish lock): the lists were published before the evaluation could see their contacts."""
    entry = evaluation.manifest_entry()
    path = folder / export.MANIFEST
    if not entry or not path.is_file():
        return
    with folder_lock(folder):
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["evaluation"] = entry
        write_text_file(path, json.dumps(manifest, ensure_ascii=False, indent=2, default=str) + "\n")


def run_pipeline(
    db: Database,
    project: Project,
    month: str,
    *,
    ingest_paths: Sequence[Path | str] | None,
    cycle_date: dt.date,
    out_dir: Path,
    fmt: str | None = None,
    reporter: Reporter = QUIET,
) -> PipelineResult:
    """ingest → score → matrix → plan → export → evaluate for ``month``, each step committing on its own
    (evaluate: the campaigns once something answered the month's lists, the churn model once M+1's
    subscribers are loaded; their figures go into the cycle's manifest.json).

    The project was validated as a whole when it loaded; the salts of the channels this run
    exports are checked here, before the first write (see also :func:`check_before_run`).
    """
    check_before_run(project)
    committed: list[str] = []
    running: list[str] = []  # the step in progress, if any

    def step(name: str, work: Callable[[], T]) -> T:
        """Run one step; each commits on its own, and ``committed`` says which did."""
        running[:] = [name]
        value = work()
        committed.append(name)
        running.clear()
        return value

    try:
        files = 0
        if ingest_paths:
            paths = ingest_paths
            files = len(step("ingest", lambda: ingest.ingest(db, paths, reporter=reporter,
                                                              channel_names=project.channels.names)).files)
            reporter.info(f"ingest: {files} file(s)")
        scored = step("score", lambda: view.score(db, project, month, reporter=reporter, summary=False))
        reporter.info(f"score: {scored.rows:,} customers")
        matrix = step("matrix", lambda: matrices.evaluate(db, project, month, reporter=reporter))
        reporter.info(f"matrix: {matrix.rows:,} recommendations for {matrix.customers:,} customers")
        planned = step("plan", lambda: plan.plan(db, project, month, reporter=reporter))
        reporter.info(f"plan: {planned.rows:,} plan recommendations for {planned.customers:,} customers")
        exported = step("export", lambda: export.run_export(db, project, month, out_dir=out_dir,
                                                            cycle_date=cycle_date, fmt=fmt, reporter=reporter))
        doc = export.funnel_document(db.c, month, cycle_date,
                                     channels=[ch.channel for ch in exported.channels if ch.path is not None])
        evaluation = step("evaluate", lambda: evaluate_month(db, project, month, reporter=reporter))
        if exported.folder is not None:
            record_evaluation(exported.folder, evaluation)
    except Interrupted as exc:  # export had committed: keep its note, add the steps before it
        raise Interrupted(_interrupted_note(committed, running, exc.note)) from None
    except (KeyboardInterrupt, duckdb.InterruptException) as exc:
        raise Interrupted(_interrupted_note(committed, running, None)) from exc
    except RuntimeError as exc:  # DuckDB may report a Ctrl-C as RuntimeError('Query interrupted')
        if "interrupted" not in str(exc).lower():
            raise
        raise Interrupted(_interrupted_note(committed, running, None)) from exc
    return PipelineResult(
        month=month, ingested_files=files, customers=scored.rows, recommendations=matrix.rows,
        plan_customers=planned.customers, exported={ch.channel: ch.rows for ch in exported.channels},
        out_dir=exported.folder, funnels=doc["funnels"], evaluation=evaluation,
    )


def check_before_run(project: Project) -> None:
    """What `run` refuses before opening the database: a channel it exports without its hash salt.

    (Every rule file was validated when the project loaded.) ``run`` exports every channel.
    """
    project.require_salts()


def _interrupted_note(committed: list[str], running: list[str], running_note: str | None) -> str:
    """What a Ctrl-C leaves: the steps committed before it, the fate of the one running, the ones not run."""
    done_or_running = set(committed) | set(running)
    later = [s for s in STEPS if s not in done_or_running and STEPS.index(s) > max(
        (STEPS.index(x) for x in done_or_running), default=-1)]
    parts = [f"Interrupted during {running[0]}." if running else
             (f"Interrupted after {committed[-1]}." if committed else "Interrupted.")]
    if committed:
        parts.append(f"Committed before it: {', '.join(committed)} (their results are in the database).")
    else:
        parts.append("Nothing was committed.")
    if running:
        parts.append(running_note
                     or f"{running[0]} was interrupted before it finished (a step commits all or nothing).")
    if later:
        parts.append(f"Not run: {', '.join(later)}. Re-run `mktool run` to finish.")
    return " ".join(parts)


# -- a whole month in a temporary place (shared by `mktool snapshot` and `mktool diff`) ------------------
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
    """The target lists of one cycle folder (<out>/<month>/<cycle-date>/): every csv / parquet / jsonl file."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in LIST_SUFFIXES and not p.name.startswith("."))


# -- one month through the whole pipeline, in a temporary place ----------------------------------------
@dataclass
class MonthRun:
    """What one temporary run left behind (valid inside :func:`temporary_run`)."""

    month: str
    cycle_date: dt.date
    db_path: Path
    out_dir: Path  # the cycle folder <out>/<month>/<cycle-date>/: the lists, funnel.json, manifest.json
    matrices_dir: Path


@contextlib.contextmanager
def temporary_run(month: str, matrices_dir: Path, *, fixtures: Path | None = None, source_db: Path | None = None,
                  cycle_date: dt.date | None = None, settings: Settings | None = None, reporter: Reporter = QUIET,
                  label: str = "run", project: Project | None = None) -> Iterator[MonthRun]:
    """Run ingest (from ``fixtures``) or copy ``source_db``, then score → matrix → plan → export.

    ``project`` is the folder's project when the caller has loaded it already (else it is loaded here).

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
        project = project or load_project(Path(matrices_dir))
        check_before_run(project)
        if source_db is not None:
            copy_database(source_db, db_path, base)
        with Database(run_settings, write=True) as db:
            run_pipeline(db, project, month,
                         ingest_paths=[Path(fixtures)] if fixtures is not None else None,
                         cycle_date=cycle_date, out_dir=tmpdir / "out", reporter=reporter)
        yield MonthRun(month, cycle_date, db_path, export.cycle_folder(tmpdir / "out", month, cycle_date),
                       Path(matrices_dir))


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
