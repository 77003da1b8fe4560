-- Daily sums per key and model (UTC days), kept with the hourly rollups in the
-- same transaction. Usage over whole days (the dashboard's day and month views,
-- totals over day-aligned ranges) reads at most one row per key, model and day,
-- however many requests those days held: the cost of a chart stays flat as
-- traffic grows. Rows are stored in (org, day, key, model) order, so that an
-- organization's days are one contiguous range that carries its counters: no
-- seek per row. Built here from the per-model hourly rollup.
CREATE TABLE usage_daily (
    key_id              TEXT    NOT NULL,
    day_start           INTEGER NOT NULL,
    model               TEXT    NOT NULL,
    project_id          TEXT    NOT NULL,
    org_id              TEXT    NOT NULL,
    requests            INTEGER NOT NULL,
    errors              INTEGER NOT NULL,
    input_tokens        INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens       INTEGER NOT NULL,
    reasoning_tokens    INTEGER NOT NULL,
    cost_micros         INTEGER NOT NULL,
    incomplete          INTEGER NOT NULL,
    PRIMARY KEY (org_id, day_start, key_id, model)
) WITHOUT ROWID;
CREATE INDEX usage_daily_by_key ON usage_daily (key_id, day_start);
CREATE INDEX usage_daily_by_project ON usage_daily (project_id, day_start);
CREATE INDEX usage_daily_by_time ON usage_daily (day_start);

INSERT INTO usage_daily (key_id, day_start, model, project_id, org_id, requests, errors,
    input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cost_micros, incomplete)
SELECT key_id, hour_start - (hour_start % 86400000), model, MIN(project_id), MIN(org_id),
       SUM(requests), SUM(errors), SUM(input_tokens), SUM(cached_input_tokens),
       SUM(output_tokens), SUM(reasoning_tokens), SUM(cost_micros), SUM(incomplete)
FROM usage_hourly_models
GROUP BY key_id, hour_start - (hour_start % 86400000), model;
