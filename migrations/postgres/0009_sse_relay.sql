-- Messages for a legacy SSE stream (MCP 2024-11-05) held by another instance: the
-- instance that answered the POST writes the response here and wakes the others with
-- NOTIFY gatehouse_sse; the one holding the stream deletes and sends it. Rows nobody
-- claims (the stream is gone) are deleted after a minute. PostgreSQL only: on SQLite a
-- single process holds every stream.
CREATE TABLE sse_relay (
    id BIGSERIAL PRIMARY KEY,
    session_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX sse_relay_session ON sse_relay (session_id);
CREATE INDEX sse_relay_created ON sse_relay (created_at);
