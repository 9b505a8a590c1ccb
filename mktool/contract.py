"""The input contract (SPEC §2): every extract's table, key and column types, in one place.

Ingest validates against it, the docs are generated from it, and later steps rely on the
column names it guarantees.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from mktool.errors import MktoolError

# ASCII digits only, and \Z: `$` would also accept a trailing newline ("2026-10\n").
MONTH_RE = re.compile(r"\A[0-9]{4}-(0[1-9]|1[0-2])\Z")


def check_month(month: str) -> str:
    """A month as every table stores it: YYYY-MM with a real month (2026-10, not 2026-7 or 2026/10).

    The one definition behind the command line's ``--month`` type and the steps' own checks;
    the message speaks of the value, the caller adds where it came from (an option, a file).
    """
    if not isinstance(month, str) or not MONTH_RE.match(month):
        raise MktoolError(f"month {month!r} is not YYYY-MM (a year and a month 01-12, such as 2026-10)")
    return month


#: What "trimmed" removes from both ends of every text value: ASCII whitespace (space, tab,
#: CR, LF, VT, FF), the Unicode spaces (NBSP U+00A0, the full-width 全角 space U+3000, the
#: typographic spaces U+2000-U+200A, …) and the invisible U+200B / U+FEFF that copy-paste and
#: BOM-writing exports leave behind. Every one of them is below '!' or non-ASCII, which the
#: cheap prefilters in ingest rely on.
WHITESPACE = (" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
              "\u2006\u2007\u2008\u2009\u200a\u200b\u2028\u2029\u202f\u205f\u3000\ufeff")
assert all(ch < "!" or ch >= "\x80" for ch in WHITESPACE)

#: Characters an identifier (plan_id, policy_id, service, event_type) may not hold inside
#: once trimmed: C0/C1 control characters and the invisible format characters (soft hyphen,
#: zero-width space / joiners, direction marks and overrides, word joiner, BOM). ``PLAN\u200bCHANGE``
#: looks like a policy id of the rules and never equals one, so a cool-down would silently not apply.
INVISIBLE = ("\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
             "\ufeff\ufff9-\ufffb")

#: A time-zone-aware timestamp (an instant, as Spark writes TIMESTAMP) is read as the wall-clock
#: time of China Standard Time, the operator's one time zone (no daylight saving): reading it in
#: the machine's local zone made the same file load as a September contact on a UTC machine and
#: an October one in Shanghai.
TIME_ZONE = "Asia/Shanghai"

#: Money in yuan, exact to the fen (分); unit prices (yuan per MB / per minute) to 6 places.
MONEY = "DECIMAL(18,2)"
UNIT_PRICE = "DECIMAL(18,6)"


# -- month arithmetic (the customer view's 3-month window) -------------------------------------
def month_index(month: str) -> int:
    return int(month[:4]) * 12 + int(month[5:7])


def month_from_index(index: int) -> str:
    y, m = divmod(index - 1, 12)
    return f"{y:04d}-{m + 1:02d}"


def window(month: str) -> tuple[str, str, str]:
    """M and the two calendar months before it."""
    i = month_index(month)
    return month, month_from_index(i - 1), month_from_index(i - 2)


@dataclass(frozen=True)
class Column:
    """One contract column: how it is stored, what it may hold, and how values are normalised.

    Every text column is trimmed (``WHITESPACE``) and a value that trims to nothing is NULL
    (so a blank never passes for a bundle or a city); a vocabulary column is also case-folded
    (``case``) and refused unless the result is in its vocabulary; a ``pattern`` column must
    match it in full after trimming. Numbers must be finite. A column not ``nullable`` holds
    no NULL and must be present.
    """

    name: str
    type: str  # DuckDB type the column is stored as
    nullable: bool = False  # may hold NULLs and may be absent from an extract (filled with NULL)
    doc: str = ""
    vocabulary: tuple[str, ...] = ()  # allowed values after normalisation; () = free text
    channels: bool = False  # the vocabulary also holds every channel name of channels.yaml
    case: str = ""  # "lower" | "upper": how a vocabulary value is case-folded before the check
    pattern: str = ""  # a regular expression the trimmed value must match in full
    identifier: bool = False  # compared as a key or join key: no INVISIBLE character inside

    @property
    def is_text(self) -> bool:
        return self.type == "VARCHAR"

    @property
    def is_vocabulary(self) -> bool:
        return bool(self.vocabulary) or self.channels

    @property
    def scale(self) -> int | None:
        """Decimal places of a DECIMAL column (2 for money), None for other types."""
        m = re.fullmatch(r"DECIMAL\(\d+,(\d+)\)", self.type)
        return int(m.group(1)) if m else None

    def allowed(self, channel_names: Sequence[str] = ()) -> tuple[str, ...]:
        """The vocabulary with the channel names of channels.yaml where the column takes them."""
        return (*channel_names, *self.vocabulary) if self.channels else self.vocabulary

    def rules(self) -> str:
        """The column's value rules in words, for docs/contract.md."""
        out = []
        if self.is_vocabulary:
            values = " / ".join(f"`{v}`" for v in self.vocabulary)
            if self.channels:
                values = "the channel names of channels.yaml" + (f", or {values}" if values else "")
            out.append(f"one of {values} ({self.case}-cased after trimming)")
        elif self.pattern:
            out.append(f"trimmed, then matches `{self.pattern}`")
        elif self.is_text:
            out.append("trimmed; blank = NULL" + (f"; {self.case}-cased" if self.case else ""))
        if self.identifier:
            out.append("no control or invisible character inside")
        if self.type == "BIGINT":
            out.append("whole number")
        if self.type == "DATE":
            out.append("finite date; a time of day is refused, not dropped")
        if self.type == "TIMESTAMP":
            out.append(f"finite; a time-zone-aware value is read in {TIME_ZONE} time")
        if self.type == "BOOLEAN":
            out.append("true / false (or 0 / 1)")
        if self.type == "DOUBLE" or self.scale is not None:
            out.append("finite")
        if self.scale is not None:
            out.append("exact to the fen" if self.scale == 2 else f"exact to {self.scale} decimal places")
        return "; ".join(out)


@dataclass(frozen=True)
class TableContract:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # unique within a load; () = no key
    monthly: bool  # has a `month` column; a reload replaces the months it carries
    required: bool  # a run needs it
    # month: replace the months loaded | snapshot: replace the table | upsert: replace rows by key
    reload: str = "month"
    doc: str = ""
    column_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "column_names", tuple(c.name for c in self.columns))

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


# The DuckDB types by initial, so the table contracts below read as a schema.
S, D, F, I, B, T = "VARCHAR", "DATE", "DOUBLE", "BIGINT", "BOOLEAN", "TIMESTAMP"  # noqa: E741 - type initials


def _c(name: str, type_: str, doc: str = "", nullable: bool = False) -> Column:
    return Column(name, type_, nullable, doc)


def _id(name: str, doc: str = "", *, case: str = "") -> Column:
    """A text column compared as a key or join key (plan_id, policy_id, service, event_type)."""
    return Column(name, S, doc=doc, case=case, identifier=True)


def _vocab(name: str, values: tuple[str, ...], doc: str = "", *, nullable: bool = False, case: str = "lower",
           channels: bool = False) -> Column:
    return Column(name, S, nullable, doc, vocabulary=values, channels=channels, case=case)


MSISDN = Column("msisdn", S, doc="11-digit subscriber number, a string (never an integer)", pattern="[0-9]{11}")
MONTH = Column("month", S, doc="YYYY-MM", pattern="[0-9]{4}-(0[1-9]|1[0-2])")
STATUSES = ("active", "suspended", "closed")
PAYMENTS = ("prepaid", "postpaid")
OUTCOMES = ("sent", "accepted", "rejected", "no_answer", "unsubscribed")
HANDSET_GENS = ("2G", "3G", "4G", "5G")
ORDER_ACTIONS = ("order", "cancel")  # orders.action: a product ordered, or an order of it cancelled (退订)
ALL_CHANNELS = "*"  # a dnd row for every channel

TABLES: dict[str, TableContract] = {
    t.name: t
    for t in (
        TableContract(
            "subscribers",
            (
                MSISDN, MONTH,
                _c("city", S), _id("plan_id"), _c("join_date", D),
                _vocab("status", STATUSES),
                _vocab("payment", PAYMENTS),
                _vocab("handset_gen", HANDSET_GENS, "handset generation", nullable=True, case="upper"),
                _c("contract_end", D, nullable=True),
                _c("bundle_type", S, "the customer's 0/1-class bundle", nullable=True),
                _c("bundle_end", D, nullable=True),
                _c("vnet", B, "virtual / family network member"),
                _c("group_id", S, "enterprise group", nullable=True),
                _c("balance", MONEY, "prepaid balance, yuan"),
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
                _c("total_fee", MONEY, "the month's bill (ARPU), yuan"), _c("rental_fee", MONEY),
                _c("voice_overage_fee", MONEY), _c("data_overage_fee", MONEY),
                _c("addon_fee", MONEY, "auto-upgrade / add-on packs"), _c("ld_fee", MONEY), _c("discount_fee", MONEY),
            ),
            key=("msisdn", "month"), monthly=True, required=True,
        ),
        TableContract(
            "plans",
            (
                _id("plan_id"), _c("plan_name", S), _c("monthly_rental", MONEY, "yuan"),
                _c("included_data_mb", F), _c("included_voice_min", F),
                _c("data_overage_per_mb", UNIT_PRICE, "yuan per MB"),
                _c("voice_overage_per_min", UNIT_PRICE, "yuan per minute"),
                _c("product_status", I, "1 = mass-market plan; anything else = special tariff"),
                _c("is_target", B, "may be recommended"),
            ),
            key=("plan_id",), monthly=False, required=True, reload="snapshot",
            doc="The tariff catalogue; a load replaces the whole table.",
        ),
        TableContract(
            "vas",
            (MSISDN, MONTH,
             _id("service", "newspaper, crbt, ring_change, mobile_internet, … (an open list)", case="lower"),
             _c("active", B), _c("uses", I)),
            key=("msisdn", "month", "service"), monthly=True, required=False,
        ),
        TableContract(
            "contact_history",
            (
                MSISDN, _c("contact_date", D), _vocab("channel", (), channels=True), _id("policy_id"),
                _vocab("outcome", OUTCOMES),
            ),
            key=("msisdn", "contact_date", "channel", "policy_id"), monthly=False, required=False,
            reload="upsert", doc="Responses update earlier records with the same key; a contact mktool recorded "
                "keeps its cycle and recorded_by (it stays that cycle's contact).",
        ),
        TableContract(
            "dnd",
            (MSISDN, _vocab("channel", (ALL_CHANNELS,), "* means every channel", channels=True)),
            key=("msisdn", "channel"), monthly=False, required=False, reload="snapshot",
            doc="The do-not-disturb list; a load replaces the whole list.",
        ),
        TableContract(
            "events",
            (MSISDN, _c("event_time", T),
             _id("event_type", "balance_low, data_90pct, hotline_call, … (what the scenes listen to; an open list)",
                 case="lower"),
             _c("value", F)),
            key=("msisdn", "event_time", "event_type"), monthly=False, required=False, reload="upsert",
        ),
        TableContract(
            "orders",
            (
                MSISDN, _c("order_time", T),
                # as in contact_history, an id that is not in policies.yaml (a retired or
                # not-yet-catalogued offer) is kept: the billing system's records are facts
                # that the evaluation counts per policy, not offers to validate
                _id("policy_id", "the offer ordered or cancelled; also an id not in policies.yaml (kept)"),
                _vocab("action", ORDER_ACTIONS, "order = the product was ordered; cancel = an order of it cancelled"),
                _vocab("channel", (), "where the order was taken", nullable=True, channels=True),
            ),
            key=("msisdn", "order_time", "policy_id", "action"), monthly=False, required=False, reload="upsert",
            doc="Product orders and cancellations from the billing system (订购 / 退订); the evaluation's take-up "
                "and 7-day cancellations. A reload replaces the rows with the same key.",
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


RELOAD_DOC = {
    "month": "loading a month replaces that month's rows",
    "snapshot": "a load replaces the whole table",
    "upsert": "rows with the same key are replaced",
}

CONTRACT_INTRO = (
    "# Input contract (SPEC §2)\n"
    "\n"
    "<!-- Generated from mktool/contract.py by `python -m mktool.contract > docs/contract.md`; edit the contract, not "
    "this file. -->\n"
    "\n"
    "Every extract is a Parquet file named after its table (`usage.parquet`, `usage_2026-10.parquet`, "
    "`usage-part1.parquet`; the `.parquet` suffix in any case) or loaded with `--table`. Monthly tables carry `month` "
    "as a `YYYY-MM` string; `msisdn` is always a string of 11 ASCII digits. Extra columns are kept. Every refusal "
    "names the file, table, column and an example row, exits 1, and leaves the database exactly as it was: all files "
    "of one call load or none do.\n"
    "\n"
    "Reload rules: **month** — loading a month replaces that month's rows; **snapshot** — a load replaces the whole "
    "table; **upsert** — rows with the same key are replaced (responses update earlier contacts); among the files of "
    "one `ingest` call the later file in name order wins, and a key repeated inside one file is refused.\n"
    "\n"
    "## How values are normalised, and what is refused\n"
    "\n"
    "Every value is either normalised to the one form the later steps compare against, or refused — never stored in a "
    "form that silently fails to match (an opt-out not applied, a customer dropped from every matrix).\n"
    "\n"
    "- **Text is trimmed.** Both ends of every text value (keys such as `msisdn`, `plan_id`, `policy_id`, `service`, "
    "and free text such as `city`) lose whitespace: ASCII space, tab, CR, LF, VT, FF, the Unicode spaces (NBSP U+00A0, "
    "the full-width space U+3000, U+2000–U+200A, …) and the invisible U+200B / U+FEFF. Inner characters stay (`飞享 "
    "128`). A value that trims to nothing is NULL. So `'13800000007'` and `'13800000007 '` are one key, and a "
    "duplicate when both appear.\n"
    "- **Vocabulary columns** (`status`, `payment`, `outcome`, `action`, `handset_gen`, and `channel`, whose "
    "vocabulary is the channel names of the rules folder's `channels.yaml`, plus `*` in `dnd`) are trimmed, "
    "case-folded (lower case; `handset_gen` upper case) and refused unless the result is in the vocabulary. Letters "
    "that only look alike "
    "(full-width `ＳＭＳ`) are refused, not guessed. `vas.service` is an open list (`newspaper`, `crbt`, …) but is "
    "lower-cased too, because the customer view looks its codes up in lower case; so is `events.event_type` (an open "
    "list too), because the scenes name their event types in lower case.\n"
    "- **Patterns**: `msisdn` must be exactly 11 ASCII digits after trimming, `month` exactly `YYYY-MM`.\n"
    "- **Identifiers** (`plan_id`, `policy_id`, `service`, `event_type`: compared as keys or join keys) may not hold a "
    "control or invisible character inside once trimmed (a zero-width space, BOM, soft hyphen, direction mark, tab, "
    "NUL): `PLAN\u200bCHANGE` looks like a policy id of the rules and never equals one.\n"
    "- **Text columns must arrive as text** (a string, or BINARY without the UTF8 annotation as Hive and Impala write "
    "it, which is decoded as UTF-8; bytes that are not UTF-8 are refused with the column named; BINARY in a number, "
    "date or boolean column is decoded and then read exactly like text). A number, date or boolean in a text column is "
    "refused: it has no single text form (`58`, `58.0` and `058` are one plan to a person and three to the engine).\n"
    "- **Time zones**: a timestamp that carries a zone (an instant, as Spark writes `TIMESTAMP`) is read as the "
    "wall-clock time of China Standard Time (`Asia/Shanghai`), never of the machine's zone, so a file loads the same "
    "everywhere; a date column still refuses one with a time of day.\n"
    "- **Numbers are finite**: NaN and ±infinity are refused in every numeric column (also written as text: `'nan'`, "
    "`'-Infinity'`); dates and times must be finite too.\n"
    "- **Money is exact to the fen**: fees, balance and monthly rental are stored as DECIMAL(18,2), unit prices (per "
    "MB, per minute) as DECIMAL(18,6). A value that is not a whole fen (`191.515`) is refused; binary floating-point "
    "noise within 1e-6 of a fen (`0.1 + 0.2` = 0.30000000000000004) is that fen, and a 32-bit float is read as the fen "
    "it is the nearest float to (float32 `191.51` is 191.5099945…). Text money (`'58.00'`) is read as a number first.\n"
    "- **Casts must be lossless**: text `'12.5'` → 12.5, `' 3.0 '` → 3, `0/1` → boolean are accepted; `'3.5'` as an "
    "integer, an integer that a DOUBLE cannot hold exactly (above 2^53), a text integer beyond BIGINT, and a timestamp "
    "whose time a DATE would drop (`'2026-10-04 12:30:00'`) are refused. Text integers are read straight as integers, "
    "never via DOUBLE, so `'9007199254740993'` keeps its last digit.\n"
    "- **NULLs**: a column not marked nullable holds no NULL (nor blank text) and must be present; a nullable column "
    "may be absent and is then filled with NULL. A column whose Parquet type is NULL (every value NULL, as pandas "
    "writes an all-`None` column) counts as all NULL.\n"
    "- **Column names** are matched trimmed and case-insensitively (`TOTAL_FEE` is `total_fee`); a name that appears "
    "twice in one file (`total_fee` twice, or `TOTAL_FEE` beside `total_fee`) is refused.\n"
    "- **File names are read literally**: glob characters (`billing_*.parquet`, `billing_2026-10 [1].parquet`) match "
    "only that file, and folder names such as `month=2026-09` add no column (no Hive partitioning), so the loaded rows "
    "are the ones whose checksum is logged.\n"
    "- **Folders** are walked fully or refused: a sub-folder that cannot be read, a symbolic link to a folder (its "
    "files would load from elsewhere, or twice) and a link that leads nowhere (dangling, or a loop) are refused, not "
    "skipped. A symbolic link to a file is followed; the log records the target's path and checksum. Files not ending "
    "in `.parquet` are ignored.\n"
)


def markdown() -> str:
    """docs/contract.md, generated so that the document cannot drift from what ingest enforces."""
    out = [CONTRACT_INTRO]
    for t in TABLES.values():
        key = ", ".join(t.key) if t.key else "none"
        out.append(f"## `{t.name}` — {'required' if t.required else 'optional'}; key ({key}); reload: {t.reload}\n")
        if t.doc:
            out.append(t.doc + "\n")
        out.append("| column | type | nullable | values | meaning |")
        out.append("|---|---|---|---|---|")
        for c in t.columns:
            nullable = "yes (may be absent)" if c.nullable else "no"
            cells = [f"`{c.name}`", c.type, nullable, c.rules(), c.doc]
            out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # python -m mktool.contract > docs/contract.md
    print(markdown(), end="")
