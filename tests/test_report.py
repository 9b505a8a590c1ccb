"""`mktool report` and the report.html `mktool run` writes (issue 15, report-definitions §3).

Two databases are built once for the module from the bundled fixtures, in-process:

* ``full``: every extract (responses and orders dated from the cycle, M+1's subscribers), by
  `mktool run`, which writes report.html into the cycle folder;
* ``bare``: the extracts without any file of 2026-11 and without orders (no responses, no M+1): its first run finds
  report.html taken by a folder (the report fails; the lists must not), its second runs with
  --no-report, then `mktool report` writes the page whose sections say what to load.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from conftest import FIXTURES, MATRICES, D, M, edit
from typer.testing import CliRunner

from mktool import report
from mktool.cli import app
from mktool.config import Settings
from mktool.database import Database
from mktool.project import load_project

RUN_ENV = {"NO_COLOR": "1", "MKTOOL_THREADS": "2", "MKTOOL_MEMORY_LIMIT": "1GB", "MKTOOL_OUT": None,
           "MKTOOL_DB": None, "MKTOOL_MATRICES": None}
SECTION_IDS = ["provenance", "funnels", "distributions", "profile", "rules", "plan-sweep", "evaluation", "churn",
               "factors"]


@dataclass
class Built:
    root: Path
    db: Path
    out: Path
    run_stdout: str
    run_stderr: str

    @property
    def cycle(self) -> Path:
        return self.out / M / D


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=RUN_ENV)
    return result.exit_code, result.stdout, result.stderr


def _run(root: Path, *extra: str) -> tuple[int, str, str]:
    return _invoke("run", "--month", M, "--date", D, "--db", str(root / "mk.duckdb"), "--matrices", str(MATRICES),
                   "--out", str(root / "out"), *extra)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("report-full")
    code, out, err = _run(root, "--ingest", str(FIXTURES))
    assert code == 0, err
    return Built(root, root / "mk.duckdb", root / "out", out, err)


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("report-bare")
    extracts = root / "extracts"
    extracts.mkdir()
    for f in FIXTURES.glob("*.parquet"):
        if "2026-11" not in f.name and not f.name.startswith("orders"):  # orders.parquet has November's too
            shutil.copy(f, extracts / f.name)
    (root / "out" / M / D / report.REPORT_FILE).mkdir(parents=True)  # the report cannot be written there
    code, out, err = _run(root, "--ingest", str(extracts))
    assert code == 0, err
    failed = err
    (root / "out" / M / D / report.REPORT_FILE).rmdir()
    code, out, err = _run(root, "--no-report")
    assert code == 0, err
    return Built(root, root / "mk.duckdb", root / "out", out, failed)


_PAGES: dict[Path, str] = {}


def _page(built: Built) -> str:
    """The page `mktool report --out -` prints for the built database (built once per database)."""
    if built.db not in _PAGES:
        _PAGES[built.db] = _fresh_page(built)
    return _PAGES[built.db]


def _fresh_page(built: Built, *args: str) -> str:
    code, out, err = _invoke("report", "--month", M, "--db", str(built.db), "--matrices", str(MATRICES),
                             "--lists", str(built.out), "--out", "-", *args)
    assert code == 0, err
    return out


def _section(page: str, sid: str) -> str:
    found = re.findall(rf'<section id="{re.escape(sid)}">(.*?)</section>', page, re.S)
    assert len(found) == 1, f"section {sid}: {len(found)} found"
    return found[0]


def _charts(page: str) -> dict[str, str]:
    """data-chart name → the figure's markup."""
    found = re.findall(r'<figure class="chart" data-chart="([^"]*)">(.*?)</figure>', page, re.S)
    return {html.unescape(name): body for name, body in found}


def _texts(svg: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


def _query(db: Path, sql: str, params: list[object] | None = None) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


# -- the full month ---------------------------------------------------------------------------------
def test_run_writes_the_report_beside_the_lists_and_the_manifest_does_not_list_it(full: Built) -> None:
    written = full.cycle / report.REPORT_FILE
    assert written.is_file()
    manifest = json.loads((full.cycle / "manifest.json").read_text(encoding="utf-8"))
    assert report.REPORT_FILE not in manifest["outputs"]
    assert all(name.split(".")[-1] in ("csv", "jsonl", "parquet") for name in manifest["outputs"])
    assert f"report {written}" in full.run_stderr


def test_the_report_of_run_is_the_report_of_the_command_byte_for_byte(full: Built) -> None:
    """Deterministic: no clock, and the renderer's per-process SVG ids are renumbered per chart."""
    again = _page(full)
    assert again == (full.cycle / report.REPORT_FILE).read_text(encoding="utf-8")
    assert _fresh_page(full) == again
    ids = re.findall(r'\bid="([^"]*)"', again)
    assert len(ids) == len(set(ids)), "an SVG id is used twice on the page"


def test_every_section_is_there_in_order_with_its_charts(full: Built) -> None:
    page = _page(full)
    assert re.findall(r'<section id="([^"]*)">', page) == SECTION_IDS
    charts = _charts(page)
    funnels = [r[0] for r in _query(full.db, "SELECT DISTINCT funnel FROM funnel_counts WHERE month = ?", [M])]
    assert len(funnels) == 18  # plan, 5 matrices + priority, 6 channels, 6 response funnels
    expected = {f"funnel:{f}" for f in funnels} | {"distribution:value_tier", "distribution:stickiness_tier",
                                                   "distribution:segment", "plan-sweep", "uplift", "churn-gains"}
    expected |= {f"rules:{m}" for m in ("priority", "retention", "new_service", "traffic", "vnet")}
    expected |= {"profile:arpu", "profile:churn"} | {f"factors:{c}" for c in ("under_6m", "6_12m", "over_12m")}
    assert expected <= set(charts)
    assert all("<svg" in body for body in charts.values())
    for sid in SECTION_IDS:
        assert 'class="missing"' not in _section(page, sid), sid


def test_funnel_charts_show_the_recorded_stage_counts_as_text(full: Built) -> None:
    charts = _charts(_page(full))
    rows = _query(full.db, "SELECT funnel, stage, count FROM funnel_counts WHERE month = ? ORDER BY funnel, stage_no",
                  [M])
    by_funnel: dict[str, list[tuple[str, int]]] = {}
    for funnel, stage, n in rows:
        by_funnel.setdefault(funnel, []).append((stage, n))
    for funnel, stages in by_funnel.items():
        texts = _texts(charts[f"funnel:{funnel}"])
        labels = [t for t in texts if t.replace(",", "").isdigit()]
        assert labels == [f"{n:,}" for _, n in stages], funnel  # every count, in stage order, as the terminal shows it
        assert [s for s, _ in stages] == [t for t in texts if not t.replace(",", "").isdigit()], funnel
    assert "1,866" in _texts(charts["funnel:channel:frontdesk"])  # thousands separators


def test_summary_at_the_top_has_the_month_figures(full: Built) -> None:
    page = _page(full)
    summary = page.split('<section id="summary"', 1)[1].split("</section>", 1)[0]
    tiles = dict(re.findall(r'<div class="label">([^<]*)</div><div class="value">([^<]*)</div>', summary))
    customers = _query(full.db, "SELECT count(*) FROM customer_view WHERE month = ?", [M])[0][0]
    offers = _query(full.db, "SELECT count(*) FROM recommendations WHERE month = ?", [M])[0][0]
    doc = json.loads(_query(full.db, "SELECT document FROM campaign_evaluation WHERE month = ?", [M])[0][0])
    churn = json.loads(_query(full.db, "SELECT document FROM churn_evaluation WHERE month = ?", [M])[0][0])
    manifest = json.loads((full.cycle / "manifest.json").read_text(encoding="utf-8"))
    assert tiles["Customers scored"] == f"{customers:,}" == "2,000"
    assert tiles["Offers"] == f"{offers:,}"
    assert tiles["List rows"] == f"{sum(e['rows'] for e in manifest['outputs'].values()):,}"
    assert tiles["Orders"] == f"{doc['total']['ordered']:,}"
    assert tiles["Uplift"] == f"{doc['total']['uplift'] * 100:+.2f} pts"
    flag = churn["flag"]
    assert tiles["Churn flag"] == f"{flag['precision'] * 100:.1f}% / {flag['recall'] * 100:.1f}%"
    title = re.search(r"<h1>([^<]*)</h1>", page).group(1)  # type: ignore[union-attr]
    assert title == f"Marketing run {M} · cycle {D} · run {manifest['run_id']}"


def test_provenance_is_the_manifest(full: Built) -> None:
    manifest = json.loads((full.cycle / "manifest.json").read_text(encoding="utf-8"))
    section = _section(_page(full), "provenance")
    for value in (manifest["run_id"], manifest["created_at"]):
        assert f"<td>{html.escape(value)}</td>" in section
    assert f"duckdb {manifest['engines']['duckdb']}" in section
    assert "sms.csv" in section and f"{manifest['outputs']['sms.csv']['rows']:,}" in section


def test_rule_hits_flag_a_rule_with_no_hit(full: Built, tmp_path: Path) -> None:
    """A rule whose recorded hits are 0 (crafted: the copy's rule_hits says so) is flagged, the rest not."""
    db = tmp_path / "zero.duckdb"
    shutil.copy(full.db, db)
    con = duckdb.connect(str(db))
    con.execute("UPDATE rule_hits SET hits = 0 WHERE month = ? AND rule_id = 'R10'", [M])
    con.close()
    section = _section(_build(db, full.out), "rules")
    flagged = re.findall(r'<tr class=flag><td class=num>\d+</td><td>([^<]*)</td>', section)
    assert flagged == ["R10"]
    assert "1 rule had no hit in 2026-10" in section


def test_plan_sweep_marks_plan_yaml_windows(full: Built) -> None:
    svg = _charts(_page(full))["plan-sweep"]
    texts = _texts(svg)
    plan_customers = _query(full.db, "SELECT count(DISTINCT msisdn) FROM plan_recommendations WHERE month = ?",
                            [M])[0][0]
    assert f"{plan_customers:,}" in texts  # plan.yaml's windows (0.6:1.5 × 1.0:2.0) targeted the stored plan
    assert "0.6:1.5" in texts and "1.0:2.0" in texts
    assert svg.count('stroke="#d35400"') == 1  # one outlined cell


def test_no_msisdn_and_no_network_reference_anywhere(full: Built) -> None:
    page = _page(full)
    for (msisdn,) in _query(full.db, "SELECT msisdn FROM customer_view WHERE month = ?", [M]):
        assert msisdn not in page
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<script|<link|<img|<iframe|<object|<embed|@import|\bsrc\s*=", page, re.I)
    assert re.findall(r"url\(([^)]*)\)", page) == [u for u in re.findall(r"url\(([^)]*)\)", page) if u.startswith("#")]
    assert not re.search(r'href="(?!#)', page)


def test_the_report_reads_and_never_writes_the_database(full: Built, tmp_path: Path) -> None:
    before = hashlib.sha256(full.db.read_bytes()).hexdigest()
    code, _, err = _invoke("report", "--month", M, "--db", str(full.db), "--matrices", str(MATRICES),
                           "--lists", str(full.out), "--out", str(tmp_path / "r.html"))
    assert code == 0, err
    assert hashlib.sha256(full.db.read_bytes()).hexdigest() == before
    assert (tmp_path / "r.html").read_text(encoding="utf-8") == _page(full)


# -- hostile names ----------------------------------------------------------------------------------
def _build(db: Path, out: Path, matrices: Path = MATRICES) -> str:
    settings = Settings(db_path=db, matrices_dir=matrices, memory_limit="1GB", threads=2)
    with Database(settings, write=False) as database:
        return report.build_report(database, load_project(matrices), M, lists_dir=out)


def test_hostile_names_are_escaped_in_tables_and_charts(full: Built, tmp_path: Path) -> None:
    hostile = '<script>&"'
    matrices = tmp_path / "matrices"
    shutil.copytree(MATRICES, matrices)
    edit(matrices / "policies.yaml", "name: 手机报免费体验一个月", f"name: '{hostile}'")
    db = tmp_path / "hostile.duckdb"
    shutil.copy(full.db, db)
    con = duckdb.connect(str(db))
    con.execute("UPDATE customer_view SET segment = ? WHERE month = ? AND segment = 'tidal'", [hostile, M])
    con.execute("UPDATE funnel_counts SET stage = ? WHERE month = ? AND funnel = 'plan' AND stage = 'active'",
                [hostile, M])
    con.close()
    page = _build(db, full.out, matrices)
    assert "<script" not in page.lower()
    escaped = html.escape(hostile, quote=True)
    assert escaped in _section(page, "rules")  # the policy name in the rule table
    charts = _charts(page)
    assert hostile in _texts(charts["distribution:segment"])  # drawn as text, escaped in the SVG
    assert hostile in _texts(charts["funnel:plan"])


# -- a month without responses and without M+1 -------------------------------------------------------
def test_a_failing_report_leaves_the_run_and_its_lists_delivered(bare: Built) -> None:
    assert "report.html was not written" in bare.run_stderr
    assert "The lists are delivered" in bare.run_stderr
    assert f"mktool report --month {M} --lists {bare.out} --cycle {D}" in bare.run_stderr
    manifest = json.loads((bare.cycle / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["outputs"] and all((bare.cycle / name).is_file() for name in manifest["outputs"])


def test_no_report_writes_none(bare: Built) -> None:
    assert not (bare.cycle / report.REPORT_FILE).exists()


def test_missing_data_keeps_every_section_and_says_what_to_load(bare: Built) -> None:
    page = _page(bare)
    assert re.findall(r'<section id="([^"]*)">', page) == SECTION_IDS
    evaluation = _section(page, "evaluation")
    assert ('<p class="missing">No responses for 2026-10&#x27;s lists yet: ingest contact_history and orders dated '
            "from 2026-11-01, then run `mktool evaluate --month 2026-10`.</p>") in evaluation
    churn = _section(page, "churn")
    assert '<p class="missing">2026-11&#x27;s subscribers are not loaded' in churn
    assert "mktool ingest subscribers_2026-11.parquet" in churn
    assert "No responses for 2026-10" in _section(page, "funnels")  # the response funnels
    factors = _section(page, "factors")
    assert ('<p class="missing">2026-11&#x27;s subscribers are not loaded, so there is no churn label to rank '
            "factors by: ingest them (`mktool ingest subscribers_2026-11.parquet`)") in factors
    profile = _section(page, "profile")  # the profile is there, its churn column empty and why
    assert '<p class="missing">2026-11&#x27;s subscribers are not loaded, so the churn fields are empty' in profile
    assert "<td>potential</td>" in profile
    for sid in ("provenance", "distributions", "rules", "plan-sweep"):
        assert 'class="missing"' not in _section(page, sid), sid
    charts = _charts(page)
    assert {"uplift", "churn-gains", "profile:churn"}.isdisjoint(charts) and "profile:arpu" in charts
    assert not any(name.startswith("factors:") for name in charts)


def test_without_a_published_cycle_the_report_goes_here_and_says_so(bare: Built, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _invoke("report", "--month", M, "--db", str(bare.db), "--matrices", str(MATRICES),
                           "--lists", str(tmp_path / "nothing"))
    assert code == 0, err
    page = (tmp_path / f"report-{M}.html").read_text(encoding="utf-8")
    assert "No published cycle of 2026-10" in _section(page, "provenance")
    assert "funnel:channel:sms" in _charts(page)  # the newest cycle recorded in funnel_counts


def test_a_cycle_that_is_not_published_is_refused(bare: Built) -> None:
    code, _, err = _invoke("report", "--month", M, "--db", str(bare.db), "--matrices", str(MATRICES),
                           "--lists", str(bare.out), "--cycle", "2026-11-05", "--out", "-")
    assert code == 1
    assert "no published cycle 2026-11-05 of 2026-10" in err and D in err


def test_report_help_has_examples() -> None:
    code, out, _ = _invoke("report", "--help")
    assert code == 0
    assert "mktool report --month 2026-10 --out - > report.html" in out
    code, out, _ = _invoke("run", "--help")
    assert "--no-report" in out


def test_profile_and_factors_sections_show_the_commands_figures(full: Built) -> None:
    """The sections are `mktool profile --by segment` and `mktool factors --top 10`, read back from their json."""
    page = _page(full)
    common = ["--month", M, "--db", str(full.db), "--matrices", str(MATRICES), "--format", "json"]
    code, out, err = _invoke("profile", *common)
    assert code == 0, err
    profile = json.loads(out)
    section = _section(page, "profile")
    for row in profile["rows"]:
        cells = re.search(rf"<tr[^>]*><td>{re.escape(row['segment'])}</td>(.*?)</tr>", section)
        assert cells is not None, row["segment"]
        values = re.findall(r"<td class=num>([^<]*)</td>", cells.group(1))
        assert values[0] == f"{row['customers']:,}"
        assert values[2] == f"{row['arpu_mean']:.2f}"
        assert values[-1] == f"{Decimal(str(row['churn_rate'])) * 100:.2f}%"
    code, out, err = _invoke("factors", *common, "--top", "10")
    assert code == 0, err
    ranking = json.loads(out)
    section = _section(page, "factors")
    charts = _charts(page)
    for cohort in ranking["cohorts"]:
        names = [f["factor"] for f in cohort["factors"]]
        shown = [t for t in _texts(charts[f"factors:{cohort['cohort']}"]) if not t.replace(".", "").isdigit()]
        assert shown == names
        for f in cohort["factors"]:
            gain = f"{f['information_gain']:.6f}"
            assert f"<td>{f['factor']}</td><td>{f['kind']}</td><td class=num>{gain}</td>" in section


def test_an_empty_database_still_has_every_section_each_saying_what_to_run(tmp_path: Path) -> None:
    db = tmp_path / "empty.duckdb"
    duckdb.connect(str(db)).close()
    code, page, err = _invoke("report", "--month", M, "--db", str(db), "--matrices", str(MATRICES),
                              "--lists", str(tmp_path / "out"), "--out", "-")
    assert code == 0, err
    assert "2026-10 is not scored (customer_view has no rows for it)" in err  # a typo'd --month is noticed
    assert re.findall(r'<section id="([^"]*)">', page) == SECTION_IDS
    expected = {"provenance": "mktool run --month 2026-10", "funnels": "No funnels recorded for 2026-10",
                "distributions": "mktool score --month 2026-10", "profile": "mktool score --month 2026-10",
                "rules": "mktool matrix --month 2026-10", "plan-sweep": "mktool score --month 2026-10",
                "evaluation": "mktool evaluate --month 2026-10", "churn": "subscribers_2026-11.parquet",
                "factors": "subscribers_2026-11.parquet"}
    for sid, text in expected.items():
        messages = re.findall(r'<p class="missing">([^<]*)</p>', _section(page, sid))
        assert any(text in m for m in messages), (sid, messages)
    assert _charts(page) == {}
