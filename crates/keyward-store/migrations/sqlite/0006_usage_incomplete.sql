-- How many events of each rollup row were incomplete (their usage never came:
-- a stream cut off or hung up on, charged from what the gateway saw), so usage
-- reports can say how much of a total is an estimate. Mirrors
-- migrations/postgres/0005_usage_incomplete.sql.
ALTER TABLE usage_hourly ADD COLUMN incomplete INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_hourly_models ADD COLUMN incomplete INTEGER NOT NULL DEFAULT 0;

-- Existing rows are counted from the raw events, kept in blocks: positional
-- arrays where field 0 is key_id, 3 is at, 5 is model and 16 is incomplete
-- (see 0004_usage_blocks.sql).
CREATE TEMP TABLE incomplete_hours AS
SELECT json_extract(e.value, '$[0]') AS key_id,
       json_extract(e.value, '$[3]') - (json_extract(e.value, '$[3]') % 3600000) AS hour_start,
       json_extract(e.value, '$[5]') AS model,
       COUNT(*) AS n
FROM usage_event_blocks AS b, json_each(b.body) AS e
WHERE json_extract(e.value, '$[16]')
GROUP BY 1, 2, 3;
CREATE INDEX temp.incomplete_hours_by_hour ON incomplete_hours (key_id, hour_start, model);

UPDATE usage_hourly SET incomplete = (
    SELECT SUM(t.n) FROM incomplete_hours AS t
    WHERE t.key_id = usage_hourly.key_id AND t.hour_start = usage_hourly.hour_start
) WHERE EXISTS (
    SELECT 1 FROM incomplete_hours AS t
    WHERE t.key_id = usage_hourly.key_id AND t.hour_start = usage_hourly.hour_start
);
UPDATE usage_hourly_models SET incomplete = (
    SELECT t.n FROM incomplete_hours AS t
    WHERE t.key_id = usage_hourly_models.key_id
      AND t.hour_start = usage_hourly_models.hour_start
      AND t.model = usage_hourly_models.model
) WHERE EXISTS (
    SELECT 1 FROM incomplete_hours AS t
    WHERE t.key_id = usage_hourly_models.key_id
      AND t.hour_start = usage_hourly_models.hour_start
      AND t.model = usage_hourly_models.model
);
DROP TABLE incomplete_hours;
