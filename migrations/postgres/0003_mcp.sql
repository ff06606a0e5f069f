-- MCP account tools: per-organization quota, usage counters, idempotency keys.

-- Tool calls an organization may make per UTC day; NULL means unlimited.
ALTER TABLE organizations ADD COLUMN daily_tool_call_quota BIGINT
    CHECK (daily_tool_call_quota IS NULL OR daily_tool_call_quota > 0);

-- Tool-call counters, one row per (org, user, client, tool, day). `client_id` is empty
-- for personal access tokens. `day` is the Unix day number (Unix seconds / 86400).
-- Rows are only ever added to, in batches.
CREATE TABLE tool_usage (
    org_id            TEXT NOT NULL,
    user_id           TEXT NOT NULL,
    client_id         TEXT NOT NULL DEFAULT '',
    tool              TEXT NOT NULL,
    day               BIGINT NOT NULL,
    calls             BIGINT NOT NULL DEFAULT 0,
    errors            BIGINT NOT NULL DEFAULT 0,
    total_latency_us  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, user_id, client_id, tool, day)
);
CREATE INDEX tool_usage_org_day ON tool_usage (org_id, day);

-- Results of mutating tool calls by idempotency key, so a retried call is answered
-- with the first result instead of acting twice. `result` is NULL while in progress.
CREATE TABLE idempotency_keys (
    scope_key   TEXT PRIMARY KEY,
    args_hash   TEXT NOT NULL,
    result      TEXT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
