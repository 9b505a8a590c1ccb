"""The whole month on the bundled fixtures through the CLI, `explain`, and meta-tests that keep the CLI honest."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import duckdb
import pytest
from conftest import FIXTURES, MATRICES, ROOT, M, cycle_dir
from typer.main import get_command
from typer.testing import CliRunner

from mktool.cli import app


@pytest.fixture(scope="module")
def month_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("run")
    db = work / "mk.duckdb"
    result = CliRunner().invoke(app, ["run", "--month", M, "--ingest", str(FIXTURES), "--date", "2026-11-01",
                                      "--out", str(work / "out"), "--db", str(db), "--matrices", str(MATRICES)])
    assert result.exit_code == 0, result.output
    return work, db, result


def test_run_writes_every_channel_and_the_funnels(month_run):
    work, db, result = month_run
    folder = cycle_dir(work / "out")
    names = sorted(p.name for p in folder.iterdir())
    assert "funnel.json" in names and "manifest.json" in names
    assert not [n for n in names if n.startswith(".")], names  # no staging leftovers
    doc = json.loads((folder / "funnel.json").read_text(encoding="utf-8"))
    assert doc["month"] == M
    plan = [s["stage"] for s in doc["funnels"]["plan"]]
    assert plan == ["base", "active", "data_ge_min", "eligible_plan", "billable", "in_rate_window"]
    for name, stages in doc["funnels"].items():
        counts = [s["count"] for s in stages]
        assert counts == sorted(counts, reverse=True), (name, counts)
    con = duckdb.connect(str(db), read_only=True)
    in_window = con.execute("SELECT count(DISTINCT msisdn) FROM plan_recommendations WHERE month = ?",
                            [M]).fetchone()[0]
    assert doc["funnels"]["plan"][-1]["count"] == in_window > 0
    assert doc["funnels"]["plan"][0]["count"] == con.execute(
        "SELECT count(*) FROM subscribers WHERE month = ?", [M]).fetchone()[0]
    assert "done: 2,000 customers scored" in result.stderr


def test_run_evaluates_the_month_and_its_manifest_carries_the_stored_figures(month_run):
    """The fixtures hold November's responses and orders and subscribers: run evaluates the campaigns
    and the churn model after the export, stores both runs, and adds them to the cycle's manifest."""
    work, db, result = month_run
    manifest = json.loads((cycle_dir(work / "out") / "manifest.json").read_text(encoding="utf-8"))
    con = duckdb.connect(str(db), read_only=True)
    stored = {kind: con.execute(f"SELECT run_id, document FROM {kind}_evaluation WHERE month = ?", [M]).fetchall()
              for kind in ("campaign", "churn")}
    assert [len(rows) for rows in stored.values()] == [1, 1]
    for kind, [(run_id, document)] in stored.items():
        assert manifest["evaluation"][kind] == {"run_id": run_id, **json.loads(document)}
    total = manifest["evaluation"]["campaign"]["total"]
    assert total["contacted"] > 0 and total["held_out"] > 0 and total["ordered"] > 0
    assert total["take_up"] > total["take_up_control"]  # the simulated responses follow the lists
    response_funnels = con.execute("SELECT DISTINCT funnel FROM funnel_counts WHERE month = ? AND funnel LIKE "
                                   "'response:%'", [M]).fetchall()
    assert response_funnels and not [f for f in manifest["funnels"] if f.startswith("response:")]
    assert f"Evaluation {M}" in result.stderr and "uplift" in result.stderr
    lists = [p for p in cycle_dir(work / "out").iterdir() if p.suffix == ".csv"]
    manifest_path = cycle_dir(work / "out") / "manifest.json"
    assert {p.stat().st_mode & 0o777 for p in lists} == {manifest_path.stat().st_mode & 0o777}  # rewritten, as readable


def test_run_with_responses_but_no_orders_says_so_instead_of_an_uplift(tmp_path):
    extracts = tmp_path / "extracts"
    shutil.copytree(FIXTURES, extracts, ignore=shutil.ignore_patterns("orders*.parquet"))
    result = CliRunner().invoke(app, ["run", "--month", M, "--ingest", str(extracts), "--date", "2026-11-01",
                                      "--out", str(tmp_path / "out"), "--db", str(tmp_path / "mk.duckdb"),
                                      "--matrices", str(MATRICES)])
    assert result.exit_code == 0, result.output
    assert "not loaded: no take-up or uplift" in result.stderr and "pts" not in result.stderr


def test_evaluate_by_matrix_gives_plan_changes_their_plan_rule_on_both_sides(month_run):
    """A contacted plan change has no recommendations row: it takes 'plan' / 'plan_rank_<r>' as its list row did,
    so the plan matrix has its treated and its control in one group (not a control-only 'plan' row)."""
    work, db, _ = month_run
    shutil.copy(db, work / "by-matrix.duckdb")
    result = CliRunner().invoke(app, ["evaluate", "--month", M, "--by", "matrix,rule_id", "--format", "json",
                                      "--db", str(work / "by-matrix.duckdb"), "--matrices", str(MATRICES)])
    assert result.exit_code == 0, result.output
    rows = {(r["matrix"], r["rule_id"]): r for r in json.loads(result.stdout)["rows"]}
    plan = rows[("plan", "plan_rank_1")]
    assert plan["contacted"] > 0 and plan["held_out"] > 0 and plan["uplift"] is not None
    assert not [k for k, r in rows.items() if k[0] is None and r["contacted"]]  # every contacted pair has its rule


def test_run_without_answers_or_the_next_month_evaluates_nothing(tmp_path):
    """A first cycle has nothing to measure: no response, no order, no M+1 subscribers → no evaluation."""
    extracts = tmp_path / "extracts"
    shutil.copytree(FIXTURES, extracts, ignore=shutil.ignore_patterns(
        "contact_history_2026-11.parquet", "orders*.parquet", "subscribers_2026-11.parquet"))
    db = tmp_path / "mk.duckdb"
    result = CliRunner().invoke(app, ["run", "--month", M, "--ingest", str(extracts), "--date", "2026-11-01",
                                      "--out", str(tmp_path / "out"), "--db", str(db), "--matrices", str(MATRICES)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((cycle_dir(tmp_path / "out") / "manifest.json").read_text(encoding="utf-8"))
    assert "evaluation" not in manifest and f"Evaluation {M}" not in result.stderr
    con = duckdb.connect(str(db), read_only=True)
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert not {"campaign_evaluation", "churn_evaluation"} & tables


def test_explain_agrees_with_what_was_stored(month_run):
    work, db, _ = month_run
    con = duckdb.connect(str(db), read_only=True)
    msisdn, plan_id = con.execute(
        "SELECT msisdn, plan_id FROM plan_recommendations WHERE month = ? AND rank = 1 ORDER BY msisdn LIMIT 1", [M]
    ).fetchone()
    stored_rules = {(m, r) for m, r in con.execute(
        "SELECT matrix, rule_id FROM recommendations WHERE month = ? AND msisdn = ?", [M, msisdn]).fetchall()}
    con.close()
    result = CliRunner().invoke(app, ["explain", msisdn, "--month", M, "--format", "json", "--db", str(db),
                                      "--matrices", str(MATRICES)])
    assert result.exit_code == 0, result.output
    ex = json.loads(result.stdout)
    assert ex["msisdn"] == msisdn and ex["view"]["msisdn"] == msisdn
    assert all(ex["plan_stages"].values())
    best = ex["plan_pairs"][0]
    assert (best["plan_id"], best["recommended_rank"], best["verdict"]) == (plan_id, 1, "in both windows")
    fired = {(r["matrix"], r["rule_id"]) for r in ex["rules"] if r["fired"] and r["matrix"] != "priority"}
    assert stored_rules <= fired
    for matrix in {r["matrix"] for r in ex["rules"] if r["hit"] == "first"}:
        assert sum(1 for r in ex["rules"] if r["matrix"] == matrix and r["fired"]) <= 1
    table = CliRunner().invoke(app, ["explain", msisdn, "--month", M, "--db", str(db), "--matrices", str(MATRICES)])
    assert table.exit_code == 0 and "Plan pairs" in table.stdout


def test_explain_unknown_customer(month_run):
    _, db, _ = month_run
    result = CliRunner().invoke(app, ["explain", "19999999999", "--month", M, "--db", str(db)])
    assert result.exit_code == 1
    assert "no customer 19999999999 in customer_view for 2026-10" in result.stderr


def test_funnel_json_is_the_export_document(month_run):
    work, db, _ = month_run
    result = CliRunner().invoke(app, ["funnel", "--month", M, "--date", "2026-11-01", "--format", "json",
                                      "--db", str(db)])
    assert result.exit_code == 0
    written = (cycle_dir(work / "out") / "funnel.json").read_text(encoding="utf-8")
    assert json.loads(result.stdout) == json.loads(written)


def test_commands_refuse_a_missing_step(tmp_path):
    runner = CliRunner()
    db = str(tmp_path / "empty.duckdb")
    assert runner.invoke(app, ["ingest", str(FIXTURES / "plans.parquet"), "--db", db]).exit_code == 0
    result = runner.invoke(app, ["plan", "--month", M, "--db", db])
    assert result.exit_code == 1
    assert "run `mktool score --month 2026-10` first" in result.stderr


def _commands() -> dict:
    group = get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_command_has_help_with_an_example(name):
    result = CliRunner().invoke(app, [name, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.stdout, f"`mktool {name} --help` shows no example"
    command = _commands()[name]
    for param in command.params:
        if param.param_type_name == "option":
            assert param.help, f"mktool {name} {param.opts[0]} has no help text"


def test_diff_help_examples_give_cycle_folders_not_month_folders():
    """diff refuses a month folder (it holds cycle folders, not lists): its own examples must not show one."""
    result = CliRunner().invoke(app, ["diff", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    folder_examples = [line.split()[2:4] for line in result.stdout.splitlines()
                       if line.strip().startswith("mktool diff ") and "--against-matrices" not in line]
    assert folder_examples, "diff --help shows no example comparing two export folders"
    for before, after in folder_examples:
        for folder in (before, after):
            assert re.fullmatch(r".+/\d{4}-\d{2}/(latest|\d{4}-\d{2}-\d{2})", folder), \
                f"diff --help example names {folder!r}, not a cycle folder <out>/<month>/<cycle-date>"


def test_readme_lists_every_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name in _commands() if f"mktool {name}" not in readme]
    assert not missing, f"README does not mention: {missing}"


def test_daily_cycle_exports_only_daily_channels_and_skips_offers_already_made(tmp_path):
    runner = CliRunner()
    common = ["--db", str(tmp_path / "d.duckdb"), "--matrices", str(MATRICES)]
    first = runner.invoke(app, ["run", "--month", M, "--ingest", str(FIXTURES), "--date", "2026-11-01",
                                "--out", str(tmp_path / "out"), *common])
    assert first.exit_code == 0, first.output
    monthly = cycle_dir(tmp_path / "out")
    before = {p.name: p.stat().st_mtime_ns for p in monthly.iterdir()}
    result = runner.invoke(app, ["export", "--month", M, "--cycle", "daily", "--date", "2026-11-02",
                                 "--out", str(tmp_path / "out"), *common])
    assert result.exit_code == 0, result.output
    assert {p.name: p.stat().st_mtime_ns for p in monthly.iterdir()} == before  # the first cycle's folder is kept
    daily = sorted(p.name for p in cycle_dir(tmp_path / "out", M, "2026-11-02").iterdir())
    # the daily channels of the shipped channels.yaml, and only those
    assert daily == ["app.jsonl", "funnel.json", "manifest.json", "outbound.csv", "sms.csv"]
    con = duckdb.connect(str(tmp_path / "d.duckdb"), read_only=True)
    # No offer (customer × policy) is made twice in the month, whichever day or channel.
    assert con.execute("""SELECT count(*) FROM (SELECT msisdn, policy_id FROM contact_history
                          WHERE recorded_by = 'mktool' GROUP BY ALL HAVING count(*) > 1)""").fetchone()[0] == 0
    assert con.execute("SELECT count(DISTINCT contact_date) FROM contact_history "
                       "WHERE recorded_by = 'mktool'").fetchone()[0] == 2
    con.close()
    bad = runner.invoke(app, ["export", "--month", M, "--cycle", "weekly", "--out", str(tmp_path / "o2"), *common])
    assert bad.exit_code == 2 and "'weekly' is not one of daily, monthly" in bad.stderr  # a usage error


# == `run` validates the whole project, salts included, before its first write =======================
def _rules_with_hashed_channels(folder: Path) -> Path:
    """The shipped rules with sms hashed under SMS_SALT_T and app under APP_SALT_T."""
    shutil.copytree(MATRICES, folder)
    text = (folder / "channels.yaml").read_text(encoding="utf-8")
    text = text.replace("    columns: [msisdn, policy_id, script]\n",
                        "    columns: [msisdn, policy_id, script]\n    mask: hash\n    salt_env: SMS_SALT_T\n", 1)
    text = text.replace("  app:", "  app:\n    mask: hash\n    salt_env: APP_SALT_T", 1)
    (folder / "channels.yaml").write_text(text, encoding="utf-8")
    return folder


def test_run_with_a_missing_salt_fails_before_ingest_writes_anything(tmp_path, monkeypatch):
    rules = _rules_with_hashed_channels(tmp_path / "rules")
    monkeypatch.delenv("SMS_SALT_T", raising=False)
    monkeypatch.delenv("APP_SALT_T", raising=False)
    db = tmp_path / "mk.duckdb"
    args = ["run", "--month", M, "--ingest", str(FIXTURES), "--date", "2026-11-01", "--out", str(tmp_path / "out"),
            "--db", str(db), "--matrices", str(rules)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert ("Error: channels.sms.mask: hash needs a salt in the environment variable SMS_SALT_T"
            in result.stderr), result.stderr
    assert "also missing: app (APP_SALT_T)" in result.stderr  # every missing salt named at once
    assert "Traceback" not in result.stderr
    assert not db.exists()  # nothing was ingested: the database file was not even created
    assert not (tmp_path / "out").exists()

    # An existing database is left byte for byte as it was, with one salt given and one missing.
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE marker AS SELECT 1 AS x")
    con.close()
    before = db.read_bytes()
    monkeypatch.setenv("SMS_SALT_T", "s3cret")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "channels.app.mask: hash needs a salt in the environment variable APP_SALT_T" in result.stderr
    assert "also missing" not in result.stderr
    assert db.read_bytes() == before


def test_run_reads_the_salts_once_when_the_project_loads(tmp_path, monkeypatch):
    """With both salts set the run goes through, and the hashed lists carry sha256(salt || msisdn)."""
    rules = _rules_with_hashed_channels(tmp_path / "rules")
    monkeypatch.setenv("SMS_SALT_T", "s1")
    monkeypatch.setenv("APP_SALT_T", "a2")
    db = tmp_path / "mk.duckdb"
    result = CliRunner().invoke(app, ["run", "--month", M, "--ingest", str(FIXTURES), "--date", "2026-11-01",
                                      "--out", str(tmp_path / "out"), "--db", str(db), "--matrices", str(rules),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(db), read_only=True)
    sent = {r[0] for r in con.execute("SELECT msisdn FROM contact_history WHERE channel = 'sms'").fetchall()}
    con.close()
    sms = (cycle_dir(tmp_path / "out") / "sms.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert sms and {line.split(",")[0] for line in sms} <= {hashlib.sha256(f"s1{m}".encode()).hexdigest()
                                                               for m in sent}
