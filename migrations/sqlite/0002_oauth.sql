-- OAuth: clients, codes, consents, refresh tokens, access-token ids, keys, secrets.

-- Clients registered dynamically (dcr), from a metadata document (cimd) or by an operator (static).
CREATE TABLE oauth_clients (
    id               TEXT PRIMARY KEY,
    origin           TEXT NOT NULL CHECK (origin IN ('dcr', 'cimd', 'static')),
    name             TEXT NOT NULL,
    redirect_uris    TEXT NOT NULL,
    auth_method      TEXT NOT NULL CHECK (auth_method IN ('none', 'client_secret_basic', 'client_secret_post')),
    secret_hash      TEXT,
    can_introspect   BOOLEAN NOT NULL DEFAULT FALSE,
    dedupe_key       TEXT UNIQUE,
    metadata         TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    last_used_at     INTEGER
);

-- Single-use authorization codes, by digest.
CREATE TABLE oauth_codes (
    code_hash        TEXT PRIMARY KEY,
    client_id        TEXT NOT NULL,
    redirect_uri     TEXT NOT NULL,
    code_challenge   TEXT NOT NULL,
    scopes           TEXT NOT NULL,
    resource         TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    org_id           TEXT NOT NULL,
    family_id        TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    used_at          INTEGER
);

-- What a user approved for a client, so it is not asked again.
CREATE TABLE oauth_consents (
    user_id          TEXT NOT NULL,
    org_id           TEXT NOT NULL,
    client_id        TEXT NOT NULL,
    redirect_uri     TEXT NOT NULL,
    scopes           TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    PRIMARY KEY (user_id, org_id, client_id, redirect_uri)
);

-- One family per authorization: every token issued from one code.
CREATE TABLE oauth_families (
    id               TEXT PRIMARY KEY,
    client_id        TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    org_id           TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    last_used_at     INTEGER NOT NULL,
    revoked_at       INTEGER,
    revoke_reason    TEXT
);
CREATE INDEX oauth_families_client ON oauth_families (client_id);
CREATE INDEX oauth_families_user ON oauth_families (user_id, org_id);

-- Refresh tokens by digest. A rotated token keeps its successor, encrypted under a key
-- derived from the token itself, so a retry inside the grace window gets the same pair.
CREATE TABLE oauth_refresh_tokens (
    token_hash       TEXT PRIMARY KEY,
    family_id        TEXT NOT NULL REFERENCES oauth_families (id) ON DELETE CASCADE,
    client_id        TEXT NOT NULL,
    scopes           TEXT NOT NULL,
    resource         TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    rotated_at       INTEGER,
    successor        TEXT
);
CREATE INDEX oauth_refresh_tokens_family ON oauth_refresh_tokens (family_id);

-- Access tokens issued (by digest of their jti), so a family can be revoked, and the
-- ones revoked before they expire.
CREATE TABLE oauth_access_tokens (
    jti_hash         TEXT PRIMARY KEY,
    family_id        TEXT NOT NULL,
    expires_at       INTEGER NOT NULL,
    revoked_at       INTEGER
);
CREATE INDEX oauth_access_tokens_family ON oauth_access_tokens (family_id);
CREATE INDEX oauth_access_tokens_revoked ON oauth_access_tokens (revoked_at);

-- Token signing keys. The newest active key signs; retired keys stay published until
-- the tokens they signed have expired.
CREATE TABLE signing_keys (
    kid              TEXT PRIMARY KEY,
    alg              TEXT NOT NULL,
    private_key      TEXT NOT NULL,
    public_key       TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    retired_at       INTEGER
);

-- Secrets shared by every instance (cookie and CSRF MACs).
CREATE TABLE server_secrets (
    name             TEXT PRIMARY KEY,
    value            TEXT NOT NULL,
    created_at       INTEGER NOT NULL
);
