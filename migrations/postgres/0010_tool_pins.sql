-- Tool pinning (gateway, on_change): the digest of each upstream tool's definition as
-- first seen or last approved, and a changed definition waiting for approval.
CREATE TABLE upstream_tool_pins (
    upstream            TEXT NOT NULL,
    tool                TEXT NOT NULL,
    digest              TEXT NOT NULL,
    pending_digest      TEXT,
    pending_definition  TEXT,
    first_seen          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    PRIMARY KEY (upstream, tool)
);
