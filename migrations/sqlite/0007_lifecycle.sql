-- Which API key signed the user in for a grant: revoking the key revokes its grants.
ALTER TABLE oauth_codes ADD COLUMN api_key_id TEXT;
ALTER TABLE oauth_families ADD COLUMN api_key_id TEXT;
CREATE INDEX oauth_families_api_key ON oauth_families (api_key_id);
-- A disabled user cannot sign in, and disabling revokes every credential they hold.
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
-- Garbage collection of dynamically registered clients looks for old, unused ones.
CREATE INDEX oauth_clients_origin_created ON oauth_clients (origin, created_at);
