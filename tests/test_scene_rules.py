"""Scene files (issue 14 §1): matrices/scenes.yaml and scenes/*.yaml, loaded and validated like
every rule file. Every refusal is located as a user reads it: ``matrices/scenes.yaml:7 @
scenes[0].when (scene s1): ...`` (the tests run in tmp_path with a relative matrices folder).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import MATRICES
from test_matrices import POLICIES, write_matrices

from mktool.errors import ConfigError
from mktool.project import load_project, validate_all
from mktool.rules import SCENE_EVENT_COLUMNS, matrix_files, scene_files
from mktool.ruletest import CaseResult, coverage_problems, result_document, run_tests

# The worked example's catalogue plus two scene policies (family scene: no matrix may offer them).
SCENE_POLICIES = POLICIES.replace("groups:", """\
  - {id: SC_TOPUP, name: 充50送10, family: scene, channels: [sms]}
  - {id: SC_PACK, name: 流量加油包, family: scene, channels: [sms, app]}
groups:""")

# One valid scene; line numbers below count from its first line (1: "scenes:").
GOOD = """\
scenes:
  - id: low_balance
    name: 余额不足
    event_type: balance_low
    when: "payment = 'prepaid' AND churn_flag"
    waves:
      - {id: below_10, when: "value < 10"}
      - {id: below_5, when: "value < 5"}
    policy: SC_TOPUP
    channels: [sms]
    expires_after: 1h
"""


def scenes_problems(files: dict[str, str | None]) -> list[str]:
    """The error texts of validate_all over the worked example with ``files`` laid over."""
    write_matrices(Path("matrices"), {"policies.yaml": SCENE_POLICIES, **files})
    report = validate_all(Path("matrices"))
    return [p.text for p in report.errors]


def one(files: dict[str, str | None]) -> str:
    errors = scenes_problems(files)
    assert len(errors) == 1, errors
    return errors[0]


def scene(**keys: str) -> str:
    """GOOD with keys replaced (a value None removes the key); every other line stays where it is."""
    lines = GOOD.splitlines()
    for key, value in keys.items():
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:")
                  or line.strip().startswith(f"- {key}:"))
        lines[at] = lines[at].split(f"{key}:")[0] + f"{key}: {value}"
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def _in_tmp(in_tmp: Path) -> Path:
    return in_tmp


# -- what loads -----------------------------------------------------------------------------------------
def test_shipped_default_scenes_load() -> None:
    project = load_project(MATRICES)
    by_id = {s.id: s for s in project.scenes}
    assert list(by_id) == ["balance_low_prepay", "data_90pct_pack", "data_100pct_daypack", "roaming_start_data",
                           "hotline_min_spend"]
    assert [s.position for s in project.scenes] == [1, 2, 3, 4, 5]
    low = by_id["balance_low_prepay"]
    assert low.event_type == "balance_low" and low.when == "payment = 'prepaid' AND churn_flag"
    assert [(w.id, w.when, w.level) for w in low.waves] == [("below_10", "value < 10", 1), ("below_5", "value < 5", 2)]
    assert low.channels == ("sms",) and low.expires_after == dt.timedelta(hours=1) and low.once_per_days == 30
    assert by_id["data_90pct_pack"].channels == ("sms", "app")
    assert by_id["data_90pct_pack"].expires_after == dt.timedelta(hours=6)
    assert by_id["data_100pct_daypack"].once_per_days == 7 and by_id["roaming_start_data"].once_per_days == 7
    hot = by_id["hotline_min_spend"]
    assert hot.channels == ("inbound",) and hot.expires_after == dt.timedelta(minutes=30)
    assert project.channels.channels["inbound"].popup
    for s in project.scenes:  # every default scene's policy is a catalogue policy of family scene allowing it
        policy = project.policies[s.policy]
        assert policy.family == "scene" and set(s.channels) <= set(policy.channels)
    assert str(MATRICES / "scenes.yaml") in project.files


def test_defaults_of_a_minimal_scene() -> None:
    text = """\
        scenes:
          - {id: s1, name: n, event_type: data_90pct, policy: SC_PACK, channels: [app, sms], expires_after: 30m}
        """
    write_matrices(Path("matrices"), {"policies.yaml": SCENE_POLICIES, "scenes.yaml": text})
    (s,) = load_project(Path("matrices")).scenes
    assert s.when is None and s.script is None and s.once_per_days == 30
    assert [(w.id, w.when, w.level) for w in s.waves] == [("1", "TRUE", 1)]
    assert s.channels == ("app", "sms") and s.expires_after == dt.timedelta(minutes=30)
    assert s.at("when") == "matrices/scenes.yaml:2 @ scenes[0].when (scene s1)"


def test_no_scene_file_no_scenes() -> None:
    write_matrices(Path("matrices"), {"policies.yaml": SCENE_POLICIES})
    project = load_project(Path("matrices"))
    assert project.scenes == () and scene_files(Path("matrices")) == []


def test_positions_across_files_scenes_yaml_first_then_by_file_name() -> None:
    one_scene = "scenes:\n  - {{id: {}, name: n, event_type: e, policy: SC_PACK, channels: [sms], expires_after: 1d}}\n"
    folder = write_matrices(Path("matrices"), {"policies.yaml": SCENE_POLICIES, "scenes.yaml": GOOD})
    (folder / "scenes").mkdir()
    (folder / "scenes" / "b.yaml").write_text(one_scene.format("from_b"), encoding="utf-8")
    (folder / "scenes" / "a.yaml").write_text(
        one_scene.format("from_a") + "  - {id: from_a2, name: n, event_type: e, policy: SC_PACK, channels: [sms], "
        "expires_after: 2d}\n", encoding="utf-8")
    (folder / "scenes" / ".hidden.yaml").write_text("not: [yaml", encoding="utf-8")
    scenes = load_project(folder).scenes
    assert [(s.id, s.position, s.file, s.path) for s in scenes] == [
        ("low_balance", 1, "matrices/scenes.yaml", "scenes[0]"),
        ("from_a", 2, "matrices/scenes/a.yaml", "scenes[0]"),
        ("from_a2", 3, "matrices/scenes/a.yaml", "scenes[1]"),
        ("from_b", 4, "matrices/scenes/b.yaml", "scenes[0]"),
    ]
    assert all("scenes" not in p.parts and p.name != "scenes.yaml" for p in matrix_files(folder))


def test_duplicate_id_across_files_names_both() -> None:
    folder = write_matrices(Path("matrices"), {"policies.yaml": SCENE_POLICIES, "scenes.yaml": GOOD})
    (folder / "scenes").mkdir()
    (folder / "scenes" / "more.yaml").write_text("# more scenes\n" + GOOD, encoding="utf-8")
    errors = [p.text for p in validate_all(folder).errors]
    assert errors == ["matrices/scenes/more.yaml:3 @ scenes[0].id (scene low_balance): duplicate scene id "
                      "'low_balance' (first at matrices/scenes.yaml:2 @ scenes[0].id (scene low_balance)): scene ids "
                      "are unique across scenes.yaml and scenes/*.yaml"]


# -- one refusal per class, located -----------------------------------------------------------------------
def test_unknown_key_with_suggestion_reported_once() -> None:
    error = one({"scenes.yaml": GOOD.replace("    expires_after: 1h", "    expires_afer: 1h")})
    assert error.startswith("matrices/scenes.yaml:11 @ scenes[0] (scene low_balance): unknown key 'expires_afer' "
                            "(did you mean 'expires_after'?); allowed: ")


def test_unknown_wave_key_with_suggestion() -> None:
    error = one({"scenes.yaml": GOOD.replace('{id: below_5, when: "value < 5"}', '{id: below_5, wehn: "value < 5"}')})
    assert error.startswith("matrices/scenes.yaml:8 @ scenes[0].waves[1] (scene low_balance): unknown key 'wehn' "
                            "(did you mean 'when'?)")


def test_unknown_top_level_key() -> None:
    assert one({"scenes.yaml": "scene:\n" + GOOD.split("\n", 1)[1]}) == (
        "matrices/scenes.yaml:1: unknown key 'scene' (did you mean 'scenes'?); allowed: description, doc, scenes")


def test_channel_the_policy_does_not_allow() -> None:
    assert one({"scenes.yaml": scene(channels="[sms, app]")}) == (
        "matrices/scenes.yaml:10 @ scenes[0].channels (scene low_balance): policy SC_TOPUP may not be offered on app "
        "(its channels: sms; matrices/policies.yaml:11 @ policies[9].channels (policy SC_TOPUP))")


def test_unknown_channel_and_policy_with_suggestions() -> None:
    errors = scenes_problems({"scenes.yaml": scene(channels="[smss]", policy="SC_TOPUPP")})
    assert errors == [
        "matrices/scenes.yaml:9 @ scenes[0].policy (scene low_balance): unknown policy 'SC_TOPUPP' (did you mean "
        "'SC_TOPUP'?): add it to policies.yaml",
        "matrices/scenes.yaml:10 @ scenes[0].channels[0] (scene low_balance): unknown channel 'smss' (did you mean "
        "'sms'?); channels.yaml defines frontdesk, outbound, inbound, sms, app",
    ]


def test_disallowed_function_in_a_wave() -> None:
    error = one({"scenes.yaml": GOOD.replace('"value < 5"', "\"read_csv('/etc/passwd') IS NULL\"")})
    assert error == ("matrices/scenes.yaml:8 @ scenes[0].waves[1].when (scene low_balance): function 'read_csv' is "
                     "not allowed: it reads data from outside the row (files, tables or the catalog)")


def test_subquery_and_semicolon_refused_in_when() -> None:
    assert "subquer" in one({"scenes.yaml": scene(when='"value IN (SELECT 1)"')}).lower()
    error = one({"scenes.yaml": scene(when='"churn_flag; DROP TABLE contact_history"')})
    assert error.startswith("matrices/scenes.yaml:5 @ scenes[0].when (scene low_balance): ")


def test_non_boolean_when_refused_by_type() -> None:
    # 'city' parses as a bare column (sqlcheck cannot know its type): the binding against customer_view refuses it
    assert one({"scenes.yaml": scene(when="city")}) == (
        "matrices/scenes.yaml:5 @ scenes[0].when (scene low_balance): expected a boolean condition, but 'city' is "
        "VARCHAR")
    assert one({"scenes.yaml": scene(when='"value * 2"')}).startswith(
        "matrices/scenes.yaml:5 @ scenes[0].when (scene low_balance): expected a boolean condition")


def test_event_columns_are_typed() -> None:
    ok = scene(when="\"event_type = 'balance_low' AND event_time >= TIMESTAMP '2026-10-01 00:00:00' AND value >= 0\"")
    assert scenes_problems({"scenes.yaml": ok}) == []
    assert one({"scenes.yaml": scene(when="\"event_time > '2026-13-01'\"")}).startswith(
        "matrices/scenes.yaml:5 @ scenes[0].when (scene low_balance): '2026-13-01' is used as a TIMESTAMP here but is "
        "not a valid TIMESTAMP")
    assert one({"scenes.yaml": GOOD.replace('"value < 10"', "\"value < 'ten'\"")}).startswith(
        "matrices/scenes.yaml:7 @ scenes[0].waves[0].when (scene low_balance): 'ten' is used as a DOUBLE here")
    assert set(SCENE_EVENT_COLUMNS) == {"value", "event_time", "event_type"}


def test_unknown_column_with_suggestion_and_never_matching_label() -> None:
    assert one({"scenes.yaml": scene(when='"arpu3m > 50"')}) == (
        "matrices/scenes.yaml:5 @ scenes[0].when (scene low_balance): unknown column 'arpu3m' (did you mean "
        "'arpu_3m'?)")
    assert one({"scenes.yaml": scene(when="\"payment = 'Prepaid'\"")}).startswith(
        "matrices/scenes.yaml:5 @ scenes[0].when (scene low_balance): 'Prepaid' is never a value of payment")


@pytest.mark.parametrize(("written", "why"), [
    ("0h", "'0h': the number must be at least 1"),
    ("1.5h", "'1.5h' is not a duration: write a whole number ≥ 1 and a unit m (minutes), h (hours) or d (days), "
             "such as 30m, 1h, 6h or 2d (here: 90m)"),
    ("90", "90 has no unit"),
    ("1w", "'1w' is not a duration: write a whole number ≥ 1 and a unit m (minutes), h (hours) or d (days), "
           "such as 30m, 1h, 6h or 2d (here: 7d)"),
    ("1H", "(here: 1h)"),
    ("-1h", "is not a duration"),
    ("true", "expected a whole number ≥ 1 and a unit"),
    ("99999999d", "is more than 36,500 days"),
])
def test_bad_durations(written: str, why: str) -> None:
    error = one({"scenes.yaml": scene(expires_after=written)})
    assert error.startswith("matrices/scenes.yaml:11 @ scenes[0].expires_after (scene low_balance): "), error
    assert why in error, error


@pytest.mark.parametrize(("written", "minutes"), [("30m", 30), ("1h", 60), ("6h", 360), ("2d", 2880),
                                                  ("'1h'", 60), ("90m", 90)])
def test_good_durations(written: str, minutes: int) -> None:
    write_matrices(Path("matrices"), {"policies.yaml": SCENE_POLICIES, "scenes.yaml": scene(expires_after=written)})
    (s,) = load_project(Path("matrices")).scenes
    assert s.expires_after == dt.timedelta(minutes=minutes)


def test_missing_expires_after_and_bad_once_per() -> None:
    errors = scenes_problems({"scenes.yaml": GOOD.replace("    expires_after: 1h\n", "    once_per: 1.5\n")})
    assert errors == [
        "matrices/scenes.yaml:2 @ scenes[0].expires_after (scene low_balance): missing required key: how long an event "
        "stays fresh, a whole number ≥ 1 and a unit m (minutes), h (hours) or d (days), such as 30m, 1h, 6h or 2d",
        "matrices/scenes.yaml:11 @ scenes[0].once_per (scene low_balance): expected whole days ≥ 1 (e.g. once_per: "
        "7), got 1.5",
    ]
    assert one({"scenes.yaml": GOOD + "    once_per: 0\n"}) == (
        "matrices/scenes.yaml:12 @ scenes[0].once_per (scene low_balance): whole days, 1 ≤ once_per ≤ 36,500, got 0")


def test_ids_event_type_and_waves() -> None:
    assert one({"scenes.yaml": scene(id="Low-Balance")}).startswith(
        "matrices/scenes.yaml:2 @ scenes[0].id (scene Low-Balance): 'Low-Balance': a scene id is a lower-case "
        "identifier")
    assert one({"scenes.yaml": scene(event_type='" Balance_Low"')}).startswith(
        "matrices/scenes.yaml:4 @ scenes[0].event_type (scene low_balance): 'Balance_Low' is not an event type")
    assert one({"scenes.yaml": GOOD.replace("id: below_5", "id: below_10")}) == (
        "matrices/scenes.yaml:8 @ scenes[0].waves[1].id (scene low_balance): duplicate wave id (waves[0] and "
        "waves[1] are both 'below_10')")
    assert one({"scenes.yaml": GOOD.replace('{id: below_5, when: "value < 5"}', "{id: below_5}")}).startswith(
        "matrices/scenes.yaml:8 @ scenes[0].waves[1].when (scene low_balance): missing required key")
    no_waves = GOOD.replace('      - {id: below_10, when: "value < 10"}\n', "").replace(
        '      - {id: below_5, when: "value < 5"}\n', "")
    assert one({"scenes.yaml": no_waves.replace("    waves:\n", "    waves: []\n")}).startswith(
        "matrices/scenes.yaml:6 @ scenes[0].waves (scene low_balance): an empty list")


def test_missing_required_keys_each_named() -> None:
    text = "scenes:\n  - {id: s1, when: churn_flag}\n"
    errors = scenes_problems({"scenes.yaml": text})
    assert [e.split(": ", 1)[0] for e in errors] == [
        f"matrices/scenes.yaml:2 @ scenes[0].{key} (scene s1)" for key in
        ("name", "event_type", "policy", "channels", "expires_after")]


def test_a_misspelt_required_key_is_one_problem() -> None:
    errors = scenes_problems({"scenes.yaml": GOOD.replace("    policy:", "    polcy:")})
    assert len(errors) == 1 and "unknown key 'polcy' (did you mean 'policy'?)" in errors[0], errors
    assert errors[0].startswith("matrices/scenes.yaml:9 @ scenes[0] (scene low_balance): ")


def test_every_problem_of_a_file_is_collected() -> None:
    bad = GOOD.replace("expires_after: 1h", "expires_after: 1w").replace("channels: [sms]", "channels: [telex]")
    errors = scenes_problems({"scenes.yaml": bad + GOOD.split("\n", 1)[1].replace("low_balance", "other")
                              .replace("churn_flag", "churn_flags")})
    assert [e.split(": ", 1)[0] for e in errors] == [
        "matrices/scenes.yaml:10 @ scenes[0].channels[0] (scene low_balance)",
        "matrices/scenes.yaml:11 @ scenes[0].expires_after (scene low_balance)",
        "matrices/scenes.yaml:15 @ scenes[1].when (scene other)",
    ]


def test_not_a_scene_file() -> None:
    assert one({"scenes.yaml": "- just a list\n"}).startswith(
        "matrices/scenes.yaml:1: expected a mapping with a top-level 'scenes:' list")
    assert one({"scenes.yaml": "scenes:\n  - just text\n"}).startswith(
        "matrices/scenes.yaml:2 @ scenes[0]: expected a mapping with id, name, event_type")
    assert one({"scenes.yaml": "scenes: [\n"}).startswith("matrices/scenes.yaml:")
    Path("matrices/scenes.yaml").unlink()
    assert one({"elsewhere.yaml": GOOD}).startswith(
        "matrices/elsewhere.yaml:1 @ scenes: scenes are read from scenes.yaml and scenes/*.yaml")
    Path("matrices/elsewhere.yaml").unlink()
    write_matrices(Path("matrices"), {"policies.yaml": SCENE_POLICIES, "scenes.yaml": "# none yet\n"})
    assert load_project(Path("matrices")).scenes == ()


# -- mktool check reports them like every rule file's ----------------------------------------------------
def test_check_table_and_json(cli) -> None:
    write_matrices(Path("matrices"), {"policies.yaml": SCENE_POLICIES, "scenes.yaml": scene(channels="[sms, app]")})
    expected = ("matrices/scenes.yaml:10 @ scenes[0].channels (scene low_balance): policy SC_TOPUP may not be "
                "offered on app (its channels: sms; matrices/policies.yaml:11 @ policies[9].channels "
                "(policy SC_TOPUP))")
    result = cli("check", "--matrices", "matrices")
    assert result.exit_code == 1
    assert [line.removeprefix("error: ") for line in result.stderr.splitlines()
            if line.startswith("error: ")] == [expected]
    result = cli("check", "--matrices", "matrices", "--format", "json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["errors"] == [expected] and "matrices/scenes.yaml" in doc["files"]


def test_check_passes_the_shipped_defaults(cli) -> None:
    result = cli("check", "--matrices", str(MATRICES))
    assert result.exit_code == 0, result.output


def test_a_refused_scene_stops_the_project_before_any_step() -> None:
    write_matrices(Path("matrices"), {"policies.yaml": SCENE_POLICIES, "scenes.yaml": scene(expires_after="0h")})
    with pytest.raises(Exception, match=r"matrices/scenes.yaml:11 @ scenes\[0\].expires_after \(scene low_balance\)"):
        load_project(Path("matrices"))


def test_scene_policy_family_stays_out_of_matrices() -> None:
    retention_with_scene_policy = textwrap.dedent("""\
        matrix: retention
        family: retention
        hit: first
        rules:
          - {id: R1, when: churn_flag, policy: SC_TOPUP, channels: [sms]}
        """)
    error = one({"retention.yaml": retention_with_scene_policy})
    assert "'SC_TOPUP' is a scene policy in policies.yaml, but matrix 'retention' is family retention" in error


# -- mktool test: scene cases through the trigger step's own queries ----------------------------------------
def scene_run(folder: Path) -> dict[str, CaseResult]:
    run = run_tests(folder, pattern="scenes")
    results = {r.case.name: r for r in run.results}
    assert len(results) == len(run.results)  # case names are unique
    return results


def test_shipped_scene_cases_pass_and_cover_every_default_scene() -> None:
    results = scene_run(MATRICES)
    assert len(results) >= 30 and all(r.ok for r in results.values()), [
        (n, r.message) for n, r in results.items() if not r.ok]
    fires: set[str] = set()
    does_not: set[str] = set()
    outcomes: dict[str, set[str]] = {}
    for r in results.values():
        for a in r.actual:
            (fires if a["outcome"] == "fired" else does_not).add(a["scene"])
            outcomes.setdefault(a["scene"], set()).add(a["outcome"])
    ids = {s.id for s in load_project(MATRICES).scenes}
    assert ids <= fires and ids <= does_not
    for sid in ids:  # every scene: the edge of expires_after and of once_per
        assert {"fired", "stale", "once_per"} <= outcomes[sid], (sid, outcomes[sid])
    assert {"not_matched"} <= outcomes["balance_low_prepay"]
    wave2 = results["wave below_5 fires after wave below_10, within once_per"]
    assert wave2.actual == [{"scene": "balance_low_prepay", "wave": "below_5", "outcome": "fired",
                             "blocked_by_time": None, "blocked_by_batch": None}]
    blocked = results["below_10 again within 30 days of a below_10 trigger is once_per"]
    assert blocked.actual[0]["blocked_by_time"] == dt.datetime(2026, 10, 1, 10, 0)
    assert blocked.actual[0]["blocked_by_batch"] == "earlier"


def test_a_changed_scene_fails_exactly_the_cases_at_its_edges(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    shutil.copytree(MATRICES, folder)
    text = (folder / "scenes.yaml").read_text(encoding="utf-8")
    text = text.replace('{id: below_5, when: "value < 5"}', '{id: below_5, when: "value <= 5"}')
    text = text.replace("    expires_after: 6h\n", "    expires_after: 7h\n")  # data_90pct_pack
    text = text.replace("    expires_after: 1h\n    once_per: 7\n\n  # 漫游", "    expires_after: 1h\n    once_per: 8\n"
                        "\n  # 漫游")  # data_100pct_daypack: once_per 8
    (folder / "scenes.yaml").write_text(text, encoding="utf-8")
    failed = {n: r for n, r in scene_run(folder).items() if not r.ok}
    assert set(failed) == {"exactly 5 yuan is still wave below_10",
                           "6 hours and 1 second behind the watermark is stale",
                           "fires again exactly 7 days after the last day pack trigger"}, failed
    assert failed["exactly 5 yuan is still wave below_10"].message == (
        "scene balance_low_prepay, event balance_low value 5 at 2026-10-05 10:00:00: expected balance_low_prepay "
        "fired wave below_10, got balance_low_prepay fired wave below_5")
    assert failed["6 hours and 1 second behind the watermark is stale"].message.endswith(
        "watermark 2026-10-13 00:30:01: expected data_90pct_pack stale, got data_90pct_pack fired wave 1")
    assert failed["fires again exactly 7 days after the last day pack trigger"].message.endswith(
        "expected data_100pct_daypack fired wave 1, got data_100pct_daypack once_per wave 1 (blocked by the trigger "
        "of 2026-10-13 21:15:00, batch earlier)")
    assert all(r.status == "fail" for r in failed.values())


def test_scene_case_mistakes_are_errors_naming_the_case() -> None:
    cases = """\
        month: "2026-10"
        scene: low_balance
        cases:
          - {case: unknown scene, scene: low_balanse, event: {value: 1, event_time: 2026-10-05 10:00:00},
             expect: no trigger}
          - {case: unknown wave, event: {value: 1, event_time: 2026-10-05 10:00:00}, expect: {wave: below_1}}
          - {case: bad outcome, event: {value: 1, event_time: 2026-10-05 10:00:00}, expect: {outcome: stail}}
          - case: earlier without its wave
            event: {value: 1, event_time: 2026-10-05 10:00:00}
            earlier: [{event_time: 2026-10-04 10:00:00}]
            expect: no trigger
          - {case: unknown column, customer: {arpu3m: 1}, event: {value: 1, event_time: 2026-10-05 10:00:00},
             expect: no trigger}
          - {case: fine, customer: {payment: prepaid, churn_flag: true},
             event: {value: 1, event_time: 2026-10-05 10:00:00}, expect: {wave: below_5}}
        """
    folder = write_matrices(Path("matrices"), {"policies.yaml": SCENE_POLICIES, "scenes.yaml": GOOD})
    (folder / "tests").mkdir()
    (folder / "tests" / "scenes.yaml").write_text(textwrap.dedent(cases), encoding="utf-8")
    results = {r.case.name: r for r in run_tests(folder).results}
    f = "matrices/tests/scenes.yaml"
    assert {n: (r.status, r.message) for n, r in results.items()} == {
        "unknown scene": ("error", f"{f}: case \"unknown scene\": scene: unknown scene 'low_balanse' (did you mean "
                                   "'low_balance'?) (scenes: low_balance)"),
        "unknown wave": ("error", f"{f}: case \"unknown wave\": expect[0]: wave: 'below_1' is not a wave of scene "
                                  "low_balance (did you mean 'below_10'?) (waves: below_10, below_5)"),
        "bad outcome": ("error", f"{f}: case \"bad outcome\": expect[0]: outcome: 'stail' is not an outcome (did you "
                                 "mean 'stale'?) (outcomes: duplicate, stale, unknown_customer, not_matched, once_per, "
                                 "fired, no_scene)"),
        "earlier without its wave": ("error", f"{f}: case \"earlier without its wave\": earlier[0]: wave: missing: "
                                              "scene low_balance has waves below_10, below_5"),
        "unknown column": ("error", f"{f}: case \"unknown column\": customer: arpu3m: unknown customer_view column "
                                    "(did you mean 'arpu_3m'?)"),
        "fine": ("pass", ""),
    }


def test_scene_case_file_refusals() -> None:
    folder = write_matrices(Path("matrices"), {"policies.yaml": SCENE_POLICIES, "scenes.yaml": GOOD})
    (folder / "tests").mkdir()
    bad = folder / "tests" / "scenes.yaml"
    bad.write_text("scene: low_balance\ncases:\n  - {case: no time, event: {value: 1}, expect: no trigger}\n",
                   encoding="utf-8")
    with pytest.raises(ConfigError, match=r'matrices/tests/scenes.yaml: case "no time": event: event_time: missing'):
        run_tests(folder)
    bad.write_text("scene: low_balance\ncases:\n  - {case: typo, event: {value: 1, event_tme: 2026-10-01}, "
                   "expect: no trigger}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown key 'event_tme' \(did you mean 'event_time'\?\)"):
        run_tests(folder)
    bad.write_text("scene: low_balance\ncases:\n  - {case: zone, event: {value: 1, event_time: "
                   "'2026-10-01 10:00:00+08:00'}, expect: no trigger}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="without a time zone"):
        run_tests(folder)


def test_mktool_test_json_lists_scene_cases(cli) -> None:
    result = cli("test", "balance_low", "--matrices", str(MATRICES), "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    scopes = {c["scope"] for c in doc["cases"]}
    assert scopes == {"scene balance_low_prepay"} and doc["failed"] == 0 and doc["passed"] >= 10
    first = doc["cases"][0]
    assert first["actual"] == [{"scene": "balance_low_prepay", "wave": "below_10", "outcome": "fired",
                                "blocked_by_time": None, "blocked_by_batch": None}]


def test_strict_coverage_names_a_scene_without_a_non_firing_case() -> None:
    folder = write_matrices(Path("matrices"), {"policies.yaml": SCENE_POLICIES, "scenes.yaml": GOOD})
    (folder / "tests").mkdir()
    (folder / "tests" / "scenes.yaml").write_text(
        'month: "2026-10"\nscene: low_balance\ncases:\n'
        "  - {case: fires, customer: {payment: prepaid, churn_flag: true},\n"
        "     event: {value: 9, event_time: 2026-10-05 10:00:00}, expect: {wave: below_10}}\n", encoding="utf-8")
    run = run_tests(folder)
    assert [r.status for r in run.results] == ["pass"]
    assert ("matrices/scenes.yaml", "low_balance", True, False) in [
        (c["file"], c["scene"], c["fires"], c["does_not_fire"]) for c in result_document(run)["scene_coverage"]]
    assert "matrices/scenes.yaml: scene low_balance: no passing test case where an event of its type does not fire " \
           "it (expect: {scene: X, outcome: not_matched} or stale)" in coverage_problems(run)
    shipped = result_document(run_tests(MATRICES))["scene_coverage"]
    assert len(shipped) == 5 and all(c["fires"] and c["does_not_fire"] for c in shipped)


def test_check_counts_the_scenes(cli) -> None:
    write_matrices(Path("matrices"), {"policies.yaml": SCENE_POLICIES, "scenes.yaml": GOOD})
    result = cli("check", "--matrices", "matrices")
    assert result.exit_code == 0, result.output
    assert "matrices: 10 files OK: 5 matrices, 11 rules, 11 policies, 5 channels, 1 scene" in result.stderr


def test_a_score_column_named_like_an_event_column_is_refused() -> None:
    write_matrices(Path("matrices"), {"policies.yaml": SCENE_POLICIES, "scenes.yaml": GOOD})
    scores = Path("matrices/scores.yaml")
    scores.write_text(scores.read_text(encoding="utf-8").replace(
        "columns:\n", "columns:\n  - name: value\n    expr: arpu_3m * 2\n", 1), encoding="utf-8")
    assert [p.text for p in validate_all(Path("matrices")).errors] == [
        "matrices/scenes.yaml:2 @ scenes[0] (scene low_balance): customer_view has a column named value "
        "(scores.yaml), which is also the event's: rename the score column, a scene's when reads value, event_time, "
        "event_type as the event's"]
