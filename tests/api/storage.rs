//! Store rules that no HTTP endpoint exposes yet, checked on both backends.

use gatehouse::crypto::{PlainToken, TokenKind};
use gatehouse::domain::org::OrgName;
use gatehouse::domain::{DisplayName, Email, OrgSlug, Role, ScopeSet};
use gatehouse::storage::credentials::NewPat;
use gatehouse::storage::{AuditEntry, AuditFilter, StorageError, Store};

use crate::both_backends;
use crate::helpers::TestDb;

both_backends!(db:
    audit_log_refuses_updates_and_deletes,
    removing_a_member_revokes_their_credentials_there,
    the_last_owner_cannot_be_removed,
    initial_owner_is_created_once,
    pat_lookup_honours_expiry_and_revocation,
);

fn audit(action: &str) -> AuditEntry {
    AuditEntry::new(1_000, "test", action)
}

async fn org_and_user(
    store: &Store,
    slug: &str,
    email: &str,
) -> (gatehouse::storage::OrgRow, gatehouse::storage::UserRow) {
    let org = store
        .create_org(
            &OrgSlug::parse(slug).unwrap(),
            &OrgName::parse(slug).unwrap(),
            1_000,
            audit("org.create"),
        )
        .await
        .unwrap();
    let user = store
        .create_user(
            &Email::parse(email).unwrap(),
            &DisplayName::parse("Ada").unwrap(),
            None,
            1_000,
            audit("user.create"),
        )
        .await
        .unwrap();
    (org, user)
}

async fn audit_log_refuses_updates_and_deletes(db: TestDb) {
    let store = db.store().await;
    store.append_audit(&audit("test.event")).await.unwrap();
    let update = "UPDATE audit_log SET action = 'forged'";
    let delete = "DELETE FROM audit_log";
    for sql in [update, delete] {
        let result = match &store {
            Store::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
            Store::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
        };
        let err = result
            .expect_err("audit log must be append-only")
            .to_string();
        assert!(err.contains("append-only"), "{err}");
    }
    let rows = store
        .list_audit(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].action, "test.event");
}

async fn removing_a_member_revokes_their_credentials_there(db: TestDb) {
    let store = db.store().await;
    let (org, owner) = org_and_user(&store, "acme", "owner@example.com").await;
    let member = store
        .create_user(
            &Email::parse("m@example.com").unwrap(),
            &DisplayName::parse("M").unwrap(),
            None,
            1_000,
            audit("user.create"),
        )
        .await
        .unwrap();
    store
        .add_member(&org, &owner, Role::Owner, 1_000, audit("member.add"))
        .await
        .unwrap();
    store
        .add_member(&org, &member, Role::Member, 1_000, audit("member.add"))
        .await
        .unwrap();
    let token = PlainToken::generate(TokenKind::Pat);
    let scopes = ScopeSet::parse("account:read").unwrap();
    store
        .insert_pat(
            NewPat {
                user_id: &member.id,
                org_id: &org.id,
                name: "agent",
                scopes: &scopes,
                expires_at: None,
                hash: &token.hash(),
            },
            1_000,
            audit("pat.create"),
        )
        .await
        .unwrap();
    let key = PlainToken::generate(TokenKind::ApiKey);
    store
        .insert_api_key(
            &member.id,
            &org.id,
            "k",
            &key.hash(),
            1_000,
            audit("api_key.create"),
        )
        .await
        .unwrap();
    assert!(
        store
            .find_pat_by_hash(&token.hash(), 1_001)
            .await
            .unwrap()
            .is_some()
    );

    store
        .remove_member(&org, &member, 1_002, audit("member.remove"))
        .await
        .unwrap();

    assert!(
        store
            .find_pat_by_hash(&token.hash(), 1_003)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .find_api_key_by_hash(&key.hash())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .find_membership(&org.id, &member.id)
            .await
            .unwrap()
            .is_none()
    );
}

async fn the_last_owner_cannot_be_removed(db: TestDb) {
    let store = db.store().await;
    let (org, owner) = org_and_user(&store, "acme", "owner@example.com").await;
    store
        .add_member(&org, &owner, Role::Owner, 1_000, audit("member.add"))
        .await
        .unwrap();
    let err = store
        .remove_member(&org, &owner, 1_001, audit("member.remove"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::Conflict(ref m) if m.contains("last owner")),
        "{err}"
    );
    assert!(
        store
            .find_membership(&org.id, &owner.id)
            .await
            .unwrap()
            .is_some()
    );
}

async fn initial_owner_is_created_once(db: TestDb) {
    let store = db.store().await;
    let email = Email::parse("boss@example.com").unwrap();
    let key = PlainToken::generate(TokenKind::ApiKey);
    let first = store
        .create_initial_owner(&email, &key.hash(), 1_000)
        .await
        .unwrap();
    let first = first.expect("created on an empty database");
    assert_eq!(first.org.slug, "default");
    assert_eq!(first.user.email, "boss@example.com");
    let member = store
        .find_membership(&first.org.id, &first.user.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(member.role, "owner");
    let found = store
        .find_api_key_by_hash(&key.hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.user_id, first.user.id);

    let again = PlainToken::generate(TokenKind::ApiKey);
    assert!(
        store
            .create_initial_owner(&email, &again.hash(), 1_001)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .find_api_key_by_hash(&again.hash())
            .await
            .unwrap()
            .is_none()
    );
}

async fn pat_lookup_honours_expiry_and_revocation(db: TestDb) {
    let store = db.store().await;
    let (org, user) = org_and_user(&store, "acme", "a@example.com").await;
    store
        .add_member(&org, &user, Role::Owner, 1_000, audit("member.add"))
        .await
        .unwrap();
    let scopes = ScopeSet::parse("account:read").unwrap();
    let expiring = PlainToken::generate(TokenKind::Pat);
    let row = store
        .insert_pat(
            NewPat {
                user_id: &user.id,
                org_id: &org.id,
                name: "short",
                scopes: &scopes,
                expires_at: Some(2_000),
                hash: &expiring.hash(),
            },
            1_000,
            audit("pat.create"),
        )
        .await
        .unwrap();
    assert!(
        store
            .find_pat_by_hash(&expiring.hash(), 1_999)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .find_pat_by_hash(&expiring.hash(), 2_000)
            .await
            .unwrap()
            .is_none()
    );

    store
        .revoke_pat(&row.id, 1_500, audit("pat.revoke"))
        .await
        .unwrap();
    assert!(
        store
            .find_pat_by_hash(&expiring.hash(), 1_600)
            .await
            .unwrap()
            .is_none()
    );
    let again = store
        .revoke_pat(&row.id, 1_600, audit("pat.revoke"))
        .await
        .unwrap_err();
    assert!(matches!(again, StorageError::Conflict(_)));
}
