"""The report as a browser draws it: Debian's headless Chromium driven by Playwright (issue 15).

The page must open from a file with every network request blocked (and recorded: any request
other than the report itself fails the test), draw every chart with a non-zero size, and show
each recorded funnel's stage counts as text. A full-page screenshot is kept under tmp_path and
copied to $MKTOOL_REPORT_SCREENSHOT when that is set (to look at it).

Chromium comes from Debian's ``chromium`` package: when /usr/bin/chromium is absent and the tests
run as root where apt-get exists, the session installs it (bounded by a timeout); otherwise, or
when the install fails, the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import FIXTURES, MATRICES, D, M
from typer.testing import CliRunner

from mktool.cli import app
from mktool.report import REPORT_FILE

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
INSTALL_TIMEOUT = 900  # seconds; measured: 13 s with the package lists present
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
RUN_ENV = {"NO_COLOR": "1", "MKTOOL_THREADS": "2", "MKTOOL_MEMORY_LIMIT": "1GB", "MKTOOL_OUT": None,
           "MKTOOL_DB": None, "MKTOOL_MATRICES": None}


def _apt(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_chromium() -> Path | str:
    """/usr/bin/chromium, installed when absent and possible; else why it is not there (the skip reason)."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        return "chromium is not installed (/usr/bin/chromium) and there is no apt-get to install it"
    if os.geteuid() != 0:
        return "chromium is not installed (/usr/bin/chromium) and installing it needs root: apt-get install chromium"
    try:
        done = _apt(INSTALL)
        if done.returncode != 0:  # e.g. no package lists yet in a fresh container
            _apt(["apt-get", "update"])
            done = _apt(INSTALL)
    except subprocess.TimeoutExpired:
        return f"installing chromium took longer than {INSTALL_TIMEOUT} s: {' '.join(INSTALL)}"
    if done.returncode != 0 or not CHROMIUM.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"{' '.join(INSTALL)} failed (exit {done.returncode}): {tail[0]}"
    return CHROMIUM


@pytest.fixture(scope="session")
def chromium() -> Path:
    found = ensure_chromium()
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the report `mktool run` wrote for the fixtures, its database)."""
    root = tmp_path_factory.mktemp("report-browser")
    result = CliRunner().invoke(app, ["run", "--month", M, "--date", D, "--ingest", str(FIXTURES),
                                      "--db", str(root / "mk.duckdb"), "--matrices", str(MATRICES),
                                      "--out", str(root / "out")], env=RUN_ENV)
    assert result.exit_code == 0, result.stderr
    return root / "out" / M / D / REPORT_FILE, root / "mk.duckdb"


def test_the_report_in_chromium(chromium: Path, built: tuple[Path, Path], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the test extra's playwright is not installed")
    report, db = built
    url = report.resolve().as_uri()
    requests: list[str] = []

    def route(r: Any) -> None:
        if r.request.url == url:
            r.continue_()
        else:
            requests.append(r.request.url)
            r.abort()

    shot = tmp_path / "report.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", route)
            page.goto(url, wait_until="load")
            page.screenshot(path=str(shot), full_page=True)
            charts = page.query_selector_all("figure.chart")
            names = [c.get_attribute("data-chart") for c in charts]
            empty = []
            for name, chart in zip(names, charts):
                box = chart.bounding_box()
                svg = chart.query_selector("svg")
                svg_box = svg.bounding_box() if svg else None
                if not box or not svg_box or min(box["width"], box["height"], svg_box["width"],
                                                 svg_box["height"]) <= 0:
                    empty.append(name)
            shown = {}
            for name, chart in zip(names, charts):
                if name and name.startswith("funnel:"):
                    shown[name] = [(t.text_content(), (t.bounding_box() or {}).get("width", 0))
                                   for t in chart.query_selector_all("svg text")]
        finally:
            browser.close()
    if os.environ.get("MKTOOL_REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["MKTOOL_REPORT_SCREENSHOT"])
    assert requests == [], f"the report made requests: {requests}"
    assert shot.stat().st_size > 10_000
    assert len(names) >= 20 and empty == [], f"charts drawn without a size: {empty}"
    con = duckdb.connect(str(db), read_only=True)
    try:
        recorded = con.execute("SELECT funnel, count FROM funnel_counts WHERE month = ? ORDER BY funnel, stage_no",
                               [M]).fetchall()
    finally:
        con.close()
    funnels: dict[str, list[str]] = {}
    for funnel, n in recorded:
        funnels.setdefault(funnel, []).append(f"{n:,}")
    assert len(funnels) == 18
    for funnel, counts in funnels.items():
        texts = shown[f"funnel:{funnel}"]
        labels = [text for text, _ in texts if text and text.replace(",", "").isdigit()]
        assert labels == counts, funnel
        assert all(width > 0 for text, width in texts if text in counts), f"{funnel}: a count is not drawn"
