"""Ingest under the contract's column classes (SPEC §2, issue 10 item 4): every input is
normalised or refused, never stored in a form that later silently fails to match.

Each test states a class (vocabulary, key whitespace, msisdn shape, finiteness, money to the fen,
NULLs, repeated column names, glob characters, wide integers, dates with times, BINARY text,
folders that cannot be walked) and probes several of its members with hand-computed results.
"""

from __future__ import annotations

import datetime as dt
import decimal
import os
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, M, write_table
from conftest import fetch as query

from mktool.config import shipped_matrices_dir
from mktool.contract import TABLES, WHITESPACE, markdown
from mktool.publish import file_sha256

CONTACT = {"msisdn": "13800000001", "contact_date": dt.date(2026, 10, 3), "channel": "sms", "policy_id": "P1",
           "outcome": "sent"}


def state(db: Path) -> list[tuple]:
    """Every table's rows (sorted) and the load log: what a refusal must leave exactly as it was."""
    if not db.exists():
        return []
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
        return [(t, sorted(map(repr, con.execute(f'SELECT * FROM "{t}"').fetchall()))) for t in tables]
    finally:
        con.close()


def refused(cli: Any, *paths: Path, expected: list[str], args: tuple[str, ...] = ()) -> str:
    """Ingest must exit 1 with one Error: naming every expected text, and change nothing."""
    before = state(cli.db)
    result = cli("ingest", *map(str, paths), *args)
    assert result.exit_code == 1, result.output
    err = result.stderr
    assert err.startswith("Error: ") and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)
    assert state(cli.db) == before
    return err


@pytest.fixture
def loaded(cli, tmp_path):
    """A database that already holds one good month, so a refusal has something to keep intact."""
    good = write_table(tmp_path / "good" / "subscribers_2026-09.parquet", "subscribers",
                       [{"msisdn": "13900000001", "month": "2026-09"}])
    assert cli("ingest", str(good)).exit_code == 0
    return cli


# -- vocabularies -----------------------------------------------------------------------------
@pytest.mark.parametrize(("table", "row", "column", "stored"), [
    ("subscribers", {"status": "active "}, "status", "active"),
    ("subscribers", {"status": " Suspended"}, "status", "suspended"),
    ("subscribers", {"status": "CLOSED\t"}, "status", "closed"),
    ("subscribers", {"payment": "PrePaid\u3000"}, "payment", "prepaid"),
    ("subscribers", {"handset_gen": "5g "}, "handset_gen", "5G"),
    ("subscribers", {"handset_gen": "  "}, "handset_gen", None),  # nullable: blank is NULL
    ("contact_history", {**CONTACT, "outcome": "UNSUBSCRIBED"}, "outcome", "unsubscribed"),
    ("contact_history", {**CONTACT, "outcome": "\u00a0No_Answer"}, "outcome", "no_answer"),
    ("contact_history", {**CONTACT, "channel": "SMS"}, "channel", "sms"),
    ("contact_history", {**CONTACT, "channel": " Outbound\ufeff"}, "channel", "outbound"),
    ("dnd", {"msisdn": "13800000001", "channel": " *"}, "channel", "*"),
    ("dnd", {"msisdn": "13800000001", "channel": "SMS"}, "channel", "sms"),
    ("dnd", {"msisdn": "13800000001", "channel": "App\r\n"}, "channel", "app"),
    ("vas", {"service": " CRBT"}, "service", "crbt"),  # an open list, but compared in lower case
    ("vas", {"service": "Mobile_Internet"}, "service", "mobile_internet"),
])
def test_vocabulary_values_are_trimmed_and_case_folded(cli, tmp_path, table, row, column, stored):
    base = {"msisdn": "13800000001", "month": M} if TABLES[table].monthly else {}
    path = write_table(tmp_path / f"{table}.parquet", table, [{**base, **row}])
    result = cli("ingest", str(path))
    assert result.exit_code == 0, result.stderr
    assert query(cli.db, f"SELECT {column} FROM {table}") == [(stored,)]


@pytest.mark.parametrize(("table", "row", "column", "allowed"), [
    ("subscribers", {"status": "activ"}, "status", "active, suspended, closed"),
    ("subscribers", {"status": "active-ish"}, "status", "active, suspended, closed"),
    ("subscribers", {"payment": "pre paid"}, "payment", "prepaid, postpaid"),
    ("subscribers", {"handset_gen": "6G"}, "handset_gen", "2G, 3G, 4G, 5G"),
    ("contact_history", {**CONTACT, "outcome": "unsubscribe"}, "outcome", "sent, accepted, rejected"),
    ("contact_history", {**CONTACT, "channel": "wechat"}, "channel", "frontdesk, outbound, inbound, sms, app"),
    ("contact_history", {**CONTACT, "channel": "*"}, "channel", "sms, app, manager (from channels.yaml)"),
    ("dnd", {"msisdn": "13800000001", "channel": "ＳＭＳ"}, "channel", "manager, *"),  # full-width letters
    ("dnd", {"msisdn": "13800000001", "channel": "all"}, "channel", "manager, *"),
])
def test_values_outside_a_vocabulary_are_refused(loaded, tmp_path, table, row, column, allowed):
    base = {"msisdn": "13800000001", "month": M} if TABLES[table].monthly else {}
    path = write_table(tmp_path / f"{table}.parquet", table, [{**base, **row}])
    value = next(iter(v for k, v in row.items() if k == column))
    refused(loaded, path, expected=[f"{table}.parquet: table {table}: column {column}: value is not one of",
                                    allowed, "compared case-insensitively", f"e.g. {value!r}", "example row:"])


def test_channel_vocabulary_is_the_rules_folder_channels_yaml(cli, tmp_path):
    """A channel defined in the rules folder's channels.yaml is accepted; the shipped list is not consulted."""
    rules = tmp_path / "rules"
    shutil.copytree(shipped_matrices_dir(), rules)
    channels = rules / "channels.yaml"
    text = channels.read_text(encoding="utf-8")
    assert "channels:\n  frontdesk:" in text
    channels.write_text(text.replace("channels:\n  frontdesk:", "channels:\n  wechat:\n    cycle: daily\n"
                                     "    capacity: null\n    format: csv\n  frontdesk:", 1), encoding="utf-8")
    path = write_table(tmp_path / "dnd.parquet", "dnd", [{"msisdn": "13800000001", "channel": "WeChat"}])
    refused(cli, path, expected=["column channel: value is not one of"])  # the default rules have no wechat
    result = cli("ingest", str(path), "--matrices", str(rules))
    assert result.exit_code == 0, result.stderr
    assert query(cli.db, "SELECT channel FROM dnd") == [("wechat",)]


# -- keys and text: trimmed, so that equal-to-a-person is equal-to-the-engine -----------------
def test_keys_are_trimmed_so_a_trailing_space_joins_and_duplicates(cli, tmp_path):
    write_table(tmp_path / "a" / f"subscribers_{M}.parquet", "subscribers",
                [{"msisdn": "13800000007 ", "month": M, "plan_id": "ZX128\t", "city": "\u3000金华 "}])
    write_table(tmp_path / "a" / f"billing_{M}.parquet", "billing", [{"msisdn": "\u00a013800000007", "month": f" {M}"}])
    write_table(tmp_path / "a" / "plans.parquet", "plans", [{"plan_id": " ZX128", "plan_name": " 飞享 128 "}])
    result = cli("ingest", str(tmp_path / "a"))
    assert result.exit_code == 0, result.stderr
    assert query(cli.db, "SELECT s.msisdn, s.city, p.plan_name, b.month FROM subscribers s "
                         "JOIN billing b USING (msisdn, month) JOIN plans p USING (plan_id)") == [
        ("13800000007", "金华", "飞享 128", M)]  # inner spaces stay: only the ends are trimmed
    dup = write_table(tmp_path / "b" / f"usage_{M}.parquet", "usage",
                      [{"msisdn": "13800000007", "month": M}, {"msisdn": "13800000007 ", "month": M}])
    refused(cli, dup, expected=["column msisdn, month: duplicate key (msisdn, month) = (13800000007, 2026-10) "
                                "appears 2 times"])
    dnd = write_table(tmp_path / "c" / "dnd.parquet", "dnd",
                      [{"msisdn": "13800000007", "channel": "sms"}, {"msisdn": "13800000007", "channel": " SMS"}])
    refused(cli, dnd, expected=["duplicate key (msisdn, channel) = (13800000007, sms)"])


@pytest.mark.parametrize("msisdn", ["abc", "123", "1.3800000009e10", "138000000071", "1380000000", "138 0000 0007",
                                    "+8613800000007", "１３８００００００７", "1380000000٧", "13800000007\n1"])
def test_msisdn_must_be_eleven_ascii_digits(loaded, tmp_path, msisdn):
    path = write_table(tmp_path / "dnd.parquet", "dnd",
                       [{"msisdn": "13800000001", "channel": "*"}, {"msisdn": msisdn, "channel": "*"}])
    refused(loaded, path, expected=["dnd.parquet: table dnd: column msisdn: msisdn is not an 11-digit string "
                                    f"(1 row; e.g. {msisdn!r})"])


@pytest.mark.parametrize("msisdn", ["\t", "", " \u3000 ", None])
def test_a_blank_msisdn_is_a_missing_key(loaded, tmp_path, msisdn):
    path = write_table(tmp_path / f"usage_{M}.parquet", "usage", [{"msisdn": msisdn, "month": M}])
    refused(loaded, path, expected=["table usage: column msisdn: key column is NULL or empty"])


@pytest.mark.parametrize(("arrow_type", "value", "source"), [
    (pa.float64(), 58.0, "DOUBLE"), (pa.int64(), 58, "BIGINT"), (pa.decimal128(5, 1), decimal.Decimal("58.0"),
                                                                 "DECIMAL(5,1)"),
    (pa.bool_(), True, "BOOLEAN"), (pa.date32(), dt.date(2026, 1, 1), "DATE"),
])
def test_a_text_column_stored_as_another_type_is_refused(loaded, tmp_path, arrow_type, value, source):
    """58.0 must never silently become '58.0' beside the text plan id '58'."""
    path = write_table(tmp_path / f"subscribers_{M}.parquet", "subscribers",
                       [{"msisdn": "13800000001", "month": M, "plan_id": value}], types={"plan_id": arrow_type})
    refused(loaded, path, expected=[f"column plan_id: type {source} cannot be read as VARCHAR",
                                    "a number has no single text form"])


# -- numbers: finite, exact ---------------------------------------------------------------------
@pytest.mark.parametrize(("table", "column", "value", "arrow_type"), [
    ("billing", "total_fee", float("nan"), None),
    ("billing", "discount_fee", float("-inf"), None),
    ("subscribers", "balance", float("inf"), None),
    ("usage", "data_mb", float("nan"), None),
    ("usage", "voice_roam_min", float("inf"), None),
    ("usage", "sms_count", float("inf"), pa.float64()),
    ("plans", "monthly_rental", float("nan"), None),
    ("plans", "voice_overage_per_min", float("inf"), None),
    ("plans", "included_data_mb", "NaN", pa.string()),
    ("events", "value", "-Infinity", pa.string()),
    ("billing", "total_fee", "inf", pa.string()),
])
def test_nan_and_infinity_are_refused_in_every_numeric_column(loaded, tmp_path, table, column, value, arrow_type):
    keys = {"subscribers": {"msisdn": "13800000001", "month": M}, "billing": {"msisdn": "13800000001", "month": M},
            "usage": {"msisdn": "13800000001", "month": M}, "plans": {"plan_id": "ZX128"},
            "events": {"msisdn": "13800000001", "event_time": dt.datetime(2026, 10, 3, 9), "event_type": "x"}}[table]
    path = write_table(tmp_path / f"{table}.parquet", table, [{**keys, column: value}],
                       types={column: arrow_type} if arrow_type else None)
    refused(loaded, path, expected=[f"table {table}: column {column}:", "not a finite number"])


def test_money_is_decimal_and_exact_to_the_fen(cli, tmp_path):
    fees = dict(total_fee=0.1 + 0.2, rental_fee=191.51, voice_overage_fee=191.52, data_overage_fee=1e-17,
                addon_fee=-0.0, ld_fee=12345678.9, discount_fee=0.29999999999999998)
    path = write_table(tmp_path / f"billing_{M}.parquet", "billing", [{"msisdn": "13800000001", "month": M, **fees}])
    plans = write_table(tmp_path / "plans.parquet", "plans",
                        [{"plan_id": "A", "monthly_rental": "58.00 ",
                          "data_overage_per_mb": 0.29, "voice_overage_per_min": 0.19}],
                        types={"monthly_rental": pa.string()})
    result = cli("ingest", str(path), str(plans))
    assert result.exit_code == 0, result.stderr
    D = decimal.Decimal
    assert query(cli.db, "SELECT total_fee, rental_fee, voice_overage_fee, data_overage_fee, addon_fee, ld_fee, "
                         "discount_fee, typeof(total_fee) FROM billing") == [
        (D("0.30"), D("191.51"), D("191.52"), D("0.00"), D("0.00"), D("12345678.90"), D("0.30"), "DECIMAL(18,2)")]
    assert query(cli.db, "SELECT monthly_rental, data_overage_per_mb, typeof(data_overage_per_mb) FROM plans") == [
        (D("58.00"), D("0.290000"), "DECIMAL(18,6)")]


@pytest.mark.parametrize(("column", "value", "arrow_type"), [
    ("total_fee", 191.515, None), ("rental_fee", 0.001, None), ("discount_fee", -12.345, None),
    ("addon_fee", "10.005", pa.string()), ("ld_fee", decimal.Decimal("1.234"), pa.decimal128(10, 3)),
    ("total_fee", 1e17, None),  # beyond DECIMAL(18,2)
])
def test_money_that_is_not_a_whole_fen_is_refused(loaded, tmp_path, column, value, arrow_type):
    path = write_table(tmp_path / f"billing_{M}.parquet", "billing",
                       [{"msisdn": "13800000001", "month": M, column: value}],
                       types={column: arrow_type} if arrow_type else None)
    err = refused(loaded, path, expected=[f"table billing: column {column}:"])
    assert "not a whole fen" in err or "cannot be read as DECIMAL(18,2) without loss" in err


def test_float32_money_is_read_as_the_fen_it_stands_for(loaded, tmp_path):
    """float32 191.51 is 191.50999450683594: the nearest float to a whole fen is that fen."""
    rows = [{"msisdn": "13800000001", "month": M, "total_fee": 191.51, "rental_fee": 0.07, "ld_fee": 99999.99}]
    types = {"total_fee": pa.float32(), "rental_fee": pa.float32(), "ld_fee": pa.float32()}
    ok = write_table(tmp_path / "a" / f"billing_{M}.parquet", "billing", rows, types=types)
    assert loaded("ingest", str(ok)).exit_code == 0
    D = decimal.Decimal
    assert query(loaded.db, "SELECT total_fee, rental_fee, ld_fee FROM billing") == [
        (D("191.51"), D("0.07"), D("99999.99"))]
    bad = write_table(tmp_path / "b" / f"billing_{M}.parquet", "billing", [{**rows[0], "total_fee": 191.515}],
                      types=types)
    refused(loaded, bad, expected=["column total_fee: value has more than 2 decimal places (not a whole fen)"])


def test_unit_prices_keep_six_places_and_refuse_a_seventh(loaded, tmp_path):
    ok = write_table(tmp_path / "a" / "plans.parquet", "plans", [{"plan_id": "A", "data_overage_per_mb": 0.000123}])
    assert loaded("ingest", str(ok)).exit_code == 0
    assert query(loaded.db, "SELECT CAST(data_overage_per_mb AS VARCHAR) FROM plans") == [("0.000123",)]
    bad = write_table(tmp_path / "b" / "plans.parquet", "plans", [{"plan_id": "A", "voice_overage_per_min": 0.1234567}])
    refused(loaded, bad, expected=["column voice_overage_per_min: value has more than 6 decimal places"])


def test_the_double_to_decimal_cast_rounds_every_whole_fen_to_itself():
    """Every fen from -1,000.00 to 99,999.99 as the nearest DOUBLE, and one ulp either side of it
    (float noise), passes the whole-fen check and is stored as exactly that fen; half a fen fails."""
    from mktool.contract import Column
    from mktool.ingest import ColumnRead, _type_checks

    read = ColumnRead(Column("x", "DECIMAL(18,2)"), "x", "DOUBLE")
    checks = dict(_type_checks(read))
    places = next(c for p, c in checks.items() if "decimal places" in p)
    bad = duckdb.execute(f"""
        WITH fen AS (SELECT i FROM range(-100000, 10000000) t(i)),
        x AS (SELECT i, CAST(i AS DOUBLE) / 100 AS v FROM fen),
        noisy AS (SELECT i, v AS x FROM x UNION ALL SELECT i, nextafter(v, 1e300) FROM x
                  UNION ALL SELECT i, nextafter(v, -1e300) FROM x)
        SELECT count(*), count_if({places}), count_if(CAST({read.stored()} AS DECIMAL(18,2)) * 100 <> i)
        FROM noisy""").fetchone()
    assert bad == (3 * 10_100_000, 0, 0)
    halves = duckdb.execute(f"SELECT count_if({places}) FROM (SELECT (i + 0.5) / 100 AS x "
                            f"FROM range(-100000, 1000000) t(i))").fetchone()
    assert halves == (1_100_000,)


def test_an_integer_above_2_53_given_as_text_keeps_its_last_digit(cli, tmp_path):
    path = write_table(tmp_path / f"usage_{M}.parquet", "usage",
                       [{"msisdn": "13800000001", "month": M, "sms_count": "9007199254740993", "contacts": " 3.0 ",
                         "contacts_in_net": "1e3"}],
                       types={"sms_count": pa.string(), "contacts": pa.string(), "contacts_in_net": pa.string()})
    result = cli("ingest", str(path))
    assert result.exit_code == 0, result.stderr
    assert query(cli.db, "SELECT sms_count, contacts, contacts_in_net FROM usage") == [(9007199254740993, 3, 1000)]


@pytest.mark.parametrize(("table", "column", "value", "arrow_type"), [
    ("usage", "contacts", "3.5", pa.string()),  # DuckDB's own cast would round it to 4
    ("usage", "sms_count", "9007199254740993.5", pa.string()),
    ("usage", "sms_count", "99999999999999999999", pa.string()),  # beyond BIGINT
    ("usage", "sms_count", 2.0 ** 70, pa.float64()),
    ("usage", "data_mb", 2 ** 53 + 1, pa.int64()),  # DOUBLE would store 2^53
    ("usage", "voice_out_min", "9007199254740993", pa.string()),
])
def test_integers_that_would_lose_digits_are_refused(loaded, tmp_path, table, column, value, arrow_type):
    path = write_table(tmp_path / f"{table}.parquet", table, [{"msisdn": "13800000001", "month": M, column: value}],
                       types={column: arrow_type})
    refused(loaded, path, expected=[f"column {column}: value cannot be read as", "without loss"])


def test_a_timestamp_string_read_as_a_date_must_not_lose_its_time(loaded, tmp_path):
    rows = [{**CONTACT, "contact_date": "2026-10-03 00:00:00"}, {**CONTACT, "contact_date": "2026-10-04 12:30:00",
                                                                  "policy_id": "P2"}]
    path = write_table(tmp_path / "contact_history.parquet", "contact_history", rows,
                       types={"contact_date": pa.string()})
    refused(loaded, path, expected=["column contact_date: value is a time, not a date", "'2026-10-04 12:30:00'"])
    ok = write_table(tmp_path / "ok" / "contact_history.parquet", "contact_history", rows[:1],
                     types={"contact_date": pa.string()})
    assert loaded("ingest", str(ok)).exit_code == 0
    assert query(loaded.db, "SELECT contact_date FROM contact_history") == [(dt.date(2026, 10, 3),)]
    inf = write_table(tmp_path / "inf" / "contact_history.parquet", "contact_history",
                      [{**CONTACT, "contact_date": "infinity"}], types={"contact_date": pa.string()})
    refused(loaded, inf, expected=["column contact_date: value cannot be read as DATE without loss"])


# -- NULLs ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("table", "row", "column"), [
    ("billing", {"total_fee": None}, "total_fee"),
    ("subscribers", {"city": None}, "city"),
    ("subscribers", {"city": " \t "}, "city"),  # blank text is NULL
    ("subscribers", {"vnet": None}, "vnet"),
    ("subscribers", {"join_date": None}, "join_date"),
    ("subscribers", {"status": ""}, "status"),
    ("plans", {"monthly_rental": None}, "monthly_rental"),
    ("plans", {"is_target": None}, "is_target"),
    ("contact_history", {**CONTACT, "outcome": None}, "outcome"),
    ("usage", {"contacts": None}, "contacts"),
])
def test_nulls_in_a_column_that_is_not_nullable_are_refused(loaded, tmp_path, table, row, column):
    keys = {"plans": {"plan_id": "ZX128"}, "contact_history": {}}.get(table, {"msisdn": "13800000001", "month": M})
    path = write_table(tmp_path / f"{table}.parquet", table, [{**keys, **row}])
    refused(loaded, path, expected=[f"table {table}: column {column}: value is missing (NULL or blank) "
                                    "in a column that is not nullable (1 row"])


def test_an_all_null_column_of_the_null_type(loaded, tmp_path):
    """pandas writes an all-None column as Parquet's NULL type: refused where not nullable, NULL where nullable."""
    rows = [{"msisdn": "13800000001", "month": M, "join_date": None, "contract_end": None}]
    bad = write_table(tmp_path / "a" / f"subscribers_{M}.parquet", "subscribers", rows,
                      types={"join_date": pa.null(), "contract_end": pa.null()})
    refused(loaded, bad, expected=["column join_date: value is missing (NULL or blank)"])
    ok = write_table(tmp_path / "b" / f"subscribers_{M}.parquet", "subscribers",
                     [{**rows[0], "join_date": dt.date(2020, 1, 1)}], types={"contract_end": pa.null()})
    result = loaded("ingest", str(ok))
    assert result.exit_code == 0, result.stderr
    assert query(loaded.db, f"SELECT contract_end, typeof(contract_end) FROM subscribers WHERE month = '{M}'") == [
        (None, "DATE")]


def test_a_missing_nullable_column_is_filled_with_null_and_a_required_one_is_refused(loaded, tmp_path):
    ok = write_table(tmp_path / "a" / f"subscribers_{M}.parquet", "subscribers",
                     [{"msisdn": "13800000001", "month": M}], drop=("handset_gen", "group_id", "bundle_end"))
    assert loaded("ingest", str(ok)).exit_code == 0
    assert query(loaded.db, f"SELECT handset_gen, group_id, bundle_end FROM subscribers WHERE month = '{M}'") == [
        (None, None, None)]
    bad = write_table(tmp_path / "b" / f"subscribers_{M}.parquet", "subscribers",
                      [{"msisdn": "13800000001", "month": M}], drop=("city",))
    refused(loaded, bad, expected=["missing required column city"])


# -- column names -------------------------------------------------------------------------------
@pytest.mark.parametrize("names", [("total_fee", "total_fee"), ("total_fee", "TOTAL_FEE"), ("Total_Fee", "total_fee "),
                                   ("region", "REGION")])
def test_a_column_name_given_twice_is_refused(loaded, tmp_path, names):
    base = write_table(tmp_path / "x.parquet", "billing", [{"msisdn": "13800000001", "month": M}])
    t = pq.read_table(base).drop_columns(["total_fee"])
    for i, name in enumerate(names):
        t = t.append_column(name, pa.array([150.0 + i]))
    path = tmp_path / f"billing_{M}.parquet"
    pq.write_table(t, path)
    refused(loaded, path, expected=[f"billing_{M}.parquet: table billing: column {names[0].strip().lower()}: "
                                    f"column name {names[0]!r} appears twice"])


def test_a_column_name_in_another_case_is_the_contract_column(cli, tmp_path):
    base = write_table(tmp_path / "x.parquet", "billing", [{"msisdn": "13800000001", "month": M}])
    t = pq.read_table(base)
    t = t.rename_columns([n.upper() if n == "total_fee" else n for n in t.column_names])
    path = tmp_path / f"billing_{M}.parquet"
    pq.write_table(t, path)
    assert cli("ingest", str(path)).exit_code == 0
    assert query(cli.db, "SELECT column_name FROM information_schema.columns WHERE table_name = 'billing' "
                         "AND lower(column_name) = 'total_fee'") == [("total_fee",)]
    assert query(cli.db, "SELECT total_fee FROM billing") == [(decimal.Decimal("150.00"),)]


# -- file names and folders ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["billing_*.parquet", "billing_2026-10 [1].parquet", "billing_?.parquet",
                                  "billing_[!x]*.parquet", "billing_**.parquet"])
def test_a_file_name_with_glob_characters_reads_exactly_that_file(cli, tmp_path, name):
    write_table(tmp_path / "in1" / name.replace("*", "x").replace("?", "y").replace("[", "("), "billing",
                [{"msisdn": "13800000009", "month": M}])  # what "in[1]" would match as a pattern
    folder = tmp_path / "in[1]"
    for other, msisdn in [("billing_2026-10 1.parquet", "13800000002"), ("billing_a.parquet", "13800000003"),
                          ("billing_x.parquet", "13800000004")]:
        write_table(folder / other, "billing", [{"msisdn": msisdn, "month": M}])
    target = write_table(folder / name, "billing", [{"msisdn": "13800000001", "month": M}])
    result = cli("ingest", str(target))
    assert result.exit_code == 0, result.stderr
    assert query(cli.db, "SELECT msisdn FROM billing") == [("13800000001",)]
    assert query(cli.db, "SELECT file, sha256, rows FROM ingest_log") == [
        (str(target.resolve()), file_sha256(target), 1)]


def test_a_partition_style_folder_name_adds_no_column(cli, tmp_path):
    """read_parquet would take month=2026-09 from the folder name (hive partitioning) over the file's month."""
    path = write_table(tmp_path / "month=2026-09" / "usage.parquet", "usage", [{"msisdn": "13800000001", "month": M}])
    assert cli("ingest", str(tmp_path / "month=2026-09")).exit_code == 0
    assert query(cli.db, "SELECT month FROM usage") == [(M,)]
    assert path.exists()


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "extracts"
    write_table(folder / f"subscribers_{M}.parquet", "subscribers", [{"msisdn": "13800000001", "month": M}])
    write_table(folder / "more" / f"billing_{M}.parquet", "billing", [{"msisdn": "13800000001", "month": M}])
    return folder


def test_an_unreadable_sub_folder_is_refused_not_skipped(loaded, tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    locked = folder / "locked"
    write_table(locked / f"usage_{M}.parquet", "usage", [{"msisdn": "13800000001", "month": M}])
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:  # tests run as root, where chmod 000 does not stop reading
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    refused(loaded, folder, expected=[f"{locked}: cannot read folder (Permission denied)"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a folder whatever its permissions")
def test_an_unreadable_sub_folder_is_refused_for_real(loaded, tmp_path):
    folder = _folder(tmp_path)
    locked = folder / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        refused(loaded, folder, expected=[f"{locked}: cannot read folder"])
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize(("make", "expected"), [
    (lambda f, t: (f / "linked").symlink_to(t / "elsewhere", target_is_directory=True),
     "linked: folder is a symbolic link"),
    (lambda f, t: (f / "usage_2026-10.parquet").symlink_to(t / "gone.parquet"),
     "usage_2026-10.parquet: symbolic link leads nowhere"),
    (lambda f, t: (f / "loop").symlink_to(f / "loop"), "loop: symbolic link leads nowhere"),
    (lambda f, t: (f / "more" / "up").symlink_to(f, target_is_directory=True), "up: folder is a symbolic link"),
])
def test_links_in_a_folder_that_cannot_be_followed_safely_are_refused(loaded, tmp_path, make, expected):
    folder = _folder(tmp_path)
    write_table(tmp_path / "elsewhere" / f"usage_{M}.parquet", "usage", [{"msisdn": "13800000001", "month": M}])
    make(folder, tmp_path)
    refused(loaded, folder, expected=[expected])


def test_a_link_to_a_file_is_followed(cli, tmp_path):
    folder = _folder(tmp_path)
    target = write_table(tmp_path / "elsewhere" / "u.parquet", "usage", [{"msisdn": "13800000001", "month": M}])
    (folder / f"usage_{M}.parquet").symlink_to(target)
    (folder / "notes.txt").write_text("not an extract")  # other files are ignored, as before
    write_table(folder / f"VAS_{M}.PARQUET", "vas", [{"msisdn": "13800000001", "month": M, "service": "crbt"}])
    result = cli("ingest", str(folder))
    assert result.exit_code == 0, result.stderr
    assert query(cli.db, "SELECT table_name, file FROM ingest_log ORDER BY 1") == [
        ("billing", str((folder / "more" / f"billing_{M}.parquet").resolve())),
        ("subscribers", str((folder / f"subscribers_{M}.parquet").resolve())),
        ("usage", str(target.resolve())),
        ("vas", str((folder / f"VAS_{M}.PARQUET").resolve())),  # the suffix in any case
    ]


def test_a_database_made_under_the_old_contract_gets_decimal_money(cli, tmp_path):
    """Money columns created as DOUBLE by an earlier release follow the contract on the next load."""
    con = duckdb.connect(str(cli.db))
    con.execute("CREATE TABLE billing AS SELECT '13800000001' AS msisdn, '2026-09' AS month, "
                "191.52::DOUBLE AS total_fee, "
                "0.0::DOUBLE AS rental_fee, 0.0::DOUBLE AS voice_overage_fee, 0.0::DOUBLE AS data_overage_fee, "
                "0.0::DOUBLE AS addon_fee, 0.0::DOUBLE AS ld_fee, 0.0::DOUBLE AS discount_fee")
    con.close()
    path = write_table(tmp_path / f"billing_{M}.parquet", "billing", [{"msisdn": "13800000001", "month": M}])
    result = cli("ingest", str(path))
    assert result.exit_code == 0, result.stderr
    assert query(cli.db, "SELECT month, total_fee, typeof(total_fee) FROM billing ORDER BY month") == [
        ("2026-09", decimal.Decimal("191.52"), "DECIMAL(18,2)"), (M, decimal.Decimal("150.00"), "DECIMAL(18,2)")]


# -- BINARY text (Hive / Impala) ------------------------------------------------------------------
def _binary_subscribers(path: Path, city: bytes, msisdn: bytes = b"13800000001") -> Path:
    base = write_table(path.with_suffix(".tmp"), "subscribers", [{"msisdn": "x", "month": M}])
    t = pq.read_table(base)
    t = t.set_column(t.column_names.index("city"), "city", pa.array([city], pa.binary()))
    t = t.set_column(t.column_names.index("msisdn"), "msisdn", pa.array([msisdn], pa.binary()))
    t = t.set_column(t.column_names.index("status"), "status", pa.array([b"Active "], pa.binary()))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, path)
    base.unlink()
    return path


def test_binary_string_columns_are_decoded_as_utf8(cli, tmp_path):
    path = _binary_subscribers(tmp_path / f"subscribers_{M}.parquet", "金华 ".encode())
    assert duckdb.execute(f"SELECT typeof(city) FROM '{path}'").fetchone() == ("BLOB",)
    result = cli("ingest", str(path))
    assert result.exit_code == 0, result.stderr
    assert query(cli.db, "SELECT msisdn, city, status, typeof(city) FROM subscribers") == [
        ("13800000001", "金华", "active", "VARCHAR")]


def test_binary_that_is_not_utf8_is_refused_with_the_column_named(loaded, tmp_path):
    path = _binary_subscribers(tmp_path / f"subscribers_{M}.parquet", "金华".encode("gbk"))
    refused(loaded, path, expected=[f"subscribers_{M}.parquet: table subscribers: column city: "
                                    "value is not valid UTF-8 text (1 row; e.g. b'"])


# -- the contract document --------------------------------------------------------------------
def test_docs_contract_md_is_generated_from_the_contract():
    """docs/contract.md is `python -m mktool.contract > docs/contract.md`: regenerate it when the contract changes."""
    assert (ROOT / "docs" / "contract.md").read_text(encoding="utf-8") == markdown()


def test_the_contract_states_each_column_class():
    t = TABLES
    assert t["subscribers"].column("status").allowed() == ("active", "suspended", "closed")
    assert t["dnd"].column("channel").allowed(["sms", "app"]) == ("sms", "app", "*")
    assert t["contact_history"].column("channel").allowed(["sms"]) == ("sms",)
    assert t["subscribers"].column("handset_gen").case == "upper" and t["subscribers"].column("handset_gen").nullable
    assert t["billing"].column("total_fee").type == "DECIMAL(18,2)" and t["plans"].column("monthly_rental").scale == 2
    assert t["plans"].column("data_overage_per_mb").type == "DECIMAL(18,6)"
    assert all(c.type == "DECIMAL(18,2)" for c in t["billing"].columns if c.name.endswith("_fee"))
    assert {"\t", "\u00a0", "\u3000", "\ufeff", " "} <= set(WHITESPACE)
    md = markdown()
    assert "| `status` | VARCHAR | no | one of `active` / `suspended` / `closed`" in md
