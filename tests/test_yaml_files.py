"""The rule files' robustness (issue 10, item 4, last paragraph): every refusal is located.

Each class is tried on ``load_yaml`` with a crafted file (file, line, key path, message) and
through the command line on a copy of the shipped matrices folder (`mktool check`,
`mktool test` for matrices/tests/*.yaml): exit 1, one located error, no traceback, bounded
time and memory.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from conftest import MATRICES, ROOT, edit

from mktool.cli import app
from mktool.errors import ConfigError
from mktool.yamlio import MAX_DEPTH, MAX_NODES, load_yaml, read_yaml


def write(path: Path, body: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body if isinstance(body, bytes) else body.encode("utf-8"))
    return path


def refused(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    text = str(info.value)
    assert text.startswith(f"{path}:"), text  # the file comes first (then its line)
    return text


def run_cli(runner, tmp_path: Path, *args: str):
    result = runner.invoke(app, [*args, "--db", str(tmp_path / "never.duckdb")])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert not (tmp_path / "never.duckdb").exists()
    return result


# -- the shipped files: nothing changes for a good file ------------------------------------------------
def test_every_shipped_file_loads_exactly_as_safe_load() -> None:
    files = sorted(MATRICES.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        assert load_yaml(path) == yaml.safe_load(path.read_text(encoding="utf-8")), path


def test_every_rule_file_read_goes_through_yamlio() -> None:
    """No module parses YAML on its own (it would skip the checks below)."""
    for source in sorted((ROOT / "mktool").glob("*.py")):
        if source.name == "yamlio.py":
            continue
        text = source.read_text(encoding="utf-8")
        assert not re.search(r"\byaml\.(safe_load|load|full_load|unsafe_load|load_all|safe_load_all)\b", text), source
        assert not re.search(r"^\s*import yaml|^\s*from yaml", text, re.MULTILINE), source


# -- duplicate keys ---------------------------------------------------------------------------------
def test_two_whens_in_one_rule(tmp_path: Path) -> None:
    path = write(tmp_path / "m.yaml", "matrix: m\nrules:\n  - id: R1\n    policy: P\n  - id: R2\n"
                                      "    when: arpu_3m > 100\n    policy: Q\n    when: arpu_3m > 300\n")
    text = refused(path)
    assert ":8:5 @ rules[1].when: duplicate key 'when' (first at line 6, again at line 8)" in text


def test_a_second_top_level_rules(tmp_path: Path) -> None:
    path = write(tmp_path / "m.yaml", "matrix: m\nrules:\n  - {id: R1, when: a, policy: P}\nfamily: f\n"
                                      "rules:\n  - {id: R9, when: b, policy: Q}\n")
    text = refused(path)
    assert ":5:1 @ rules: duplicate key 'rules' (first at line 2, again at line 5)" in text


def test_duplicates_in_flow_style_and_deeper_mappings(tmp_path: Path) -> None:
    flow = refused(write(tmp_path / "a.yaml", "rules:\n  - {id: R1, when: a, id: R2}\n"))
    assert ":2:23 @ rules[0].id: duplicate key 'id' (first at line 2, again at line 2)" in flow
    nested = refused(write(tmp_path / "b.yaml", "channels:\n  sms:\n    cap: 1\n  app:\n    cap: 2\n    cycle: daily\n"
                                                "    cap: 3\n"))
    assert ":7:5 @ channels.app.cap: duplicate key 'cap' (first at line 5, again at line 7)" in nested
    quoted = refused(write(tmp_path / "c.yaml", "when: a\n'when': b\n"))
    assert "duplicate key 'when' (first at line 1, again at line 2)" in quoted


@pytest.mark.parametrize("body", ["yes: a\ntrue: b\n", "1: a\n1.0: b\n", "~: a\nnull: b\n", "0x1F: a\n31: b\n"])
def test_keys_spelled_differently_that_are_one_key(tmp_path: Path, body: str) -> None:
    """YAML 1.1 reads yes and true as the same boolean: the dict would keep only the second."""
    text = refused(write(tmp_path / "m.yaml", body))
    assert ":2:1 @ " in text and "(first at line 1, again at line 2)" in text


def test_keys_that_only_look_alike_and_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    doc = load_yaml(write(tmp_path / "ok.yaml", "1: int\n'1': text\nWhen: a\nwhen: b\n"
                                                "base: &b {cap: 1, cycle: daily}\nsms:\n  <<: *b\n  cap: 5\n"))
    assert doc == {1: "int", "1": "text", "When": "a", "when": "b", "base": {"cap": 1, "cycle": "daily"},
                   "sms": {"cap": 5, "cycle": "daily"}}


def test_check_names_the_duplicate_in_a_matrix(runner, tmp_path: Path, matrices: Path) -> None:
    edit(matrices / "retention.yaml", "    when: contract_ends_3m OR bundle_ends_3m\n",
         "    when: contract_ends_3m OR bundle_ends_3m\n    when: arpu_3m > 0\n")
    lines = (matrices / "retention.yaml").read_text(encoding="utf-8").splitlines()
    first = lines.index("    when: contract_ends_3m OR bundle_ends_3m") + 1
    result = run_cli(runner, tmp_path, "check", "--matrices", str(matrices))
    assert result.exit_code == 1
    assert (f"{matrices / 'retention.yaml'}:{first + 1}:5 @ rules[1].when: duplicate key 'when' "
            f"(first at line {first}, again at line {first + 1})") in result.stderr


def test_mktool_test_names_the_duplicate_in_a_test_file(runner, tmp_path: Path, matrices: Path) -> None:
    tests = matrices / "tests" / "retention.yaml"
    edit(tests, "    rule: R6\n", "    rule: R6\n    rule: R7\n")
    lines = tests.read_text(encoding="utf-8").splitlines()
    first = lines.index("    rule: R6") + 1
    result = run_cli(runner, tmp_path, "test", "--matrices", str(matrices))
    assert result.exit_code == 1, result.output
    assert (f"Error: {tests}:{first + 1}:5 @ cases[0].rule: duplicate key 'rule' "
            f"(first at line {first}, again at line {first + 1})") in result.stderr


# -- text that is not UTF-8 ---------------------------------------------------------------------------
def test_a_gbk_file(tmp_path: Path) -> None:
    path = write(tmp_path / "m.yaml", "matrix: m\nrules:\n  - id: R1\n    script: 您的合约即将到期\n".encode("gbk"))
    text = refused(path)
    assert ":4:13: not UTF-8 text (byte 0xC4" in text and "iconv -f GBK" in text


@pytest.mark.parametrize(("body", "line"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 3),
    ("matrix: m\n".encode("utf-16"), 1),
    (b"matrix: m\nrules: []\n\x00", 3),
])
def test_a_binary_file(tmp_path: Path, body: bytes, line: int) -> None:
    text = refused(write(tmp_path / "m.yaml", body))
    assert f":{line}: a NUL byte: a binary file" in text


def test_a_control_character_and_a_bom(tmp_path: Path) -> None:
    text = refused(write(tmp_path / "m.yaml", "matrix: m\nname: a\x07b\n"))
    assert ":2: invalid YAML (character '\\x07' is not allowed" in text
    assert load_yaml(write(tmp_path / "bom.yaml", "\ufeffmatrix: m\n")) == {"matrix": "m"}


def test_check_names_a_gbk_matrix(runner, tmp_path: Path, matrices: Path) -> None:
    gbk = matrices / "retention.yaml"
    gbk.write_bytes(gbk.read_text(encoding="utf-8").encode("gbk", errors="replace"))
    result = run_cli(runner, tmp_path, "check", "--matrices", str(matrices))
    assert result.exit_code == 1
    assert re.search(rf"{re.escape(str(gbk))}:\d+:\d+: not UTF-8 text", result.stderr), result.stderr


def test_check_names_a_binary_file_in_the_folder(runner, tmp_path: Path, matrices: Path) -> None:
    write(matrices / "logo.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    result = run_cli(runner, tmp_path, "check", "--matrices", str(matrices))
    assert result.exit_code == 1
    assert f"{matrices / 'logo.yaml'}:3: a NUL byte: a binary file" in result.stderr


# -- nesting and aliases: refused fast, in little memory -------------------------------------------------
def bounded(path: Path, *, seconds: float = 1.0, megabytes: float = 50.0) -> str:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        text = refused(path)
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < seconds, f"{elapsed:.2f}s"
    assert peak < megabytes * 2**20, f"{peak / 2**20:.1f} MB"
    return text


@pytest.mark.parametrize("style", ["flow sequence", "flow mapping", "block sequence", "mixed", "block mapping"])
def test_ten_thousand_levels(tmp_path: Path, style: str) -> None:
    n = 10_000
    if style == "flow sequence":
        body = "rules: " + "[" * n + "]" * n + "\n"
    elif style == "flow mapping":
        body = "rules: " + "{a: " * n + "1" + "}" * n + "\n"
    elif style == "block sequence":
        body = "rules:\n" + "- " * n + "x\n"  # compact nested sequences: 10,000 levels on one line
    elif style == "mixed":
        body = "rules:\n" + "- " * (n // 2) + "[" * (n // 2) + "]" * (n // 2) + "\n"
    else:  # block mappings need one more space per level: 1,500 levels are already 1 MB
        body = "".join(" " * i + f"k{i}:\n" for i in range(1500)) + " " * 1500 + "end\n"
    text = bounded(write(tmp_path / "deep.yaml", body), seconds=2.0)
    assert f"nested deeper than {MAX_DEPTH} levels" in text
    assert re.search(r"\.yaml:\d+:\d+: ", text)


def test_nesting_the_limit_allows(tmp_path: Path) -> None:
    depth = 50
    assert load_yaml(write(tmp_path / "ok.yaml", "a: " + "[" * depth + "]" * depth + "\n")) is not None


def billion_laughs(levels: int = 9) -> str:
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_fails_at_once_in_little_memory(tmp_path: Path) -> None:
    path = write(tmp_path / "bomb.yaml", billion_laughs())  # 9**10 ≈ 3.5e9 strings when expanded
    text = bounded(path, seconds=1.0, megabytes=20)
    assert f"aliases expand this value to more than {MAX_NODES:,} values" in text
    assert "bomb.yaml:6:7: " in text  # lol5: the first anchor whose expansion passes the limit (9**6 > 1e5)


def test_a_merge_key_bomb(tmp_path: Path) -> None:
    lines = ["m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}"]
    for i in range(1, 10):
        lines.append(f"m{i}: &m{i}\n  <<: [" + ", ".join([f"*m{i - 1}"] * 9) + "]")
    text = bounded(write(tmp_path / "merge.yaml", "\n".join(lines) + "\n"))
    assert "aliases expand this value" in text


def test_an_alias_inside_its_own_anchor(tmp_path: Path) -> None:
    text = bounded(write(tmp_path / "loop.yaml", "rules: &r [1, *r]\n"))
    assert "loop.yaml:1:8: an alias refers to the value that contains it" in text


def test_small_aliases_still_work(tmp_path: Path) -> None:
    doc = load_yaml(write(tmp_path / "ok.yaml", "base: &b [frontdesk, sms]\nR1: {channels: *b}\nR2: {channels: *b}\n"))
    assert doc["R1"]["channels"] == doc["R2"]["channels"] == ["frontdesk", "sms"]


def test_check_refuses_a_bomb_in_the_folder(runner, tmp_path: Path, matrices: Path) -> None:
    write(matrices / "bomb.yaml", billion_laughs())
    start = time.perf_counter()
    result = run_cli(runner, tmp_path, "check", "--matrices", str(matrices))
    assert result.exit_code == 1
    assert f"{matrices / 'bomb.yaml'}:6:7: aliases expand" in result.stderr
    assert time.perf_counter() - start < 30  # the whole check; the bomb itself fails in milliseconds


# -- values Python cannot build ------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "reason"), [("2026-13-01", "month must be in 1..12"),
                                               ("2026-02-30", "day is out of range for month"),
                                               ("2026-04-31 10:00:00", "day is out of range for month")])
def test_an_impossible_date(tmp_path: Path, value: str, reason: str) -> None:
    path = write(tmp_path / "policies.yaml", "policies:\n  - id: P1\n    valid_from: 2026-01-01\n"
                                             f"  - id: P2\n    valid_to: {value}\n")
    text = refused(path)
    assert f":5:15 @ policies[1].valid_to: '{value}' is not a date of the calendar ({reason})" in text


def test_real_dates_still_load(tmp_path: Path) -> None:
    doc = load_yaml(write(tmp_path / "p.yaml", "a: 2026-02-28\nb: 2028-02-29\nc: '2026-13-01'\n"))
    assert doc == {"a": dt.date(2026, 2, 28), "b": dt.date(2028, 2, 29), "c": "2026-13-01"}


def test_check_names_an_impossible_valid_to(runner, tmp_path: Path, matrices: Path) -> None:
    policies = matrices / "policies.yaml"
    edit(policies, "exclusive_group: prepay, cooldown_days: 30}", "exclusive_group: prepay, cooldown_days: 30, "
                                                                   "valid_to: 2026-13-01}")
    lines = policies.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if "2026-13-01" in line)
    column = lines[at].index("2026-13-01") + 1
    result = run_cli(runner, tmp_path, "check", "--matrices", str(matrices))
    assert result.exit_code == 1
    assert (f"{policies}:{at + 1}:{column} @ policies[0].valid_to: '2026-13-01' is not a date of the "
            "calendar (month must be in 1..12)") in result.stderr


def test_a_number_too_long_to_read(tmp_path: Path) -> None:
    text = refused(write(tmp_path / "m.yaml", "params:\n  cap: " + "9" * 5000 + "\n"))
    assert ":2:8 @ params.cap: cannot read '999" in text and "4300 digits" in text
    assert len(text) < 400  # the message stays one short line


@pytest.mark.parametrize(("body", "says"), [
    ("x: !!python/object/apply:os.system ['echo hi']\n", ":1:4: invalid YAML (could not determine a constructor"),
    ("x: !include other.yaml\n", ":1:4: invalid YAML (could not determine a constructor"),
    ("? [a, b]\n: 1\n", "invalid YAML (found unhashable key)"),
    ("a: 1\n---\nb: 2\n", ":2:1: invalid YAML (but found another document)"),
    ("rules:\n\t- id: R1\n", ":2:1: invalid YAML (found character '\\t' that cannot start any token)"),
])
def test_other_malformed_yaml_is_located(tmp_path: Path, body: str, says: str) -> None:
    assert says in refused(write(tmp_path / "m.yaml", body))


def test_a_folder_or_a_huge_file_named_yaml(tmp_path: Path) -> None:
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    assert "cannot read" in refused(folder)
    big = write(tmp_path / "big.yaml", b"# " + b"x" * (11 * 2**20) + b"\n")
    assert "larger than 10 MB" in refused(big)


def test_bounded_messages_for_big_values(tmp_path: Path) -> None:
    """A type error on a 20,000-item value prints a short repr, not the whole value."""
    doc = read_yaml(write(tmp_path / "m.yaml", "rules: [" + ", ".join(["1"] * 20_000) + "]\n")).root
    with pytest.raises(ConfigError) as info:
        doc.get("rules", dict)
    assert len(str(info.value)) < 400 and "m.yaml:1 @ rules: expected mapping, got list [1, 1" in str(info.value)
