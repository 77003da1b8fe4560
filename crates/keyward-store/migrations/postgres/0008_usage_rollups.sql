-- The rollups SQLite already keeps (migrations/sqlite/0004 and 0009): hourly sums
-- per key and model, and daily sums per key and model (UTC days), maintained in
-- the same transaction as usage_hourly. Usage by model, and usage over whole
-- days, then never reads usage_events: a chart's cost stays flat as traffic grows.
CREATE TABLE usage_hourly_models (
    key_id              TEXT   NOT NULL,
    hour_start          BIGINT NOT NULL,
    model               TEXT   NOT NULL,
    project_id          TEXT   NOT NULL,
    org_id              TEXT   NOT NULL,
    requests            BIGINT NOT NULL,
    errors              BIGINT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    reasoning_tokens    BIGINT NOT NULL,
    cost_micros         BIGINT NOT NULL,
    incomplete          BIGINT NOT NULL,
    PRIMARY KEY (key_id, hour_start, model)
);
CREATE INDEX usage_hourly_models_by_project ON usage_hourly_models (project_id, hour_start);
CREATE INDEX usage_hourly_models_by_org ON usage_hourly_models (org_id, hour_start);
CREATE INDEX usage_hourly_models_by_time ON usage_hourly_models (hour_start);

CREATE TABLE usage_daily (
    key_id              TEXT   NOT NULL,
    day_start           BIGINT NOT NULL,
    model               TEXT   NOT NULL,
    project_id          TEXT   NOT NULL,
    org_id              TEXT   NOT NULL,
    requests            BIGINT NOT NULL,
    errors              BIGINT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    reasoning_tokens    BIGINT NOT NULL,
    cost_micros         BIGINT NOT NULL,
    incomplete          BIGINT NOT NULL,
    -- An organization's days first, as on SQLite (see its 0009).
    PRIMARY KEY (org_id, day_start, key_id, model)
);
CREATE INDEX usage_daily_by_key ON usage_daily (key_id, day_start);
CREATE INDEX usage_daily_by_project ON usage_daily (project_id, day_start);
CREATE INDEX usage_daily_by_time ON usage_daily (day_start);

INSERT INTO usage_hourly_models
SELECT key_id, at - (at % 3600000), model, MIN(project_id), MIN(org_id), COUNT(*),
       SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), SUM(input_tokens),
       SUM(cached_input_tokens), SUM(output_tokens), SUM(reasoning_tokens),
       SUM(cost_micros), SUM(CASE WHEN incomplete THEN 1 ELSE 0 END)
FROM usage_events
GROUP BY key_id, at - (at % 3600000), model;

INSERT INTO usage_daily
SELECT key_id, hour_start - (hour_start % 86400000), model, MIN(project_id), MIN(org_id),
       SUM(requests), SUM(errors), SUM(input_tokens), SUM(cached_input_tokens),
       SUM(output_tokens), SUM(reasoning_tokens), SUM(cost_micros), SUM(incomplete)
FROM usage_hourly_models
GROUP BY key_id, hour_start - (hour_start % 86400000), model;
