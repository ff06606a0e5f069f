-- Every change that can make a cached bearer token invalid, in commit order, so that
-- each instance's token cache can follow it (revocations reach every instance within a
-- second without a query per request). Written by triggers, so no code path that
-- revokes something can forget to record it.
CREATE TABLE credential_changes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL CHECK (kind IN ('jti', 'pat', 'org', 'member')),
    key         TEXT NOT NULL,
    created_at  INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
);
CREATE INDEX credential_changes_created ON credential_changes (created_at);

CREATE TRIGGER access_token_revoked AFTER UPDATE OF revoked_at ON oauth_access_tokens
WHEN NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL
BEGIN
    INSERT INTO credential_changes (kind, key) VALUES ('jti', NEW.jti_hash);
END;

CREATE TRIGGER pat_revoked AFTER UPDATE OF revoked_at ON personal_access_tokens
WHEN NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL
BEGIN
    INSERT INTO credential_changes (kind, key) VALUES ('pat', NEW.token_hash);
END;

CREATE TRIGGER pat_deleted AFTER DELETE ON personal_access_tokens
BEGIN
    INSERT INTO credential_changes (kind, key) VALUES ('pat', OLD.token_hash);
END;

CREATE TRIGGER org_changed AFTER UPDATE ON organizations
BEGIN
    INSERT INTO credential_changes (kind, key) VALUES ('org', NEW.id);
END;

CREATE TRIGGER org_deleted AFTER DELETE ON organizations
BEGIN
    INSERT INTO credential_changes (kind, key) VALUES ('org', OLD.id);
END;

CREATE TRIGGER member_changed AFTER UPDATE ON memberships
BEGIN
    INSERT INTO credential_changes (kind, key) VALUES ('member', OLD.org_id || ' ' || OLD.user_id);
END;

CREATE TRIGGER member_removed AFTER DELETE ON memberships
BEGIN
    INSERT INTO credential_changes (kind, key) VALUES ('member', OLD.org_id || ' ' || OLD.user_id);
END;
