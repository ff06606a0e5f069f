//! OpenAPI upstreams (issue #15, item 5): REST operations served as tools, against the
//! test server's `--rest` mode, which checks the identity token's method, URL and body
//! digest and echoes what reached it; and the GitHub REST API description.

use serde_json::{Value, json};

use crate::both_backends;
use crate::gateway::{
    HttpUpstream, call, eventually, list, names, pat, portable, post, served_upstream, text,
};
use crate::helpers::{Backend, TestApp, TestDb, cli_env, spawn_app_with};

both_backends!(
    backend: rest_operations_are_served_as_tools_and_called_with_an_identity_token,
);

both_backends!(
    db: upstream_check_counts_the_operations_kept_and_checks_the_credentials,
    the_github_rest_api_description_loads_with_every_kept_operation_a_valid_tool,
);

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/openapi/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The app with the openapi upstream `shop` in front of a `--rest` server that checks
/// its identity tokens.
async fn spawn_shop(backend: Backend) -> Option<(TestApp, HttpUpstream)> {
    let mut upstream = None;
    let app = spawn_app_with(backend, |c| {
        let issuer = c.server.public_url.clone();
        let rest = served_upstream(
            "--rest",
            &[
                ("TEST_UPSTREAM_JWKS_URL", format!("{issuer}/jwks")),
                ("TEST_UPSTREAM_ISSUER", issuer.clone()),
                (
                    "TEST_UPSTREAM_AUDIENCE",
                    "urn:gatehouse:upstream:shop".into(),
                ),
            ],
        );
        let text = format!(
            r#"
[[upstream]]
name = "shop"
transport = "openapi"
spec = "{spec}"
base_url = "{url}"
scopes = "tools:t"
headers = {{ "x-api-key" = "${{SHOP_KEY}}" }}
max_response_bytes = 4096
check_operation = "whoAmI"
timeout_secs = 5
"#,
            spec = fixture("shop-3.0.yaml"),
            url = rest.url
        );
        upstream = Some(rest);
        crate::gateway::use_upstreams(c, &text, &[("SHOP_KEY", "shop-secret-key")]);
    })
    .await?;
    crate::helpers::seed_owner(&app.store).await;
    Some((app, upstream.unwrap()))
}

fn tool<'a>(tools: &'a [Value], name: &str) -> &'a Value {
    tools
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed"))
}

async fn rest_operations_are_served_as_tools_and_called_with_an_identity_token(backend: Backend) {
    let Some((app, _rest)) = spawn_shop(backend).await else {
        return;
    };
    let token = pat(&app, "account:read tools:t").await;
    eventually("the description is loaded", || async {
        names(&list(&app, &token).await).contains(&"shop_getItem".to_owned())
    })
    .await;
    let tools = list(&app, &token).await;
    let mut shop: Vec<String> = names(&tools)
        .into_iter()
        .filter(|n| n.starts_with("shop_"))
        .collect();
    shop.sort();
    assert_eq!(
        shop,
        [
            "shop_createItem",
            "shop_deleteItem",
            "shop_getBig",
            "shop_getItem",
            "shop_getStatus",
            "shop_getText",
            "shop_listItems",
            "shop_renameItem",
            "shop_replaceItem",
            "shop_touch",
            "shop_whoAmI",
        ],
        "the photo upload (image/png) and the cookie session are skipped"
    );

    // Definitions: title, description with the route, annotations from the method.
    let get = tool(&tools, "shop_getItem");
    assert_eq!(get["title"], "Get an item");
    assert!(
        get["description"]
            .as_str()
            .unwrap()
            .contains("(GET /items/{id})")
    );
    assert_eq!(get["annotations"]["readOnlyHint"], true);
    assert_eq!(get["inputSchema"]["required"], json!(["id"]));
    assert_eq!(
        get["inputSchema"]["properties"]["id"]["description"],
        "The item's id"
    );
    assert!(get.get("outputSchema").is_none());
    let delete = tool(&tools, "shop_deleteItem");
    assert_eq!(delete["annotations"]["destructiveHint"], true);
    assert_eq!(delete["annotations"]["readOnlyHint"], false);
    let put = tool(&tools, "shop_replaceItem");
    assert_eq!(put["annotations"]["idempotentHint"], true);
    let props = put["inputSchema"]["properties"].as_object().unwrap();
    assert!(
        props.contains_key("id") && props.contains_key("id_body") && props.contains_key("name"),
        "the body's id is told apart from the path's: {props:?}"
    );
    let create = tool(&tools, "shop_createItem");
    assert_eq!(create["annotations"]["readOnlyHint"], false);
    assert_eq!(create["annotations"]["destructiveHint"], false);
    let schema = &create["inputSchema"];
    let props = schema["properties"].as_object().unwrap();
    for p in [
        "name",
        "price",
        "note",
        "parent",
        "dry_run",
        "X-Trace",
        "idempotency_key",
    ] {
        assert!(props.contains_key(p), "{p} is missing: {props:?}");
    }
    assert!(
        !props.contains_key("Authorization"),
        "the caller never sets Authorization"
    );
    assert_eq!(schema["required"], json!(["name"]));
    assert!(
        schema["$defs"].is_object(),
        "the recursive Item is a local definition"
    );
    assert!(
        tool(&tools, "shop_getItem")["inputSchema"]["properties"]
            .get("idempotency_key")
            .is_none(),
        "reads take no idempotency key"
    );

    // A read: the path parameter is encoded whole, and the token names this request.
    let r = call(
        &app,
        &token,
        "shop_getItem",
        json!({ "id": "a/b", "verbose": true }),
    )
    .await;
    assert_eq!(r["isError"], false, "{r}");
    let seen = &r["structuredContent"];
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/items/a%2Fb");
    assert_eq!(seen["query"], "verbose=true");
    assert_eq!(seen["identity"]["tool"], "getItem");
    assert!(
        seen["identity"]["sub"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert_eq!(
        seen["headers"]["x-api-key"], true,
        "the configured key is sent"
    );
    assert!(!r.to_string().contains(&token));
    assert!(!r.to_string().contains("shop-secret-key"));
    assert!(text(&r).contains("\"path\""), "the JSON is also text");

    // Query styles: exploded arrays and deepObject.
    let r = call(
        &app,
        &token,
        "shop_listItems",
        json!({ "tag": ["a", "b c"], "limit": 5, "filter": { "color": "red" } }),
    )
    .await;
    assert_eq!(
        r["structuredContent"]["query"], "tag=a&tag=b+c&limit=5&filter%5Bcolor%5D=red",
        "{r}"
    );

    // A write: JSON body from the fields, query, header, and the idempotency key.
    let r = call(
        &app,
        &token,
        "shop_createItem",
        json!({ "name": "lamp", "price": 3.5, "note": null, "dry_run": true, "X-Trace": "t-1", "idempotency_key": "key-1" }),
    )
    .await;
    assert_eq!(r["isError"], false, "{r}");
    let seen = &r["structuredContent"];
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["query"], "dry_run=true");
    assert_eq!(seen["headers"]["x-trace"], "t-1");
    assert_eq!(seen["idempotency_key"], "key-1");
    assert_eq!(seen["content_type"], "application/json");
    assert_eq!(
        seen["body"],
        json!({ "name": "lamp", "price": 3.5, "note": null })
    );
    // The clashing body field goes into the body under its own name.
    let r = call(
        &app,
        &token,
        "shop_replaceItem",
        json!({ "id": "x", "id_body": "inner", "name": "n" }),
    )
    .await;
    let seen = &r["structuredContent"];
    assert_eq!(seen["path"], "/items/x", "{r}");
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["body"], json!({ "id": "inner", "name": "n" }));
    // A form body.
    let r = call(
        &app,
        &token,
        "shop_renameItem",
        json!({ "id": "x", "name": "new name" }),
    )
    .await;
    let seen = &r["structuredContent"];
    assert_eq!(seen["method"], "PATCH", "{r}");
    assert_eq!(seen["content_type"], "application/x-www-form-urlencoded");
    assert_eq!(seen["body"], "name=new+name");

    // Answers: an error status with its body, a cut answer, text, no content.
    let r = call(&app, &token, "shop_getStatus", json!({ "code": 404 })).await;
    assert_eq!(r["isError"], true);
    assert!(
        text(&r).starts_with("HTTP 404 Not Found: ") && text(&r).contains("status 404"),
        "{r}"
    );
    let r = call(&app, &token, "shop_getBig", json!({ "bytes": 100000 })).await;
    assert_eq!(r["isError"], false, "{r}");
    assert!(r.get("structuredContent").is_none());
    assert!(
        text(&r).contains("cut at 4096 bytes") && text(&r).len() < 5000,
        "{}",
        text(&r).len()
    );
    let r = call(&app, &token, "shop_getText", json!({})).await;
    assert_eq!(text(&r), "plain words");
    assert!(r.get("structuredContent").is_none());
    let r = call(&app, &token, "shop_touch", json!({})).await;
    assert_eq!(r["isError"], false, "{r}");
    assert!(text(&r).starts_with("HTTP 204"), "{r}");

    // Arguments the schema refuses never reach the API; the model is told which.
    let r = call(&app, &token, "shop_getStatus", json!({ "code": "abc" })).await;
    assert_eq!(r["isError"], true);
    assert!(text(&r).contains("code"), "{r}");
    let r = call(&app, &token, "shop_getItem", json!({})).await;
    assert_eq!(r["isError"], true);
    assert!(text(&r).contains("id"), "{r}");
    let r = call(
        &app,
        &token,
        "shop_createItem",
        json!({ "name": "x", "price": 0 }),
    )
    .await;
    assert_eq!(r["isError"], true, "price must be over 0: {r}");
    assert!(text(&r).contains("price"), "{r}");
    let r = call(&app, &token, "shop_getItem", json!({ "id": ".." })).await;
    assert_eq!(r["isError"], true, "{r}");
    assert!(text(&r).contains("invalid arguments"), "{r}");

    // Without the upstream's scope a call is refused with a step-up challenge.
    let narrow = pat(&app, "account:read").await;
    let res = post(
        &app,
        &narrow,
        json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": "shop_getItem", "arguments": { "id": "x" } } }),
    )
    .await;
    assert_eq!(res.status(), reqwest::StatusCode::FORBIDDEN);
    assert!(
        res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("tools:t")
    );
}

async fn check_json(db: &TestDb, config: &str) -> (Value, String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    let out = cli_env(
        db,
        &[
            "--config",
            path.to_str().unwrap(),
            "--json",
            "upstream",
            "check",
        ],
        None,
        &[("SHOP_KEY", "shop-secret-key")],
    )
    .await;
    let ok = out.code == 0;
    let report = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} / {}", out.stdout, out.stderr));
    (report, out.stderr, ok)
}

fn upstream<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .unwrap()
}

fn served(u: &Value) -> Vec<String> {
    u["served"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn upstream_check_counts_the_operations_kept_and_checks_the_credentials(db: TestDb) {
    let open = served_upstream("--rest", &[]);
    let locked = served_upstream(
        "--rest",
        &[("TEST_UPSTREAM_JWKS_URL", "http://127.0.0.1:1/jwks".into())],
    );
    let config = format!(
        r#"
[[upstream]]
name = "shop"
transport = "openapi"
spec = "{shop}"
base_url = "{open}"
headers = {{ "x-api-key" = "${{SHOP_KEY}}" }}
check_operation = "whoAmI"

[[upstream]]
name = "tree"
transport = "openapi"
spec = "{tree}"
base_url = "{open}"
include = ["tag:tree", "GET /status/{{code}}"]
exclude = ["deleteNode"]
"#,
        shop = fixture("shop-3.0.yaml"),
        tree = fixture("tree-3.1.json"),
        open = open.url,
    );
    let (report, stderr, ok) = check_json(&db, &config).await;
    assert!(ok, "{stderr}");
    assert!(!report.to_string().contains("shop-secret-key"));
    let shop = upstream(&report, "shop");
    assert_eq!(shop["up"], true, "{shop}");
    assert_eq!(shop["operations"], json!({ "kept": 11, "total": 13 }));
    assert_eq!(served(shop).len(), 11);
    let skipped = shop["skipped"].to_string();
    assert!(
        skipped.contains("uploadPhoto") && skipped.contains("image/png"),
        "{skipped}"
    );
    assert!(
        skipped.contains("getSession") && skipped.contains("cookie"),
        "{skipped}"
    );
    assert!(
        shop["credentials"].as_str().unwrap().starts_with("ok"),
        "{shop}"
    );
    assert!(
        shop["status"].as_str().unwrap().contains("OpenAPI 3.0.3"),
        "{shop}"
    );

    let tree = upstream(&report, "tree");
    assert_eq!(tree["up"], true, "{tree}");
    assert_eq!(tree["operations"], json!({ "kept": 3, "total": 5 }));
    let mut names = served(tree);
    names.sort();
    assert_eq!(
        names,
        ["tree_addNode", "tree_get_nodes_node-id", "tree_status"],
        "an operation without an operationId is named by method and path"
    );
    let skipped = tree["skipped"].to_string();
    assert!(
        skipped.contains("excluded by") && skipped.contains("deleteNode"),
        "{skipped}"
    );
    assert!(
        skipped.contains("other") && skipped.contains("not in include"),
        "{skipped}"
    );
    assert!(
        tree["credentials"].is_null(),
        "no check_operation, no check"
    );

    // Credentials the API refuses, and a description that is not there.
    let config = format!(
        r#"
[[upstream]]
name = "locked"
transport = "openapi"
spec = "{shop}"
base_url = "{locked}"
check_operation = "whoAmI"

[[upstream]]
name = "missing"
transport = "openapi"
spec = "{missing}"
base_url = "{locked}"
"#,
        shop = fixture("shop-3.0.yaml"),
        missing = fixture("no-such-spec.yaml"),
        locked = locked.url,
    );
    let (report, stderr, ok) = check_json(&db, &config).await;
    assert!(!ok);
    assert!(
        stderr.contains("not up: missing") && stderr.contains("credentials refused: locked"),
        "{stderr}"
    );
    let l = upstream(&report, "locked");
    assert_eq!(l["up"], true);
    let c = l["credentials"].as_str().unwrap();
    assert!(c.starts_with("refused") && c.contains("401"), "{c}");
    let m = upstream(&report, "missing");
    assert_eq!(m["up"], false);
    assert!(
        m["status"].as_str().unwrap().contains("no-such-spec.yaml"),
        "{m}"
    );
    drop(open);
    drop(locked);
}

async fn the_github_rest_api_description_loads_with_every_kept_operation_a_valid_tool(db: TestDb) {
    let Some(sdk) = crate::legacy_sse::sdk_dir() else {
        return;
    };
    let spec = format!("{sdk}/node_modules/@octokit/openapi/generated/api.github.com.json");
    let config = format!(
        "[[upstream]]\nname = \"github\"\ntransport = \"openapi\"\nspec = \"{spec}\"\nbase_url = \"https://api.github.com\"\nprefix = \"gh_\"\n"
    );
    let (report, stderr, ok) = check_json(&db, &config).await;
    assert!(ok, "{stderr}");
    let gh = upstream(&report, "github");
    assert_eq!(gh["up"], true, "{}", gh["status"]);
    let kept = gh["operations"]["kept"].as_u64().unwrap();
    let total = gh["operations"]["total"].as_u64().unwrap();
    assert!(kept > 1000 && kept <= total, "{kept} of {total}");
    let served = served(gh);
    assert_eq!(
        served.len() as u64,
        kept,
        "every kept operation is served: {}",
        gh["skipped"]
    );
    let unportable: Vec<&String> = served.iter().filter(|n| !portable(n)).collect();
    assert!(unportable.is_empty(), "{unportable:?}");
    let mut unique = served.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), served.len(), "names are unique");
    assert!(
        served.contains(&"gh_issues_create".to_owned()),
        "{served:?}"
    );
}
