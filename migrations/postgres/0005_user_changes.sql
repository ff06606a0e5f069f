-- A cached token carries its caller's address, name and organization slug (`whoami`
-- answers from them without a query), so a change to a user reaches every instance's
-- cache through the feed, as one `member` change per membership.
CREATE FUNCTION note_user_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO credential_changes (kind, key)
        SELECT 'member', org_id || ' ' || user_id FROM memberships WHERE user_id = NEW.id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER user_changed AFTER UPDATE OF email, display_name ON users
    FOR EACH ROW EXECUTE FUNCTION note_user_change();
