"""Adversarial members of issue 10's input classes (item 4) that the first round missed.

Each test names its class and probes members with hand-computed expectations: a value the
later steps would silently fail to match must be normalised or refused at ingest (or at
`mktool check` for the rule side), never stored as it came.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import test_ingest_contract
from conftest import MATRICES, ROOT, M, write_table
from conftest import fetch as query
from test_ingest_contract import CONTACT, refused
from test_sandbox import RETENTION, check_files, one_error

from mktool.errors import ConfigError
from mktool.sqlquote import check_label

BEIJING = dt.timezone(dt.timedelta(hours=8))
# A fixture of that module, bound here so that pytest offers it to this module's tests (a
# `from ... import` of it would read as an unused import redefined by each test's parameter).
loaded = test_ingest_contract.loaded


# -- invisible characters inside identifier columns --------------------------------------------
@pytest.mark.parametrize(("table", "row", "column", "value"), [
    ("contact_history", {**CONTACT}, "policy_id", "PLAN\u200bCHANGE"),  # zero-width space
    ("contact_history", {**CONTACT}, "policy_id", "PLAN_\ufeffCHANGE"),  # BOM pasted inside
    ("contact_history", {**CONTACT}, "policy_id", "P1\x00"),  # NUL, not trimmed
    ("subscribers", {"msisdn": "13800000001", "month": M}, "plan_id", "ZX\u00ad128"),  # soft hyphen
    ("plans", {"plan_id": "P1"}, "plan_id", "ZX\t128"),
    ("vas", {"msisdn": "13800000001", "month": M}, "service", "cr\u200dbt"),  # zero-width joiner
    ("events", {"msisdn": "13800000001", "event_time": dt.datetime(2026, 10, 3)}, "event_type", "balance\u2060low"),
])
def test_an_identifier_with_an_invisible_character_inside_is_refused(loaded, tmp_path, table, row, column, value):
    """'PLAN\\u200bCHANGE' prints as PLAN_CHANGE's neighbour but never equals a policy id of the
    rules: the cool-down and contact caps would silently not apply."""
    path = write_table(tmp_path / f"{table}.parquet", table, [{**row, column: value}])
    refused(loaded, path, expected=[f"table {table}: column {column}:", "invisible or control character",
                                    f"e.g. {value!r}", "example row:"])


def test_identifiers_keep_visible_inner_characters_and_lose_invisible_edges(cli, tmp_path):
    path = write_table(tmp_path / "contact_history.parquet", "contact_history",
                       [{**CONTACT, "policy_id": "\u200bPLAN-CHANGE.v2 \ufeff"},
                        {**CONTACT, "policy_id": "飞享 128", "channel": "app"}])
    assert cli("ingest", str(path)).exit_code == 0
    assert query(cli.db, "SELECT policy_id FROM contact_history ORDER BY 1") == [("PLAN-CHANGE.v2",), ("飞享 128",)]


# -- BINARY (no UTF8 annotation) in columns that are not text --------------------------------
def test_binary_text_is_read_like_text_in_every_column_type(cli, tmp_path):
    """Hive writes a string column as BINARY whatever it holds: '58.00' as BINARY is the same
    money as '58.00' as a string, not a refusal."""
    b = pa.binary()
    path = write_table(tmp_path / "subscribers.parquet", "subscribers",
                       [{"msisdn": "13800000001", "month": M, "balance": b" 58.10", "join_date": b"2020-1-5",
                         "vnet": b"true", "contract_end": b""}],
                       types={"balance": b, "join_date": b, "vnet": b, "contract_end": b})
    usage = write_table(tmp_path / "usage.parquet", "usage", [{"msisdn": "13800000001", "month": M,
                                                               "contacts": b"40", "data_mb": b"12.5"}],
                        types={"contacts": b, "data_mb": b})
    result = cli("ingest", str(path), str(usage))
    assert result.exit_code == 0, result.stderr
    assert query(cli.db, "SELECT CAST(balance AS VARCHAR), join_date, vnet, contract_end FROM subscribers") == [
        ("58.10", dt.date(2020, 1, 5), True, None)]
    assert query(cli.db, "SELECT contacts, data_mb FROM usage") == [(40, 12.5)]


@pytest.mark.parametrize(("table", "column", "value", "problem"), [
    ("billing", "total_fee", b"12.345", "more than 2 decimal places"),
    ("billing", "total_fee", b"NaN", "not a finite number"),
    ("billing", "total_fee", b"12.5\xff", "not valid UTF-8"),
    ("usage", "contacts", b"3.5", "cannot be read as BIGINT without loss"),
    ("subscribers", "join_date", b"2026-10-03 12:30", "would drop the time"),
    ("subscribers", "vnet", b"maybe", "cannot be read as BOOLEAN"),
    ("subscribers", "balance", b"   ", "missing (NULL or blank)"),
])
def test_binary_text_in_other_columns_is_checked_like_text(loaded, tmp_path, table, column, value, problem):
    path = write_table(tmp_path / f"{table}.parquet", table, [{"msisdn": "13800000001", "month": M, column: value}],
                       types={column: pa.binary()})
    refused(loaded, path, expected=[f"table {table}: column {column}:", problem])


# -- time-zone-aware timestamps: one reading on every machine -----------------------------------
def _ingest_in_zone(tmp_path: Path, zone: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TZ": zone, "PYTHONPATH": str(ROOT)}
    db = tmp_path / f"tz-{zone.replace('/', '_')}.duckdb"
    return subprocess.run([sys.executable, "-m", "mktool", "ingest", *map(str, paths), "--db", str(db),
                           "--matrices", str(MATRICES)],
                          env=env, capture_output=True, text=True, timeout=120), db


def test_a_time_zone_aware_timestamp_reads_the_same_on_every_machine(tmp_path):
    """A Spark extract stores instants (TIMESTAMP WITH TIME ZONE); DuckDB turns them into the
    machine's local time, so a contact at 00:30 Beijing time on 1 October was a September
    contact on a UTC machine and an October one in Shanghai. The contract reads them in Beijing
    time (China Standard Time) everywhere."""
    tz = pa.timestamp("us", tz="UTC")
    events = tmp_path / "events.parquet"
    pq.write_table(pa.table({"msisdn": ["13800000001"], "event_time": pa.array(
        [dt.datetime(2026, 10, 1, 0, 30, tzinfo=BEIJING)], tz), "event_type": ["x"], "value": [1.0]}), events)
    history = tmp_path / "contact_history.parquet"
    pq.write_table(pa.table({"msisdn": ["13800000001"], "contact_date": pa.array(
        [dt.datetime(2026, 10, 1, 0, 0, tzinfo=BEIJING)], tz), "channel": ["sms"], "policy_id": ["P1"],
        "outcome": ["sent"]}), history)
    for zone in ("UTC", "Asia/Shanghai", "America/New_York"):
        done, db = _ingest_in_zone(tmp_path, zone, events, history)
        assert done.returncode == 0, (zone, done.stderr)
        assert query(db, "SELECT event_time FROM events") == [(dt.datetime(2026, 10, 1, 0, 30),)], zone
        assert query(db, "SELECT contact_date FROM contact_history") == [(dt.date(2026, 10, 1),)], zone


def test_a_time_zone_aware_time_of_day_is_still_refused_as_a_date(loaded, tmp_path):
    path = tmp_path / "contact_history.parquet"
    pq.write_table(pa.table({"msisdn": ["13800000001"], "contact_date": pa.array(
        [dt.datetime(2026, 10, 1, 9, 15, tzinfo=BEIJING)], pa.timestamp("us", tz="Asia/Shanghai")),
        "channel": ["sms"], "policy_id": ["P1"], "outcome": ["sent"]}), path)
    refused(loaded, path, expected=["column contact_date:", "would drop the time"])


# -- labels from YAML: invisible characters ----------------------------------------------------
@pytest.mark.parametrize("label", ["high\u200b", "\ufeffhigh", "mid\u00adhigh", "high\u202e", "lo\u2060w",
                                   "高\u200d价值"])
def test_a_label_with_an_invisible_character_is_refused(label):
    """A tier named 'high\\u200b' prints as high but never equals the 'high' the rules compare."""
    with pytest.raises(ConfigError) as err:
        check_label(label, file="s.yaml", at="value.tiers[0].tier", what="value tier name")
    assert "s.yaml: value.tiers[0].tier: " in err.value.render()
    assert "is not a valid value tier name: contains" in err.value.render()


# -- rules comparing a vocabulary column with a value it never holds ----------------------------
@pytest.mark.parametrize(("old", "new", "message"), [
    ("when: arpu_3m >= 50,", "when: \"status = 'Active'\",",
     "7 @ rules[1].when (rule R2): 'Active' is never a value of status (its values: active, closed, suspended"),
    ("when: arpu_3m >= 50,", "when: \"handset_gen IN ('4G', '5g')\",",
     "7 @ rules[1].when (rule R2): '5g' is never a value of handset_gen (its values: 2G, 3G, 4G, 5G"),
    ("when: arpu_3m >= 50,", "when: \"payment <> 'Prepaid '\",",
     "7 @ rules[1].when (rule R2): 'Prepaid ' is never a value of payment (its values: postpaid, prepaid"),
    ("when: arpu_3m >= 50,", "when: \"value_tier IN ('high', 'Low')\",",
     "7 @ rules[1].when (rule R2): 'Low' is never a value of value_tier (its values: high, low, mid, mid_high"),
    ("where: status = 'active'", "where: \"'ACTIVE' = status\"",
     "4 @ where: 'ACTIVE' is never a value of status"),
])
def test_a_comparison_with_a_value_the_column_never_holds_is_a_check_error(cli, in_tmp, old, new, message):
    """Ingest stores status lower-case and handset_gen upper-case, tiers are the names of
    scores.yaml: `status = 'Active'` binds, runs and silently never matches anyone."""
    assert old in RETENTION
    err = one_error(cli, {"retention.yaml": RETENTION.replace(old, new)})
    assert err.startswith(f"matrices/retention.yaml:{message}"), err
    assert err.endswith("the comparison can never match")


def test_a_label_column_made_by_a_case_of_literals_is_a_vocabulary_too(cli, in_tmp):
    bad = RETENTION.replace("when: arpu_3m >= 50,", "when: \"segment = 'Gold'\",")
    err = one_error(cli, {"retention.yaml": bad})
    assert "'Gold' is never a value of segment (its values: gold, high_end_volatile" in err, err


@pytest.mark.parametrize("when", ["status = 'active' AND handset_gen IN ('4G', '5G')", "segment <> 'tidal'",
                                  "city = 'Active'", "lower(status) = 'active'", "status IS NOT NULL"])
def test_comparisons_with_values_the_column_holds_pass(cli, in_tmp, when):
    result = check_files(cli, files={"retention.yaml": RETENTION.replace("when: arpu_3m >= 50,",
                                                                          f"when: {json.dumps(when)},")})
    assert result.exit_code == 0, result.output
