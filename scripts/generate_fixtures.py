#!/usr/bin/env python3
"""Deterministic synthetic data-warehouse extracts for mktool (SPEC section 2).

    python scripts/generate_fixtures.py --subscribers 2000 \
        --months 2026-08,2026-09,2026-10 --out fixtures/extracts [--seed 7]

or, from Python::

    from generate_fixtures import generate
    rows = generate(Path("out"), 2000, ["2026-08", "2026-09", "2026-10"], seed=7)

Every value is produced by set-based DuckDB SQL over ``range(N)``: pseudo-random
numbers come from ``hash(key, tag, seed)`` (never ``random()``, never a Python loop
over rows), and every file is written with ``COPY (... ORDER BY msisdn ...) TO ...
(FORMAT parquet)``, so the same arguments always give byte-identical files (with the
same DuckDB version).

Files are first written into a staging directory inside ``--out`` and renamed into
place one by one once all of them have been written.

The data carry the patterns the downstream rules need (see fixtures/README.md):
short-history customers, missing usage months, tenure from 0 to ~15 years, churn
drops in the last month, low prepaid balances, contracts / bundles ending soon,
migrant-worker long-distance callers, Anhui long-distance callers, and customers
whose usage outgrows their plan so that a better-fitting 4G plan exists.
"""
from __future__ import annotations

import argparse
import calendar
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

ROOT = Path(__file__).resolve().parents[1]
PLANS_4G_SEED = ROOT / "fixtures" / "reference" / "plans_4g_seed.csv"

MSISDN_OFFSET = 800_000_000          # msisdn = '13' || lpad(i + offset, 9, '0')
MAX_SUBSCRIBERS = 999_999_999 - MSISDN_OFFSET
MEMORY_LIMIT = "8GB"
MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")

CHANNELS = ["frontdesk", "outbound", "inbound", "sms", "app", "manager"]
# Past offers in contact_history: each policy only on the channels its catalogue entry
# (matrices/policies.yaml) allows, and the long-distance / roaming packs only to customers who
# call that province / roam, so a past response can meet one of this month's offers.
POLICY_CHANNELS = {
    "REBUNDLE_HIGH": ["frontdesk", "outbound", "manager"],
    "PREPAY_300_600": ["frontdesk", "outbound"],
    "PREPAY_100_150": ["frontdesk", "sms"],
    "CRBT_TRIAL": ["sms", "outbound", "frontdesk", "inbound"],
    "NEWSPAPER_TRIAL": ["sms", "frontdesk", "inbound"],
    "MI_PACK_10": ["sms", "app", "frontdesk", "inbound"],
    "LD_PACK_AH": ["sms", "outbound", "frontdesk"],
    "ROAM_PACK": ["sms", "app", "frontdesk"],
    "VNET_GROUP_JOIN": ["manager", "frontdesk", "outbound"],
    "PLAN_CHANGE": ["inbound", "outbound", "sms"],
}
# Outcome shares (per mille, in the order sent, accepted, rejected, no_answer, unsubscribed) by
# how the channel reaches the customer: a call can go unanswered; a message is mostly just sent
# and is where opt-outs happen (seed 004: 5-10% unsubscribe on batch SMS); a pop-up row exists
# only when the showing turned into a conversation, so it is mostly a yes or a no.
OUTCOMES = ["sent", "accepted", "rejected", "no_answer", "unsubscribed"]
OUTCOME_SHARES = {
    "outbound": [80, 150, 300, 420, 50],
    "manager": [100, 250, 300, 330, 20],
    "sms": [760, 80, 90, 0, 70],
    "app": [800, 70, 80, 0, 50],
    "frontdesk": [80, 350, 540, 0, 30],
    "inbound": [60, 330, 570, 0, 40],
}

# Plans besides the 18 real 4G plans of the seed CSV.  Columns:
# plan_id, plan_name, family, monthly_rental, included_data_mb, included_voice_min,
# data_overage_per_mb, voice_overage_per_min, product_status, in_plans (written to
# plans.parquet?), cat, weight (customers per mille), prepaid_p, data_typ, voice_typ
# (typical monthly usage of its customers), ld_out_rate, ld_in_rate (yuan/min).
EXTRA_PLANS = (
    "\n"
    "('SZX_0',      '神州行畅听卡',         'legacy',  0.0,   0,  0, 0.50, 0.19, 1, true,  "
    "'legacy',   30, 0.95,  40, 120, 0.60, 0.30),\n"
    "('SZX_18',     '神州行轻松卡18元',     'legacy', 18.0,  30, 60, 0.50, 0.25, 1, true,  "
    "'legacy',  110, 0.90,  60, 120, 0.60, 0.30),\n"
    "('DGDD_28',    '动感地带28元',         'legacy', 28.0, 150, 50, 0.50, 0.25, 1, true,  "
    "'legacy',   95, 0.85, 250,  80, 0.60, 0.30),\n"
    "('GT58',       '全球通58元',           'legacy', 58.0,  50,150, 0.50, 0.25, 1, true,  "
    "'legacy',  100, 0.15, 120, 220, 0.60, 0.30),\n"
    "('GT88',       '全球通88元',           'legacy', 88.0, 100,300, 0.50, 0.19, 1, true,  "
    "'legacy',   80, 0.10, 200, 350, 0.60, 0.30),\n"
    "('GT128',      '全球通128元',          'legacy',128.0, 150,450, 0.50, 0.19, 1, true,  "
    "'legacy',   60, 0.10, 300, 500, 0.60, 0.30),\n"
    "('STU_18',     '校园套餐18元',         'special', 18.0, 500,100, 0.29, 0.19, 2, true,  "
    "'special',  15, 0.90, 400,  80, 0.30, 0.15),\n"
    "('CHILD_10',   '亲子卡10元',           'special', 10.0,  50, 50, 0.50, 0.19, 3, true,  "
    "'special',   8, 0.50,  30,  40, 0.30, 0.15),\n"
    "('HOME_38',    '家庭共享38元',         'special', 38.0, 300,300, 0.29, 0.19, 2, true,  "
    "'special',  10, 0.20, 300, 250, 0.30, 0.15),\n"
    "('IP_17951',   'IP长途卡15元',         'special', 15.0,   0,100, 0.50, 0.15, 3, true,  "
    "'special',   7, 0.60,  20, 150, 0.10, 0.00),\n"
    "('GT_OLD99',   '全球通99元(已下线)',   'legacy', 99.0, 100,350, 0.50, 0.19, 1, false, "
    "'unknown',   3, 0.10, 200, 380, 0.60, 0.30),\n"
    "('DGDD_OLD16', '动感地带16元(已下线)', 'legacy', 16.0,  50, 30, 0.50, 0.25, 1, false, "
    "'unknown',   2, 0.90, 100,  40, 0.60, 0.30)\n"
)

# Customers per mille on each of the 18 real 4G plans (sums to 480).
WEIGHTS_4G = """
('FX38', 40), ('FX48', 40), ('FX58', 60), ('FX88', 60), ('FX138', 30), ('FX158', 30),
('FX238', 15), ('FX268', 10), ('FX338', 7), ('FX588', 3),
('ZX58', 40), ('ZX88', 50), ('ZX128', 40), ('ZX158', 25), ('ZX188', 15), ('ZX298', 10),
('ZX418', 3), ('ZX608', 2)
"""


def _lit(path: Path) -> str:
    """A path as a SQL string literal."""
    return "'" + path.as_posix().replace("'", "''") + "'"


def _one_row(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    """The single row a query returns (an aggregate, a COPY's row count)."""
    row = con.execute(sql).fetchone()
    if row is None:
        raise RuntimeError(f"no row from: {sql.strip()[:80]}")
    return row


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join("'" + v + "'" for v in values) + "]"


def _parse_months(months: list[str]) -> list[str]:
    out = sorted({m.strip() for m in months if m.strip()})
    if not out:
        raise ValueError("at least one month is required")
    for m in out:
        if not MONTH_RE.match(m):
            raise ValueError(f"month {m!r} is not YYYY-MM")
    return out


def _setup(con: duckdb.DuckDBPyConnection, seed: int, months: list[str],
           tmp_dir: Path) -> None:
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    con.execute(f"SET temp_directory = {_lit(tmp_dir)}")
    con.execute("SET preserve_insertion_order = true")
    # uniform [0,1) and standard normal pseudo-random numbers, keyed by
    # (key, tag) or (key, month index, tag), all salted with the seed
    con.execute(f"""
        CREATE TEMP MACRO u1(k, tag) AS
            (hash(k, tag, {seed}) % 1000003)::DOUBLE / 1000003.0;
        CREATE TEMP MACRO u2(k, m, tag) AS
            (hash(k, m, tag, {seed}) % 1000003)::DOUBLE / 1000003.0;
        CREATE TEMP MACRO n1(k, tag) AS
            sqrt(-2.0 * ln(((hash(k, tag, 'r', {seed}) % 1000003) + 1)::DOUBLE / 1000004.0))
            * cos(2.0 * pi() * u1(k, tag));
        CREATE TEMP MACRO msisdn(i) AS
            '13' || lpad((i + {MSISDN_OFFSET})::VARCHAR, 9, '0');
        CREATE TEMP MACRO n2(k, m, tag) AS
            sqrt(-2.0 * ln(((hash(k, m, tag, 'r', {seed}) % 1000003) + 1)::DOUBLE / 1000004.0))
            * cos(2.0 * pi() * u2(k, m, tag));
    """)
    rows = []
    for idx, m in enumerate(months):
        y, mo = int(m[:4]), int(m[5:])
        last_day = calendar.monthrange(y, mo)[1]
        rows.append(f"({idx}, '{m}', DATE '{m}-01', DATE '{m}-{last_day:02d}')")
    con.execute("CREATE TEMP TABLE months(m INTEGER, month VARCHAR, mstart DATE, mend DATE)")
    con.execute("INSERT INTO months VALUES " + ", ".join(rows))


def _build_plans(con: duckdb.DuckDBPyConnection, plans_csv: Path) -> None:
    con.execute(f"""
        CREATE TEMP TABLE plan_params AS
        WITH seed AS (
            SELECT * FROM read_csv({_lit(plans_csv)}, header = true, columns = {{
                'plan_id': 'VARCHAR', 'plan_name': 'VARCHAR', 'family': 'VARCHAR',
                'monthly_rental': 'DOUBLE', 'included_data_mb': 'DOUBLE',
                'included_voice_min': 'DOUBLE', 'data_overage_per_mb': 'DOUBLE',
                'voice_overage_per_min': 'DOUBLE'}})
        ), w(plan_id, weight) AS (VALUES {WEIGHTS_4G}),
        g4 AS (
            SELECT s.plan_id, s.plan_name, s.family, s.monthly_rental, s.included_data_mb,
                   s.included_voice_min, s.data_overage_per_mb, s.voice_overage_per_min,
                   1 AS product_status, true AS is_target, true AS in_plans, 'g4' AS cat,
                   coalesce(w.weight, 0) AS weight, 0.45 AS prepaid_p,
                   s.included_data_mb AS data_typ, s.included_voice_min AS voice_typ,
                   0.0 AS ld_out_rate, 0.0 AS ld_in_rate, 0 AS grp,
                   row_number() OVER () AS ord
            FROM seed s LEFT JOIN w USING (plan_id)
        ), extra(plan_id, plan_name, family, monthly_rental, included_data_mb,
                 included_voice_min, data_overage_per_mb, voice_overage_per_min,
                 product_status, in_plans, cat, weight, prepaid_p, data_typ, voice_typ,
                 ld_out_rate, ld_in_rate) AS (VALUES {EXTRA_PLANS}),
        allp AS (
            SELECT plan_id, plan_name, family, monthly_rental, included_data_mb,
                   included_voice_min, data_overage_per_mb, voice_overage_per_min,
                   product_status, is_target, in_plans, cat, weight, prepaid_p,
                   data_typ, voice_typ, ld_out_rate, ld_in_rate, grp, ord
            FROM g4
            UNION ALL
            SELECT plan_id, plan_name, family, monthly_rental::DOUBLE,
                   included_data_mb::DOUBLE, included_voice_min::DOUBLE,
                   data_overage_per_mb::DOUBLE, voice_overage_per_min::DOUBLE,
                   product_status, false, in_plans, cat, weight, prepaid_p,
                   data_typ::DOUBLE, voice_typ::DOUBLE, ld_out_rate::DOUBLE,
                   ld_in_rate::DOUBLE, 1, row_number() OVER ()
            FROM extra
        )
        SELECT *,
               sum(weight) OVER (ORDER BY grp, ord ROWS UNBOUNDED PRECEDING) - weight AS lo,
               sum(weight) OVER (ORDER BY grp, ord ROWS UNBOUNDED PRECEDING) AS hi
        FROM allp
    """)
    total = _one_row(con, "SELECT sum(weight) FROM plan_params")[0]
    if total != 1000:
        raise RuntimeError(f"plan weights sum to {total}, expected 1000 "
                           f"(does {plans_csv} hold the 18 seed plans?)")
    # 1000 slots -> plan, so customers pick a plan with an equi-join
    con.execute("""
        CREATE TEMP TABLE plan_slots AS
        SELECT r.range::INTEGER AS slot, p.*
        FROM range(1000) r JOIN plan_params p ON r.range >= p.lo AND r.range < p.hi
    """)


def _build_customers(con: duckdb.DuckDBPyConnection, n: int, k: int) -> None:
    """One row per subscriber: everything that does not change month to month.

    Kept narrow (no msisdn, no plan parameters): msisdn is derived from i when a
    file is written and plan parameters are joined from plan_params per month.
    """
    starts = _one_row(con, "SELECT list(mstart ORDER BY m) FROM months")[0]
    starts_sql = "[" + ", ".join(f"DATE '{d.isoformat()}'" for d in starts) + "]"
    first_start = f"DATE '{starts[0].isoformat()}'"
    last_start = f"DATE '{starts[-1].isoformat()}'"
    con.execute(f"""
        CREATE TEMP TABLE cust AS
        WITH b AS (
            -- draw each uniform once (CASE chains would otherwise re-hash per branch)
            SELECT range AS i,
                   floor(u1(range, 'plan') * 1000)::INTEGER AS slot,
                   u1(range, 'hist') AS u_hist, u1(range, 'status') AS u_status,
                   u1(range, 'city') AS u_city, u1(range, 'gen') AS u_gen,
                   u1(range, 'gen2') AS u_gen2, u1(range, 'prov') AS u_prov,
                   u1(range, 'ld') AS u_ld, u1(range, 'vnet') AS u_vnet,
                   u1(range, 'bundle') AS u_bundle, u1(range, 'drop') AS u_drop
            FROM range({n})
        ), c AS (
            SELECT b.*,
                   CASE WHEN {k} >= 2 AND u_hist < 0.03 THEN {k - 1}
                        WHEN {k} >= 3 AND u_hist < 0.06 THEN {k - 2}
                        ELSE 0 END AS first_m,
                   p.plan_id, p.cat, p.data_typ, p.voice_typ,
                   CASE WHEN u1(i, 'pay') < p.prepaid_p THEN 'prepaid' ELSE 'postpaid' END
                       AS payment,
                   CASE WHEN u_gen < 0.03 THEN NULL
                        WHEN p.cat IN ('legacy', 'unknown') THEN
                           CASE WHEN u_gen2 < 0.35 THEN '2G' WHEN u_gen2 < 0.70 THEN '3G'
                                WHEN u_gen2 < 0.98 THEN '4G' ELSE '5G' END
                        WHEN p.cat = 'g4' THEN
                           CASE WHEN u_gen2 < 0.02 THEN '2G' WHEN u_gen2 < 0.10 THEN '3G'
                                WHEN u_gen2 < 0.80 THEN '4G' ELSE '5G' END
                        ELSE
                           CASE WHEN u_gen2 < 0.20 THEN '3G' WHEN u_gen2 < 0.90 THEN '4G'
                                ELSE '5G' END
                   END AS handset_gen,
                   -- migrant workers: legacy prepaid tariffs, long distance dominated
                   (p.plan_id IN ('SZX_0', 'SZX_18', 'DGDD_28') AND u1(i, 'migrant') < 0.09)
                       AS migrant
            FROM b JOIN plan_slots p USING (slot)
        ), d AS (
            SELECT c.*,
                CASE WHEN first_m = 0 THEN
                         {first_start} - (1 + floor(pow(u1(i, 'tenure'), 1.4) * 5479))::INTEGER
                     ELSE {starts_sql}[first_m + 1] + floor(u1(i, 'jday') * 20)::INTEGER
                END AS join_date,
                -- status in the last month; earlier months derive from it
                CASE WHEN first_m = {k - 1} AND {k} > 1 THEN 'active'
                     WHEN u_status < 0.93 THEN 'active'
                     WHEN u_status < 0.98 THEN 'suspended'
                     ELSE 'closed' END AS status_final,
                -- churn-signal customers: usage / bill / circle fall 40%+ in the last month
                (first_m = 0 AND {k} >= 2 AND u_status < 0.93 AND u_drop < 0.04) AS dropper,
                -- anchored customers (~18%): 3+ years on the network, and most of them bundled,
                -- in a virtual network and an enterprise group: the stickiness factors cluster,
                -- so stickiness `high` is a real minority (~9%), not the product of independent draws
                (first_m = 0 AND u1(i, 'tenure') >= 0.35 AND u1(i, 'loyal') < 0.36) AS loyal
            FROM c
        ), e AS (
            -- an anchored customer's bundle draw is squeezed towards a bundle (family first)
            SELECT d.*, CASE WHEN loyal THEN 0.40 * u_bundle ELSE u_bundle END AS ub
            FROM d
        )
        SELECT i, first_m, plan_id, payment, handset_gen, migrant, join_date,
            status_final, dropper,
            CASE WHEN u_city < 0.30 THEN '杭州' WHEN u_city < 0.48 THEN '宁波'
                 WHEN u_city < 0.62 THEN '温州' WHEN u_city < 0.71 THEN '绍兴'
                 WHEN u_city < 0.79 THEN '嘉兴' WHEN u_city < 0.86 THEN '金华'
                 WHEN u_city < 0.92 THEN '台州' WHEN u_city < 0.96 THEN '湖州'
                 WHEN u_city < 0.98 THEN '衢州' ELSE '丽水' END AS city,
            -- ~2% of full-history customers miss the usage row of one month
            CASE WHEN {k} >= 2 AND first_m = 0 AND NOT dropper AND u1(i, 'miss') < 0.02
                 THEN floor(u1(i, 'missm') * {k})::INTEGER ELSE -1 END AS miss_m,
            CASE WHEN u1(i, 'contract') < CASE WHEN payment = 'postpaid' THEN 0.45 ELSE 0.10 END
                 THEN greatest({last_start} + (floor(u1(i, 'cend') * 1095) - 180)::INTEGER,
                               join_date + 30)
            END AS contract_end,
            CASE WHEN ub < 0.14 THEN 'family'
                 WHEN ub < 0.26 THEN 'broadband'
                 WHEN ub < 0.35 THEN 'handset' END AS bundle_type,
            -- bundles run 2 years; an anchored customer re-bundles every year (续捆绑), so a
            -- quarter of their bundles end within 3 months of the last month
            CASE WHEN ub < 0.35 AND u1(i, 'bnull') >= 0.2
                 THEN greatest({last_start} + (floor(u1(i, 'bend') * CASE WHEN loyal THEN 365 ELSE 730 END)
                                               - CASE WHEN loyal THEN 30 ELSE 60 END)::INTEGER,
                               join_date + 30)
            END AS bundle_end,
            (u_vnet < CASE WHEN loyal THEN 0.85 WHEN ub < 0.14 THEN 0.75 ELSE 0.25 END) AS vnet,
            CASE WHEN u1(i, 'group') < CASE WHEN loyal THEN 0.70 ELSE 0.12 END
                 THEN 'G' || lpad((hash(i, 'gid', 0) % 3000)::VARCHAR, 5, '0') END AS group_id,
            CASE WHEN payment = 'prepaid' THEN exp(ln(60) + 1.0 * n1(i, 'bal')) ELSE 0 END
                AS bal_base,
            -- usage levels relative to what the plan was bought for
            CASE WHEN handset_gen = '2G'
                      OR u1(i, 'lowdata') < CASE WHEN cat = 'g4' THEN 0.05 ELSE 0.15 END
                     THEN u1(i, 'lowmb') * 6.0
                 ELSE greatest(data_typ, 80) * exp(0.75 * n1(i, 'data') - 0.1)
                      * CASE WHEN u1(i, 'heavy') < 0.03 THEN 3 + 10 * u1(i, 'heavyx') ELSE 1 END
            END AS data_base,
            greatest(voice_typ, 60) * exp(0.6 * n1(i, 'voice') - 0.1)
                * CASE WHEN migrant THEN 1.2 ELSE 1 END AS voice_base,
            -- travellers (~3%): 40-75% of their calls made while roaming (话务量分组 roaming)
            CASE WHEN migrant THEN 0.0
                 WHEN u1(i, 'travel') < 0.03 THEN 0.40 + 0.35 * u1(i, 'roamsh')
                 WHEN u1(i, 'roam') < 0.3 THEN 0.10 * u1(i, 'roamsh') ELSE 0.0 END AS roam_sh,
            CASE WHEN migrant THEN 0.05 + 0.15 * u1(i, 'locsh')
                 WHEN u_ld < 0.55 THEN 0.65 + 0.30 * u1(i, 'locsh')
                 ELSE 1.0 END AS local_sh0,
            CASE WHEN migrant THEN 1.0 + 1.5 * u1(i, 'ldin')
                 WHEN u_ld < 0.55 THEN 0.05 + 0.25 * u1(i, 'ldin')
                 ELSE 0.0 END AS ld_in_ratio,
            CASE WHEN migrant THEN
                    CASE WHEN u_prov < 0.35 THEN '安徽' WHEN u_prov < 0.55 THEN '河南'
                         WHEN u_prov < 0.70 THEN '四川' WHEN u_prov < 0.82 THEN '江西'
                         WHEN u_prov < 0.92 THEN '贵州' ELSE '湖南' END
                 WHEN u_ld < 0.55 THEN
                    CASE WHEN u_prov < 0.10 THEN '安徽' WHEN u_prov < 0.28 THEN '江苏'
                         WHEN u_prov < 0.43 THEN '上海' WHEN u_prov < 0.51 THEN '江西'
                         WHEN u_prov < 0.58 THEN '河南' WHEN u_prov < 0.64 THEN '四川'
                         WHEN u_prov < 0.70 THEN '湖南' WHEN u_prov < 0.75 THEN '湖北'
                         WHEN u_prov < 0.83 THEN '福建' WHEN u_prov < 0.92 THEN '广东'
                         WHEN u_prov < 0.97 THEN '山东' ELSE '贵州' END
            END AS ld_top_province,
            exp(ln(30) + 1.0 * n1(i, 'sms')) AS sms_base,
            exp(ln(35) + 0.6 * n1(i, 'contacts')) AS contacts_base,
            CASE WHEN u_vnet < 0.3 THEN 0.6 + 0.35 * u1(i, 'innet')
                 ELSE 0.3 + 0.5 * u1(i, 'innet') END AS innet_sh,
            CASE WHEN u1(i, 'addon') < CASE WHEN loyal THEN 0.40 WHEN cat = 'g4' THEN 0.20 ELSE 0.10 END
                 THEN 10 * (1 + floor(u1(i, 'addonv') * 3)) ELSE 0 END AS addon_base,
            CASE WHEN u1(i, 'disc') < 0.55 THEN 0.0 ELSE 0.18 * u1(i, 'discsh') END AS disc_sh
        FROM e
    """)


def _status_sql(m: int, last: bool) -> str:
    """The customer's status in month index m (an expression over cust)."""
    if last:
        return "status_final"
    return f"""(CASE
        WHEN status_final = 'closed' THEN
            CASE WHEN u2(i, {m}, 'st') < 0.5 THEN 'suspended' ELSE 'active' END
        WHEN status_final = 'suspended' THEN
            CASE WHEN u2(i, {m}, 'st') < 0.3 THEN 'suspended' ELSE 'active' END
        WHEN u2(i, {m}, 'st') < 0.01 THEN 'suspended'
        ELSE 'active' END)"""


def _balance_sql(m: int, last: bool) -> str:
    """The prepaid balance in month index m (0 for postpaid)."""
    low = (f"WHEN payment = 'prepaid' AND (dropper OR u2(i, {m}, 'lowbal') < 0.05) "
           f"THEN round(9.99 * u2(i, {m}, 'lowbv'), 2)") if last else ""
    return f"""(CASE {low}
        WHEN payment = 'prepaid' THEN round(bal_base * exp(0.4 * n2(i, {m}, 'bal')), 2)
        ELSE 0.0 END)"""


def _build_month(con: duckdb.DuckDBPyConnection, m: int, k: int) -> None:
    """Usage and bill of every subscriber present in month index m (table cm)."""
    last = m == k - 1
    lastb = str(last).lower()
    con.execute("DROP TABLE IF EXISTS cm")
    con.execute(f"""
        CREATE TEMP TABLE cm AS
        WITH s AS (
            SELECT c.i, c.migrant, c.dropper, c.payment, c.miss_m, c.disc_sh,
                   c.ld_top_province, c.local_sh0, c.roam_sh, c.innet_sh,
                   p.monthly_rental, p.included_data_mb, p.included_voice_min,
                   p.data_overage_per_mb, p.voice_overage_per_min, p.ld_out_rate, p.ld_in_rate,
                   {_status_sql(m, last)} AS status,
                   {_balance_sql(m, last)} AS balance,
                   c.voice_base, c.data_base, c.ld_in_ratio, c.sms_base, c.contacts_base,
                   c.addon_base
            FROM cust c JOIN plan_params p USING (plan_id)
            WHERE c.first_m <= {m}
        ), f AS (
            SELECT s.*,
                CASE status WHEN 'closed' THEN 0.03 WHEN 'suspended' THEN 0.35 ELSE 1.0 END
                * CASE WHEN dropper THEN
                       CASE WHEN {lastb} THEN 0.25 + 0.3 * u2(i, {m}, 'dropf') ELSE 1.3 END
                       ELSE 1.0 END AS act_f
            FROM s
        ), v AS (
            SELECT f.*,
                round(voice_base * act_f * exp(0.15 * n2(i, {m}, 'v')), 1) AS voice_out_min,
                round(data_base * act_f * exp(0.2 * n2(i, {m}, 'd')), 2) AS data_mb,
                CASE WHEN ld_top_province IS NULL THEN 0.0
                     ELSE round(voice_base * act_f * ld_in_ratio * exp(0.1 * n2(i, {m}, 'li')), 1)
                END AS voice_ld_in_min
            FROM f
        ), w AS (
            SELECT v.*,
                round(voice_out_min * local_sh0 * (1 - roam_sh), 1) AS voice_local_min,
                round(voice_out_min * roam_sh, 1) AS voice_roam_min
            FROM v
        ), x AS (
            SELECT w.*,
                greatest(0.0, round(voice_out_min - voice_local_min - voice_roam_min, 1))
                    AS voice_ld_out_min,
                floor(sms_base * act_f * exp(0.3 * n2(i, {m}, 'sms')))::BIGINT AS sms_count,
                greatest(0, round(contacts_base
                    * CASE status WHEN 'closed' THEN 0.1 WHEN 'suspended' THEN 0.5 ELSE 1.0 END
                    * CASE WHEN dropper AND {lastb} THEN 0.35 + 0.2 * u2(i, {m}, 'dropc')
                           ELSE 1.0 END
                    * exp(0.1 * n2(i, {m}, 'c'))))::BIGINT AS contacts,
                monthly_rental AS rental_fee,
                round(greatest(0.0, voice_out_min - included_voice_min) * voice_overage_per_min, 2)
                    AS voice_overage_fee,
                round(greatest(0.0, data_mb - included_data_mb) * data_overage_per_mb, 2)
                    AS data_overage_fee,
                CASE WHEN addon_base = 0 THEN 0.0
                     WHEN dropper THEN CASE WHEN {lastb} THEN 0.0 ELSE addon_base END
                     WHEN u2(i, {m}, 'addon') < 0.9 THEN addon_base ELSE 0.0 END::DOUBLE
                    AS addon_fee
            FROM w
        ), y AS (
            SELECT x.*,
                least(contacts, floor(contacts * innet_sh)::BIGINT) AS contacts_in_net,
                round(voice_ld_out_min * ld_out_rate + voice_ld_in_min * ld_in_rate, 2) AS ld_fee
            FROM x
        ), z AS (
            SELECT y.*,
                round(rental_fee + voice_overage_fee + data_overage_fee + addon_fee + ld_fee, 2)
                    AS total_fee
            FROM y
        )
        SELECT i, miss_m, payment, balance, included_data_mb,
               voice_out_min, voice_local_min, voice_ld_out_min, voice_ld_in_min,
               voice_roam_min,
               CASE WHEN voice_ld_out_min + voice_ld_in_min > 0 THEN ld_top_province
               END AS ld_top_province,
               sms_count, data_mb, contacts, contacts_in_net,
               total_fee, rental_fee, voice_overage_fee, data_overage_fee, addon_fee, ld_fee,
               round(total_fee * disc_sh * (0.9 + 0.2 * u2(i, {m}, 'disc')), 2) AS discount_fee
        FROM z
    """)


def _copy(con: duckdb.DuckDBPyConnection, select_sql: str, path: Path) -> int:
    return int(_one_row(con, f"COPY ({select_sql}) TO {_lit(path)} (FORMAT parquet, COMPRESSION zstd)")[0])


DAILY_EVENTS_PREFIX = "events-"
HOTLINE_SHARE = 0.006  # customers calling the hotline in the month (~12 of 2,000)


def _write_daily_events(con: duckdb.DuckDBPyConnection, events_file: Path, folder: Path,
                        mstart: Any, mend: Any) -> dict[str, int]:
    """The month's events as the feed `mktool scene` reads: one file per day with events
    (``events-YYYY-MM-DD.parquet``, the day of event_time), the events of events.parquet plus

    - ``hotline_call`` events (value: the call's minutes, 08:00–20:00) of ~0.6% of the month's customers, for
      the minimum-spend scene on the inbound pop-up (they are not in events.parquet, which stays
      as ingest's fixture);
    - one duplicate within a file: an event repeated in its day's file with another value (the
      key msisdn, event_type, event_time is the event's identity, so it stays a duplicate);
    - one duplicate across two files: the last event of a day repeated in the next event day's
      file (a feed re-sending its boundary event), which keeps the files' order by event time.

    Rows within a file are ordered by msisdn, event_time, event_type, value; the file of a day is
    the same bytes for the same arguments."""
    folder.mkdir()
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE ev_month AS
        SELECT msisdn, event_time, event_type, value, CAST(event_time AS DATE) AS day
        FROM read_parquet({_lit(events_file)})
        UNION ALL
        SELECT msisdn(i), TIMESTAMP '{mstart.isoformat()} 08:00:00'
                   + to_days(floor(u1(i, 'ev_hot_d') * {(mend - mstart).days + 1})::INTEGER)
                   + to_seconds(floor(u1(i, 'ev_hot_t') * 12 * 3600)::BIGINT),
               'hotline_call', round(1 + 14 * u1(i, 'ev_hot_v'), 1),
               NULL
        FROM cm WHERE u1(i, 'ev_hot') < {HOTLINE_SHARE}
    """)
    con.execute("UPDATE ev_month SET day = CAST(event_time AS DATE) WHERE day IS NULL")
    # the within-file duplicate: one data_90pct event by hash, the same key with value + 1
    con.execute("""
        INSERT INTO ev_month
        SELECT msisdn, event_time, event_type, value + 1, day FROM ev_month
        WHERE event_type = 'data_90pct'
        ORDER BY hash(msisdn, event_time, 'ev_dup_in'), msisdn LIMIT 1
    """)
    # the across-file duplicate: the last event of the first event day from the 10th that has a
    # later event day, repeated (same row) in that later day's file
    con.execute("""
        INSERT INTO ev_month
        WITH days AS (SELECT DISTINCT day FROM ev_month),
        d AS (SELECT min(day) AS day FROM days
              WHERE day >= (SELECT min(day) + 9 FROM days) AND day < (SELECT max(day) FROM days)),
        nxt AS (SELECT min(day) AS day FROM days WHERE day > (SELECT day FROM d))
        SELECT e.msisdn, e.event_time, e.event_type, e.value, (SELECT day FROM nxt)
        FROM ev_month e WHERE e.day = (SELECT day FROM d)
        ORDER BY e.event_time DESC, e.event_type, e.msisdn LIMIT 1
    """)
    rows: dict[str, int] = {}
    for (day,) in con.execute("SELECT DISTINCT day FROM ev_month ORDER BY day").fetchall():
        name = f"{DAILY_EVENTS_PREFIX}{day.isoformat()}.parquet"
        rows[name] = _copy(con, f"""
            SELECT msisdn, event_time, event_type, value::DOUBLE AS value FROM ev_month
            WHERE day = DATE '{day.isoformat()}' ORDER BY msisdn, event_time, event_type, value
        """, folder / name)
    con.execute("DROP TABLE ev_month")
    return rows


def _replace_daily_events(staged: Path, folder: Path, names: list[str]) -> None:
    """Move the staged daily files into ``folder``, removing daily files of an earlier
    generation that this one does not write (another month, another seed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{DAILY_EVENTS_PREFIX}*.parquet"):
        if old.name not in names:
            old.unlink()
    for name in names:
        os.replace(staged / name, folder / name)


def _month_after(month: str) -> str:
    y, m = int(month[:4]), int(month[5:7])
    return f"{y + m // 12:04d}-{m % 12 + 1:02d}"


def _build_next_month(con: duckdb.DuckDBPyConnection, k: int) -> None:
    """Who is still a customer in the month after the last one (table nxt: i, present, status, p_churn).

    The churn label of `mktool evaluate churn` (issue 13 item 4): a customer of the last month who
    is not closed there churns when absent from the next month or closed in it. The chance follows
    the signals the churn score reads (a 40%+ fall of minutes, data, circle and bill, suspension,
    a prepaid balance under 10, a contract or bundle ending within 3 months) on a base of 1.5%, so
    flagged customers leave far more often than the others. Of those who churn, 70% are gone from
    the next month's extract and 30% are still listed as closed; last month's closed customers
    are gone.
    """
    last = k - 1
    last_start = _one_row(con, f"SELECT mstart FROM months WHERE m = {last}")[0]
    horizon = f"DATE '{last_start.isoformat()}' + INTERVAL 4 MONTH - INTERVAL 1 DAY"
    con.execute(f"""
        CREATE TEMP TABLE nxt AS
        WITH o AS (
            SELECT i, status_final, dropper, payment, contract_end, bundle_end,
                   {_balance_sql(last, True)} AS balance
            FROM cust WHERE first_m <= {last}
        ), p AS (
            SELECT i, status_final,
                least(0.9, 0.015
                    + CASE WHEN dropper THEN 0.30 ELSE 0 END
                    + CASE WHEN status_final = 'suspended' THEN 0.25 ELSE 0 END
                    + CASE WHEN payment = 'prepaid' AND balance < 10 THEN 0.08 ELSE 0 END
                    + CASE WHEN contract_end <= {horizon} OR bundle_end <= {horizon} THEN 0.04 ELSE 0 END)
                    AS p_churn,
                u1(i, 'churn') AS u, u1(i, 'churnhow') AS uh, u1(i, 'resume') AS ur, u2(i, {k}, 'st') AS us
            FROM o
        )
        SELECT i, p_churn, status_final <> 'closed' AND u < p_churn AS churned,
               status_final <> 'closed' AND NOT (u < p_churn AND uh < 0.7) AS present,
               CASE WHEN u < p_churn THEN 'closed'
                    WHEN status_final = 'suspended' THEN CASE WHEN ur < 0.5 THEN 'active' ELSE 'suspended' END
                    WHEN us < 0.01 THEN 'suspended' ELSE 'active' END AS status
        FROM p
    """)


def _orders_sql(policy_channels: str, next_month: str) -> str:
    """orders.parquet: product orders and cancellations from the last month's start to the next month's end.

    * contact-led: 80% of `accepted` contacts order within 0-7 days (a pop-up acceptance mostly
      on the spot, the same day), 4% of plain `sent` messages and 2% of unanswered calls within
      2 weeks; the order carries the contact's channel (or none, as the billing system often
      records it); 20% of acceptances are never ordered;
    * organic: 2.5% of the customers a month order an offer they may be offered (the Anhui and
      roaming packs only for who calls Anhui or roams), with no contact at all, the next month only
      for those still there;
    * cancellations (退订): 6% of orders are cancelled 1-6 days later (within 7 days), 4% after
      8-21 days; a cancellation past the extract's end is not in it.
    """
    return f"""
        WITH pc(policy_id, channel, ord) AS (VALUES {policy_channels}),
        lim AS (
            SELECT (SELECT max(mstart) FROM months)::TIMESTAMP AS t0,
                   (DATE '{next_month}-01' + INTERVAL 1 MONTH)::TIMESTAMP AS t1,
                   DATE '{next_month}-01' AS n0
        ), led AS (
            SELECT i, policy_id,
                   CASE WHEN outcome = 'accepted' OR u2(i, contact_date, policy_id || 'och') < 0.6
                        THEN channel END AS channel,
                   contact_date + CASE
                       WHEN outcome = 'accepted' AND channel IN ('frontdesk', 'inbound')
                            AND u2(i, contact_date, policy_id || 'spot') < 0.7 THEN 0
                       WHEN outcome = 'accepted' THEN floor(pow(u2(i, contact_date, policy_id || 'lag'), 2) * 8)
                       ELSE 1 + floor(u2(i, contact_date, policy_id || 'lag') * 14) END::INTEGER AS d
            FROM ch
            WHERE u2(i, contact_date, policy_id || 'ord') < CASE outcome WHEN 'accepted' THEN 0.80
                      WHEN 'sent' THEN 0.04 WHEN 'no_answer' THEN 0.02 ELSE 0 END
        ), cand AS (
            SELECT c.i, mo.k AS mk,
                   coalesce(c.ld_top_province = '安徽', false) AS calls_anhui, c.roam_sh >= 0.40 AS traveller,
                   CASE WHEN mo.k = 0 THEN (SELECT max(mstart) FROM months) ELSE (SELECT n0 FROM lim) END AS m0
            FROM cust c LEFT JOIN nxt n USING (i), (VALUES (0), (1)) mo(k)
            WHERE c.first_m <= (SELECT max(m) FROM months) AND u2(c.i, mo.k, 'org') < 0.025
              AND (mo.k = 0 OR coalesce(n.present AND n.status <> 'closed', false))
        ), organic AS (
            SELECT cand.i, pc.policy_id, pc.channel, cand.m0, cand.mk,
                   row_number() OVER (PARTITION BY cand.i, cand.mk ORDER BY pc.ord, pc.channel) AS r,
                   count(*) OVER (PARTITION BY cand.i, cand.mk) AS n_opt
            FROM cand JOIN pc ON (pc.policy_id <> 'LD_PACK_AH' OR cand.calls_anhui)
                             AND (pc.policy_id <> 'ROAM_PACK' OR cand.traveller)
        ), placed AS (
            SELECT i, policy_id, channel, d::TIMESTAMP
                       + to_seconds(8 * 3600 + floor(u2(i, d, policy_id || 'ot') * 14 * 3600)::BIGINT) AS t
            FROM led
            UNION ALL
            SELECT i, policy_id, CASE WHEN u2(i, mk, 'orgch') < 0.7 THEN channel END,
                   (m0 + floor(u2(i, mk, 'orgd') * 28)::INTEGER)::TIMESTAMP
                       + to_seconds(8 * 3600 + floor(u2(i, mk, 'orgt') * 14 * 3600)::BIGINT)
            FROM organic WHERE r = 1 + floor(u2(i, mk, 'orgp') * n_opt)::INTEGER
        ), o AS (
            SELECT i, t AS order_time, policy_id, 'order' AS action, channel FROM placed
            WHERE t >= (SELECT t0 FROM lim) AND t < (SELECT t1 FROM lim)
            QUALIFY row_number() OVER (PARTITION BY i, t, policy_id ORDER BY channel NULLS LAST) = 1
        ), x AS (
            SELECT o.*, u2(i, order_time, policy_id || 'cxl') AS uc,
                   u2(i, order_time, policy_id || 'cxd') AS ud
            FROM o
        ), cancels AS (
            SELECT i, order_time + to_days(CASE WHEN uc < 0.06 THEN 1 + floor(ud * 6)
                                                ELSE 8 + floor(ud * 14) END::INTEGER)
                       + to_seconds(floor(u2(i, order_time, policy_id || 'cxt') * 12 * 3600)::BIGINT)
                       AS order_time,
                   policy_id, 'cancel' AS action,
                   CASE WHEN u2(i, order_time, policy_id || 'cxc') < 0.5 THEN channel END AS channel
            FROM x WHERE uc < 0.10
        )
        SELECT msisdn(i) AS msisdn, order_time, policy_id, action, channel
        FROM (SELECT * FROM o UNION ALL SELECT * FROM cancels WHERE order_time < (SELECT t1 FROM lim))
        QUALIFY row_number() OVER (PARTITION BY i, order_time, policy_id, action ORDER BY channel NULLS LAST) = 1
        ORDER BY i, order_time, policy_id, action
    """


def generate(out_dir: Path, subscribers: int, months: list[str], seed: int = 7,
             plans_csv: Path = PLANS_4G_SEED, label_month: bool = False,
             events_dir: Path | None = None) -> dict[str, int]:
    """Write the synthetic extracts into out_dir; return {file name: rows written}.

    ``label_month`` also writes the subscribers of the month after the last one (no usage or
    bills): the churn label of `mktool evaluate churn` for the last month.
    ``events_dir`` also writes the last month's events as the daily event files `mktool scene`
    reads (``events-YYYY-MM-DD.parquet``, see :func:`_write_daily_events`) into that folder.
    """
    out_dir = Path(out_dir)
    months = _parse_months(list(months))
    if not (1 <= subscribers <= MAX_SUBSCRIBERS):
        raise ValueError(f"subscribers must be between 1 and {MAX_SUBSCRIBERS}")
    seed = int(seed)
    k = len(months)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".generate_fixtures.", dir=out_dir))
    rows: dict[str, int] = {}
    con = duckdb.connect(":memory:")
    try:
        (staging / "duckdb_tmp").mkdir()
        _setup(con, seed, months, staging / "duckdb_tmp")
        _build_plans(con, Path(plans_csv))
        _build_customers(con, subscribers, k)

        rows["plans.parquet"] = _copy(con, """
            SELECT plan_id, plan_name, monthly_rental, included_data_mb, included_voice_min,
                   data_overage_per_mb, voice_overage_per_min,
                   product_status::INTEGER AS product_status, is_target, family
            FROM plan_params WHERE in_plans ORDER BY grp, ord
        """, staging / "plans.parquet")

        for m, month in enumerate(months):
            last = m == k - 1
            _build_month(con, m, k)
            rows[f"subscribers_{month}.parquet"] = _copy(con, f"""
                SELECT msisdn(i) AS msisdn, '{month}' AS month, city, plan_id, join_date,
                       {_status_sql(m, last)} AS status, payment, handset_gen,
                       contract_end, bundle_type, bundle_end, vnet, group_id,
                       {_balance_sql(m, last)} AS balance
                FROM cust WHERE first_m <= {m} ORDER BY i
            """, staging / f"subscribers_{month}.parquet")
            rows[f"usage_{month}.parquet"] = _copy(con, f"""
                SELECT msisdn(i) AS msisdn, '{month}' AS month, voice_out_min,
                       voice_local_min, voice_ld_out_min, voice_ld_in_min, voice_roam_min,
                       ld_top_province, sms_count, data_mb, contacts, contacts_in_net
                FROM cm WHERE miss_m <> {m} ORDER BY i
            """, staging / f"usage_{month}.parquet")
            rows[f"billing_{month}.parquet"] = _copy(con, f"""
                SELECT msisdn(i) AS msisdn, '{month}' AS month, total_fee, rental_fee,
                       voice_overage_fee, data_overage_fee, addon_fee, ld_fee, discount_fee
                FROM cm ORDER BY i
            """, staging / f"billing_{month}.parquet")
            rows[f"vas_{month}.parquet"] = _copy(con, f"""
                WITH f AS (
                    SELECT i, u1(i, 'vas_crbt') < 0.35 AS has_crbt,
                           u1(i, 'vas_news') < 0.20 AS has_news,
                           u1(i, 'vas_mi') < CASE WHEN data_base >= 5 THEN 0.35 ELSE 0.05 END
                               AS has_mi,
                           u1(i, 'vas_ring') < 0.35 AS ring
                    FROM cust WHERE first_m <= {m}
                ), s AS (
                    SELECT f.i, svc.service FROM f,
                        (VALUES ('crbt'), ('mobile_internet'), ('newspaper'), ('ring_change'))
                            svc(service)
                    WHERE CASE svc.service
                        WHEN 'newspaper' THEN has_news
                        WHEN 'crbt' THEN has_crbt
                        -- ring change needs CRBT; never all four services
                        WHEN 'ring_change' THEN has_crbt AND ring AND NOT (has_news AND has_mi)
                        ELSE has_mi END
                ), a AS (
                    SELECT i, service, u2(i, {m}, service || 'act') < 0.85 AS active FROM s
                )
                SELECT msisdn(i) AS msisdn, '{month}' AS month, service, active,
                       CASE WHEN active
                            THEN floor(exp(ln(8) + 0.9 * n2(i, {m}, service || 'uses')))::BIGINT
                            ELSE 0 END AS uses
                FROM a ORDER BY i, service
            """, staging / f"vas_{month}.parquet")
            if last:
                mstart, mend = _one_row(con, f"SELECT mstart, mend FROM months WHERE m = {m}")
                rows["events.parquet"] = _copy(con, f"""
                    WITH e AS (
                        SELECT i, 'balance_low' AS event_type, balance AS value
                        FROM cm WHERE payment = 'prepaid' AND balance < 10
                                  AND u1(i, 'ev_bal') < 0.3
                        UNION ALL
                        SELECT i, 'data_90pct', round(100.0 * data_mb / included_data_mb, 1)
                        FROM cm WHERE included_data_mb > 0 AND data_mb >= 0.9 * included_data_mb
                                  AND u1(i, 'ev_d90') < 0.04
                        UNION ALL
                        SELECT i, 'data_100pct', round(100.0 * data_mb / included_data_mb, 1)
                        FROM cm WHERE included_data_mb > 0 AND data_mb >= included_data_mb
                                  AND u1(i, 'ev_d100') < 0.04
                        UNION ALL
                        SELECT i, 'roaming_start', voice_roam_min
                        FROM cm WHERE voice_roam_min > 0 AND u1(i, 'ev_roam') < 0.05
                    ), t AS (
                        SELECT i, event_type, value,
                               TIMESTAMP '{mstart.isoformat()} 00:00:00' + to_seconds(floor(
                                   u1(i, event_type || 't') * {(mend - mstart).days + 1} * 86400
                               )::BIGINT) AS event_time
                        FROM e
                    )
                    SELECT msisdn(i) AS msisdn, event_time, event_type, value::DOUBLE AS value
                    FROM t ORDER BY i, event_time, event_type
                """, staging / "events.parquet")
                if events_dir is not None:
                    rows.update(_write_daily_events(con, staging / "events.parquet", staging / "events",
                                                    mstart, mend))
        con.execute("DROP TABLE IF EXISTS cm")

        policy_channels = ", ".join(f"('{pol}', '{ch}', {n})" for n, (pol, chans) in
                                    enumerate(POLICY_CHANNELS.items()) for ch in chans)
        outcome_bounds = ", ".join(
            f"('{ch}', '{o}', {sum(shares[:n])}, {sum(shares[:n + 1])})"
            for ch, shares in OUTCOME_SHARES.items() for n, o in enumerate(OUTCOMES) if shares[n])
        contacts = f"""
            WITH pc(policy_id, channel, ord) AS (VALUES {policy_channels}),
            ob(channel, outcome, lo, hi) AS (VALUES {outcome_bounds}),
            c AS (
                SELECT i, 1 + floor(u1(i, 'chn') * 3)::INTEGER AS n_contacts,
                       coalesce(ld_top_province = '安徽', false) AS calls_anhui, roam_sh >= 0.40 AS traveller,
                       greatest(join_date, (SELECT min(mstart) FROM months)) AS d0,
                       (SELECT max(mend) FROM months) AS d1
                FROM cust WHERE u1(i, 'ch') < 0.20
            ), x AS (
                -- contact j falls in the j-th third of the customer's span: dates unique
                SELECT c.*, j.range AS j,
                       d0 + floor((j.range + u2(i, j.range, 'chd')) * (d1 - d0 + 1) / 3.0)::INTEGER
                           AS contact_date,
                       CASE WHEN u2(i, j.range, 'chc') < 0.25 THEN 'frontdesk'
                            WHEN u2(i, j.range, 'chc') < 0.55 THEN 'outbound'
                            WHEN u2(i, j.range, 'chc') < 0.65 THEN 'inbound'
                            WHEN u2(i, j.range, 'chc') < 0.90 THEN 'sms'
                            WHEN u2(i, j.range, 'chc') < 0.97 THEN 'app' ELSE 'manager' END AS channel,
                       u2(i, j.range, 'chp') AS up,
                       floor(u2(i, j.range, 'cho') * 1000)::INTEGER AS uo
                FROM c, range(3) j WHERE j.range < n_contacts
            ), p AS (
                -- the policies this channel may carry and this customer may be offered
                SELECT x.*, pc.policy_id,
                       row_number() OVER (PARTITION BY x.i, x.j ORDER BY pc.ord) AS r,
                       count(*) OVER (PARTITION BY x.i, x.j) AS n_pol
                FROM x JOIN pc USING (channel)
                WHERE (pc.policy_id <> 'LD_PACK_AH' OR x.calls_anhui)
                  AND (pc.policy_id <> 'ROAM_PACK' OR x.traveller)
            )
            SELECT {{who}}, p.contact_date, p.channel, p.policy_id, ob.outcome
            FROM p JOIN ob ON ob.channel = p.channel AND p.uo >= ob.lo AND p.uo < ob.hi
            WHERE p.r = 1 + floor(p.up * p.n_pol)::INTEGER
            -- a customer with a span of a few days can draw the same day twice: keep the key unique
            QUALIFY row_number() OVER (PARTITION BY p.i, p.contact_date, p.channel, p.policy_id
                                       ORDER BY p.j) = 1
        """
        # written straight from the query (the bytes of the file stay those of earlier versions),
        # and kept with the customer's index for the orders that follow the contacts
        rows["contact_history.parquet"] = _copy(con, contacts.format(who="msisdn(p.i) AS msisdn")
                                                + " ORDER BY p.i, p.contact_date, p.channel, p.policy_id",
                                                staging / "contact_history.parquet")
        con.execute("CREATE TEMP TABLE ch AS " + contacts.format(who="p.i"))

        next_month = _month_after(months[-1])
        _build_next_month(con, k)
        if label_month:
            rows[f"subscribers_{next_month}.parquet"] = _copy(con, f"""
                SELECT msisdn(c.i) AS msisdn, '{next_month}' AS month, c.city, c.plan_id, c.join_date,
                       n.status, c.payment, c.handset_gen, c.contract_end, c.bundle_type, c.bundle_end,
                       c.vnet, c.group_id, {_balance_sql(k, False)} AS balance
                FROM cust c JOIN nxt n USING (i) WHERE n.present ORDER BY c.i
            """, staging / f"subscribers_{next_month}.parquet")
        rows["orders.parquet"] = _copy(con, _orders_sql(policy_channels, next_month),
                                       staging / "orders.parquet")

        rows["dnd.parquet"] = _copy(con, f"""
            SELECT msisdn(i) AS msisdn,
                CASE WHEN u1(i, 'dndc') < 0.30 THEN '*'
                     WHEN u1(i, 'dndc') < 0.60 THEN 'sms'
                     WHEN u1(i, 'dndc') < 0.90 THEN 'outbound'
                     ELSE {_sql_list(CHANNELS)}[1 + floor(u1(i, 'dndc2') * {len(CHANNELS)})::INTEGER]
                END AS channel
            FROM cust WHERE u1(i, 'dnd') < 0.03 ORDER BY i
        """, staging / "dnd.parquet")
        con.close()

        for name in rows:
            if name.startswith(DAILY_EVENTS_PREFIX):
                continue
            os.replace(staging / name, out_dir / name)
        if events_dir is not None:
            _replace_daily_events(staging / "events", Path(events_dir),
                                  [n for n in rows if n.startswith(DAILY_EVENTS_PREFIX)])
    finally:
        try:
            con.close()
        except Exception:
            pass
        shutil.rmtree(staging, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", type=int, required=True,
                    help="number of subscribers (msisdn 13800000000 upwards)")
    ap.add_argument("--months", required=True,
                    help="comma-separated YYYY-MM months, e.g. 2026-08,2026-09,2026-10")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=7, help="seed (default 7)")
    ap.add_argument("--label-month", action="store_true",
                    help="also write the subscribers of the month after the last (the churn label)")
    ap.add_argument("--events-out", type=Path, default=None,
                    help="also write the last month's events as daily files events-YYYY-MM-DD.parquet "
                         "into this folder (the feed of `mktool scene`)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        rows = generate(args.out, args.subscribers, args.months.split(","), args.seed,
                        label_month=args.label_month, events_dir=args.events_out)
    except ValueError as exc:
        print(f"generate_fixtures: {exc}", file=sys.stderr)
        return 2
    width = max(len(n) for n in rows)
    for name, n in rows.items():
        print(f"{name:<{width}}  {n:>12,}")
    print(f"wrote {len(rows)} files to {args.out} in {time.monotonic() - t0:.1f}s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
