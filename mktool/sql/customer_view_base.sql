-- The customer view's base and feature columns for month $month (SPEC §3).
-- The window is $month and the two calendar months before it ($prev2, $prev); averages are
-- over the months a customer actually has values for. Scores are added on top of this by
-- mktool/view.py from matrices/scores.yaml.
--
-- Each window month is joined on as its own row set (b2, b1, b0 / u2, u1, u0: oldest first)
-- instead of GROUP BY + avg(): a parallel aggregate adds a customer's three values in whatever
-- order its threads meet them, so the usage averages (and every percentile built on them)
-- would differ in the last bit from run to run. Here every sum is taken in month order,
-- oldest first, exactly like a sequential implementation, so the same extracts give the same
-- view, bit for bit. (The key guarantees one row per customer and month, so each join finds
-- at most one row.)
--
-- Money is exact (docs/money.md): every amount is read as DECIMAL(18,2) and summed as an
-- integer count of fen; an average is that sum over the months present, rounded half away
-- from zero to 6 decimals (DECIMAL(38,6)), and return_rate is 100 × (fees − discounts) / fees
-- to 6 decimals the same way, so a customer with no discount has exactly 100. The @name(...)
-- markers are filled in by mktool/view.py from mktool/dialect.py, where each formula is
-- written once (and rendered for Spark as well):
--   @money(x)        a stored amount as DECIMAL(18,2)
--   @fen(x)          a stored amount as an integer count of fen
--   @average(s, n)   a fen sum s over n months, DECIMAL(38,6), half away from zero; NULL if n = 0
--   @percent(a, b)   100 × a / b of two fen sums, DECIMAL(38,6), half away from zero; NULL if b = 0
--   @ratio(a, b)     a / b of two quantities (minutes, MB) read to 6 decimals, DECIMAL(38,4), half away
--                    from zero; NULL if either is NULL or b is not positive (the saturations)
WITH
sub AS (SELECT * FROM subscribers WHERE month = $month),
b0 AS (SELECT * FROM billing WHERE month = $month),
b1 AS (SELECT * FROM billing WHERE month = $prev),
b2 AS (SELECT * FROM billing WHERE month = $prev2),
u0 AS (SELECT * FROM usage WHERE month = $month),
u1 AS (SELECT * FROM usage WHERE month = $prev),
u2 AS (SELECT * FROM usage WHERE month = $prev2),
vas_m AS (
    $vas_sql
),
-- Per customer of month M: the subscriber row, each averaged quantity's sum over the window (month order) and how many
-- months have a value for it (NULLs are skipped, as avg() does).
win AS (
    SELECT
        -- the contract's columns by name: an extract's extra columns (kept by ingest) must not
        -- shadow the names computed below (an extra `arpu` would be picked instead of billing's)
        sub.msisdn, sub.month, sub.city, sub.plan_id, sub.status, sub.payment, sub.handset_gen,
        sub.vnet, sub.group_id, @money(sub.balance) AS balance, sub.bundle_type, sub.bundle_end, sub.contract_end,
        sub.join_date,
        CAST(b2.total_fee IS NOT NULL AS INTEGER) + CAST(b1.total_fee IS NOT NULL AS INTEGER)
            + CAST(b0.total_fee IS NOT NULL AS INTEGER) AS total_fee_n,
        coalesce(@fen(b2.total_fee), 0) + coalesce(@fen(b1.total_fee), 0) + coalesce(@fen(b0.total_fee), 0) AS total_fee_sum,
        CAST(b2.rental_fee IS NOT NULL AS INTEGER) + CAST(b1.rental_fee IS NOT NULL AS INTEGER)
            + CAST(b0.rental_fee IS NOT NULL AS INTEGER) AS rental_fee_n,
        coalesce(@fen(b2.rental_fee), 0) + coalesce(@fen(b1.rental_fee), 0) + coalesce(@fen(b0.rental_fee), 0) AS rental_fee_sum,
        CAST(b2.voice_overage_fee IS NOT NULL AS INTEGER) + CAST(b1.voice_overage_fee IS NOT NULL AS INTEGER)
            + CAST(b0.voice_overage_fee IS NOT NULL AS INTEGER) AS voice_overage_fee_n,
        coalesce(@fen(b2.voice_overage_fee), 0) + coalesce(@fen(b1.voice_overage_fee), 0) + coalesce(@fen(b0.voice_overage_fee), 0) AS voice_overage_fee_sum,
        CAST(b2.data_overage_fee IS NOT NULL AS INTEGER) + CAST(b1.data_overage_fee IS NOT NULL AS INTEGER)
            + CAST(b0.data_overage_fee IS NOT NULL AS INTEGER) AS data_overage_fee_n,
        coalesce(@fen(b2.data_overage_fee), 0) + coalesce(@fen(b1.data_overage_fee), 0) + coalesce(@fen(b0.data_overage_fee), 0) AS data_overage_fee_sum,
        CAST(b2.addon_fee IS NOT NULL AS INTEGER) + CAST(b1.addon_fee IS NOT NULL AS INTEGER)
            + CAST(b0.addon_fee IS NOT NULL AS INTEGER) AS addon_fee_n,
        coalesce(@fen(b2.addon_fee), 0) + coalesce(@fen(b1.addon_fee), 0) + coalesce(@fen(b0.addon_fee), 0) AS addon_fee_sum,
        CAST(b2.discount_fee IS NOT NULL AS INTEGER) + CAST(b1.discount_fee IS NOT NULL AS INTEGER)
            + CAST(b0.discount_fee IS NOT NULL AS INTEGER) AS discount_fee_n,
        coalesce(@fen(b2.discount_fee), 0) + coalesce(@fen(b1.discount_fee), 0) + coalesce(@fen(b0.discount_fee), 0) AS discount_fee_sum,
        CAST((b2.rental_fee + b2.voice_overage_fee + b2.data_overage_fee + b2.addon_fee) IS NOT NULL AS INTEGER) + CAST((b1.rental_fee + b1.voice_overage_fee + b1.data_overage_fee + b1.addon_fee) IS NOT NULL AS INTEGER)
            + CAST((b0.rental_fee + b0.voice_overage_fee + b0.data_overage_fee + b0.addon_fee) IS NOT NULL AS INTEGER) AS three_item_n,
        coalesce((@fen(b2.rental_fee) + @fen(b2.voice_overage_fee) + @fen(b2.data_overage_fee) + @fen(b2.addon_fee)), 0)
            + coalesce((@fen(b1.rental_fee) + @fen(b1.voice_overage_fee) + @fen(b1.data_overage_fee) + @fen(b1.addon_fee)), 0)
            + coalesce((@fen(b0.rental_fee) + @fen(b0.voice_overage_fee) + @fen(b0.data_overage_fee) + @fen(b0.addon_fee)), 0) AS three_item_sum,
        CAST(u2.voice_out_min IS NOT NULL AS INTEGER) + CAST(u1.voice_out_min IS NOT NULL AS INTEGER)
            + CAST(u0.voice_out_min IS NOT NULL AS INTEGER) AS voice_out_min_n,
        coalesce(u2.voice_out_min, 0) + coalesce(u1.voice_out_min, 0) + coalesce(u0.voice_out_min, 0) AS voice_out_min_sum,
        CAST(u2.data_mb IS NOT NULL AS INTEGER) + CAST(u1.data_mb IS NOT NULL AS INTEGER)
            + CAST(u0.data_mb IS NOT NULL AS INTEGER) AS data_mb_n,
        coalesce(u2.data_mb, 0) + coalesce(u1.data_mb, 0) + coalesce(u0.data_mb, 0) AS data_mb_sum,
        CAST(b2.msisdn IS NOT NULL AS INTEGER) + CAST(b1.msisdn IS NOT NULL AS INTEGER)
            + CAST(b0.msisdn IS NOT NULL AS INTEGER) AS billing_months,
        CAST(u2.msisdn IS NOT NULL AS INTEGER) + CAST(u1.msisdn IS NOT NULL AS INTEGER)
            + CAST(u0.msisdn IS NOT NULL AS INTEGER) AS months_in_window,
        @money(b0.total_fee) AS arpu, @money(b1.total_fee) AS arpu_prev, @money(b0.ld_fee) AS ld_fee,
        u0.voice_out_min, u0.voice_local_min, u0.voice_ld_out_min, u0.voice_ld_in_min, u0.voice_roam_min,
        u0.ld_top_province, u0.sms_count, u0.data_mb, u0.contacts, u0.contacts_in_net,
        u1.voice_out_min AS voice_min_prev, u1.data_mb AS data_mb_prev, u1.contacts AS contacts_prev
    FROM sub
    LEFT JOIN b2 ON b2.msisdn = sub.msisdn
    LEFT JOIN b1 ON b1.msisdn = sub.msisdn
    LEFT JOIN b0 ON b0.msisdn = sub.msisdn
    LEFT JOIN u2 ON u2.msisdn = sub.msisdn
    LEFT JOIN u1 ON u1.msisdn = sub.msisdn
    LEFT JOIN u0 ON u0.msisdn = sub.msisdn
),
-- The month's row of every customer; the saturations below read its averages and its plan's allowances.
row_m AS (
SELECT
    w.msisdn, w.month, w.city, w.plan_id, w.status, w.payment, w.handset_gen,
    w.vnet, w.group_id, w.balance, w.bundle_type, w.bundle_end, w.contract_end,
    w.join_date,
    CAST($month_index - (year(w.join_date) * 12 + month(w.join_date)) AS INTEGER) AS tenure_months,
    w.arpu,
    @average(w.total_fee_sum, w.total_fee_n)                 AS arpu_3m,
    @average(w.rental_fee_sum, w.rental_fee_n)               AS rental_3m,
    @average(w.voice_overage_fee_sum, w.voice_overage_fee_n) AS voice_overage_3m,
    @average(w.data_overage_fee_sum, w.data_overage_fee_n)   AS data_overage_3m,
    @average(w.addon_fee_sum, w.addon_fee_n)                 AS addon_3m,
    @average(w.three_item_sum, w.three_item_n)               AS current_total_3m,
    CASE WHEN w.total_fee_n > 0 AND w.discount_fee_n > 0
         THEN @percent(w.total_fee_sum - w.discount_fee_sum, w.total_fee_sum) END AS return_rate,
    w.voice_out_min_sum / nullif(w.voice_out_min_n, 0)         AS voice_min_3m,
    w.data_mb_sum / nullif(w.data_mb_n, 0)                     AS data_mb_3m,
    w.months_in_window,
    -- features of month M and M-1 that the score and rule files build on
    w.billing_months,
    w.arpu_prev, w.ld_fee,
    w.voice_out_min, w.voice_local_min, w.voice_ld_out_min, w.voice_ld_in_min, w.voice_roam_min,
    w.ld_top_province, w.sms_count, w.data_mb, w.contacts, w.contacts_in_net,
    w.voice_min_prev, w.data_mb_prev, w.contacts_prev,
    w.contacts_in_net / nullif(w.contacts, 0) AS in_net_share,
    w.voice_local_min + w.voice_ld_out_min + w.voice_ld_in_min + w.voice_roam_min AS voice_total_min,
    w.ld_fee / nullif(w.voice_ld_out_min, 0) AS ld_unit_price,
    plans.plan_name, @money(plans.monthly_rental) AS plan_rental, plans.product_status,
    plans.included_data_mb, plans.included_voice_min,
    coalesce(vas_m.vas_active, 0) AS vas_active,
    coalesce(vas_m.has_newspaper, false) AS has_newspaper,
    coalesce(vas_m.has_crbt, false) AS has_crbt,
    coalesce(vas_m.has_ring_change, false) AS has_ring_change,
    coalesce(vas_m.has_mobile_internet, false) AS has_mobile_internet,
    CAST($month_end AS DATE) AS month_end,
    w.contract_end IS NOT NULL AND w.contract_end <= CAST($horizon_3m AS DATE) AS contract_ends_3m,
    w.bundle_end IS NOT NULL AND w.bundle_end <= CAST($horizon_3m AS DATE) AS bundle_ends_3m
FROM win w
LEFT JOIN plans ON plans.plan_id = w.plan_id
LEFT JOIN vas_m ON vas_m.msisdn = w.msisdn
)
-- 流量饱和度 / 语音饱和度 (seed 000): the 3-month average use over the current plan's allowance
-- (data_mb_3m and voice_min_3m: the months with a value, as every average here); NULL for an
-- unknown plan, an allowance of 0 (a plan without that allowance) or a customer without usage.
SELECT
    row_m.*,
    @ratio(row_m.data_mb_3m, row_m.included_data_mb)    AS data_saturation,
    @ratio(row_m.voice_min_3m, row_m.included_voice_min) AS voice_saturation
FROM row_m
