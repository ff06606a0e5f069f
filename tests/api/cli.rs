//! The real `gatehouse` binary, run as an operator would.

use crate::both_backends;
use crate::helpers::{TestDb, cli, cli_env, gatehouse_bin};
use crate::process::{Serve, Served};

both_backends!(db:
    accounts_can_be_administered_end_to_end,
    cli_errors_are_one_clear_line_and_change_nothing,
    a_database_from_a_newer_version_is_refused,
    first_serve_prints_the_owner_key_once_and_stores_only_its_hash,
    org_quota_is_set_listed_cleared_and_audited,
    backup_copies_a_live_sqlite_database_and_points_postgres_to_pg_dump,
);

async fn accounts_can_be_administered_end_to_end(db: TestDb) {
    let org = cli(
        &db,
        &["--json", "org", "create", "acme", "--name", "Acme Corp"],
        None,
    )
    .await
    .ok()
    .json();
    assert_eq!(org["slug"], "acme");
    assert_eq!(org["status"], "active");

    cli(
        &db,
        &[
            "user",
            "create",
            "Ada@Example.com",
            "--name",
            "Ada",
            "--password-stdin",
        ],
        Some("a long enough password\n"),
    )
    .await
    .ok();
    let users = cli(&db, &["--json", "user", "list"], None)
        .await
        .ok()
        .json();
    assert_eq!(
        users[0]["email"], "ada@example.com",
        "emails are normalised"
    );
    assert!(
        users[0].get("password_hash").is_none(),
        "hashes are never printed"
    );

    cli(
        &db,
        &[
            "member",
            "add",
            "--org",
            "acme",
            "--user",
            "ada@example.com",
            "--role",
            "owner",
        ],
        None,
    )
    .await
    .ok();
    let members = cli(&db, &["--json", "member", "list", "--org", "acme"], None)
        .await
        .ok()
        .json();
    assert_eq!(members[0]["role"], "owner");

    let key = cli(
        &db,
        &[
            "--json",
            "key",
            "create",
            "--org",
            "acme",
            "--user",
            "ada@example.com",
        ],
        None,
    )
    .await
    .ok()
    .json();
    let api_key = key["api_key"].as_str().unwrap().to_owned();
    assert!(api_key.starts_with("gth_key_"));

    let pat = cli(
        &db,
        &[
            "--json",
            "pat",
            "create",
            "--org",
            "acme",
            "--user",
            "ada@example.com",
            "--name",
            "ci",
            "--scopes",
            "account:read,admin:read",
            "--expires-in-days",
            "30",
        ],
        None,
    )
    .await
    .ok()
    .json();
    let token = pat["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("gth_pat_"));
    assert_eq!(pat["scopes"], "account:read admin:read");

    // Listings never show secrets.
    let keys = cli(&db, &["key", "list"], None).await.ok();
    assert!(!keys.stdout.contains(&api_key));
    let pats = cli(&db, &["--json", "pat", "list", "--org", "acme"], None)
        .await
        .ok();
    assert!(!pats.stdout.contains(&token));
    let pat_id = pats.json()[0]["id"].as_str().unwrap().to_owned();

    // Only the hash is stored: the store finds the token by its digest.
    let store = db.store().await;
    let hash = gatehouse::crypto::PlainToken::parse(gatehouse::crypto::TokenKind::Pat, &token)
        .unwrap()
        .hash();
    assert!(store.find_pat_by_hash(&hash, 0).await.unwrap().is_some());

    cli(&db, &["pat", "revoke", &pat_id], None).await.ok();
    let pats = cli(&db, &["--json", "pat", "list"], None).await.ok().json();
    assert!(pats[0]["revoked_at"].is_i64());

    cli(&db, &["org", "set-status", "acme", "read_only"], None)
        .await
        .ok();
    let orgs = cli(&db, &["--json", "org", "list"], None).await.ok().json();
    assert_eq!(orgs[0]["status"], "read_only");

    let human = cli(&db, &["org", "list"], None).await.ok();
    assert!(human.stdout.starts_with("SLUG"), "{}", human.stdout);

    let audit = cli(&db, &["--json", "audit", "list", "--org", "acme"], None)
        .await
        .ok()
        .json();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "org.create",
        "member.add",
        "api_key.create",
        "pat.create",
        "pat.revoke",
        "org.set_status",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing from {actions:?}"
        );
    }
    let only_pats = cli(&db, &["--json", "audit", "list", "--action", "pat."], None)
        .await
        .ok()
        .json();
    assert_eq!(only_pats.as_array().unwrap().len(), 2);
}

async fn cli_errors_are_one_clear_line_and_change_nothing(db: TestDb) {
    cli(&db, &["org", "create", "acme"], None).await.ok();
    cli(&db, &["user", "create", "ada@example.com"], None)
        .await
        .ok();

    let cases: &[(&[&str], &str)] = &[
        (&["org", "create", "acme"], "already exists"),
        (&["org", "create", "Not A Slug"], "slug"),
        (&["org", "set-status", "acme", "frozen"], "frozen"),
        (&["org", "set-status", "nope", "active"], "no organization"),
        (&["user", "create", "ada@example.com"], "already exists"),
        (&["user", "create", "not-an-email"], "not-an-email"),
        (
            &[
                "member",
                "add",
                "--org",
                "nope",
                "--user",
                "ada@example.com",
            ],
            "no organization",
        ),
        (
            &[
                "member",
                "add",
                "--org",
                "acme",
                "--user",
                "ada@example.com",
                "--role",
                "king",
            ],
            "king",
        ),
        (
            &[
                "member",
                "remove",
                "--org",
                "acme",
                "--user",
                "ada@example.com",
            ],
            "not a member",
        ),
        (
            &[
                "key",
                "create",
                "--org",
                "acme",
                "--user",
                "ada@example.com",
            ],
            "not a member",
        ),
        (
            &[
                "pat",
                "create",
                "--org",
                "acme",
                "--user",
                "ada@example.com",
                "--name",
                "x",
                "--scopes",
                "bogus",
            ],
            "bogus",
        ),
        (
            &["pat", "revoke", "pat_nothere"],
            "no personal access token",
        ),
        (&["key", "revoke", "key_nothere"], "no API key"),
    ];
    for (args, needle) in cases {
        let out = cli(&db, args, None).await.failed();
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{args:?}: one line: {}",
            out.stderr
        );
    }

    // A password too short is refused and no user is half-created.
    let out = cli(
        &db,
        &["user", "create", "bob@example.com", "--password-stdin"],
        Some("short\n"),
    )
    .await
    .failed();
    assert!(out.stderr.contains("password"), "{}", out.stderr);
    let users = cli(&db, &["--json", "user", "list"], None)
        .await
        .ok()
        .json();
    assert_eq!(users.as_array().unwrap().len(), 1);

    // Configuration mistakes name the key.
    let out = cli_env(
        &db,
        &["org", "list"],
        None,
        &[("GATEHOUSE__DATABASE__MAX_CONNECTIONS", "lots")],
    )
    .await
    .failed();
    assert!(
        out.stderr.contains("database.max_connections"),
        "{}",
        out.stderr
    );
    let out = cli_env(
        &db,
        &["org", "list"],
        None,
        &[("GATEHOUSE__SERVER__BNID", "x")],
    )
    .await
    .failed();
    assert!(out.stderr.contains("bnid"), "{}", out.stderr);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server\nbind = 1").unwrap();
    let out = cli(
        &db,
        &["--config", bad.to_str().unwrap(), "org", "list"],
        None,
    )
    .await
    .failed();
    assert!(out.stderr.contains("not valid TOML"), "{}", out.stderr);
}

async fn a_database_from_a_newer_version_is_refused(db: TestDb) {
    cli(&db, &["migrate"], None).await.ok();
    let store = db.store().await;
    let sql = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
               VALUES (9999, 'from the future', TRUE, $1, 0)";
    match &store {
        gatehouse::storage::Store::Postgres(pool) => {
            sqlx::query(sql)
                .bind(vec![0u8; 48])
                .execute(pool)
                .await
                .unwrap();
        }
        gatehouse::storage::Store::Sqlite(pool) => {
            sqlx::query(sql)
                .bind(vec![0u8; 48])
                .execute(pool)
                .await
                .unwrap();
        }
    }
    store.close().await;
    let out = cli(&db, &["migrate"], None).await.failed();
    assert!(out.stderr.contains("newer version"), "{}", out.stderr);
    let out = cli(&db, &["org", "list"], None).await.failed();
    assert!(out.stderr.contains("9999"), "{}", out.stderr);
}

async fn org_quota_is_set_listed_cleared_and_audited(db: TestDb) {
    cli(&db, &["org", "create", "acme"], None).await.ok();
    cli(&db, &["org", "create", "beta"], None).await.ok();
    let orgs = cli(&db, &["--json", "org", "list"], None).await.ok().json();
    assert!(orgs[0]["daily_tool_call_quota"].is_null(), "{orgs}");

    let out = cli(&db, &["org", "quota", "acme", "1000"], None).await.ok();
    assert!(out.stdout.contains("1000"), "{}", out.stdout);
    let set = cli(&db, &["--json", "org", "quota", "beta", "25"], None)
        .await
        .ok()
        .json();
    assert_eq!(set["slug"], "beta");
    assert_eq!(set["daily_tool_call_quota"], 25);

    let orgs = cli(&db, &["--json", "org", "list"], None).await.ok().json();
    assert_eq!(orgs[0]["daily_tool_call_quota"], 1000);
    assert_eq!(orgs[1]["daily_tool_call_quota"], 25);
    let human = cli(&db, &["org", "list"], None).await.ok().stdout;
    assert!(
        human.lines().next().unwrap().contains("DAILY QUOTA"),
        "{human}"
    );
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("acme") && l.contains("1000")),
        "{human}"
    );

    cli(&db, &["org", "quota", "acme", "none"], None).await.ok();
    let orgs = cli(&db, &["--json", "org", "list"], None).await.ok().json();
    assert!(orgs[0]["daily_tool_call_quota"].is_null(), "{orgs}");
    assert_eq!(orgs[1]["daily_tool_call_quota"], 25);
    let human = cli(&db, &["org", "list"], None).await.ok().stdout;
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("acme") && l.contains("unlimited")),
        "{human}"
    );

    let cases: &[(&[&str], &str)] = &[
        (&["org", "quota", "acme", "0"], "positive"),
        (&["org", "quota", "acme", "-5"], "positive"),
        (&["org", "quota", "acme", "lots"], "positive"),
        (&["org", "quota", "acme", "1.5"], "positive"),
        (
            &["org", "quota", "acme", "99999999999999999999"],
            "positive",
        ),
        (&["org", "quota", "nope", "10"], "no organization"),
        (&["org", "quota", "Not A Slug", "10"], "slug"),
    ];
    for (args, needle) in cases {
        let out = cli(&db, args, None).await.failed();
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{args:?}: one line: {}",
            out.stderr
        );
    }
    let orgs = cli(&db, &["--json", "org", "list"], None).await.ok().json();
    assert!(
        orgs[0]["daily_tool_call_quota"].is_null(),
        "refusals change nothing"
    );
    assert_eq!(orgs[1]["daily_tool_call_quota"], 25);

    let audit = cli(
        &db,
        &["--json", "audit", "list", "--action", "org.set_quota"],
        None,
    )
    .await
    .ok()
    .json();
    let audit = audit.as_array().unwrap();
    assert_eq!(audit.len(), 3, "{audit:?}");
    assert!(audit.iter().all(|e| e["actor"] == "cli"));
    assert_eq!(audit[0]["target"], "org:acme");
    assert_eq!(audit[0]["detail"], r#"{"daily_tool_call_quota":null}"#);
    assert_eq!(audit[2]["detail"], r#"{"daily_tool_call_quota":1000}"#);
}

/// Starts `gatehouse serve` on a free port with JSON logs at `info`.
async fn start_server(db: &TestDb) -> Served {
    Serve::new(db)
        .env("GATEHOUSE__LOG__FORMAT", "json")
        .env("GATEHOUSE__LOG__FILTER", "info")
        .start()
        .await
}

/// Stops the server with SIGTERM; returns everything it printed, after checking that
/// it said where it listened.
async fn stop_server(mut served: Served) -> String {
    served.stop().await;
    let out = served.output();
    let listening = out
        .lines()
        .find(|l| l.contains("gatehouse is listening"))
        .unwrap_or_else(|| panic!("no listening line: {out}"));
    let log: serde_json::Value = serde_json::from_str(listening).expect("json log line");
    assert_eq!(log["addr"], format!("127.0.0.1:{}", served.port));
    out
}

async fn first_serve_prints_the_owner_key_once_and_stores_only_its_hash(db: TestDb) {
    let child = start_server(&db).await;
    let first = stop_server(child).await;
    let key = first
        .split_whitespace()
        .find(|w| w.starts_with("gth_key_"))
        .unwrap_or_else(|| panic!("no key in banner: {first}"))
        .to_owned();
    assert!(first.contains("owner@localhost"));

    let child = start_server(&db).await;
    let second = stop_server(child).await;
    assert!(
        !second.contains("gth_key_"),
        "a later start prints nothing secret: {second}"
    );

    let store = db.store().await;
    let hash = gatehouse::crypto::PlainToken::parse(gatehouse::crypto::TokenKind::ApiKey, &key)
        .unwrap()
        .hash();
    let row = store
        .find_api_key_by_hash(&hash)
        .await
        .unwrap()
        .expect("key stored by hash");
    assert_eq!(row.org_slug, "default");
    let members = cli(&db, &["--json", "member", "list", "--org", "default"], None)
        .await
        .ok()
        .json();
    assert_eq!(members[0]["role"], "owner");
}

#[tokio::test]
async fn an_unreachable_database_is_one_line_and_a_failure() {
    let Some(db) = TestDb::new(crate::helpers::Backend::Sqlite).await else {
        return;
    };
    let out = cli_env(
        &db,
        &["org", "list"],
        None,
        &[
            (
                "GATEHOUSE__DATABASE__URL",
                "postgres://postgres:secret@127.0.0.1:1/nothing",
            ),
            ("GATEHOUSE__DATABASE__CONNECT_TIMEOUT_SECS", "2"),
        ],
    )
    .await
    .failed();
    assert!(out.stderr.contains("unreachable"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("secret"),
        "passwords in URLs are hidden: {}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1);
}

#[tokio::test]
async fn help_lists_every_command() {
    let out = std::process::Command::new(gatehouse_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "serve", "migrate", "org", "user", "member", "key", "pat", "audit", "backup",
    ] {
        assert!(help.contains(cmd), "{cmd} missing from --help");
    }
}

async fn backup_copies_a_live_sqlite_database_and_points_postgres_to_pg_dump(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("backup.db");
    let target_str = target.to_str().unwrap();
    if db.backend == crate::helpers::Backend::Postgres {
        let out = cli(&db, &["backup", target_str], None).await.failed();
        assert!(out.stderr.contains("pg_dump -Fc"), "{}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1);
        assert!(!target.exists());
        return;
    }
    // Data made while the server runs, then backed up under it.
    let child = start_server(&db).await;
    cli(&db, &["org", "create", "acme", "--name", "Acme Corp"], None)
        .await
        .ok();
    let out = cli(&db, &["--json", "backup", target_str], None).await.ok();
    assert!(out.json()["bytes"].as_u64().unwrap() > 0);
    cli(&db, &["org", "create", "later"], None).await.ok();

    // The copy opens on its own, with the data made before it and nothing after.
    let copy = TestDb::sqlite_at(&target);
    let orgs = cli(&copy, &["--json", "org", "list"], None)
        .await
        .ok()
        .json();
    let slugs: Vec<&str> = orgs
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["slug"].as_str().unwrap())
        .collect();
    assert!(slugs.contains(&"acme"), "{slugs:?}");
    assert!(
        slugs.contains(&"default"),
        "the first start's organization: {slugs:?}"
    );
    assert!(!slugs.contains(&"later"), "{slugs:?}");

    // An existing file is kept unless --force.
    let out = cli(&db, &["backup", target_str], None).await.failed();
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    cli(&db, &["backup", "--force", target_str], None)
        .await
        .ok();
    let orgs = cli(&copy, &["--json", "org", "list"], None)
        .await
        .ok()
        .json();
    assert!(orgs.to_string().contains("later"), "{orgs}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    stop_server(child).await;
}
