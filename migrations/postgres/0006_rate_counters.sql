-- Abuse-limit counters shared by every instance: events per subject (a hashed account
-- or client, an address, a credential digest) per fixed window. Old windows are purged.
CREATE TABLE rate_counters (
    bucket TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    hits BIGINT NOT NULL,
    last_at BIGINT NOT NULL,
    PRIMARY KEY (bucket, window_start)
);
CREATE INDEX rate_counters_window ON rate_counters (window_start);
