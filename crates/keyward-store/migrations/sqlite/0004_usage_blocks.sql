-- Raw usage events in blocks (SQLite only; PostgreSQL keeps one row per event).
--
-- One row per written batch holds the batch's events as a JSON array of
-- positional arrays, in insertion order:
--   [key_id, project_id, org_id, at, endpoint, model, status, input_tokens,
--    cached_input_tokens, output_tokens, reasoning_tokens, cost_micros,
--    upstream_latency_ms, total_latency_ms, client_ip, streamed, incomplete]
-- A row per event with four secondary indexes cost the gateway about a fifth of
-- its instructions per request (docs/BENCHMARKS.md); a block costs one insert per
-- batch. Reports read the hourly rollups; the raw events stay readable with SQL:
--   SELECT value ->> 0 AS key_id, value ->> 3 AS at
--   FROM usage_event_blocks, json_each(body);
CREATE TABLE usage_event_blocks (
    seq      INTEGER NOT NULL PRIMARY KEY, -- insertion order of the batches
    first_at INTEGER NOT NULL,             -- earliest `at` in the block
    last_at  INTEGER NOT NULL,             -- latest `at` in the block
    events   INTEGER NOT NULL,             -- number of events
    body     TEXT    NOT NULL              -- the events, JSON
);
CREATE INDEX usage_event_blocks_by_last_at ON usage_event_blocks (last_at, seq);

-- Hourly sums per key and model, maintained with usage_hourly in the same
-- transaction: usage grouped by model reads this instead of raw events.
CREATE TABLE usage_hourly_models (
    key_id              TEXT    NOT NULL,
    hour_start          INTEGER NOT NULL,
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
    PRIMARY KEY (key_id, hour_start, model)
) WITHOUT ROWID;
CREATE INDEX usage_hourly_models_by_project ON usage_hourly_models (project_id, hour_start);
CREATE INDEX usage_hourly_models_by_org ON usage_hourly_models (org_id, hour_start);
CREATE INDEX usage_hourly_models_by_time ON usage_hourly_models (hour_start);

INSERT INTO usage_hourly_models
SELECT key_id, at - (at % 3600000), model, MIN(project_id), MIN(org_id),
       COUNT(*), SUM(status >= 400), SUM(input_tokens), SUM(cached_input_tokens),
       SUM(output_tokens), SUM(reasoning_tokens), SUM(cost_micros)
FROM usage_events
GROUP BY key_id, at - (at % 3600000), model;

-- Existing events move into blocks of up to 1,000, in insertion order.
INSERT INTO usage_event_blocks (first_at, last_at, events, body)
SELECT MIN(at), MAX(at), COUNT(*), json_group_array(json(ev))
FROM (
    SELECT seq, at, json_array(
        key_id, project_id, org_id, at, endpoint, model, status, input_tokens,
        cached_input_tokens, output_tokens, reasoning_tokens, cost_micros,
        upstream_latency_ms, total_latency_ms, client_ip,
        CASE WHEN streamed THEN json('true') ELSE json('false') END,
        CASE WHEN incomplete THEN json('true') ELSE json('false') END
    ) AS ev
    FROM usage_events
    ORDER BY seq
)
GROUP BY (seq - 1) / 1000
ORDER BY (seq - 1) / 1000;

DROP TABLE usage_events;
