"""The names the steps share, defined once: tables, target-list columns, money and rate
columns, the channel vocabulary, cycles, formats and funnel stages.

A step never imports another step for a constant; it imports this module, which imports
nothing. The input tables' columns and rules are the data contract (:mod:`mktool.contract`);
this module names what mktool itself builds from them.
"""

from __future__ import annotations

# -- tables mktool writes (SPEC §3-§6) -----------------------------------------------------------
VIEW_TABLE = "customer_view"  # one row per subscriber and month: the scored customer view
RECOMMENDATIONS_TABLE = "recommendations"  # ranked offers per subscriber and month
CUSTOMER_PRIORITY_TABLE = "customer_priority"  # the priority matrix's family order per subscriber
PLAN_TABLE = "plan_recommendations"  # ranked plan changes per subscriber and month
CONTACT_HISTORY_TABLE = "contact_history"  # input extract and the contacts mktool recorded
#: contact_history.recorded_by of the rows an exported list wrote (ingested rows have NULL there).
RECORDED_BY = "mktool"
#: The bookkeeping columns contact_history carries beside the contract's: which cycle and tool wrote a row.
HISTORY_BOOKKEEPING = ("cycle", "recorded_by")
HOLDOUTS_TABLE = "holdouts"  # customer x policy kept back as a control group
#: holdouts.kind: the policy's own hold-out (per customer × policy × month), or the universal
#: control group (per customer, the same every month; contacted by no campaign).
POLICY_HOLDOUT = "policy"
UNIVERSAL_HOLDOUT = "universal"
HOLDOUT_KINDS = (POLICY_HOLDOUT, UNIVERSAL_HOLDOUT)
FUNNEL_TABLE = "funnel_counts"  # every step's funnel stages per month
CHURN_EVALUATION_TABLE = "churn_evaluation"  # every `evaluate churn` run: (month, run_id) → its document
CAMPAIGN_EVALUATION_TABLE = "campaign_evaluation"  # every `evaluate campaign` run: (month, run_id) → its document
ORDERS_TABLE = "orders"  # input extract: product orders and cancellations (optional)

#: The named parameter of a query built for one customer (explain: ``one_customer=True``).
CUSTOMER_PARAM = "msisdn"

# -- channels (SPEC §6) --------------------------------------------------------------------------
CHANNEL_NAMES = ("frontdesk", "outbound", "inbound", "sms", "app", "manager")
#: A channel's kind: a pop-up (the agent's screen when the customer walks in or calls: every
#: current offer, no capacity, not a contact by itself) or a push (a list someone works through).
POPUP, PUSH = "popup", "push"
CHANNEL_KINDS = (POPUP, PUSH)
#: The kind of a channel whose channels.yaml entry has no ``kind:``.
POPUP_CHANNELS = ("frontdesk", "inbound")
CYCLES = ("daily", "monthly")  # how often a channel's list is cut
MASKS = ("none", "mask", "hash")  # how a channel's list shows the msisdn
LIST_FORMATS = ("csv", "parquet", "jsonl")  # formats of a written list (and of --out files)

# -- target lists (SPEC §6) ----------------------------------------------------------------------
#: Money columns: DECIMAL(18,2), the fen rounded half away from zero (docs/money.md).
MONEY_COLUMNS = ("new_rental", "new_voice_overage", "new_data_overage", "new_total", "current_total")
#: Change rates: exact quotients, shown to 4 decimals.
RATE_COLUMNS = ("total_fee_change", "rental_change")
#: The policy group (政策群, seed 001) of a row's rule: its id and name, and the group's other
#: policies in the group's order (ids and names, each joined with '|'); NULL without a group.
GROUP_COLUMNS = ("group_id", "group_name", "group_alternatives", "group_alternative_names")
#: The standard target-list columns (SPEC §6), in order: every channel's default.
TARGET_COLUMNS = (
    "msisdn", "month", "channel", "rank", "matrix", "rule_id", "policy_id", "policy_name", "script",
    *GROUP_COLUMNS, "current_plan_id", "plan_id", *MONEY_COLUMNS, *RATE_COLUMNS,
)
#: The front-desk screen's customer summary (seed 001's 客户保有基本信息), from customer_view.
SUMMARY_COLUMNS = ("value_tier", "stickiness_tier", "churn_flag", "bundle_end", "contract_end")
#: The customer's contacts of the last RECENT_CONTACTS_MONTHS months before the cycle date, compact.
RECENT_CONTACTS_COLUMN = "recent_contacts"
RECENT_CONTACTS_MONTHS = 3  # seed 001: 客户近三个月短信和外呼接触记录
RECENT_CONTACTS_MAX = 10  # entries shown; more end with a '…+N' entry
#: What the agent's screen shows beside the offers: any channel may list them, pop-ups do by default.
SCREEN_COLUMNS = (*SUMMARY_COLUMNS, RECENT_CONTACTS_COLUMN)
#: Every column a channel's list may carry (channels.yaml ``columns:`` picks from these), in order.
LIST_COLUMNS = (*TARGET_COLUMNS, *SCREEN_COLUMNS)
#: Columns of plan_recommendations, in order.
PLAN_TABLE_COLUMNS = (
    "msisdn", "month", "rank", "current_plan_id", "plan_id", "plan_name", *MONEY_COLUMNS, *RATE_COLUMNS,
)

# -- funnels: each stage counts the subscribers that passed it and every stage before -----------
PLAN_FUNNEL = "plan"
PLAN_STAGES = ("base", "active", "data_ge_min", "eligible_plan", "billable", "in_rate_window")
#: A push channel's funnel: the whole contact policy (SPEC §6); a pop-up's stages are a subsequence.
PUSH_STAGES = ("candidates", "dnd", "unsubscribed", "withdrawn", "cooldown", "no_answer", "exclusion", "dedupe",
               "contact_cap", "capacity", "holdout", "exported")
#: A pop-up's funnel: no retry wait, contact cap, dedupe or capacity (a pop-up shows what is current).
POPUP_STAGES = ("candidates", "dnd", "unsubscribed", "withdrawn", "cooldown", "exclusion", "holdout", "exported")
#: The funnel stages of a channel of each kind.
CHANNEL_STAGES = {PUSH: PUSH_STAGES, POPUP: POPUP_STAGES}

# -- evaluation (SPEC §7) ------------------------------------------------------------------------
#: What ``mktool evaluate KIND`` evaluates (the first is the default).
EVALUATION_KINDS = ("campaign", "churn")
#: The group columns ``evaluate campaign --by`` splits the pairs (customer x policy) by.
CAMPAIGN_BY = ("policy_id", "matrix", "rule_id", "channel", "segment", "value_tier")
#: Days after the contact (or hold-out) date within which an order or a response counts.
DEFAULT_WINDOW_DAYS = 30
#: Days after an order within which a cancellation makes it a 7-day cancel (seed 004's 退订率).
CANCEL_DAYS = 7
#: The response funnel of a channel (funnel_counts ``response:<channel>``, cycle NULL): nested
#: stages over offers (customer x policy pairs), not customers.
RESPONSE_FUNNEL_PREFIX = "response:"
RESPONSE_STAGES = ("sent", "reached", "accepted", "ordered", "kept_7d")
#: The top shares of churn_score evaluated, as (share, numerator, denominator): exact fractions.
CHURN_TOP_SHARES = (("0.05", 1, 20), ("0.1", 1, 10))
#: Cumulative gains: the base in this many position bands (deciles).
CHURN_DECILES = 10
#: The customer_view columns ``evaluate churn --by`` splits the base by.
CHURN_BY = ("tenure_cohort",)
#: Decimals of every evaluation rate (exact quotients rounded half away from zero).
EVALUATION_RATE_SCALE = 6
#: The class of a NULL value in the evaluations' and reports' groups (a NULL tenure_cohort, segment…).
NO_GROUP = "(none)"

# -- scenes (issue 14, docs/scenes.md): event-triggered micro-batches -----------------------------
SCENE_FILES_TABLE = "scene_files"  # the ledger: one row per event file processed (checksum → batch)
SCENE_EVENTS_TABLE = "scene_events"  # every event of every batch with its outcome per scene
SCENE_FUNNELS_TABLE = "scene_funnels"  # every batch's funnels (the months' funnel_counts stay apart)
#: A scene batch's cycle id (contact_history.cycle, holdouts.cycle) is this prefix and its batch id;
#: its offers' matrix (holdouts.matrix; their rule_id is the scene id).
SCENE_CYCLE_PREFIX = "scene:"
SCENE_MATRIX = "scene"
#: A batch's work tables (temp: they vanish with the connection): its events (seq-ordered),
#: the outcome of each event per scene, and the fired triggers the contact policy works on.
SCENE_EVENTS_TEMP = "_s_events"
SCENE_OUTCOMES_TEMP = "_s_outcomes"
SCENE_TRIGGERS_TEMP = "_s_triggers"
#: What a batch decided for an event (per listening scene), in the order they are checked.
SCENE_OUTCOMES = ("duplicate", "no_scene", "stale", "unknown_customer", "not_matched", "once_per", "fired")
FIRED = "fired"
#: The ledger (scene_files): one row per processed event file (key: checksum), written by the publish unit.
SCENE_FILES_KEY = "checksum"
SCENE_FILES_COLUMNS: tuple[tuple[str, str], ...] = (
    ("checksum", "VARCHAR"), ("file_name", "VARCHAR"), ("path", "VARCHAR"), ("size", "BIGINT"),
    ("rows", "BIGINT"), ("first_event", "TIMESTAMP"), ("last_event", "TIMESTAMP"), ("batch", "VARCHAR"),
    ("cycle_date", "DATE"), ("processed_at", "TIMESTAMP"),
)
#: scene_events: every event of every batch with its outcome (per listening scene) and delivery.
SCENE_EVENTS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("batch", "VARCHAR"), ("seq", "BIGINT"), ("msisdn", "VARCHAR"), ("event_time", "TIMESTAMP"),
    ("event_type", "VARCHAR"), ("value", "DOUBLE"), ("scene_id", "VARCHAR"), ("wave", "VARCHAR"),
    ("wave_level", "INTEGER"), ("outcome", "VARCHAR"), ("blocked_by_time", "TIMESTAMP"),
    ("blocked_by_batch", "VARCHAR"), ("policy_id", "VARCHAR"), ("delivery", "VARCHAR"), ("channel", "VARCHAR"),
    ("blocked_at", "VARCHAR"), ("held_kind", "VARCHAR"),
)
#: _s_events: a batch's events as loaded, seq = 1.. in the batch's order.
EVENT_COLUMNS = ("seq", "msisdn", "event_time", "event_type", "value")
#: _s_outcomes: one row per duplicate / no_scene event, else one per event × listening scene.
OUTCOME_COLUMNS = ("seq", "msisdn", "event_time", "event_type", "value", "scene_id", "wave", "wave_level",
                   "outcome", "blocked_by_time", "blocked_by_batch")
#: _s_triggers: the fired rows, with what the contact policy needs.
TRIGGER_COLUMNS = ("seq", "msisdn", "cust_id", "scene_id", "position", "wave", "wave_level", "policy_id",
                   "policy_name", "script", "channels", "event_time", "event_type", "value", "rank")
#: Names of a folder's files that are not (yet) event files: hidden, or still being written.
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial")
