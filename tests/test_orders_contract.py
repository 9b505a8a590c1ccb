"""The `orders` extract (issue 13 item 1) under the contract every table follows (SPEC §2).

Product orders and cancellations: key (msisdn, order_time, policy_id, action), loaded as upsert;
`action` is a vocabulary column (order / cancel), `channel` a nullable one (channels.yaml's names).
Each refusal must name the file, table, column and an example row, exit 1 and change nothing.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import fetch as query
from conftest import write_table
from test_ingest_contract import refused, state

from mktool.contract import TABLES

T0 = dt.datetime(2026, 10, 5, 14, 30, 0)
ORDER = {"msisdn": "13800000001", "order_time": T0, "policy_id": "MI_PACK_10", "action": "order", "channel": "sms"}


def _orders(path: Path, rows: list[dict], **kwargs) -> Path:
    return write_table(path, "orders", rows, **kwargs)


def test_orders_contract_declares_key_upsert_and_vocabularies():
    t = TABLES["orders"]
    assert t.key == ("msisdn", "order_time", "policy_id", "action")
    assert t.reload == "upsert" and not t.required and not t.monthly
    assert t.column("action").allowed() == ("order", "cancel")
    assert t.column("channel").nullable and t.column("channel").allowed(["sms", "app"]) == ("sms", "app")
    assert t.column("order_time").type == "TIMESTAMP" and t.column("policy_id").identifier


def test_a_good_orders_file_loads_with_values_normalised(cli, tmp_path):
    rows = [
        {**ORDER, "msisdn": " 13800000001", "action": "Order ", "channel": " SMS"},
        {**ORDER, "order_time": dt.datetime(2026, 10, 8, 9, 0), "action": "\u00a0CANCEL", "channel": None},
        {**ORDER, "msisdn": "13800000002", "policy_id": " LD_PACK_AH\u3000", "channel": "Frontdesk"},
    ]
    result = cli("ingest", str(_orders(tmp_path / "orders.parquet", rows)))
    assert result.exit_code == 0, result.stderr
    assert query(cli.db, "SELECT msisdn, order_time, policy_id, action, channel FROM orders ORDER BY ALL") == [
        ("13800000001", T0, "MI_PACK_10", "order", "sms"),
        ("13800000001", dt.datetime(2026, 10, 8, 9, 0), "MI_PACK_10", "cancel", None),
        ("13800000002", T0, "LD_PACK_AH", "order", "frontdesk"),
    ]


def test_a_file_named_orders_part_is_the_orders_table(cli, tmp_path):
    path = _orders(tmp_path / "orders_2026-11.parquet", [ORDER])
    assert cli("ingest", str(path)).exit_code == 0
    assert query(cli.db, "SELECT count(*) FROM orders") == [(1,)]


def test_channel_is_nullable_and_may_be_absent(cli, tmp_path):
    path = _orders(tmp_path / "orders.parquet", [ORDER], drop=("channel",))
    result = cli("ingest", str(path))
    assert result.exit_code == 0, result.stderr
    assert query(cli.db, "SELECT action, channel FROM orders") == [("order", None)]


def test_a_policy_id_not_in_policies_yaml_is_kept_as_in_contact_history(cli, tmp_path):
    """The billing system's records are facts: a retired offer's order is kept, as contact_history keeps it."""
    orders = _orders(tmp_path / "orders.parquet", [{**ORDER, "policy_id": "RETIRED_2025"}])
    contacts = write_table(tmp_path / "contact_history.parquet", "contact_history",
                           [{"msisdn": "13800000001", "contact_date": dt.date(2026, 10, 3), "channel": "sms",
                             "policy_id": "RETIRED_2025", "outcome": "accepted"}])
    result = cli("ingest", str(orders), str(contacts))
    assert result.exit_code == 0, result.stderr
    assert query(cli.db, "SELECT policy_id FROM orders") == [("RETIRED_2025",)]
    assert query(cli.db, "SELECT policy_id FROM contact_history") == [("RETIRED_2025",)]


@pytest.fixture
def loaded(cli, tmp_path):
    """A database that already holds one order, so a refusal has something to keep intact."""
    good = _orders(tmp_path / "good" / "orders.parquet", [ORDER])
    assert cli("ingest", str(good)).exit_code == 0
    return cli


@pytest.mark.parametrize(("column", "value", "expected"), [
    ("action", "ordered", ["column action: value is not one of", "order, cancel", "e.g. 'ordered'"]),
    ("action", "退订", ["column action: value is not one of", "e.g. '退订'"]),
    ("action", "subscribe", ["column action: value is not one of", "compared case-insensitively"]),
    ("channel", "wechat", ["column channel: value is not one of", "(from channels.yaml)", "e.g. 'wechat'"]),
    ("channel", "*", ["column channel: value is not one of", "e.g. '*'"]),  # '*' is only dnd's
])
def test_a_value_outside_a_vocabulary_is_refused_with_file_column_and_row(loaded, tmp_path, column, value, expected):
    path = _orders(tmp_path / "orders.parquet", [{**ORDER, "msisdn": "13800000009", column: value}])
    err = refused(loaded, path, expected=["orders.parquet: table orders:", *expected, "example row:"])
    row = err.split("example row:", 1)[1]
    assert "msisdn=13800000009" in row and f"{column}={value}" in row and "policy_id=MI_PACK_10" in row, err


@pytest.mark.parametrize(("row", "column"), [
    ({"msisdn": "1380000001"}, "msisdn"),        # 10 digits
    ({"msisdn": "138000000012"}, "msisdn"),      # 12 digits
    ({"policy_id": "MI_PACK\u200b_10"}, "policy_id"),  # an invisible character inside an identifier
])
def test_a_malformed_value_is_refused(loaded, tmp_path, row, column):
    path = _orders(tmp_path / "orders.parquet", [{**ORDER, **row}])
    refused(loaded, path, expected=["orders.parquet: table orders:", f"column {column}", "example row:"])


@pytest.mark.parametrize("column", ["msisdn", "order_time", "policy_id", "action"])
def test_a_null_in_a_column_that_is_not_nullable_is_refused(loaded, tmp_path, column):
    rows = [{**ORDER, "msisdn": "13800000003"}, {**ORDER, "msisdn": "13800000004", column: None}]
    if column == "msisdn":
        rows[1]["policy_id"] = "CRBT_TRIAL"
    types = {column: pa.string()} if column != "order_time" else None
    path = _orders(tmp_path / "orders.parquet", rows, types=types)
    refused(loaded, path, expected=["orders.parquet: table orders:", f"column {column}", "example row:"])


@pytest.mark.parametrize("column", ["msisdn", "order_time", "policy_id", "action"])
def test_a_missing_required_column_is_refused(loaded, tmp_path, column):
    path = _orders(tmp_path / "orders.parquet", [ORDER], drop=(column,))
    refused(loaded, path, expected=["orders.parquet", "orders", column])


def test_an_order_time_given_as_text_is_cast_losslessly_or_refused(cli, tmp_path):
    good = _orders(tmp_path / "a" / "orders.parquet", [{**ORDER, "order_time": " 2026-10-05 14:30:00 "}],
                   types={"order_time": pa.string()})
    result = cli("ingest", str(good))
    assert result.exit_code == 0, result.stderr
    assert query(cli.db, "SELECT order_time FROM orders") == [(T0,)]
    bad = _orders(tmp_path / "b" / "orders.parquet", [{**ORDER, "order_time": "yesterday"}],
                  types={"order_time": pa.string()})
    refused(cli, bad, expected=["orders.parquet: table orders:", "column order_time", "example row:"])


def test_a_zoned_order_time_is_read_in_china_standard_time(cli, tmp_path):
    """06:30 UTC is 14:30 in Shanghai: the order is on the day the customer placed it, on every machine."""
    utc = dt.datetime(2026, 10, 5, 6, 30, tzinfo=dt.UTC)
    path = _orders(tmp_path / "orders.parquet", [{**ORDER, "order_time": utc}],
                   types={"order_time": pa.timestamp("us", tz="UTC")})
    result = cli("ingest", str(path))
    assert result.exit_code == 0, result.stderr
    assert query(cli.db, "SELECT order_time FROM orders") == [(T0,)]


def test_a_key_repeated_in_one_file_is_refused_also_after_normalising(loaded, tmp_path):
    """'Order ' and 'order' are one action, '13800000005 ' and '13800000005' one msisdn: one key twice."""
    rows = [{**ORDER, "msisdn": "13800000005", "action": "Order "},
            {**ORDER, "msisdn": "13800000005 ", "action": "order", "channel": "app"}]
    path = _orders(tmp_path / "orders.parquet", rows)
    refused(loaded, path, expected=["orders.parquet: table orders:", "duplicate key (msisdn, order_time, policy_id, "
                                    "action) = (13800000005, 2026-10-05 14:30:00, MI_PACK_10, order) appears 2 times",
                                    "example row:"])


def test_an_order_and_its_cancel_at_the_same_time_are_two_keys(cli, tmp_path):
    rows = [ORDER, {**ORDER, "action": "cancel"}]
    assert cli("ingest", str(_orders(tmp_path / "orders.parquet", rows))).exit_code == 0
    assert query(cli.db, "SELECT action FROM orders ORDER BY 1") == [("cancel",), ("order",)]


def test_loading_the_same_file_twice_keeps_one_copy(cli, tmp_path):
    rows = [ORDER, {**ORDER, "order_time": dt.datetime(2026, 10, 9, 10, 0), "action": "cancel"},
            {**ORDER, "msisdn": "13800000002", "channel": None}]
    path = _orders(tmp_path / "orders.parquet", rows)
    assert cli("ingest", str(path)).exit_code == 0
    first = state(cli.db)
    assert cli("ingest", str(path)).exit_code == 0
    assert query(cli.db, "SELECT count(*) FROM orders") == [(3,)]
    assert [t for t in state(cli.db) if t[0] == "orders"] == [t for t in first if t[0] == "orders"]


def test_a_later_extract_replaces_rows_by_key_and_adds_new_ones(cli, tmp_path):
    """Upsert: the November extract repeats an October order with its channel filled in, and adds a cancel."""
    assert cli("ingest", str(_orders(tmp_path / "a" / "orders.parquet", [{**ORDER, "channel": None}]))).exit_code == 0
    later = [ORDER, {**ORDER, "order_time": dt.datetime(2026, 10, 8, 9, 0), "action": "cancel", "channel": None}]
    assert cli("ingest", str(_orders(tmp_path / "b" / "orders.parquet", later))).exit_code == 0
    assert query(cli.db, "SELECT action, channel FROM orders ORDER BY order_time") == [("order", "sms"),
                                                                                      ("cancel", None)]


def test_a_refused_orders_file_leaves_a_folder_load_undone(loaded, tmp_path):
    """All files of one call load or none do: a bad orders file also stops the good contacts beside it."""
    folder = tmp_path / "in"
    write_table(folder / "contact_history.parquet", "contact_history",
                [{"msisdn": "13800000001", "contact_date": dt.date(2026, 10, 3), "channel": "sms",
                  "policy_id": "MI_PACK_10", "outcome": "accepted"}])
    _orders(folder / "orders.parquet", [{**ORDER, "action": "unsubscribe"}])
    refused(loaded, folder, expected=["orders.parquet: table orders:", "column action", "example row:"])
