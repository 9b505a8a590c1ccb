-- The customer view's base and feature columns for month $month (SPEC §3).
-- The window is $month and the two calendar months before it ($prev, $prev2); averages are
-- over the months a customer actually has rows for. Scores are added on top of this by
-- mktool/view.py from matrices/scores.yaml.
WITH
sub AS (
    SELECT * FROM subscribers WHERE month = $month
),
bill AS (
    SELECT
        msisdn,
        max(total_fee) FILTER (WHERE month = $month)                        AS arpu,
        avg(total_fee)                                                      AS arpu_3m,
        avg(rental_fee)                                                     AS rental_3m,
        avg(voice_overage_fee)                                              AS voice_overage_3m,
        avg(data_overage_fee)                                               AS data_overage_3m,
        avg(addon_fee)                                                      AS addon_3m,
        avg(rental_fee + voice_overage_fee + data_overage_fee + addon_fee)  AS current_total_3m,
        100 * (sum(total_fee) - sum(discount_fee)) / nullif(sum(total_fee), 0) AS return_rate,
        max(total_fee) FILTER (WHERE month = $prev)                         AS arpu_prev,
        max(ld_fee) FILTER (WHERE month = $month)                           AS ld_fee,
        count(*)                                                            AS billing_months
    FROM billing
    WHERE month IN ($month, $prev, $prev2)
    GROUP BY msisdn
),
use AS (
    SELECT
        msisdn,
        avg(voice_out_min)                                       AS voice_min_3m,
        avg(data_mb)                                             AS data_mb_3m,
        count(*)                                                 AS months_in_window,
        max(voice_out_min)    FILTER (WHERE month = $month)      AS voice_out_min,
        max(voice_local_min)  FILTER (WHERE month = $month)      AS voice_local_min,
        max(voice_ld_out_min) FILTER (WHERE month = $month)      AS voice_ld_out_min,
        max(voice_ld_in_min)  FILTER (WHERE month = $month)      AS voice_ld_in_min,
        max(voice_roam_min)   FILTER (WHERE month = $month)      AS voice_roam_min,
        max(ld_top_province)  FILTER (WHERE month = $month)      AS ld_top_province,
        max(sms_count)        FILTER (WHERE month = $month)      AS sms_count,
        max(data_mb)          FILTER (WHERE month = $month)      AS data_mb,
        max(contacts)         FILTER (WHERE month = $month)      AS contacts,
        max(contacts_in_net)  FILTER (WHERE month = $month)      AS contacts_in_net,
        max(voice_out_min)    FILTER (WHERE month = $prev)       AS voice_min_prev,
        max(data_mb)          FILTER (WHERE month = $prev)       AS data_mb_prev,
        max(contacts)         FILTER (WHERE month = $prev)       AS contacts_prev
    FROM usage
    WHERE month IN ($month, $prev, $prev2)
    GROUP BY msisdn
),
vas_m AS (
    $vas_sql
)
SELECT
    sub.msisdn, sub.month, sub.city, sub.plan_id, sub.status, sub.payment, sub.handset_gen,
    sub.vnet, sub.group_id, sub.balance, sub.bundle_type, sub.bundle_end, sub.contract_end,
    sub.join_date,
    CAST($month_index - (year(sub.join_date) * 12 + month(sub.join_date)) AS INTEGER) AS tenure_months,
    bill.arpu, bill.arpu_3m, bill.rental_3m, bill.voice_overage_3m, bill.data_overage_3m, bill.addon_3m,
    bill.current_total_3m, bill.return_rate,
    use.voice_min_3m, use.data_mb_3m,
    coalesce(use.months_in_window, 0) AS months_in_window,
    -- features of month M and M-1 that the score and rule files build on
    coalesce(bill.billing_months, 0) AS billing_months,
    bill.arpu_prev, bill.ld_fee,
    use.voice_out_min, use.voice_local_min, use.voice_ld_out_min, use.voice_ld_in_min, use.voice_roam_min,
    use.ld_top_province, use.sms_count, use.data_mb, use.contacts, use.contacts_in_net,
    use.voice_min_prev, use.data_mb_prev, use.contacts_prev,
    use.contacts_in_net / nullif(use.contacts, 0) AS in_net_share,
    use.voice_local_min + use.voice_ld_out_min + use.voice_ld_in_min + use.voice_roam_min AS voice_total_min,
    bill.ld_fee / nullif(use.voice_ld_out_min, 0) AS ld_unit_price,
    plans.plan_name, plans.monthly_rental AS plan_rental, plans.product_status,
    coalesce(vas_m.vas_active, 0) AS vas_active,
    coalesce(vas_m.has_newspaper, false) AS has_newspaper,
    coalesce(vas_m.has_crbt, false) AS has_crbt,
    coalesce(vas_m.has_ring_change, false) AS has_ring_change,
    coalesce(vas_m.has_mobile_internet, false) AS has_mobile_internet,
    CAST($month_end AS DATE) AS month_end,
    sub.contract_end IS NOT NULL AND sub.contract_end <= CAST($horizon_3m AS DATE) AS contract_ends_3m,
    sub.bundle_end IS NOT NULL AND sub.bundle_end <= CAST($horizon_3m AS DATE) AS bundle_ends_3m
FROM sub
LEFT JOIN bill USING (msisdn)
LEFT JOIN use USING (msisdn)
LEFT JOIN plans ON plans.plan_id = sub.plan_id
LEFT JOIN vas_m USING (msisdn)
