-- Every change that can make a cached bearer token invalid, in commit order, so that
-- each instance's token cache can follow it (revocations reach every instance within a
-- second without a query per request). Written by triggers, so no code path that
-- revokes something can forget to record it.
CREATE TABLE credential_changes (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('jti', 'pat', 'org', 'member')),
    key         TEXT NOT NULL,
    created_at  BIGINT NOT NULL DEFAULT (EXTRACT(EPOCH FROM now())::BIGINT)
);
CREATE INDEX credential_changes_created ON credential_changes (created_at);

CREATE FUNCTION note_credential_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'oauth_access_tokens' THEN
        IF NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL THEN
            INSERT INTO credential_changes (kind, key) VALUES ('jti', NEW.jti_hash);
        END IF;
    ELSIF TG_TABLE_NAME = 'personal_access_tokens' THEN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO credential_changes (kind, key) VALUES ('pat', OLD.token_hash);
        ELSIF NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL THEN
            INSERT INTO credential_changes (kind, key) VALUES ('pat', NEW.token_hash);
        END IF;
    ELSIF TG_TABLE_NAME = 'organizations' THEN
        INSERT INTO credential_changes (kind, key) VALUES ('org', OLD.id);
    ELSIF TG_TABLE_NAME = 'memberships' THEN
        INSERT INTO credential_changes (kind, key) VALUES ('member', OLD.org_id || ' ' || OLD.user_id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER access_token_revoked AFTER UPDATE OF revoked_at ON oauth_access_tokens
    FOR EACH ROW EXECUTE FUNCTION note_credential_change();
CREATE TRIGGER pat_changed AFTER UPDATE OF revoked_at OR DELETE ON personal_access_tokens
    FOR EACH ROW EXECUTE FUNCTION note_credential_change();
CREATE TRIGGER org_changed AFTER UPDATE OR DELETE ON organizations
    FOR EACH ROW EXECUTE FUNCTION note_credential_change();
CREATE TRIGGER member_changed AFTER UPDATE OR DELETE ON memberships
    FOR EACH ROW EXECUTE FUNCTION note_credential_change();
