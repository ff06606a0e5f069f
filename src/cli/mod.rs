//! The `gatehouse` command line: `serve`, `migrate` and the account administration commands.
//! Administration works directly on the database, so it needs no running server.

mod output;
mod upstream;

use std::io::BufRead;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::app::{App, shutdown_signal};
use crate::bootstrap;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::crypto::password::hash_password;
use crate::crypto::{PlainToken, TokenKind, keys, random};
use crate::domain::org::OrgName;
use crate::domain::user::Password;
use crate::domain::{DisplayName, Email, OrgSlug, OrgStatus, RedirectUri, Role};
use crate::storage::credentials::NewPat;
use crate::storage::oauth::NewClient;
use crate::storage::{AuditEntry, AuditFilter, OrgRow, StorageError, Store, UserRow};
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "OAuth 2.1 authorization server and MCP resource server in one binary",
    long_about = "OAuth 2.1 authorization server and MCP resource server in one binary.\n\n\
        Configuration comes from built-in defaults, then the file given by --config or \
        GATEHOUSE_CONFIG, then environment variables GATEHOUSE__SECTION__KEY \
        (see config.example.toml). With no configuration at all, `gatehouse serve` \
        keeps its data in ./gatehouse.db (SQLite) and listens on 127.0.0.1:8080."
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "GATEHOUSE_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (applies pending migrations first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Ask the running server's `/healthz` (at `server.bind`, over loopback when bound to
    /// every address) and exit 0 on 200, 1 otherwise. For container health checks;
    /// touches no database.
    Healthcheck,
    /// Manage organizations.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage who belongs to which organization, and with what role.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Manage API keys (a user's sign-in credential for the consent page).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage personal access tokens (Bearer credentials for header-based agents).
    #[command(subcommand)]
    Pat(PatCommand),
    /// Read the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage OAuth clients registered by the operator (pre-registered clients).
    #[command(subcommand)]
    Client(ClientCommand),
    /// Manage the keys that sign access tokens.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check the upstreams of the gateway ([[upstream]] tables).
    #[command(subcommand)]
    Upstream(UpstreamCommand),
    /// Copy a SQLite database to PATH, consistently, while the server keeps running
    /// (PostgreSQL: use `pg_dump -Fc` instead).
    Backup {
        /// Where to write the copy (a new file, unless --force).
        path: PathBuf,
        /// Replace PATH if it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UpstreamCommand {
    /// Start every upstream as the server would and report, per upstream: whether it
    /// works, the public name of each tool it serves, what it skipped and why (for
    /// OpenAPI, each operation left out and how many were kept), lint findings, the
    /// size of its tools/list entries and whether its credentials work. Exits 1 if one
    /// is not up or its credentials are refused.
    Check,
    /// Approve the changed tool definitions of upstream NAME that `on_change = "block"`
    /// holds back (`upstream check` lists them); running servers serve them within seconds.
    Approve {
        /// The upstream's `name`.
        name: String,
        /// Only this tool (its name at the upstream).
        #[arg(long)]
        tool: Option<String>,
        /// Only a definition with this digest (as `upstream check` shows it): what you
        /// reviewed, not a later change.
        #[arg(long)]
        digest: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Register a client; a confidential client's secret is printed once.
    Create {
        /// Name shown on the consent page.
        #[arg(long)]
        name: String,
        /// Allowed redirect URI (repeat for several). https, or http on a loopback host
        /// (any port is then accepted).
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// A public client (no secret, `token_endpoint_auth_method: none`).
        #[arg(long)]
        public: bool,
        /// How a confidential client sends its secret: client_secret_basic or client_secret_post.
        #[arg(long, default_value = "client_secret_basic")]
        auth_method: String,
    },
    /// List every client (registered dynamically or here).
    List,
    /// Delete a client and revoke every token issued to it.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List signing keys.
    List,
    /// Add a new signing key and retire the others (they stay published, so tokens they
    /// signed keep verifying). Running servers sign with it within 30 seconds.
    Rotate,
    /// Delete keys retired longer ago than the access-token lifetime.
    Retire,
}

#[derive(Debug, Subcommand)]
enum OrgCommand {
    /// Create an organization.
    Create {
        /// Short handle: lower-case letters, digits and '-'.
        slug: String,
        /// Display name (defaults to the slug).
        #[arg(long)]
        name: Option<String>,
    },
    /// List organizations.
    List,
    /// Set an organization's status: active, read_only or suspended.
    SetStatus { slug: String, status: String },
    /// Set how many MCP tool calls an organization may make per UTC day, or `none` for
    /// no limit.
    #[command(allow_negative_numbers = true)]
    Quota {
        slug: String,
        /// A positive whole number, or `none`.
        #[arg(value_name = "N|none")]
        quota: String,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user.
    Create {
        email: String,
        /// Display name (defaults to the part of the email before '@').
        #[arg(long)]
        name: Option<String>,
        /// Read a sign-in password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Set a user's password, read from the first line of standard input.
    SetPassword { email: String },
    /// Disable a user: they cannot sign in, and their API keys, personal access tokens
    /// and OAuth grants are revoked in every organization.
    Disable { email: String },
    /// Enable a disabled user again (they need new API keys and tokens).
    Enable { email: String },
}

#[derive(Debug, Args)]
struct OrgUser {
    /// Organization slug.
    #[arg(long)]
    org: String,
    /// User email.
    #[arg(long)]
    user: String,
}

#[derive(Debug, Subcommand)]
enum MemberCommand {
    /// Add a user to an organization.
    Add {
        #[command(flatten)]
        who: OrgUser,
        /// owner, admin or member.
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// Remove a user from an organization (revokes their keys and tokens there).
    Remove {
        #[command(flatten)]
        who: OrgUser,
    },
    /// List an organization's members.
    List {
        #[arg(long)]
        org: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create an API key; it is printed once.
    Create {
        #[command(flatten)]
        who: OrgUser,
        #[arg(long, default_value = "api key")]
        name: String,
    },
    /// List API keys (never their secrets).
    List {
        #[arg(long)]
        org: Option<String>,
    },
    /// Revoke an API key by id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
enum PatCommand {
    /// Create a personal access token; it is printed once.
    Create {
        #[command(flatten)]
        who: OrgUser,
        /// A name to recognise it by, such as the agent using it.
        #[arg(long)]
        name: String,
        /// Space- or comma-separated scopes, e.g. "account:read admin:read".
        #[arg(long)]
        scopes: String,
        /// Expire after this many days (default: never).
        #[arg(long, value_name = "DAYS")]
        expires_in_days: Option<u32>,
    },
    /// List personal access tokens (never their secrets).
    List {
        #[arg(long)]
        org: Option<String>,
    },
    /// Revoke a personal access token by id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Show audit events, newest first.
    List {
        #[arg(long)]
        org: Option<String>,
        /// Only actions starting with this, e.g. "pat." or "org.create".
        #[arg(long)]
        action: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// Parses arguments, runs the command, and turns any error into one line and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    let clock = SystemClock;
    match cli.command {
        Command::Serve => return serve(config, cli.config).await,
        Command::Healthcheck => return healthcheck(&config).await,
        Command::Upstream(UpstreamCommand::Check) => {
            return upstream::check(config, cli.json).await;
        }
        _ => {}
    }
    if let Command::Backup { path, force } = &cli.command {
        return backup(&config, path, *force, cli.json).await;
    }
    let store = open_store(&config).await?;
    let ctx = Ctx {
        store,
        json: cli.json,
        now: clock.now(),
        access_ttl_secs: config.tokens.access_ttl_secs,
        scopes: config.oauth.scopes.clone(),
        kek: config.keys.kek.clone(),
    };
    let result = ctx.dispatch(cli.command).await;
    ctx.store.close().await;
    result
}

async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database)
        .await
        .map_err(|e| anyhow!("{}: {}", redact_url(&config.database.url), describe(e)))?;
    store.migrate().await.map_err(|e| anyhow!(describe(e)))?;
    Ok(store)
}

/// Hides a password in a database URL before it is shown.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

fn describe(e: StorageError) -> String {
    match e {
        StorageError::Unavailable(inner) => format!("database is unreachable: {inner}"),
        StorageError::Database(inner) => format!("database error: {inner}"),
        other => other.to_string(),
    }
}

/// `gatehouse backup PATH`: `VACUUM INTO` a file beside PATH, then move it into
/// place, so that PATH is either absent or a complete copy, never a partial one.
async fn backup(
    config: &Config,
    path: &std::path::Path,
    force: bool,
    json: bool,
) -> anyhow::Result<()> {
    let url = &config.database.url;
    let Some(source) = Store::sqlite_file(url) else {
        bail!(
            "backup copies SQLite databases only; for PostgreSQL use pg_dump -Fc (for example `pg_dump -Fc -f gatehouse.dump {}`)",
            redact_url(url)
        );
    };
    if !source.exists() {
        bail!("no SQLite database at {}", source.display());
    }
    if path.exists() && !force {
        bail!(
            "{} already exists; choose a new file or pass --force to replace it",
            path.display()
        );
    }
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!("directory {} does not exist", dir.display());
    }
    let partial = dir.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        random::base62(8)
    ));
    let partial_str = partial
        .to_str()
        .ok_or_else(|| anyhow!("{} is not valid UTF-8", path.display()))?;
    let store = Store::connect(&config.database)
        .await
        .map_err(|e| anyhow!("{}: {}", redact_url(url), describe(e)))?;
    let copied = store.backup_sqlite(partial_str).await;
    store.close().await;
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&partial);
        bail!("backup failed: {}", describe(e));
    }
    let placed = if force {
        std::fs::rename(&partial, path)
    } else {
        // A hard link never replaces a file that appeared meanwhile.
        std::fs::hard_link(&partial, path).and_then(|()| std::fs::remove_file(&partial))
    };
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&partial);
        bail!("cannot write {}: {e}", path.display());
    }
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if json {
        print!(
            "{}",
            output::json(&json!({ "path": path.display().to_string(), "bytes": bytes }))
        );
    } else {
        println!(
            "backed up {} to {} ({bytes} bytes)",
            source.display(),
            path.display()
        );
    }
    Ok(())
}

async fn serve(config: Config, file: Option<PathBuf>) -> anyhow::Result<()> {
    let telemetry = telemetry::init(&config.log, &config.traces)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = open_store(&config).await?;
    if let Some(first) = bootstrap::ensure_initial_owner(&store, &config, clock.as_ref())
        .await
        .map_err(|e| anyhow!(describe(e)))?
    {
        // stdout, not the log: the key must reach the operator once and nowhere else.
        println!("{}", first.banner(&config.server.public_url));
    }
    let public_url = config.server.public_url.clone();
    let backend = store.backend();
    // SIGHUP reads the file and the environment again, for the upstreams.
    let app = App::build_with_store(config, store, clock)
        .await?
        .reload_upstreams_with(Box::new(move || {
            Config::load(file.as_deref())
                .map(|c| c.gateway.upstreams)
                .map_err(|e| e.to_string())
        }));
    let shutdown = shutdown_signal();
    tracing::info!(
        addr = %app.local_addr(),
        public_url = %public_url,
        database = backend,
        "gatehouse is listening"
    );
    if let Some(addr) = app.metrics_addr() {
        tracing::info!(addr = %addr, "metrics are served on their own listener");
    }
    app.run_until_stopped(shutdown).await?;
    telemetry.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The URL of the server's own `/healthz`, from its listen address: an unspecified
/// address (0.0.0.0, ::) is reached over loopback.
fn healthz_url(bind: SocketAddr) -> anyhow::Result<String> {
    if bind.port() == 0 {
        bail!("server.bind has port 0, so there is no known port to check");
    }
    let mut addr = bind;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(format!("http://{addr}/healthz"))
}

async fn healthcheck(config: &Config) -> anyhow::Result<()> {
    let url = healthz_url(config.server.bind)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("cannot build the HTTP client")?;
    let res = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("{url} did not answer"))?;
    if res.status() != reqwest::StatusCode::OK {
        bail!("{url} answered {}", res.status());
    }
    println!("ok: {url}");
    Ok(())
}

struct Ctx {
    store: Store,
    json: bool,
    now: i64,
    access_ttl_secs: i64,
    /// The scopes this deployment defines, for PAT creation.
    scopes: crate::domain::scope::ScopeCatalog,
    /// Seals the private half of a rotated-in signing key.
    kek: keys::Kek,
}

impl Ctx {
    fn audit(&self, action: &str) -> AuditEntry {
        AuditEntry::new(self.now, "cli", action)
    }

    fn print(&self, human: String, machine: serde_json::Value) {
        if self.json {
            print!("{}", output::json(&machine));
        } else {
            print!("{human}");
        }
    }

    async fn org(&self, slug: &str) -> anyhow::Result<OrgRow> {
        let slug = OrgSlug::parse(slug).with_context(|| format!("--org {slug:?}"))?;
        self.store
            .find_org_by_slug(&slug)
            .await
            .map_err(|e| anyhow!(describe(e)))?
            .ok_or_else(|| anyhow!("no organization with slug {:?}", slug.as_str()))
    }

    async fn user(&self, email: &str) -> anyhow::Result<UserRow> {
        let email = Email::parse(email)?;
        self.store
            .find_user_by_email(&email)
            .await
            .map_err(|e| anyhow!(describe(e)))?
            .ok_or_else(|| anyhow!("no user with email {email}"))
    }

    /// The org and user, checking that the user belongs to the org.
    async fn member(&self, who: &OrgUser) -> anyhow::Result<(OrgRow, UserRow)> {
        let org = self.org(&who.org).await?;
        let user = self.user(&who.user).await?;
        let membership = self
            .store
            .find_membership(&org.id, &user.id)
            .await
            .map_err(|e| anyhow!(describe(e)))?;
        if membership.is_none() {
            bail!(
                "{} is not a member of {} (add them with `gatehouse member add`)",
                user.email,
                org.slug
            );
        }
        Ok((org, user))
    }

    async fn dispatch(&self, command: Command) -> anyhow::Result<()> {
        match command {
            Command::Serve
            | Command::Healthcheck
            | Command::Backup { .. }
            | Command::Upstream(UpstreamCommand::Check) => Ok(()),
            Command::Upstream(UpstreamCommand::Approve { name, tool, digest }) => {
                let approved = self
                    .store
                    .approve_tool_changes(
                        &name,
                        tool.as_deref(),
                        digest.as_deref(),
                        self.now,
                        "cli",
                    )
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                if approved.is_empty() {
                    bail!("no changed tool of upstream {name:?} waits for approval");
                }
                let tools: Vec<&str> = approved.iter().map(|(t, _)| t.as_str()).collect();
                let listed: Vec<String> =
                    approved.iter().map(|(t, d)| format!("{t} ({d})")).collect();
                self.print(
                    format!(
                        "approved {} changed tool(s) of {name}: {}\n",
                        approved.len(),
                        listed.join(", ")
                    ),
                    json!({
                        "upstream": name,
                        "approved": tools,
                        "digests": approved.iter().map(|(t, d)| json!({ "tool": t, "digest": d })).collect::<Vec<_>>(),
                    }),
                );
                Ok(())
            }
            Command::Migrate => {
                self.print(
                    format!("database is up to date ({})\n", self.store.backend()),
                    json!({ "status": "migrated", "backend": self.store.backend() }),
                );
                Ok(())
            }
            Command::Org(c) => self.org_command(c).await,
            Command::User(c) => self.user_command(c).await,
            Command::Member(c) => self.member_command(c).await,
            Command::Key(c) => self.key_command(c).await,
            Command::Pat(c) => self.pat_command(c).await,
            Command::Audit(c) => self.audit_command(c).await,
            Command::Client(c) => self.client_command(c).await,
            Command::Keys(c) => self.keys_command(c).await,
        }
    }

    async fn org_command(&self, c: OrgCommand) -> anyhow::Result<()> {
        match c {
            OrgCommand::Create { slug, name } => {
                let slug = OrgSlug::parse(&slug)?;
                let name = OrgName::parse(name.as_deref().unwrap_or(slug.as_str()))?;
                let org = self
                    .store
                    .create_org(&slug, &name, self.now, self.audit("org.create"))
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                self.print(
                    format!("created organization {} ({})\n", org.slug, org.id),
                    json!(org),
                );
            }
            OrgCommand::List => {
                let orgs = self
                    .store
                    .list_orgs()
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                let rows: Vec<Vec<String>> = orgs
                    .iter()
                    .map(|o| {
                        vec![
                            o.slug.clone(),
                            o.name.clone(),
                            o.status.clone(),
                            quota_text(o.daily_tool_call_quota),
                            o.id.clone(),
                            output::time(Some(o.created_at)),
                        ]
                    })
                    .collect();
                self.print(
                    output::table(
                        &["SLUG", "NAME", "STATUS", "DAILY QUOTA", "ID", "CREATED"],
                        &rows,
                    ),
                    json!(orgs),
                );
            }
            OrgCommand::SetStatus { slug, status } => {
                let slug = OrgSlug::parse(&slug)?;
                let status: OrgStatus = status.parse()?;
                let org = self
                    .store
                    .set_org_status(&slug, status, self.audit("org.set_status"))
                    .await
                    .map_err(|e| match e {
                        StorageError::NotFound => {
                            anyhow!("no organization with slug {:?}", slug.as_str())
                        }
                        other => anyhow!(describe(other)),
                    })?;
                self.print(
                    format!("organization {} is now {}\n", org.slug, org.status),
                    json!(org),
                );
            }
            OrgCommand::Quota { slug, quota } => {
                let daily = parse_quota(&quota)?;
                let slug = OrgSlug::parse(&slug)?;
                let mut org = self
                    .store
                    .find_org_by_slug(&slug)
                    .await
                    .map_err(|e| anyhow!(describe(e)))?
                    .ok_or_else(|| anyhow!("no organization with slug {:?}", slug.as_str()))?;
                self.store
                    .set_org_quota(&org.id, daily, self.now, self.audit("org.set_quota"))
                    .await
                    .map_err(|e| match e {
                        StorageError::NotFound => {
                            anyhow!("no organization with slug {:?}", slug.as_str())
                        }
                        other => anyhow!(describe(other)),
                    })?;
                org.daily_tool_call_quota = daily;
                self.print(
                    format!(
                        "organization {}: daily tool-call quota is now {}\n",
                        org.slug,
                        quota_text(daily)
                    ),
                    json!(org),
                );
            }
        }
        Ok(())
    }

    async fn user_command(&self, c: UserCommand) -> anyhow::Result<()> {
        match c {
            UserCommand::Create {
                email,
                name,
                password_stdin,
            } => {
                let email = Email::parse(&email)?;
                let default_name = email
                    .as_str()
                    .split('@')
                    .next()
                    .unwrap_or("user")
                    .to_owned();
                let name = DisplayName::parse(name.as_deref().unwrap_or(&default_name))?;
                let hash = if password_stdin {
                    Some(hash_password(read_password()?).await?)
                } else {
                    None
                };
                let user = self
                    .store
                    .create_user(&email, &name, hash, self.now, self.audit("user.create"))
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                self.print(
                    format!("created user {} ({})\n", user.email, user.id),
                    json!(user),
                );
            }
            UserCommand::List => {
                let users = self
                    .store
                    .list_users()
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                let rows: Vec<Vec<String>> = users
                    .iter()
                    .map(|u| {
                        vec![
                            u.email.clone(),
                            u.display_name.clone(),
                            if u.has_password() { "yes" } else { "no" }.into(),
                            u.id.clone(),
                            output::time(Some(u.created_at)),
                        ]
                    })
                    .collect();
                self.print(
                    output::table(&["EMAIL", "NAME", "PASSWORD", "ID", "CREATED"], &rows),
                    json!(users),
                );
            }
            UserCommand::Disable { email } => self.set_user_disabled(&email, true).await?,
            UserCommand::Enable { email } => self.set_user_disabled(&email, false).await?,
            UserCommand::SetPassword { email } => {
                let email = Email::parse(&email)?;
                let hash = hash_password(read_password()?).await?;
                self.store
                    .set_user_password(&email, &hash, self.audit("user.set_password"))
                    .await
                    .map_err(|e| match e {
                        StorageError::NotFound => anyhow!("no user with email {email}"),
                        other => anyhow!(describe(other)),
                    })?;
                self.print(
                    format!("password set for {email}\n"),
                    json!({ "email": email.as_str(), "password_set": true }),
                );
            }
        }
        Ok(())
    }

    async fn set_user_disabled(&self, email: &str, disable: bool) -> anyhow::Result<()> {
        let email = Email::parse(email)?;
        let action = if disable {
            "user.disable"
        } else {
            "user.enable"
        };
        let user = self
            .store
            .set_user_disabled(&email, disable, self.now, self.audit(action))
            .await
            .map_err(|e| match e {
                StorageError::NotFound => anyhow!("no user with email {email}"),
                other => anyhow!(describe(other)),
            })?;
        let words = if disable {
            "disabled; their keys, tokens and grants are revoked"
        } else {
            "enabled; they need new API keys and tokens"
        };
        self.print(
            format!("{email} {words}\n"),
            json!({ "email": email.as_str(), "id": user.id, "disabled": disable }),
        );
        Ok(())
    }

    async fn member_command(&self, c: MemberCommand) -> anyhow::Result<()> {
        match c {
            MemberCommand::Add { who, role } => {
                let role: Role = role.parse()?;
                let org = self.org(&who.org).await?;
                let user = self.user(&who.user).await?;
                self.store
                    .add_member(&org, &user, role, self.now, self.audit("member.add"))
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                self.print(
                    format!("{} is now {} of {}\n", user.email, role, org.slug),
                    json!({ "org": org.slug, "user": user.email, "role": role.as_str() }),
                );
            }
            MemberCommand::Remove { who } => {
                let org = self.org(&who.org).await?;
                let user = self.user(&who.user).await?;
                self.store
                    .remove_member(&org, &user, self.now, self.audit("member.remove"))
                    .await
                    .map_err(|e| match e {
                        StorageError::NotFound => {
                            anyhow!("{} is not a member of {}", user.email, org.slug)
                        }
                        other => anyhow!(describe(other)),
                    })?;
                self.print(
                    format!(
                        "removed {} from {} and revoked their keys and tokens there\n",
                        user.email, org.slug
                    ),
                    json!({ "org": org.slug, "user": user.email, "removed": true }),
                );
            }
            MemberCommand::List { org } => {
                let org = self.org(&org).await?;
                let members = self
                    .store
                    .list_members(&org)
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                let rows: Vec<Vec<String>> = members
                    .iter()
                    .map(|m| {
                        vec![
                            m.email.clone(),
                            m.display_name.clone(),
                            m.role.clone(),
                            output::time(Some(m.created_at)),
                        ]
                    })
                    .collect();
                self.print(
                    output::table(&["EMAIL", "NAME", "ROLE", "SINCE"], &rows),
                    json!(members),
                );
            }
        }
        Ok(())
    }

    async fn key_command(&self, c: KeyCommand) -> anyhow::Result<()> {
        match c {
            KeyCommand::Create { who, name } => {
                let (org, user) = self.member(&who).await?;
                let name = DisplayName::parse(&name).context("--name")?;
                let token = PlainToken::generate(TokenKind::ApiKey);
                let row = self
                    .store
                    .insert_api_key(
                        &user.id,
                        &org.id,
                        name.as_str(),
                        &token.hash(),
                        self.now,
                        self.audit("api_key.create"),
                    )
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                self.print(
                    format!(
                        "created API key {} for {} in {}\n\n  {}\n\nThis is the only time it is shown.\n",
                        row.id,
                        user.email,
                        org.slug,
                        token.expose()
                    ),
                    json!({ "id": row.id, "org": org.slug, "user": user.email, "name": row.name, "api_key": token.expose() }),
                );
            }
            KeyCommand::List { org } => {
                let org_id = match org {
                    Some(slug) => Some(self.org(&slug).await?.id),
                    None => None,
                };
                let keys = self
                    .store
                    .list_api_keys(org_id.as_deref())
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                let rows: Vec<Vec<String>> = keys
                    .iter()
                    .map(|k| {
                        vec![
                            k.id.clone(),
                            k.org_slug.clone(),
                            k.email.clone(),
                            k.name.clone(),
                            output::time(Some(k.created_at)),
                            output::time(k.last_used_at),
                            output::time(k.revoked_at),
                        ]
                    })
                    .collect();
                self.print(
                    output::table(
                        &[
                            "ID",
                            "ORG",
                            "USER",
                            "NAME",
                            "CREATED",
                            "LAST USED",
                            "REVOKED",
                        ],
                        &rows,
                    ),
                    json!(keys),
                );
            }
            KeyCommand::Revoke { id } => {
                self.store
                    .revoke_api_key(&id, self.now, self.audit("api_key.revoke"))
                    .await
                    .map_err(|e| match e {
                        StorageError::NotFound => anyhow!("no API key with id {id:?}"),
                        other => anyhow!(describe(other)),
                    })?;
                self.print(
                    format!("revoked API key {id}\n"),
                    json!({ "id": id, "revoked": true }),
                );
            }
        }
        Ok(())
    }

    async fn pat_command(&self, c: PatCommand) -> anyhow::Result<()> {
        match c {
            PatCommand::Create {
                who,
                name,
                scopes,
                expires_in_days,
            } => {
                let scopes = self
                    .scopes
                    .parse_known(&scopes)
                    .map_err(|e| anyhow!("--scopes: {e}"))?;
                let name = DisplayName::parse(&name).context("--name")?;
                let expires_at = match expires_in_days {
                    Some(0) => bail!("--expires-in-days must be at least 1"),
                    Some(d) => Some(self.now + i64::from(d) * 86_400),
                    None => None,
                };
                let (org, user) = self.member(&who).await?;
                let token = PlainToken::generate(TokenKind::Pat);
                let hash = token.hash();
                let row = self
                    .store
                    .insert_pat(
                        NewPat {
                            user_id: &user.id,
                            org_id: &org.id,
                            name: name.as_str(),
                            scopes: &scopes,
                            expires_at,
                            hash: &hash,
                        },
                        self.now,
                        self.audit("pat.create"),
                    )
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                self.print(
                    format!(
                        "created personal access token {} ({}) for {} in {}\nscopes: {}\nexpires: {}\n\n  {}\n\n\
                         This is the only time it is shown. Send it as `Authorization: Bearer <token>`.\n",
                        row.id,
                        row.name,
                        user.email,
                        org.slug,
                        row.scopes,
                        output::time(row.expires_at),
                        token.expose()
                    ),
                    json!({
                        "id": row.id, "org": org.slug, "user": user.email, "name": row.name,
                        "scopes": row.scopes, "expires_at": row.expires_at, "token": token.expose()
                    }),
                );
            }
            PatCommand::List { org } => {
                let org_id = match org {
                    Some(slug) => Some(self.org(&slug).await?.id),
                    None => None,
                };
                let pats = self
                    .store
                    .list_pats(org_id.as_deref())
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                let rows: Vec<Vec<String>> = pats
                    .iter()
                    .map(|p| {
                        vec![
                            p.id.clone(),
                            p.org_slug.clone(),
                            p.email.clone(),
                            p.name.clone(),
                            p.scopes.clone(),
                            output::time(p.expires_at),
                            output::time(p.last_used_at),
                            output::time(p.revoked_at),
                        ]
                    })
                    .collect();
                self.print(
                    output::table(
                        &[
                            "ID",
                            "ORG",
                            "USER",
                            "NAME",
                            "SCOPES",
                            "EXPIRES",
                            "LAST USED",
                            "REVOKED",
                        ],
                        &rows,
                    ),
                    json!(pats),
                );
            }
            PatCommand::Revoke { id } => {
                self.store
                    .revoke_pat(&id, self.now, self.audit("pat.revoke"))
                    .await
                    .map_err(|e| match e {
                        StorageError::NotFound => {
                            anyhow!("no personal access token with id {id:?}")
                        }
                        other => anyhow!(describe(other)),
                    })?;
                self.print(
                    format!("revoked personal access token {id}\n"),
                    json!({ "id": id, "revoked": true }),
                );
            }
        }
        Ok(())
    }

    async fn audit_command(&self, c: AuditCommand) -> anyhow::Result<()> {
        let AuditCommand::List { org, action, limit } = c;
        let org_id = match org {
            Some(slug) => Some(self.org(&slug).await?.id),
            None => None,
        };
        let events = self
            .store
            .list_audit(&AuditFilter {
                org_id,
                action_prefix: action,
                limit: i64::from(limit),
            })
            .await
            .map_err(|e| anyhow!(describe(e)))?;
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                vec![
                    output::time(Some(e.at)),
                    e.actor.clone(),
                    e.action.clone(),
                    e.target.clone().unwrap_or_else(|| "-".into()),
                    e.source_addr.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        self.print(
            output::table(&["TIME", "ACTOR", "ACTION", "TARGET", "SOURCE"], &rows),
            json!(events),
        );
        Ok(())
    }
}

/// `none` (no limit) or a positive whole number of tool calls per day.
fn parse_quota(raw: &str) -> anyhow::Result<Option<i64>> {
    if raw == "none" {
        return Ok(None);
    }
    match raw.parse::<i64>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => bail!("quota {raw:?}: expected a positive whole number of calls per day, or \"none\""),
    }
}

fn quota_text(daily: Option<i64>) -> String {
    daily.map_or_else(|| "unlimited".into(), |n| n.to_string())
}

fn read_password() -> anyhow::Result<Password> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    Ok(Password::parse(line)?)
}

impl Ctx {
    async fn client_command(&self, c: ClientCommand) -> anyhow::Result<()> {
        match c {
            ClientCommand::Create {
                name,
                redirect_uris,
                public,
                auth_method,
            } => {
                let name = DisplayName::parse(&name).context("--name")?;
                let mut uris = Vec::new();
                for raw in &redirect_uris {
                    let uri = RedirectUri::parse(raw)
                        .map_err(|e| anyhow!("--redirect-uri {raw:?}: {e}"))?;
                    if uri.is_private_use() && !public {
                        bail!(
                            "--redirect-uri {raw:?}: an app's own scheme is for public clients (add --public): any app on the machine can claim it, so it cannot hold a secret"
                        );
                    }
                    uris.push(uri.as_str().to_owned());
                }
                let method = if public {
                    "none"
                } else {
                    match auth_method.as_str() {
                        "client_secret_basic" => "client_secret_basic",
                        "client_secret_post" => "client_secret_post",
                        other => bail!(
                            "--auth-method {other:?}: expected client_secret_basic or client_secret_post"
                        ),
                    }
                };
                let secret = (!public).then(|| PlainToken::generate(TokenKind::ClientSecret));
                let (row, _) = self
                    .store
                    .insert_client(
                        NewClient {
                            id: random::long_id("client"),
                            origin: "static",
                            name: name.as_str().to_owned(),
                            redirect_uris: uris.clone(),
                            auth_method: method.to_owned(),
                            secret_hash: secret.as_ref().map(|s| s.hash().as_str().to_owned()),
                            can_introspect: !public,
                            dedupe_key: None,
                            metadata: json!({ "client_name": name.as_str(), "redirect_uris": uris, "token_endpoint_auth_method": method }),
                        },
                        self.now,
                        self.audit("client.create"),
                    )
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                let secret_text = secret
                    .as_ref()
                    .map(|s| {
                        format!(
                            "client_secret: {}\n\nThe secret is shown only now.\n",
                            s.expose()
                        )
                    })
                    .unwrap_or_default();
                self.print(
                    format!("client_id: {}\nauth method: {method}\n{secret_text}", row.id),
                    json!({ "client_id": row.id, "name": row.name, "token_endpoint_auth_method": method,
                            "redirect_uris": row.redirect_uri_list(), "client_secret": secret.as_ref().map(|s| s.expose()) }),
                );
            }
            ClientCommand::List => {
                let clients = self
                    .store
                    .list_clients()
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                let rows: Vec<Vec<String>> = clients
                    .iter()
                    .map(|c| {
                        vec![
                            c.id.clone(),
                            c.name.clone(),
                            c.origin.clone(),
                            c.auth_method.clone(),
                            c.redirect_uri_list().join(" "),
                            output::time(c.last_used_at),
                        ]
                    })
                    .collect();
                self.print(
                    output::table(
                        &["ID", "NAME", "ORIGIN", "AUTH", "REDIRECT URIS", "LAST USED"],
                        &rows,
                    ),
                    json!(clients),
                );
            }
            ClientCommand::Delete { id } => {
                self.store
                    .delete_client(&id, self.now, self.audit("client.delete"))
                    .await
                    .map_err(|e| match e {
                        StorageError::NotFound => anyhow!("no client with id {id:?}"),
                        other => anyhow!(describe(other)),
                    })?;
                self.print(
                    format!("deleted client {id} and revoked its tokens\n"),
                    json!({ "id": id, "deleted": true }),
                );
            }
        }
        Ok(())
    }

    async fn keys_command(&self, c: KeysCommand) -> anyhow::Result<()> {
        match c {
            KeysCommand::List => {}
            KeysCommand::Rotate => {
                let key = keys::generate(random::id("key"), self.now, &self.kek)?;
                self.store
                    .insert_signing_key(&key)
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                self.store
                    .retire_signing_keys_except(&key.kid, self.now)
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                self.store
                    .append_audit(&self.audit("keys.rotate").target(format!("key:{}", key.kid)))
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                if !self.json {
                    println!(
                        "new signing key {}; running servers sign with it within 30 seconds",
                        key.kid
                    );
                }
            }
            KeysCommand::Retire => {
                let n = self
                    .store
                    .delete_retired_signing_keys(self.now - self.access_ttl_secs)
                    .await
                    .map_err(|e| anyhow!(describe(e)))?;
                if !self.json {
                    println!("deleted {n} retired key(s) whose tokens have all expired");
                }
            }
        }
        let keys = self
            .store
            .list_signing_keys()
            .await
            .map_err(|e| anyhow!(describe(e)))?;
        let rows: Vec<Vec<String>> = keys
            .iter()
            .map(|k| {
                vec![
                    k.kid.clone(),
                    if k.retired_at.is_some() {
                        "retired"
                    } else {
                        "signing"
                    }
                    .into(),
                    output::time(Some(k.created_at)),
                    output::time(k.retired_at),
                ]
            })
            .collect();
        let machine: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| json!({ "kid": k.kid, "public_key": k.public_key, "created_at": k.created_at, "retired_at": k.retired_at }))
            .collect();
        self.print(
            output::table(&["KID", "STATE", "CREATED", "RETIRED"], &rows),
            json!(machine),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::healthz_url;

    #[test]
    fn healthz_url_reaches_an_all_addresses_bind_over_loopback() {
        let url = |bind: &str| healthz_url(bind.parse().unwrap()).unwrap();
        assert_eq!(url("0.0.0.0:8080"), "http://127.0.0.1:8080/healthz");
        assert_eq!(url("[::]:8080"), "http://[::1]:8080/healthz");
        assert_eq!(url("10.1.2.3:9000"), "http://10.1.2.3:9000/healthz");
        assert_eq!(url("[fd00::7]:443"), "http://[fd00::7]:443/healthz");
    }

    #[test]
    fn healthz_url_refuses_port_zero() {
        let err = healthz_url("127.0.0.1:0".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("server.bind"), "{err}");
    }
}
