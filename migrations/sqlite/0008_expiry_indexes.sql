-- Housekeeping deletes expired codes, access-token ids and refresh tokens every hour.
CREATE INDEX oauth_codes_expires ON oauth_codes (expires_at);
CREATE INDEX oauth_access_tokens_expires ON oauth_access_tokens (expires_at);
CREATE INDEX oauth_refresh_tokens_expires ON oauth_refresh_tokens (expires_at);
