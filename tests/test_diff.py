"""`mktool diff`: gained / lost customers per channel and policy, rank changes, funnel deltas.

Folder comparisons are checked on hand-made export folders with hand-computed answers; the
rule-set comparison runs the fixtures with a changed threshold against the shipped rules, and
the --db mode copies the user's database without changing a byte of it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, MATRICES, ROOT, M

from mktool.cli import app
from mktool.diff import (
    DiffResult,
    compare_folders,
    render_csv,
    render_json,
    render_markdown,
)

R6_WHEN = "when: tenure_months > 12 and return_rate > 86 and arpu_3m >= 100 and arpu_3m < 150"


def export_folder(root: Path, name: str, lists: dict[str, list[tuple[str, str, int]]],
                  funnels: dict[str, list[tuple[str, int]]]) -> Path:
    folder = root / name / M
    folder.mkdir(parents=True)
    for channel, rows in lists.items():
        with open(folder / f"{channel}.csv", "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["msisdn", "month", "channel", "rank", "policy_id"])
            for msisdn, policy, rank in rows:
                w.writerow([msisdn, M, channel, rank, policy])
    doc = {"month": M, "funnels": {f: [{"stage": s, "count": n} for s, n in stages] for f, stages in funnels.items()}}
    (folder / "funnel.json").write_text(json.dumps(doc), encoding="utf-8")
    return folder


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    a = export_folder(tmp_path, "a", {
        "outbound": [("13800000001", "P1", 1), ("13800000002", "P1", 1), ("13800000003", "P2", 2)],
        "sms": [("13800000001", "P2", 2)],
    }, {"channel:outbound": [("candidates", 10), ("exported", 3)], "plan": [("base", 100)]})
    b = export_folder(tmp_path, "b", {
        "outbound": [("13800000001", "P1", 2), ("13800000003", "P2", 2), ("13800000004", "P2", 1)],
        "sms": [("13800000001", "P2", 2)],
    }, {"channel:outbound": [("candidates", 12), ("exported", 3)], "plan": [("base", 100)]})
    return a, b


def test_folders_gained_lost_and_rank_changes_by_hand(folders: tuple[Path, Path]) -> None:
    result = compare_folders(*folders)
    assert result.month == M and not result.identical
    # outbound: 13800000002 left, 13800000004 arrived, 13800000001's P1 moved from rank 1 to 2
    assert result.channels == [
        {"channel": "outbound", "customers_before": 3, "customers_after": 3, "rows_before": 3, "rows_after": 3,
         "gained": 1, "lost": 1, "rank_changed": 1},
        {"channel": "sms", "customers_before": 1, "customers_after": 1, "rows_before": 1, "rows_after": 1,
         "gained": 0, "lost": 0, "rank_changed": 0},
    ]
    assert result.policies == [
        {"channel": "outbound", "policy_id": "P1", "customers_before": 2, "customers_after": 1, "gained": 0,
         "lost": 1, "rank_changed": 1},
        {"channel": "outbound", "policy_id": "P2", "customers_before": 1, "customers_after": 2, "gained": 1,
         "lost": 0, "rank_changed": 0},
        {"channel": "sms", "policy_id": "P2", "customers_before": 1, "customers_after": 1, "gained": 0,
         "lost": 0, "rank_changed": 0},
    ]
    moved = [f for f in result.funnels if f["delta"]]
    assert moved == [{"funnel": "channel:outbound", "stage_no": 1, "stage": "candidates", "before": 10, "after": 12,
                      "delta": 2}]


def test_folder_diff_formats(runner, folders: tuple[Path, Path]) -> None:
    a, b = folders
    table = runner.invoke(app, ["diff", str(a), str(b)])
    assert table.exit_code == 0, table.output
    assert "customers +1 / -1 on the channel lists" in table.stdout and "1 rank changes" in table.stdout
    assert "Customers gained and lost by channel and policy" in table.stdout
    assert "Funnel stages that moved" in table.stdout

    js = runner.invoke(app, ["diff", str(a), str(b), "--format", "json"])
    doc = json.loads(js.stdout)
    assert doc["identical"] is False and doc["policies"][0]["policy_id"] == "P1"
    assert js.stdout == runner.invoke(app, ["diff", str(a), str(b), "--format", "json"]).stdout  # stable
    assert list(doc) == sorted(doc) and list(doc["channels"][0]) == sorted(doc["channels"][0])

    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, ["diff", str(a), str(b), "--format", "csv"]).stdout)))
    assert {"section": "policy", "name": "outbound", "item": "P1", "before": "2", "after": "1", "delta": "-1",
            "gained": "0", "lost": "1", "rank_changed": "1"} in rows
    assert {r["section"] for r in rows} == {"channel", "policy", "funnel"}

    md = runner.invoke(app, ["diff", str(a), str(b), "--format", "markdown", "--exit-code"])
    assert md.exit_code == 5
    assert "### mktool diff" in md.stdout and "| outbound | P1 | 2 | 1 | +0 | -1 | 1 |" in md.stdout


def test_identical_folders(runner, folders: tuple[Path, Path]) -> None:
    a, _ = folders
    result = runner.invoke(app, ["diff", str(a), str(a), "--exit-code"])
    assert result.exit_code == 0 and "No differences" in result.stdout


def test_diff_usage_errors(runner, folders: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = folders
    one = runner.invoke(app, ["diff", str(a)])
    assert one.exit_code == 2 and "give two export folders" in one.stderr  # usage errors exit 2, like click's
    parent = runner.invoke(app, ["diff", str(a.parent), str(b)])
    assert parent.exit_code == 1 and "give one of them" in parent.stderr and "2026-10" in parent.stderr
    nothing = runner.invoke(app, ["diff", str(tmp_path / "nope"), str(b)])
    assert nothing.exit_code == 1 and "no export folder at" in nothing.stderr
    month = runner.invoke(app, ["diff", str(a), str(b), "--month", M])
    assert month.exit_code == 2 and "--month only applies with --against-matrices" in month.stderr
    no_month = runner.invoke(app, ["diff", "--against-matrices", str(MATRICES)])
    assert no_month.exit_code == 2 and "needs --month" in no_month.stderr
    fmt = runner.invoke(app, ["diff", str(a), str(b), "--format", "xml"])
    assert fmt.exit_code == 2 and "table, json, csv, markdown" in fmt.stderr


# -- the current rules against another matrices folder ------------------------------------------------------
@pytest.fixture(scope="module")
def threshold_diff(tmp_path_factory):
    """`mktool diff --against-matrices <shipped>` with R6 opened to return rate > 80, on the fixtures."""
    from typer.testing import CliRunner

    changed = tmp_path_factory.mktemp("pr") / "matrices"
    shutil.copytree(MATRICES, changed)
    retention = changed / "retention.yaml"
    retention.write_text(retention.read_text(encoding="utf-8").replace(
        R6_WHEN, R6_WHEN.replace("return_rate > 86", "return_rate > 80")), encoding="utf-8")
    result = CliRunner().invoke(app, ["diff", "--month", M, "--against-matrices", str(MATRICES), "--matrices",
                                      str(changed), "--fixtures", str(FIXTURES), "--format", "json", "--exit-code"])
    return result


def test_against_matrices_shows_the_moved_customers_and_rule_hits(threshold_diff) -> None:
    assert threshold_diff.exit_code == 5, threshold_diff.output
    doc = json.loads(threshold_diff.stdout)
    assert doc["before"] == f"rules in {MATRICES}" and doc["month"] == M
    hits = {r["rule_id"]: r for r in doc["rule_hits"] if r["matrix"] == "retention"}
    assert hits["R6"]["delta"] > 0 and hits["R6"]["delta"] == -hits["R9"]["delta"]
    assert all(r["delta"] == 0 for r in doc["rule_hits"] if r["rule_id"] not in ("R6", "R9"))
    front = {p["policy_id"]: p for p in doc["policies"] if p["channel"] == "frontdesk"}
    # R9's customers move to R6: the front desk offers PREPAY_300_600 instead of PREPAY_200_300
    assert front["PREPAY_300_600"]["gained"] > 0 and front["PREPAY_300_600"]["lost"] == 0
    assert front["PREPAY_200_300"]["lost"] > 0 and front["PREPAY_200_300"]["gained"] == 0
    assert any(n.startswith("cycle date 2026-11-01; data: fixtures") for n in doc["notes"])


def test_rule_diff_renders_for_a_pull_request(threshold_diff) -> None:
    doc = json.loads(threshold_diff.stdout)
    result = DiffResult(**{k: v for k, v in doc.items() if k != "identical"})
    md = render_markdown(result)
    assert "**Rule hits that moved**" in md and "| retention | R6 | PREPAY_300_600 |" in md
    assert render_json(result) == threshold_diff.stdout
    assert "rule_hits,retention,R6," in render_csv(result)


def test_against_matrices_copies_the_users_db_and_never_writes_it(runner, tmp_path: Path) -> None:
    db = tmp_path / "user.duckdb"
    assert runner.invoke(app, ["ingest", str(FIXTURES), "--db", str(db), "-q"]).exit_code == 0
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    result = runner.invoke(app, ["diff", "--month", M, "--against-matrices", str(MATRICES), "--matrices", str(MATRICES),
                                 "--db", str(db), "--exit-code"])
    assert result.exit_code == 0, result.output
    assert "No differences" in result.stdout and f"a copy of {db}" in result.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_against_a_broken_rule_set_names_the_rule(runner, tmp_path: Path) -> None:
    broken = tmp_path / "matrices"
    shutil.copytree(MATRICES, broken)
    retention = broken / "retention.yaml"
    retention.write_text(retention.read_text(encoding="utf-8").replace(R6_WHEN, R6_WHEN.replace("arpu_3m >= 100",
                                                                                               "arpu3m >= 100")),
                         encoding="utf-8")
    result = runner.invoke(app, ["diff", "--month", M, "--against-matrices", str(MATRICES), "--matrices", str(broken),
                                 "--fixtures", str(FIXTURES)])
    assert result.exit_code == 1
    assert f"{retention}:47 @ rules[5].when (rule R6): unknown column 'arpu3m'" in result.stderr


# -- layering: diff and snapshot share mktool.pipeline, neither imports the other ---------------------------------
def test_diff_does_not_depend_on_snapshot() -> None:
    """diff reads lists and runs months through mktool.pipeline; importing it loads no snapshot code."""
    import ast
    import subprocess
    import sys

    code = "import sys, mktool.diff; print('mktool.snapshot' in sys.modules, 'mktool.pipeline' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["False", "True"]
    for name in ("diff", "snapshot", "pipeline"):
        tree = ast.parse((ROOT / "mktool" / f"{name}.py").read_text(encoding="utf-8"))
        inner = [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and n not in tree.body]
        assert inner == [], f"mktool/{name}.py: imports inside functions at lines {inner}"


def test_print_table_shows_brackets_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    """A title, header or cell quoting `[arpu]` (a folder, a policy id) is printed verbatim, numbers right-aligned."""
    from mktool.render import print_table

    print_table("What moved in out[1]", ["what [x]", "before"], [("policy [arpu]", "1,234"), ("[/]", None)],
                numeric=("before",))
    out = capsys.readouterr().out
    assert "What moved in out[1]" in out and "what [x]" in out and "policy [arpu]" in out and "[/]" in out
    assert "\\[" not in out
    row = next(line for line in out.splitlines() if "policy [arpu]" in line)
    header = next(line for line in out.splitlines() if "what [x]" in line)
    assert row.index("1,234") + len("1,234") == header.index("before") + len("before")  # right-aligned
