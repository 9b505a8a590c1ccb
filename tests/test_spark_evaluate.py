"""`mktool evaluate` (campaign and churn, every output format) and `mktool report` give DuckDB's results
on Spark (issue 16), after the fixtures' month through export (tests/spark_month.py, built once).

Each command runs once per engine, in this module's fixture, on a private copy of the month; the tests
compare what each wrote: the tables printed, the JSON and CSV files, the stored evaluations (every column
but the run's id, time, view build id and command line) and the report's page (masked as
:func:`masked_report` says).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import spark_month
from conftest import M, MonthRun
from typer.testing import Result

from mktool.campaign import CAMPAIGN_EVALUATION_TABLE
from mktool.config import Settings
from mktool.database import Database
from mktool.evaluate import CHURN_EVALUATION_TABLE

#: name → the evaluate arguments (each subcommand in each format, as `mktool evaluate --help` shows them); the
#: file a command writes is named by its --out, ``{out}`` being the engine's folder.
COMMANDS: dict[str, tuple[str, ...]] = {
    "campaign_table": ("evaluate", "--month", M),
    "campaign_by_json": ("evaluate", "campaign", "--month", M, "--by", "policy_id,channel", "--window", "14",
                         "--format", "json", "--out", "{out}/campaign_by.json"),
    "campaign_segment_csv": ("evaluate", "--month", M, "--by", "segment", "--format", "csv",
                             "--out", "{out}/campaign_segment.csv"),
    "churn_table": ("evaluate", "churn", "--month", M),
    "churn_by_json": ("evaluate", "churn", "--month", M, "--by", "tenure_cohort", "--format", "json",
                      "--out", "{out}/churn_by.json"),
    "churn_csv": ("evaluate", "churn", "--month", M, "--format", "csv", "--out", "{out}/churn.csv"),
}
#: Refused alike: no cycle exported in August; churn of November needs December's subscribers.
REFUSED = {
    "campaign_no_cycle": ("evaluate", "campaign", "--month", "2026-08"),
    "churn_no_next_month": ("evaluate", "churn", "--month", "2026-11"),
}
#: What two runs of one evaluation may differ in: which run, when, on which build of the view, started how.
_RUN_COLUMNS = ("run_id", "created_at", "view_build", "command_line")


class Runs:
    def __init__(self, site: spark_month.Site) -> None:
        self.site = site
        self.results: dict[str, dict[str, Result]] = {}

    def files(self, name: str) -> dict[str, bytes]:
        return {engine: (self.site.out(engine) / name).read_bytes() for engine in spark_month.ENGINES}


@pytest.fixture(scope="module")
def runs(fixtures_month: MonthRun, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    month = spark_month.fixtures_month(fixtures_month, tmp_path_factory)
    site = spark_month.copy_of(month, tmp_path_factory.mktemp("spark-evaluate") / "site")
    out = Runs(site)
    for name, args in COMMANDS.items():
        out.results[name] = {}
        for engine in spark_month.ENGINES:
            argv = [a.replace("{out}", str(site.out(engine))) for a in args]
            result = site.mktool(engine, *argv)
            assert result.exit_code == 0, (name, engine, result.output)
            out.results[name][engine] = result
    for name, args in REFUSED.items():
        out.results[name] = {engine: site.mktool(engine, *args) for engine in spark_month.ENGINES}
    out.results["report"] = {engine: site.mktool(engine, "report", "--month", M, "--lists", str(site.out(engine)),
                                                 "--out", str(site.out(engine) / "report.html"))
                             for engine in spark_month.ENGINES}
    return out


def test_campaign_and_churn_print_and_write_the_same_bytes(runs: Runs) -> None:
    for name in COMMANDS:
        duck, spark = (runs.results[name][e] for e in spark_month.ENGINES)
        assert spark.stdout == duck.stdout, name
    assert "PLAN_CHANGE" in runs.results["campaign_table"]["duckdb"].stdout  # a real table, not an empty one
    for name in ("campaign_by.json", "campaign_segment.csv", "churn_by.json", "churn.csv"):
        files = runs.files(name)
        assert files["spark"] == files["duckdb"], name
    doc = json.loads(runs.files("campaign_by.json")["duckdb"])
    assert doc["total"]["contacted"] > 1000 and doc["total"]["held_out"] > 10, doc["total"]
    assert json.loads(runs.files("churn_by.json")["duckdb"])["churned"] > 0


def test_refusals_say_the_same(runs: Runs) -> None:
    for name in REFUSED:
        duck, spark = (runs.results[name][e] for e in spark_month.ENGINES)
        assert duck.exit_code != 0, (name, duck.output)
        assert (spark.exit_code, spark.output) == (duck.exit_code, duck.output), name


def _stored(site: spark_month.Site, engine: str, table: str) -> list[tuple[Any, ...]]:
    settings = (Settings(db_path=site.db()) if engine == "duckdb" else
                Settings(db_path=site.root / "unused.duckdb", engine="spark", warehouse=str(site.warehouse())))
    with Database(settings, write=False) as db:
        columns = [c for c in db.columns(table) if c not in _RUN_COLUMNS]
        rows = db.c.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
    return sorted(rows, key=repr)


def test_the_stored_evaluations_and_response_funnels_are_the_same(runs: Runs) -> None:
    site = runs.site
    for table, count in ((CAMPAIGN_EVALUATION_TABLE, 3), (CHURN_EVALUATION_TABLE, 3)):
        duck = _stored(site, "duckdb", table)
        assert len(duck) == count, table
        assert _stored(site, "spark", table) == duck, table
    # evaluate refreshes the month's response funnels: the same rows on both engines
    funnels = {e: _stored(site, e, "funnel_counts") for e in spark_month.ENGINES}
    assert funnels["spark"] == funnels["duckdb"]
    assert any("response" in str(r) for r in funnels["duckdb"]), funnels["duckdb"][:5]


#: What two reports of the same month may differ in, each masked where it appears (and nowhere else):
#: the export's and the evaluations' run ids and the times they were made, the command
#: line that made the cycle (a --db or a --warehouse), the engine's name and version in "versions",
#: and the engine's folder (see spark_month.Site.mask).
def masked_report(site: spark_month.Site, engine: str, html: str, ids: set[str], times: set[str]) -> str:
    text = site.mask(html, engine)
    for value in sorted(ids | times, key=len, reverse=True):
        text = text.replace(value, "<id>" if value in ids else "<time>")
    text = re.sub(r"(<td>command</td><td>)[^<]*", r"\1<command>", text)
    return re.sub(r"(<td>versions</td><td>)[^<]*", r"\1<versions>", text)


def _run_facts(site: spark_month.Site, engine: str) -> tuple[set[str], set[str]]:
    """Every run id and creation time the report can show: the cycle's manifest and the stored evaluations."""
    manifest = json.loads((site.out(engine) / M / "2026-11-01" / "manifest.json").read_text(encoding="utf-8"))
    ids, times = {manifest["run_id"]}, {manifest["created_at"]}
    settings = (Settings(db_path=site.db()) if engine == "duckdb" else
                Settings(db_path=site.root / "unused.duckdb", engine="spark", warehouse=str(site.warehouse())))
    with Database(settings, write=False) as db:
        for table in (CAMPAIGN_EVALUATION_TABLE, CHURN_EVALUATION_TABLE):
            for run_id, created in db.c.execute(f"SELECT run_id, created_at FROM {table}").fetchall():
                ids.add(run_id)
                times.add(created.isoformat(sep=" ", timespec="seconds"))
    return ids, times


def test_the_report_has_the_same_figures(runs: Runs) -> None:
    site = runs.site
    pages = {}
    for engine in spark_month.ENGINES:
        assert runs.results["report"][engine].exit_code == 0, runs.results["report"][engine].output
        html = (site.out(engine) / "report.html").read_text(encoding="utf-8")
        ids, times = _run_facts(site, engine)
        pages[engine] = masked_report(site, engine, html, ids, times)
    assert "uplift" in pages["duckdb"] and "<id>" in pages["duckdb"] and "<command>" in pages["duckdb"]
    if pages["spark"] != pages["duckdb"]:
        duck, spark = pages["duckdb"].splitlines(), pages["spark"].splitlines()
        diff = [(a, b) for a, b in zip(duck, spark) if a != b][:3]
        pytest.fail(f"the reports differ beyond ids, times, command and versions: {diff}")
