"""The project: the rules folder loaded and validated once, with located errors and the salts."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
from conftest import MATRICES, edit

from mktool import project
from mktool.errors import ConfigError, location
from mktool.project import load_project, read_salts, validate_all
from mktool.rules import Problems
from mktool.yamlio import read_yaml


def rules_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    shutil.copytree(MATRICES, folder)
    return folder


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if text in line)


# -- the typed reader and its line table --------------------------------------------------------------
def test_lines_of_keys_items_and_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("# a comment\nchannels:\n  sms:\n    cycle: daily\n\n    mask: hsh\nlist:\n  - a\n  -\n    k: 1\n",
                    encoding="utf-8")
    doc = read_yaml(path)
    assert doc.line("channels") == 2 and doc.line("channels.sms") == 3 and doc.line("channels.sms.mask") == 6
    assert doc.line("list[0]") == 8 and doc.line("list[1].k") == 10
    assert doc.line("channels.sms.format") == 3  # a missing key: the line of its mapping
    sms = doc.root.child("channels").child("sms")
    with pytest.raises(ConfigError) as info:
        sms.choice("mask", ("none", "mask", "hash"))
    assert info.value.render() == (f"{path}:6 @ channels.sms.mask: 'hsh' is not one of none, mask, hash "
                                   "(did you mean 'hash'?)")
    with pytest.raises(ConfigError) as info:
        sms.choice("format", ("csv",), required=True)
    assert info.value.render() == f"{path}:3 @ channels.sms.format: missing required key"
    with pytest.raises(ConfigError) as info:
        doc.root.child("list").child(1).labelled("item two").get("k", str)
    assert info.value.render() == f"{path}:10 @ list[1].k (item two): expected text, got int 1"


def test_location_format() -> None:
    assert location("m/x.yaml") == "m/x.yaml"
    assert location("m/x.yaml", 14) == "m/x.yaml:14"
    assert location("m/x.yaml", 14, "channels.sms.mask") == "m/x.yaml:14 @ channels.sms.mask"
    assert location("m/x.yaml", 2, None, 7) == "m/x.yaml:2:7"


def test_a_channel_typo_is_located_by_check(tmp_path: Path) -> None:
    folder = rules_copy(tmp_path)
    channels = folder / "channels.yaml"
    edit(channels, "    columns: [msisdn, policy_id, script]\n",
         "    columns: [msisdn, policy_id, script]\n    mask: hsh\n")
    report = validate_all(folder)
    assert [p.text for p in report.errors] == [
        f"{channels}:{line_of(channels, 'mask: hsh')} @ channels.sms.mask: 'hsh' is not one of none, mask, hash "
        "(did you mean 'hash'?)"]


# -- load_project: every problem collected, the first raised with a count -------------------------------
def test_load_project_raises_the_first_problem_with_the_count(tmp_path: Path) -> None:
    folder = rules_copy(tmp_path)
    edit(folder / "plan.yaml", "top: 1", "top: 0")
    edit(folder / "retention.yaml", "policy: PREPAY_300_600", "policy: PREPAY_300_60")
    report = validate_all(folder)
    assert len(report.errors) == 2
    with pytest.raises(ConfigError) as info:
        load_project(folder)
    assert info.value.message == report.errors[0].text
    assert info.value.hint == "1 more problem: run `mktool check` to list them all"


def test_project_holds_every_part_and_reads_salts_once(tmp_path: Path) -> None:
    folder = rules_copy(tmp_path)
    edit(folder / "channels.yaml", "    # mask: hash\n    # salt_env: APP_VENDOR_SALT\n",
         "    mask: hash\n    salt_env: APP_VENDOR_SALT\n")
    env = {"APP_VENDOR_SALT": "pepper"}
    project = load_project(folder, environ=env)
    assert project.root == folder
    assert {m.name for m in project.rules.matrices} >= {"priority", "retention"}
    assert project.plan.top >= 1 and "PLAN_CHANGE" in project.policies
    assert project.scores.output_columns == project.rules.columns
    assert dict(project.salts) == {"app": "pepper"}
    env["APP_VENDOR_SALT"] = "changed later"  # read once, at load
    assert project.salt(project.channels.channels["app"]) == "pepper"
    assert project.salt(project.channels.channels["sms"]) is None  # not hashed
    assert "pepper" not in repr(project)  # the secret is never shown
    project.require_salts()

    bare = load_project(folder, environ={})
    with pytest.raises(ConfigError) as info:
        bare.require_salts()
    assert info.value.message == ("channels.app.mask: hash needs a salt in the environment variable "
                                  "APP_VENDOR_SALT")
    bare.require_salts(["sms", "outbound"])  # a run that exports no hashed channel needs no salt
    assert read_salts(bare.channels, {"APP_VENDOR_SALT": ""}) == {}  # an empty variable is no salt


# -- binding every expression at once ------------------------------------------------------------------
class CountingConnection:
    """A DuckDB connection that counts the statements it is given."""

    def __init__(self, con: duckdb.DuckDBPyConnection, seen: list[str]) -> None:
        self._con, self._seen = con, seen

    def execute(self, sql: str, *args: object) -> duckdb.DuckDBPyConnection:
        self._seen.append(sql)
        return self._con.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._con, name)


def test_the_shipped_rules_are_bound_in_a_handful_of_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bound one by one, the shipped folder's 60-odd expressions took about 300 statements, a third
    of every command's start; together they take one query per relation (and the same verdict)."""
    seen: list[str] = []
    real_connect = duckdb.connect
    monkeypatch.setattr(project.duckdb, "connect", lambda *a, **kw: CountingConnection(real_connect(*a, **kw), seen))
    report = validate_all(MATRICES)
    assert report.errors == [] and report.rules is not None
    binding = [sql for sql in seen if sql.startswith(("DESCRIBE SELECT", "SELECT"))]
    assert 0 < len(binding) <= 12, len(binding)


def test_one_bad_expression_among_many_is_named_as_when_bound_alone(tmp_path: Path) -> None:
    folder = rules_copy(tmp_path)
    edit(folder / "new_service.yaml", "    when: crbt_potential\n", "    when: crbt_potential AND city > 5\n")
    errors = [p.text for p in validate_all(folder).errors]
    assert len(errors) == 1 and "rules[1].when (rule N2): DuckDB: Binder Error" in errors[0], errors


def test_an_expression_naming_a_column_of_the_shared_query_is_bound_alone() -> None:
    """DuckDB lets a select list refer to an earlier column's alias: in the shared query
    ``_mk_bound_0 > 1`` would bind; alone it is an unknown column (sqlcheck names it first)."""
    con = project._typed_view(load_project(MATRICES).scores, Problems())
    assert con is not None
    try:
        items = [project._Bound("a", "arpu_3m", "arpu_3m"), project._Bound("b", "_MK_BOUND_0 > 1", "", condition=True)]
        assert project._bind_all(con, items) is None
        assert set(project._bind_all(con, items[:1]) or {}) == {items[0]}
        assert "_MK_BOUND_0" in (project._bind_problem(con, items[1].sql) or "")
    finally:
        con.close()
