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
from conftest import FIXTURES, MATRICES, ROOT, D, M, edit, mktool

from mktool.cli import app
from mktool.diff import (
    DiffResult,
    compare_folders,
    headline,
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
         "gained": 1, "lost": 1, "rank_changed": 1, "changed": 0, "changed_columns": {}, "same_bytes": False},
        {"channel": "sms", "customers_before": 1, "customers_after": 1, "rows_before": 1, "rows_after": 1,
         "gained": 0, "lost": 0, "rank_changed": 0, "changed": 0, "changed_columns": {}, "same_bytes": True},
    ]
    assert result.policies == [
        {"channel": "outbound", "policy_id": "P1", "customers_before": 2, "customers_after": 1, "gained": 0,
         "lost": 1, "rank_changed": 1, "changed": 0, "changed_columns": {}},
        {"channel": "outbound", "policy_id": "P2", "customers_before": 1, "customers_after": 2, "gained": 1,
         "lost": 0, "rank_changed": 0, "changed": 0, "changed_columns": {}},
        {"channel": "sms", "policy_id": "P2", "customers_before": 1, "customers_after": 1, "gained": 0,
         "lost": 0, "rank_changed": 0, "changed": 0, "changed_columns": {}},
    ]
    moved = [f for f in result.funnels if f["delta"]]
    assert moved == [{"funnel": "channel:outbound", "stage_no": 1, "stage": "candidates", "before": 10, "after": 12,
                      "delta": 2}]


def test_folder_diff_formats(runner, folders: tuple[Path, Path]) -> None:
    a, b = folders
    table = runner.invoke(app, ["diff", str(a), str(b)])
    assert table.exit_code == 0, table.output
    assert "customers +1 / -1 on the channel lists" in table.stdout and "1 rank changes" in table.stdout
    assert "Offers gained, lost and changed by channel and policy" in table.stdout
    assert "Funnel stages that moved" in table.stdout

    js = runner.invoke(app, ["diff", str(a), str(b), "--format", "json"])
    doc = json.loads(js.stdout)
    assert doc["identical"] is False and doc["policies"][0]["policy_id"] == "P1"
    assert js.stdout == runner.invoke(app, ["diff", str(a), str(b), "--format", "json"]).stdout  # stable
    assert list(doc) == sorted(doc) and list(doc["channels"][0]) == sorted(doc["channels"][0])

    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, ["diff", str(a), str(b), "--format", "csv"]).stdout)))
    assert {"section": "policy", "name": "outbound", "item": "P1", "before": "2", "after": "1", "delta": "-1",
            "gained": "0", "lost": "1", "rank_changed": "1", "changed": "0", "column": ""} in rows
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
    dash = runner.invoke(app, ["diff", str(a), str(b), "--out", "-"])
    assert dash.exit_code == 2 and "--out wants a file name (the rows hold msisdns), not -" in dash.stderr
    folder = runner.invoke(app, ["diff", str(a), str(b), "--out", str(tmp_path)])
    assert folder.exit_code == 1 and f"{tmp_path}: is a folder; --out wants a file name" in folder.stderr


# -- content: rows matched by key and compared column by column --------------------------------------------
LIST_HEADER = ["msisdn", "month", "channel", "rank", "policy_id", "script", "plan_id", "new_total"]


def write_list(folder: Path, channel: str, rows: list[list[str]], header: list[str] = LIST_HEADER) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{channel}.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def content(tmp_path: Path) -> tuple[Path, Path]:
    """frontdesk: one script change, one money + plan change, one rank change, one gained, one lost; sms the same."""
    a, b = tmp_path / "a" / M, tmp_path / "b" / M
    write_list(a, "frontdesk", [
        ["13800000001", M, "frontdesk", "1", "R6P", "预存300元送600元话费", "", ""],
        ["13800000002", M, "frontdesk", "1", "PLAN", "改套餐", "FX88", "88.00"],
        ["13800000003", M, "frontdesk", "1", "R7P", "预缴100元", "", ""],
        ["13800000003", M, "frontdesk", "2", "R6P", "预存300元送600元话费", "", ""],
        ["13800000004", M, "frontdesk", "1", "R7P", "预缴100元", "", ""],
    ])
    write_list(b, "frontdesk", [
        ["13800000001", M, "frontdesk", "1", "R6P", "预存300元送6000元话费", "", ""],
        ["13800000002", M, "frontdesk", "1", "PLAN", "改套餐", "FX128", "128.00"],
        ["13800000003", M, "frontdesk", "2", "R7P", "预缴100元", "", ""],
        ["13800000003", M, "frontdesk", "1", "R6P", "预存300元送600元话费", "", ""],
        ["13800000005", M, "frontdesk", "1", "R7P", "预缴100元", "", ""],
    ])
    for folder in (a, b):
        write_list(folder, "sms", [["13800000009", M, "sms", "1", "R7P", "预缴100元", "", ""]])
    return a, b


def test_script_money_and_plan_changes_are_counted_per_channel_policy_and_column(content) -> None:
    result = compare_folders(*content)
    assert not result.identical
    front = {p["policy_id"]: p for p in result.policies if p["channel"] == "frontdesk"}
    # 13800000001's R6P script 600元 → 6000元: changed (script); 13800000003's R6P moved 2 → 1: rank only.
    assert front["R6P"] == {"channel": "frontdesk", "policy_id": "R6P", "customers_before": 2, "customers_after": 2,
                            "gained": 0, "lost": 0, "rank_changed": 1, "changed": 1, "changed_columns": {"script": 1}}
    # 13800000002's plan FX88 (88.00) → FX128 (128.00): one row, two columns.
    assert front["PLAN"]["changed"] == 1 and front["PLAN"]["changed_columns"] == {"new_total": 1, "plan_id": 1}
    # R7P: 13800000003 rank 1 → 2, 13800000004 lost, 13800000005 gained.
    assert (front["R7P"]["gained"], front["R7P"]["lost"], front["R7P"]["rank_changed"], front["R7P"]["changed"]) == (
        1, 1, 1, 0)
    channel = {c["channel"]: c for c in result.channels}
    assert channel["frontdesk"] == {
        "channel": "frontdesk", "customers_before": 4, "customers_after": 4, "rows_before": 5, "rows_after": 5,
        "gained": 1, "lost": 1, "rank_changed": 2, "changed": 2, "same_bytes": False,
        "changed_columns": {"new_total": 1, "plan_id": 1, "script": 1}}
    assert channel["sms"]["same_bytes"] and channel["sms"]["changed"] == 0
    assert "2 rows changed (new_total 1, plan_id 1, script 1)" in headline(result)


def test_a_script_change_alone_is_not_no_differences(runner, tmp_path: Path) -> None:
    """The issue's case in small: same customers, same ranks, only the script an agent reads aloud changed."""
    a, b = tmp_path / "a" / M, tmp_path / "b" / M
    write_list(a, "frontdesk", [["13800000001", M, "frontdesk", "1", "R6P", "预存300元送600元话费", "", ""]])
    write_list(b, "frontdesk", [["13800000001", M, "frontdesk", "1", "R6P", "预存300元送6000元话费", "", ""]])
    result = runner.invoke(app, ["diff", str(a), str(b), "--exit-code"])
    assert result.exit_code == 5, result.output
    assert "No differences" not in result.stdout and "1 rows changed (script 1)" in result.stdout


def test_out_lists_every_row_gained_lost_and_changed_with_before_and_after(runner, content, tmp_path: Path) -> None:
    a, b = content
    out = tmp_path / "rows.csv"
    result = runner.invoke(app, ["diff", str(a), str(b), "--out", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    # the changed columns in the lists' order (schema.TARGET_COLUMNS)
    assert list(rows[0]) == ["channel", "msisdn", "policy_id", "kind", "rank_before", "rank_after", "changed_columns",
                             "script_before", "script_after", "plan_id_before", "plan_id_after", "new_total_before",
                             "new_total_after"]
    got = [(r["channel"], r["msisdn"], r["policy_id"], r["kind"], r["rank_before"], r["rank_after"],
            r["changed_columns"]) for r in rows]
    assert got == [
        ("frontdesk", "13800000002", "PLAN", "changed", "1", "1", "plan_id;new_total"),
        ("frontdesk", "13800000001", "R6P", "changed", "1", "1", "script"),
        ("frontdesk", "13800000003", "R6P", "rank_changed", "2", "1", ""),
        ("frontdesk", "13800000003", "R7P", "rank_changed", "1", "2", ""),
        ("frontdesk", "13800000004", "R7P", "lost", "1", "", ""),
        ("frontdesk", "13800000005", "R7P", "gained", "", "1", ""),
    ]
    assert (rows[0]["plan_id_before"], rows[0]["plan_id_after"], rows[0]["new_total_before"],
            rows[0]["new_total_after"], rows[0]["script_before"]) == ("FX88", "FX128", "88.00", "128.00", "")
    assert (rows[1]["script_before"], rows[1]["script_after"]) == ("预存300元送600元话费", "预存300元送6000元话费")
    assert "13800000001" not in result.stderr  # the file holds msisdns; the log never does
    assert any(n == f"wrote 6 changed rows to {out}" for n in json.loads(result.stdout)["notes"])

    jsonl = tmp_path / "rows.jsonl"
    assert runner.invoke(app, ["diff", str(a), str(b), "--out", str(jsonl)]).exit_code == 0
    lines = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 6 and lines[0] == {
        "channel": "frontdesk", "msisdn": "13800000002", "policy_id": "PLAN", "kind": "changed", "rank_before": 1,
        "rank_after": 1, "changes": [{"column": "plan_id", "before": "FX88", "after": "FX128"},
                                     {"column": "new_total", "before": "88.00", "after": "128.00"}]}
    assert lines[5]["kind"] == "gained" and lines[5]["changes"] == [] and lines[5]["rank_before"] is None


def test_same_rows_in_other_bytes_are_a_difference_said_as_such(runner, tmp_path: Path) -> None:
    rows = [["13800000001", M, "frontdesk", "1", "R6P", "x", "", ""]]
    a, b = tmp_path / "a" / M, tmp_path / "b" / M
    write_list(a, "frontdesk", rows)
    order = [1, 0, *range(2, len(LIST_HEADER))]  # month before msisdn: the same row, other bytes
    write_list(b, "frontdesk", [[r[i] for i in order] for r in rows], header=[LIST_HEADER[i] for i in order])
    result = compare_folders(a, b)
    assert not result.identical and result.channels[0]["changed"] == 0 and not result.channels[0]["same_bytes"]
    assert any("the list files differ in bytes but no row changed" in n for n in result.notes)
    cli = runner.invoke(app, ["diff", str(a), str(b), "--exit-code"])
    assert cli.exit_code == 5 and "lists that moved: frontdesk (bytes only)" in cli.stdout
    same = runner.invoke(app, ["diff", str(a), str(a.parent.parent / "a" / M), "--exit-code"])
    assert same.exit_code == 0 and "No differences" in same.stdout


def test_a_list_without_policy_id_is_matched_by_msisdn_and_rank(tmp_path: Path) -> None:
    header = ["msisdn", "rank", "script"]
    a, b = tmp_path / "a" / M, tmp_path / "b" / M
    write_list(a, "sms", [["13800000001", "1", "s1"], ["13800000001", "2", "s2"], ["13800000002", "1", "s3"]],
               header=header)
    write_list(b, "sms", [["13800000001", "1", "s1"], ["13800000001", "2", "s2 new"], ["13800000003", "1", "s3"]],
               header=header)
    result = compare_folders(a, b)
    sms = result.channels[0]
    assert (sms["gained"], sms["lost"], sms["changed"], sms["changed_columns"]) == (1, 1, 1, {"script": 1})
    assert result.policies[0]["policy_id"] == "-"
    assert "sms: no policy_id column on both sides: rows matched by msisdn and rank" in result.notes


def test_a_list_on_one_side_only_is_gained_or_lost_whole(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / M, tmp_path / "b" / M
    write_list(a, "frontdesk", [["13800000001", M, "frontdesk", "1", "R6P", "x", "", ""]])
    write_list(b, "frontdesk", [["13800000001", M, "frontdesk", "1", "R6P", "x", "", ""]])
    write_list(b, "inbound", [["13800000001", M, "inbound", "1", "PLAN", "y", "FX88", "88.00"],
                              ["13800000002", M, "inbound", "1", "PLAN", "y", "FX88", "88.00"]])
    result = compare_folders(a, b)
    inbound = next(c for c in result.channels if c["channel"] == "inbound")
    assert (inbound["gained"], inbound["lost"], inbound["rows_before"], inbound["rows_after"],
            inbound["same_bytes"]) == (2, 0, 0, 2, False)
    assert not result.identical


def test_rows_with_the_same_key_are_paired_in_order(tmp_path: Path) -> None:
    """A masked msisdn (138****0001) can repeat: rows of one key are paired by rank, then content."""
    a, b = tmp_path / "a" / M, tmp_path / "b" / M
    write_list(a, "sms", [["138****0001", M, "sms", "1", "P1", "x", "", ""],
                          ["138****0001", M, "sms", "1", "P1", "y", "", ""]])
    write_list(b, "sms", [["138****0001", M, "sms", "1", "P1", "z", "", ""],
                          ["138****0001", M, "sms", "1", "P1", "x", "", ""]])
    sms = compare_folders(a, b).channels[0]  # x-x the same, y-z changed
    assert (sms["gained"], sms["lost"], sms["changed"], sms["changed_columns"]) == (0, 0, 1, {"script": 1})


def test_an_empty_json_lines_list_is_a_list_without_rows(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / M, tmp_path / "b" / M
    a.mkdir(parents=True)
    (a / "app.jsonl").write_text("", encoding="utf-8")
    b.mkdir(parents=True)
    (b / "app.jsonl").write_text(json.dumps({"msisdn": "13800000001", "rank": 1, "policy_id": "P1"}) + "\n",
                                 encoding="utf-8")
    app_list = compare_folders(a, b).channels[0]
    assert (app_list["gained"], app_list["rows_before"], app_list["rows_after"]) == (1, 0, 1)
    assert compare_folders(a, a).identical


# -- the case on the fixtures, as a user runs it ---------------------------------------------------------
R6_SCRIPT = "script: 预存300元送600元话费"


@pytest.fixture(scope="module")
def script_change(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """`mktool run` with the shipped rules and with R6's script 600元 → 6000元: the two export folders."""
    work = tmp_path_factory.mktemp("script")
    changed = work / "matrices"
    shutil.copytree(MATRICES, changed)
    edit(changed / "retention.yaml", R6_SCRIPT, R6_SCRIPT.replace("600元", "6000元"))
    folders = []
    for name, matrices in (("before", MATRICES), ("after", changed)):
        done = mktool("run", "--month", M, "--ingest", str(FIXTURES), "--date", D, "--out", str(work / name),
                      "--db", str(work / f"{name}.duckdb"), "--matrices", str(matrices))
        assert done.returncode == 0, done.stderr
        folders.append(next((work / name).rglob("frontdesk.csv")).parent)  # <out>/<month>[/<cycle-date>]
    return folders[0], folders[1], work


def _r6_rows(folder: Path) -> set[tuple[str, str, str]]:
    """(channel, msisdn, script) of every R6 row of every csv list, read with the csv module."""
    found = set()
    for path in folder.glob("*.csv"):
        with path.open(encoding="utf-8", newline="") as fh:
            found |= {(path.stem, r["msisdn"], r["script"]) for r in csv.DictReader(fh) if r.get("rule_id") == "R6"}
    return found


def test_mktool_diff_reports_r6s_script_change_on_the_fixtures(script_change) -> None:
    before, after, work = script_change
    old = _r6_rows(before)
    assert old and {s for _, _, s in old} == {"预存300元送600元话费"}
    assert _r6_rows(after) == {(c, m, "预存300元送6000元话费") for c, m, _ in old}
    per_channel: dict[str, int] = {}
    for channel, _, _ in old:
        per_channel[channel] = per_channel.get(channel, 0) + 1

    rows_file = work / "changed.csv"
    done = mktool("diff", str(before), str(after), "--format", "json", "--exit-code", "--out", str(rows_file))
    assert done.returncode == 5, done.stderr
    doc = json.loads(done.stdout)
    assert doc["identical"] is False
    moved = {(p["channel"], p["policy_id"]): p for p in doc["policies"] if p["changed"]}
    assert {k: (p["changed"], p["changed_columns"]) for k, p in moved.items()} == {
        (c, "PREPAY_300_600"): (n, {"script": n}) for c, n in per_channel.items()}
    assert all(p["gained"] == p["lost"] == p["rank_changed"] == 0 for p in doc["policies"])
    assert {c["channel"] for c in doc["channels"] if not c["same_bytes"]} == set(per_channel)

    with rows_file.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["channel"], r["msisdn"], r["script_before"], r["script_after"]) for r in rows} == {
        (c, m, s, "预存300元送6000元话费") for c, m, s in old}
    assert {(r["kind"], r["policy_id"], r["changed_columns"]) for r in rows} == {
        ("changed", "PREPAY_300_600", "script")}

    table = mktool("diff", str(before), str(after))
    assert table.returncode == 0 and "No differences" not in table.stdout
    assert f"{len(old):,} rows changed (script {len(old):,})" in table.stdout
    same = mktool("diff", str(before), str(before), "--exit-code")
    assert same.returncode == 0 and "No differences" in same.stdout


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
    moved = changed.parent / "moved.jsonl"
    result = CliRunner().invoke(app, ["diff", "--month", M, "--against-matrices", str(MATRICES), "--matrices",
                                      str(changed), "--fixtures", str(FIXTURES), "--format", "json", "--exit-code",
                                      "--out", str(moved)])
    result.moved = moved  # type: ignore[attr-defined]
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
    # --out with --against-matrices: the rows of the temporary runs, written before they are removed.
    rows = [json.loads(line) for line in threshold_diff.moved.read_text(encoding="utf-8").splitlines()]
    for policy, kind in (("PREPAY_300_600", "gained"), ("PREPAY_200_300", "lost")):
        assert sum(r["channel"] == "frontdesk" and r["policy_id"] == policy and r["kind"] == kind
                   for r in rows) == front[policy][kind]
    assert all(len(r["msisdn"]) == 11 for r in rows) and len(rows) == sum(
        p["gained"] + p["lost"] + p["changed"] + p["rank_changed"] for p in doc["policies"]) - sum(
        1 for r in rows if r["kind"] == "changed" and r["rank_before"] != r["rank_after"])


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
