"""`mktool test`: rule unit tests written by analysts next to their rules.

A test file (``matrices/tests/*.yaml``) lists cases. A case is a partial customer — only the
customer_view columns that matter — and the outcome the rules must give it. Every case runs
in an in-memory DuckDB, without extracts or the user's database, through exactly the code the
month-end run uses: the case customers become a ``customer_view`` table and
:func:`mktool.matrices.evaluate` (matrix cases) or :func:`mktool.plan.recommend_query` (plan
cases) run on it.

How a case customer is completed (see :data:`DEFAULT_CUSTOMER` and docs/analyst-workflow.md):

1. base and feature columns the case gives are used as given; the others take the default
   customer's value (file-level ``customer:`` defaults override the built-in ones);
2. a few base columns are computed from their parts unless given, with the same formulas as
   sql/customer_view_base.sql (:data:`DERIVED`): tenure_months from join_date (or join_date
   from tenure_months), current_total_3m, in_net_share, voice_total_min, ld_unit_price,
   data_saturation, voice_saturation, month_end, contract_ends_3m, bundle_ends_3m;
3. value_score / value_tier (percentile ranks over the whole month, meaningless for one
   customer) are given or default to 50 / ``mid``;
4. every score column of scores.yaml (has_bundle, stickiness_*, churn_*, *_potential,
   traffic_group, tenure_cohort, segment, ...) is computed by scores.yaml's own SQL from the
   columns above, unless the case gives it; a given score feeds the scores after it.

Case files (keys; everything but ``cases`` / ``plan_cases`` is optional)::

    month: 2026-10                # evaluation month [default: --month, else the current month]
    matrix: retention             # default scope of the cases below
    customer: {status: active}    # defaults shared by the file's cases
    cases:                        # matrix cases
      - case: R6 fires for a loyal customer at 100 <= arpu_3m < 150
        rule: R6                  # the rule under test (reports, coverage)
        matrix: retention         # a matrix, `all` (the full ranked recommendation) or the priority matrix
        customer: {tenure_months: 13, return_rate: 87, arpu_3m: 100}
        expect: [{policy: PREPAY_300_600, rule: R6, group: 6}]   # exact, in rank order; or: no offer
        includes: [...]           # offers that must be among the customer's (optional)
        excludes: [R7, PREPAY_100_260]   # rule or policy ids that must not appear (optional)
    plans: [...]                  # the plan catalogue for plan cases (or plans_file: CSV/Parquet)
    plan_cases:
      - case: SPEC §5 worked example
        customer: {plan_id: ZX128, rental_3m: 128, data_overage_3m: 62, addon_3m: 30, ...}
        config: {rental_change: "1.0:1.3"}   # plan.yaml overrides (total_change, rental_change, top, min_data_mb)
        expect: {plan_id: ZX158, new_total: 228.00, total_fee_change: 1.0364, rental_change: "123%"}
        # or expect: no plan, with stage: data_ge_min (the funnel stage the customer fails)

Scene cases (issue 14; docs/scenes.md): a case with an ``event:`` (or any case of a file with a
file-level ``scene:``) is one event of one case customer, decided by the trigger step's own
queries (:func:`mktool.scene.outcome_queries` / :func:`~mktool.scene.run_outcomes`) over the case
customers as customer_view and their earlier triggers as scene_events::

    scene: balance_low_prepay     # default scope of the file's scene cases (optional)
    cases:
      - case: wave below_5 fires after wave below_10
        scene: balance_low_prepay   # the scene under test; leave out to see every scene of the event's type
        customer: {payment: prepaid, churn_flag: true}
        event: {value: 4, event_time: 2026-10-05 20:00:00}    # event_type: the scene's unless given
        earlier: [{wave: below_10, event_time: 2026-10-05 08:00:00}]  # fired in an earlier batch
        watermark: 2026-10-05 20:30:00   # the batch's clock (stale); default: none, nothing is stale
        expect: {wave: below_5}     # or [{scene, wave}, ...], `no trigger`, {outcome: stale}, ...

A matrix file may one day carry its own ``tests:`` list (same case keys, scope: that matrix);
:func:`discover` reads it, but mktool.rules does not accept the key yet.

The package, by role (each module imports only the ones listed before it):

* :mod:`~mktool.ruletest.cases`: reading test files into :class:`Case` / :class:`CaseFile`;
* :mod:`~mktool.ruletest.customers`: the synthetic customer view (:class:`CustomerBuilder`)
  in a private in-memory database (:class:`MemoryDatabase`);
* :mod:`~mktool.ruletest.judging`: running cases against the matrices, the plan and the scenes,
  judging the outcome (:func:`run_tests`, :class:`TestRun`);
* :mod:`~mktool.ruletest.reports`: the run as data (JSON document, JUnit XML, coverage gaps).

What ``mktool test`` prints is rendered by :mod:`mktool.render`.
"""

from mktool.ruletest.cases import Case, CaseFile, current_month, discover, read_case_file, test_files
from mktool.ruletest.customers import (
    DEFAULT_CUSTOMER,
    DERIVED,
    CustomerBuilder,
    MemoryDatabase,
    build_customer_view,
    default_customer_rows,
    view_column_types,
)
from mktool.ruletest.judging import CaseResult, TestRun, run_tests
from mktool.ruletest.reports import coverage_problems, junit_xml, result_document

__all__ = [
    "DEFAULT_CUSTOMER",
    "DERIVED",
    "Case",
    "CaseFile",
    "CaseResult",
    "CustomerBuilder",
    "MemoryDatabase",
    "TestRun",
    "build_customer_view",
    "coverage_problems",
    "current_month",
    "default_customer_rows",
    "discover",
    "junit_xml",
    "read_case_file",
    "result_document",
    "run_tests",
    "test_files",
    "view_column_types",
]
