//! Store rules that no HTTP endpoint exposes yet, checked on both backends.

use gatehouse::crypto::{PlainToken, TokenKind};
use gatehouse::domain::org::OrgName;
use gatehouse::domain::{DisplayName, Email, OrgSlug, Role, ScopeSet};
use gatehouse::storage::credentials::NewPat;
use gatehouse::storage::oauth::{CodeRedemption, IssuedTokens, NewClient};
use gatehouse::storage::{
    AuditEntry, AuditFilter, CodeRow, ConnectionRow, ConsentRow, IdempotencyBegin, StorageError,
    Store, UsageRecord,
};

use crate::both_backends;
use crate::helpers::TestDb;

both_backends!(db:
    audit_log_refuses_updates_and_deletes,
    removing_a_member_revokes_their_credentials_there,
    the_last_owner_cannot_be_removed,
    initial_owner_is_created_once,
    pat_lookup_honours_expiry_and_revocation,
    org_quota_is_set_cleared_and_audited,
    usage_counters_add_up_and_group_by_day_and_tool,
    last_used_times_only_move_forward,
    connections_are_listed_and_revoked,
    a_users_pats_are_listed_newest_first_with_revoked_ones,
    idempotency_keys_begin_finish_abort_and_expire,
    audit_batches_are_appended_together,
    rate_counters_are_added_in_batches,
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

fn audit_actions(rows: &[gatehouse::storage::AuditRow]) -> Vec<&str> {
    rows.iter().map(|r| r.action.as_str()).collect()
}

async fn org_quota_is_set_cleared_and_audited(db: TestDb) {
    let store = db.store().await;
    let (org, _) = org_and_user(&store, "acme", "a@example.com").await;
    assert_eq!(org.daily_tool_call_quota, None, "unlimited by default");

    store
        .set_org_quota(&org.id, Some(500), 1_100, audit("org.set_quota"))
        .await
        .unwrap();
    let found = store.find_org(&org.id).await.unwrap().unwrap();
    assert_eq!(found.daily_tool_call_quota, Some(500));
    let listed = store.list_orgs().await.unwrap();
    assert_eq!(listed[0].daily_tool_call_quota, Some(500));
    let by_slug = store
        .find_org_by_slug(&OrgSlug::parse("acme").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_slug.daily_tool_call_quota, Some(500));

    store
        .set_org_quota(&org.id, None, 1_200, audit("org.set_quota"))
        .await
        .unwrap();
    let found = store.find_org(&org.id).await.unwrap().unwrap();
    assert_eq!(found.daily_tool_call_quota, None);

    for bad in [0, -1] {
        let err = store
            .set_org_quota(&org.id, Some(bad), 1_300, audit("org.set_quota"))
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Conflict(_)), "{bad}: {err}");
    }
    let err = store
        .set_org_quota("org_missing", Some(5), 1_300, audit("org.set_quota"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::NotFound), "{err}");

    let rows = store
        .list_audit(&AuditFilter {
            org_id: Some(org.id.clone()),
            action_prefix: Some("org.set_quota".into()),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "one audit row per change, none for refusals");
    assert_eq!(
        rows[0].detail.as_deref(),
        Some(r#"{"daily_tool_call_quota":null}"#)
    );
    assert_eq!(
        rows[1].detail.as_deref(),
        Some(r#"{"daily_tool_call_quota":500}"#)
    );
    assert_eq!(rows[1].target.as_deref(), Some("org:acme"));
}

fn usage(
    user: &str,
    client: &str,
    tool: &str,
    day: i64,
    calls: i64,
    errors: i64,
    us: i64,
) -> UsageRecord {
    UsageRecord {
        org_id: "org_a".into(),
        user_id: user.into(),
        client_id: client.into(),
        tool: tool.into(),
        day,
        calls,
        errors,
        total_latency_us: us,
    }
}

async fn usage_counters_add_up_and_group_by_day_and_tool(db: TestDb) {
    let store = db.store().await;
    store.record_usage(&[]).await.unwrap();
    assert_eq!(store.tool_calls_on_day("org_a", 100).await.unwrap(), 0);

    store
        .record_usage(&[
            usage("u1", "c1", "whoami", 100, 2, 0, 4_000),
            usage("u1", "", "whoami", 100, 1, 1, 2_000),
            usage("u2", "c1", "whoami", 100, 3, 0, 3_000),
            usage("u1", "c1", "list_pats", 100, 1, 0, 500),
            usage("u1", "c1", "whoami", 99, 5, 0, 5_000),
            usage("u1", "c1", "whoami", 98, 7, 0, 7_000),
        ])
        .await
        .unwrap();
    // A second batch adds to the same rows instead of replacing them, and a key
    // repeated inside one batch is added twice.
    store
        .record_usage(&[
            usage("u1", "c1", "whoami", 100, 4, 2, 6_000),
            usage("u1", "c1", "list_pats", 100, 1, 1, 1_500),
            usage("u1", "c1", "list_pats", 100, 1, 0, 1_000),
        ])
        .await
        .unwrap();
    // Another organization's usage stays apart.
    store
        .record_usage(&[UsageRecord {
            org_id: "org_b".into(),
            ..usage("u1", "c1", "whoami", 100, 50, 0, 0)
        }])
        .await
        .unwrap();

    assert_eq!(store.tool_calls_on_day("org_a", 100).await.unwrap(), 13);
    assert_eq!(store.tool_calls_on_day("org_a", 99).await.unwrap(), 5);
    assert_eq!(store.tool_calls_on_day("org_a", 101).await.unwrap(), 0);
    assert_eq!(store.tool_calls_on_day("org_b", 100).await.unwrap(), 50);

    let stats = store.usage_stats("org_a", None, 99).await.unwrap();
    let summary: Vec<(i64, &str, i64, i64)> = stats
        .iter()
        .map(|r| (r.day, r.tool.as_str(), r.calls, r.errors))
        .collect();
    assert_eq!(
        summary,
        vec![
            (100, "list_pats", 3, 1),
            (100, "whoami", 10, 3),
            (99, "whoami", 5, 0),
        ]
    );
    // (4000 + 2000 + 3000 + 6000) µs over 10 calls = 1.5 ms.
    assert!((stats[1].avg_latency_ms - 1.5).abs() < 1e-9, "{stats:?}");
    assert!((stats[0].avg_latency_ms - 1.0).abs() < 1e-9, "{stats:?}");

    let mine = store.usage_stats("org_a", Some("u2"), 0).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!((mine[0].day, mine[0].calls), (100, 3));
    assert!((mine[0].avg_latency_ms - 1.0).abs() < 1e-9);

    let all = store.usage_stats("org_a", Some("u1"), 0).await.unwrap();
    let days: Vec<i64> = all.iter().map(|r| r.day).collect();
    assert_eq!(days, vec![100, 100, 99, 98], "newest day first");
    assert!(
        store
            .usage_stats("org_c", None, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn pat_last_used(store: &Store, id: &str) -> Option<i64> {
    store.find_pat(id).await.unwrap().unwrap().last_used_at
}

async fn family_last_used(store: &Store, family_id: &str) -> i64 {
    let sql = "SELECT last_used_at FROM oauth_families WHERE id = $1";
    match store {
        Store::Postgres(pool) => {
            sqlx::query_scalar(sql)
                .bind(family_id)
                .fetch_one(pool)
                .await
        }
        Store::Sqlite(pool) => {
            sqlx::query_scalar(sql)
                .bind(family_id)
                .fetch_one(pool)
                .await
        }
    }
    .unwrap()
}

async fn last_used_times_only_move_forward(db: TestDb) {
    let store = db.store().await;
    let (org, user) = org_and_user(&store, "acme", "a@example.com").await;
    let scopes = ScopeSet::parse("account:read").unwrap();
    let token = PlainToken::generate(TokenKind::Pat);
    let pat = store
        .insert_pat(
            NewPat {
                user_id: &user.id,
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
    let client = insert_client(&store, "client_a", "Agent A").await;
    let grant = grant(&store, &client, &org.id, &user.id, "fam_1", 1_000).await;
    assert_eq!(
        store
            .families_of_access_tokens(&[grant.jti_hash.as_str(), "nope"])
            .await
            .unwrap(),
        vec![(grant.jti_hash.clone(), "fam_1".to_owned())]
    );
    assert!(
        store
            .families_of_access_tokens(&[])
            .await
            .unwrap()
            .is_empty()
    );

    store.touch_last_used(&[], &[]).await.unwrap();
    let hash = token.hash().as_str().to_owned();
    store
        .touch_last_used(
            &[(hash.clone(), 2_000), ("unknown".into(), 9_000)],
            &[("fam_1".into(), 2_000), ("fam_unknown".into(), 9_000)],
        )
        .await
        .unwrap();
    assert_eq!(pat_last_used(&store, &pat.id).await, Some(2_000));
    assert_eq!(family_last_used(&store, "fam_1").await, 2_000);

    // Older times (a late flush from another instance) leave the newer ones alone.
    store
        .touch_last_used(&[(hash.clone(), 1_500)], &[("fam_1".into(), 1_500)])
        .await
        .unwrap();
    assert_eq!(pat_last_used(&store, &pat.id).await, Some(2_000));
    assert_eq!(family_last_used(&store, "fam_1").await, 2_000);

    // Within one batch the latest time wins whatever the order.
    store
        .touch_last_used(
            &[(hash.clone(), 3_000), (hash.clone(), 2_500)],
            &[("fam_1".into(), 3_500), ("fam_1".into(), 2_500)],
        )
        .await
        .unwrap();
    assert_eq!(pat_last_used(&store, &pat.id).await, Some(3_000));
    assert_eq!(family_last_used(&store, "fam_1").await, 3_500);
}

async fn insert_client(store: &Store, id: &str, name: &str) -> String {
    let (row, created) = store
        .insert_client(
            NewClient {
                id: id.into(),
                origin: "dcr",
                name: name.into(),
                redirect_uris: vec!["http://127.0.0.1/cb".into()],
                auth_method: "none".into(),
                secret_hash: None,
                can_introspect: false,
                dedupe_key: None,
                metadata: serde_json::json!({}),
            },
            1_000,
            audit("client.register"),
        )
        .await
        .unwrap();
    assert!(created);
    row.id
}

async fn consent(
    store: &Store,
    client_id: &str,
    org_id: &str,
    user_id: &str,
    redirect: &str,
    scopes: &str,
    at: i64,
) {
    store
        .save_consent(
            &ConsentRow {
                user_id: user_id.into(),
                org_id: org_id.into(),
                client_id: client_id.into(),
                redirect_uri: redirect.into(),
                scopes: scopes.into(),
                created_at: at,
            },
            audit("oauth.consent_granted"),
        )
        .await
        .unwrap();
}

struct Grant {
    jti_hash: String,
    refresh_hash: String,
}

/// Issues tokens the way the token endpoint does: a code redeemed into a new family
/// with one access token and one refresh token.
async fn grant(
    store: &Store,
    client_id: &str,
    org_id: &str,
    user_id: &str,
    family_id: &str,
    now: i64,
) -> Grant {
    grant_with_scopes(
        store,
        client_id,
        org_id,
        user_id,
        family_id,
        "account:read offline_access",
        now,
    )
    .await
}

async fn grant_with_scopes(
    store: &Store,
    client_id: &str,
    org_id: &str,
    user_id: &str,
    family_id: &str,
    scopes: &str,
    now: i64,
) -> Grant {
    let code_hash = format!("code_{family_id}");
    let jti_hash = format!("jti_{family_id}");
    let refresh_hash = format!("rt_{family_id}");
    store
        .insert_code(&CodeRow {
            code_hash: code_hash.clone(),
            client_id: client_id.into(),
            redirect_uri: "http://127.0.0.1/cb".into(),
            code_challenge: "challenge".into(),
            scopes: scopes.into(),
            resource: "http://127.0.0.1/mcp".into(),
            user_id: user_id.into(),
            org_id: org_id.into(),
            family_id: family_id.into(),
            created_at: now,
            expires_at: now + 60,
            used_at: None,
            api_key_id: None,
        })
        .await
        .unwrap();
    let redeemed = store
        .redeem_code(
            &code_hash,
            now,
            |_| Ok(()),
            |code| {
                Ok((
                    IssuedTokens {
                        family_id: code.family_id.clone(),
                        client_id: code.client_id.clone(),
                        user_id: code.user_id.clone(),
                        org_id: code.org_id.clone(),
                        scopes: code.scopes.clone(),
                        resource: code.resource.clone(),
                        access_jti_hash: jti_hash.clone(),
                        access_expires_at: now + 3_600,
                        refresh: Some((refresh_hash.clone(), now + 86_400)),
                    },
                    (),
                ))
            },
            audit("oauth.token"),
        )
        .await
        .unwrap();
    assert!(matches!(redeemed, CodeRedemption::Redeemed(())));
    Grant {
        jti_hash,
        refresh_hash,
    }
}

async fn family_state(store: &Store, family_id: &str) -> (Option<i64>, Option<String>) {
    let sql = "SELECT revoked_at, revoke_reason FROM oauth_families WHERE id = $1";
    match store {
        Store::Postgres(pool) => sqlx::query_as(sql).bind(family_id).fetch_one(pool).await,
        Store::Sqlite(pool) => sqlx::query_as(sql).bind(family_id).fetch_one(pool).await,
    }
    .unwrap()
}

async fn connections_are_listed_and_revoked(db: TestDb) {
    let store = db.store().await;
    let (org, user) = org_and_user(&store, "acme", "a@example.com").await;
    let (other_org, other_user) = org_and_user(&store, "beta", "b@example.com").await;
    let a = insert_client(&store, "client_a", "Agent A").await;
    let b = insert_client(&store, "client_b", "Agent B").await;
    let c = insert_client(&store, "client_c", "Agent C").await;
    let d = insert_client(&store, "client_d", "Agent D").await;

    // A: two redirect URIs consented with different scopes, two live families.
    consent(
        &store,
        &a,
        &org.id,
        &user.id,
        "http://127.0.0.1/cb",
        "account:read offline_access",
        1_000,
    )
    .await;
    consent(
        &store,
        &a,
        &org.id,
        &user.id,
        "http://localhost/cb",
        "account:write",
        1_100,
    )
    .await;
    let a1 = grant(&store, &a, &org.id, &user.id, "fam_a1", 1_000).await;
    let a2 = grant(&store, &a, &org.id, &user.id, "fam_a2", 1_200).await;
    store
        .touch_last_used(&[], &[("fam_a1".into(), 5_000)])
        .await
        .unwrap();
    // B: a consent only (its tokens were revoked at /revoke).
    consent(
        &store,
        &b,
        &org.id,
        &user.id,
        "http://127.0.0.1/cb",
        "account:read",
        2_000,
    )
    .await;
    let b1 = grant(&store, &b, &org.id, &user.id, "fam_b1", 2_000).await;
    assert!(
        store
            .revoke_refresh_token(&b1.refresh_hash, None, 2_100, audit("oauth.revoke"))
            .await
            .unwrap()
    );
    // C: a live family without a remembered consent; its scopes come from the grant.
    grant_with_scopes(&store, &c, &org.id, &user.id, "fam_c1", "admin:read", 3_000).await;
    // D: revoked and forgotten, so not a connection.
    let d1 = grant(&store, &d, &org.id, &user.id, "fam_d1", 500).await;
    store
        .revoke_refresh_token(&d1.refresh_hash, None, 600, audit("oauth.revoke"))
        .await
        .unwrap();
    // Someone else, and the same user in another organization, are not listed.
    grant(&store, &a, &org.id, &other_user.id, "fam_other_user", 1_000).await;
    grant(&store, &a, &other_org.id, &user.id, "fam_other_org", 1_000).await;

    let connections = store.list_connections(&org.id, &user.id).await.unwrap();
    let expected = vec![
        ConnectionRow {
            client_id: a.clone(),
            client_name: "Agent A".into(),
            origin: "dcr".into(),
            scopes: "account:read account:write offline_access".into(),
            first_used_at: 1_000,
            last_used_at: 5_000,
        },
        ConnectionRow {
            client_id: c.clone(),
            client_name: "Agent C".into(),
            origin: "dcr".into(),
            scopes: "admin:read".into(),
            first_used_at: 3_000,
            last_used_at: 3_000,
        },
        ConnectionRow {
            client_id: b.clone(),
            client_name: "Agent B".into(),
            origin: "dcr".into(),
            scopes: "account:read".into(),
            first_used_at: 2_000,
            last_used_at: 2_000,
        },
    ];
    assert_eq!(connections, expected);

    // Revoking A ends both families, denies their access tokens, forgets the consents
    // and leaves everyone else's alone.
    let n = store
        .revoke_connection(&org.id, &user.id, &a, 6_000, audit("connection.revoke"))
        .await
        .unwrap();
    assert_eq!(n, 2);
    for (family, g) in [("fam_a1", &a1), ("fam_a2", &a2)] {
        assert_eq!(
            family_state(&store, family).await,
            (Some(6_000), Some("user_revoked".into()))
        );
        assert!(store.is_access_token_revoked(&g.jti_hash).await.unwrap());
        assert!(
            store
                .find_live_refresh_token(&g.refresh_hash, 6_001)
                .await
                .unwrap()
                .is_none()
        );
    }
    assert!(
        store
            .find_consent(&user.id, &org.id, &a, "http://127.0.0.1/cb")
            .await
            .unwrap()
            .is_none()
    );
    for family in ["fam_other_user", "fam_other_org"] {
        assert_eq!(family_state(&store, family).await, (None, None));
        assert!(
            !store
                .is_access_token_revoked(&format!("jti_{family}"))
                .await
                .unwrap()
        );
    }
    let left: Vec<String> = store
        .list_connections(&org.id, &user.id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    assert_eq!(left, vec![c.clone(), b.clone()]);

    // A consent-only connection revokes no family but is still something to revoke.
    let n = store
        .revoke_connection(&org.id, &user.id, &b, 6_100, audit("connection.revoke"))
        .await
        .unwrap();
    assert_eq!(n, 0);
    // Nothing left to revoke: NotFound, and no audit row.
    for client in [&a, &b, &d, &"client_unknown".to_owned()] {
        let err = store
            .revoke_connection(&org.id, &user.id, client, 6_200, audit("connection.revoke"))
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::NotFound), "{client}: {err}");
    }
    let rows = store
        .list_audit(&AuditFilter {
            org_id: Some(org.id.clone()),
            action_prefix: Some("connection.revoke".into()),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].target.as_deref(), Some("client:client_a"));
    let detail: serde_json::Value =
        serde_json::from_str(rows[1].detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["families_revoked"], 2);
    assert_eq!(detail["consents_removed"], 2);
}

async fn a_users_pats_are_listed_newest_first_with_revoked_ones(db: TestDb) {
    let store = db.store().await;
    let (org, user) = org_and_user(&store, "acme", "a@example.com").await;
    let (other_org, _) = org_and_user(&store, "beta", "b@example.com").await;
    let scopes = ScopeSet::parse("account:read").unwrap();
    let mut ids = Vec::new();
    for (name, org_id, at, expires_at) in [
        ("old", &org.id, 1_000, Some(1_500)),
        ("revoked", &org.id, 2_000, None),
        ("elsewhere", &other_org.id, 2_500, None),
        ("new", &org.id, 3_000, None),
    ] {
        let token = PlainToken::generate(TokenKind::Pat);
        let row = store
            .insert_pat(
                NewPat {
                    user_id: &user.id,
                    org_id,
                    name,
                    scopes: &scopes,
                    expires_at,
                    hash: &token.hash(),
                },
                at,
                audit("pat.create"),
            )
            .await
            .unwrap();
        ids.push(row.id);
    }
    store
        .revoke_pat(&ids[1], 2_100, audit("pat.revoke"))
        .await
        .unwrap();
    let pats = store.list_pats_of_user(&org.id, &user.id).await.unwrap();
    let names: Vec<&str> = pats.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["new", "revoked", "old"]);
    assert_eq!(pats[1].revoked_at, Some(2_100));
    assert_eq!(pats[2].expires_at, Some(1_500));
    assert!(
        store
            .list_pats_of_user(&org.id, "usr_nobody")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn idempotency_keys_begin_finish_abort_and_expire(db: TestDb) {
    let store = db.store().await;
    let ttl = 600;
    assert_eq!(
        store
            .idempotency_begin("k1", "h1", 1_000, ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );
    // A retry while the first call runs, even with other arguments, is told so.
    assert_eq!(
        store
            .idempotency_begin("k1", "h2", 1_001, ttl)
            .await
            .unwrap(),
        IdempotencyBegin::InProgress {
            args_hash: "h1".into()
        }
    );
    store
        .idempotency_finish("k1", r#"{"ok":true}"#)
        .await
        .unwrap();
    assert_eq!(
        store
            .idempotency_begin("k1", "h1", 1_002, ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Done {
            args_hash: "h1".into(),
            result: r#"{"ok":true}"#.into()
        }
    );
    // Finishing twice, or a key never begun, is NotFound; the first result stays.
    let err = store.idempotency_finish("k1", "other").await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound), "{err}");
    let err = store.idempotency_finish("k_none", "x").await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound), "{err}");
    // Abort keeps a finished key...
    store.idempotency_abort("k1").await.unwrap();
    assert!(matches!(
        store
            .idempotency_begin("k1", "h1", 1_003, ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Done { .. }
    ));
    // ...and releases one in progress, so the retry runs.
    assert_eq!(
        store
            .idempotency_begin("k2", "h1", 1_000, ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );
    store.idempotency_abort("k2").await.unwrap();
    store.idempotency_abort("k_none").await.unwrap();
    assert_eq!(
        store
            .idempotency_begin("k2", "h1", 1_010, ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );

    // Once older than the TTL a row counts as absent, finished or not.
    assert!(matches!(
        store
            .idempotency_begin("k1", "h3", 1_000 + ttl - 1, ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Done { .. }
    ));
    assert_eq!(
        store
            .idempotency_begin("k1", "h3", 1_000 + ttl, ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );
    assert_eq!(
        store
            .idempotency_begin("k1", "h4", 1_000 + ttl + 1, ttl)
            .await
            .unwrap(),
        IdempotencyBegin::InProgress {
            args_hash: "h3".into()
        }
    );
    assert_eq!(
        store
            .idempotency_begin("k2", "h5", 1_010 + ttl, ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );

    // Concurrent callers: exactly one starts.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .idempotency_begin("race", &format!("h{i}"), 5_000, ttl)
                .await
                .unwrap()
        }));
    }
    let mut started = 0;
    for t in tasks {
        if t.await.unwrap() == IdempotencyBegin::Started {
            started += 1;
        }
    }
    assert_eq!(started, 1);

    // Purge removes rows created before the cut-off.
    assert_eq!(
        store
            .idempotency_begin("k3", "h", 9_000, ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );
    assert_eq!(store.purge_idempotency(5_001).await.unwrap(), 3);
    assert_eq!(store.purge_idempotency(5_001).await.unwrap(), 0);
    assert!(matches!(
        store
            .idempotency_begin("k3", "h", 9_001, ttl)
            .await
            .unwrap(),
        IdempotencyBegin::InProgress { .. }
    ));
}

async fn audit_batches_are_appended_together(db: TestDb) {
    let store = db.store().await;
    store.append_audit_batch(&[]).await.unwrap();
    let entries = vec![
        AuditEntry::new(1_000, "user:u1", "mcp.tool_call")
            .org("org_a")
            .target("tool:whoami")
            .detail(serde_json::json!({ "ok": true })),
        AuditEntry::new(1_001, "user:u2", "mcp.tool_call").source(Some("10.0.0.1".into())),
        AuditEntry::new(1_002, "system", "mcp.other"),
    ];
    store.append_audit_batch(&entries).await.unwrap();
    let rows = store
        .list_audit(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        audit_actions(&rows),
        vec!["mcp.other", "mcp.tool_call", "mcp.tool_call"]
    );
    assert_eq!(rows[2].org_id.as_deref(), Some("org_a"));
    assert_eq!(rows[2].target.as_deref(), Some("tool:whoami"));
    assert_eq!(rows[2].detail.as_deref(), Some(r#"{"ok":true}"#));
    assert_eq!(rows[1].source_addr.as_deref(), Some("10.0.0.1"));
    assert_eq!(rows[1].actor, "user:u2");
}

async fn rate_counters_are_added_in_batches(db: TestDb) {
    let store = db.store().await;
    store.migrate().await.unwrap();
    // More counters than one statement carries, so several statements run.
    let adds: Vec<(String, i64, i64)> = (0..1_200)
        .map(|i| (format!("b{i}"), 60, i % 7 + 1))
        .collect();
    let first = store.rate_add_many(&adds, 61).await.unwrap();
    assert_eq!(first.len(), 1_200);
    let again = store.rate_add_many(&adds[..2], 62).await.unwrap();
    let mut again = again;
    again.sort();
    assert_eq!(
        again,
        vec![("b0".to_owned(), 60, 2), ("b1".to_owned(), 60, 4)]
    );
    let totals: std::collections::HashMap<String, i64> = first
        .into_iter()
        .map(|(b, w, n)| {
            assert_eq!(w, 60);
            (b, n)
        })
        .collect();
    assert_eq!(totals["b1199"], 1199 % 7 + 1);
    // Another window of the same bucket is its own counter; reads see both.
    store
        .rate_add_many(&[("b0".to_owned(), 120, 5)], 121)
        .await
        .unwrap();
    let counts = store.rate_counts("b0", 120, 60).await.unwrap();
    assert_eq!(
        (counts.previous, counts.current, counts.last_at),
        (2, 5, 121)
    );
    assert!(store.rate_add_many(&[], 1).await.unwrap().is_empty());
}
