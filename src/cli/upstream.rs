//! `gatehouse upstream check`: starts every configured upstream as the server would,
//! and says what it serves, what it skips and why, what a client would object to, and
//! whether the upstream works at all (it started, initialized and listed its tools
//! with the configured credentials). Secrets never appear: errors quote the
//! upstream's own words (its stderr), never the configured values.

use std::sync::Arc;

use anyhow::anyhow;
use serde_json::json;

use super::output;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::state::AppState;

/// Prints the report; fails when an upstream is not up or its credentials are refused,
/// so that a deploy can stop.
pub async fn check(config: Config, json_out: bool) -> anyhow::Result<()> {
    if config.gateway.upstreams.is_empty() {
        if json_out {
            print!("{}", output::json(&json!({ "upstreams": [] })));
        } else {
            println!("no [[upstream]] is configured");
        }
        return Ok(());
    }
    let store = super::open_store(&config).await?;
    let state = AppState::load(store.clone(), config, Arc::new(SystemClock))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let gateway = Gateway::start(state).await;
    let mut down = Vec::new();
    let mut refused = Vec::new();
    let mut machine = Vec::new();
    let mut human = String::new();
    for u in gateway.upstreams() {
        let r = u.report();
        let status = u.status();
        if !u.is_up() {
            down.push(u.name().to_owned());
        }
        if r.credentials
            .as_deref()
            .is_some_and(|c| c.starts_with("refused"))
        {
            refused.push(u.name().to_owned());
        }
        machine.push(json!({
            "name": u.name(),
            "transport": u.config.transport.kind(),
            "up": u.is_up(),
            "status": status,
            "served": r.served.iter().map(|(public, tool)| json!({ "name": public, "upstream_name": tool })).collect::<Vec<_>>(),
            "skipped": r.skipped.iter().map(|s| json!({ "tool": s.tool, "reason": s.reason })).collect::<Vec<_>>(),
            "lint": r.lint,
            "list_bytes": r.list_bytes,
            "credentials": r.credentials,
            "operations": r.operations.map(|(kept, total)| json!({ "kept": kept, "total": total })),
        }));
        human.push_str(&format!(
            "{} ({}): {status}\n  {} tools served, {} skipped; its tools/list entries are {} bytes\n",
            u.name(),
            u.config.transport.kind(),
            r.served.len(),
            r.skipped.len(),
            r.list_bytes
        ));
        if !r.served.is_empty() {
            let rows: Vec<Vec<String>> = r
                .served
                .iter()
                .map(|(public, tool)| vec![format!("  {public}"), tool.clone()])
                .collect();
            human.push_str(&output::table(&["  SERVED AS", "UPSTREAM NAME"], &rows));
        }
        for s in &r.skipped {
            human.push_str(&format!("  skipped {:?}: {}\n", s.tool, s.reason));
        }
        for l in &r.lint {
            human.push_str(&format!("  lint: {l}\n"));
        }
        if let Some(c) = &r.credentials {
            human.push_str(&format!("  credentials: {c}\n"));
        }
    }
    gateway.shutdown().await;
    store.close().await;
    if json_out {
        print!("{}", output::json(&json!({ "upstreams": machine })));
    } else {
        print!("{human}");
    }
    let mut problems = Vec::new();
    if !down.is_empty() {
        problems.push(format!("not up: {}", down.join(", ")));
    }
    if !refused.is_empty() {
        problems.push(format!("credentials refused: {}", refused.join(", ")));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{}", problems.join("; ")))
    }
}
