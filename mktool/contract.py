"""The input contract (SPEC §2): every extract's table, key and column types, in one place.

Ingest validates against it, the docs are generated from it, and later steps rely on the
column names it guarantees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# ASCII digits only, and \Z: `$` would also accept a trailing newline ("2026-10\n").
MONTH_RE = re.compile(r"\A[0-9]{4}-(0[1-9]|1[0-2])\Z")


def check_month(month: str) -> str:
    """``--month`` values: YYYY-MM, or a located error."""
    if not MONTH_RE.match(month):
        from mktool.errors import MktoolError

        raise MktoolError(f"--month must be YYYY-MM, got '{month}'")
    return month


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # DuckDB type the column is stored as
    nullable: bool = False  # may hold NULLs and may be absent from an extract (filled with NULL)
    doc: str = ""


@dataclass(frozen=True)
class TableContract:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # unique within a load; () = no key
    monthly: bool  # has a `month` column; a reload replaces the months it carries
    required: bool  # a run needs it
    reload: str = "month"  # month: replace the months loaded | snapshot: replace the table | upsert: replace rows by key
    doc: str = ""
    column_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "column_names", tuple(c.name for c in self.columns))

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


S, D, F, I, B, T = "VARCHAR", "DATE", "DOUBLE", "BIGINT", "BOOLEAN", "TIMESTAMP"


def _c(name: str, type_: str, doc: str = "", nullable: bool = False) -> Column:
    return Column(name, type_, nullable, doc)


MSISDN = _c("msisdn", S, "11-digit subscriber number, a string (never an integer)")
MONTH = _c("month", S, "YYYY-MM")

TABLES: dict[str, TableContract] = {
    t.name: t
    for t in (
        TableContract(
            "subscribers",
            (
                MSISDN, MONTH,
                _c("city", S), _c("plan_id", S), _c("join_date", D),
                _c("status", S, "active / suspended / closed"),
                _c("payment", S, "prepaid / postpaid"),
                _c("handset_gen", S, "2G/3G/4G/5G", nullable=True),
                _c("contract_end", D, nullable=True),
                _c("bundle_type", S, "the customer's 0/1-class bundle", nullable=True),
                _c("bundle_end", D, nullable=True),
                _c("vnet", B, "virtual / family network member"),
                _c("group_id", S, "enterprise group", nullable=True),
                _c("balance", F, "prepaid balance, yuan"),
            ),
            key=("msisdn", "month"), monthly=True, required=True,
            doc="One row per subscriber per month.",
        ),
        TableContract(
            "usage",
            (
                MSISDN, MONTH,
                _c("voice_out_min", F, "billable outgoing minutes"),
                _c("voice_local_min", F), _c("voice_ld_out_min", F), _c("voice_ld_in_min", F),
                _c("voice_roam_min", F),
                _c("ld_top_province", S, "province called most on long distance", nullable=True),
                _c("sms_count", I), _c("data_mb", F),
                _c("contacts", I, "distinct contacts in the month"),
                _c("contacts_in_net", I, "of which on our network"),
            ),
            key=("msisdn", "month"), monthly=True, required=True,
        ),
        TableContract(
            "billing",
            (
                MSISDN, MONTH,
                _c("total_fee", F, "the month's bill (ARPU)"), _c("rental_fee", F),
                _c("voice_overage_fee", F), _c("data_overage_fee", F),
                _c("addon_fee", F, "auto-upgrade / add-on packs"), _c("ld_fee", F), _c("discount_fee", F),
            ),
            key=("msisdn", "month"), monthly=True, required=True,
        ),
        TableContract(
            "plans",
            (
                _c("plan_id", S), _c("plan_name", S), _c("monthly_rental", F),
                _c("included_data_mb", F), _c("included_voice_min", F),
                _c("data_overage_per_mb", F), _c("voice_overage_per_min", F),
                _c("product_status", I, "1 = mass-market plan; anything else = special tariff"),
                _c("is_target", B, "may be recommended"),
            ),
            key=("plan_id",), monthly=False, required=True, reload="snapshot",
            doc="The tariff catalogue; a load replaces the whole table.",
        ),
        TableContract(
            "vas",
            (MSISDN, MONTH, _c("service", S), _c("active", B), _c("uses", I)),
            key=("msisdn", "month", "service"), monthly=True, required=False,
        ),
        TableContract(
            "contact_history",
            (
                MSISDN, _c("contact_date", D), _c("channel", S), _c("policy_id", S),
                _c("outcome", S, "sent / accepted / rejected / no_answer / unsubscribed"),
            ),
            key=("msisdn", "contact_date", "channel", "policy_id"), monthly=False, required=False,
            reload="upsert", doc="Responses update earlier records with the same key.",
        ),
        TableContract(
            "dnd",
            (MSISDN, _c("channel", S, "channel name, or * for every channel")),
            key=("msisdn", "channel"), monthly=False, required=False, reload="snapshot",
            doc="The do-not-disturb list; a load replaces the whole list.",
        ),
        TableContract(
            "events",
            (MSISDN, _c("event_time", T), _c("event_type", S), _c("value", F)),
            key=("msisdn", "event_time", "event_type"), monthly=False, required=False, reload="upsert",
        ),
    )
}



def table_for_file(stem: str) -> str | None:
    """Recognise the table from a file name stem: ``usage``, ``usage_2026-10``, ``usage-part1``…

    The longest matching table name wins so that a future ``usage_daily`` table is not taken
    for ``usage``.
    """
    stem = stem.lower()
    best = None
    for name in TABLES:
        if stem == name or (stem.startswith(name) and stem[len(name)] in "_-."):
            if best is None or len(name) > len(best):
                best = name
    return best
