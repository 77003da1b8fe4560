-- How many events of each rollup row were incomplete (their usage never came:
-- a stream cut off or hung up on, charged from what the gateway saw), so usage
-- reports can say how much of a total is an estimate. Mirrors
-- migrations/sqlite/0006_usage_incomplete.sql. (PostgreSQL keeps no per-model
-- rollup: usage by model is summed from usage_events.)
ALTER TABLE usage_hourly ADD COLUMN incomplete BIGINT NOT NULL DEFAULT 0;

UPDATE usage_hourly AS h SET incomplete = t.n
FROM (
    SELECT key_id, at - (at % 3600000) AS hour_start, COUNT(*) AS n
    FROM usage_events
    WHERE incomplete
    GROUP BY 1, 2
) AS t
WHERE h.key_id = t.key_id AND h.hour_start = t.hour_start;
