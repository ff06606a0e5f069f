//! Bearer authentication for `/mcp`: OAuth access tokens (JWTs signed by our own keys)
//! and personal access tokens. Verified tokens are cached by digest; a cached entry is
//! re-checked against revocations at most a second after its last check.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use sha2::{Digest, Sha256};

use crate::crypto::jwt;
use crate::crypto::{HashedToken, PlainToken, TokenKind};
use crate::domain::{OrgStatus, Role, ScopeSet};
use crate::limits::Bucket;
use crate::metrics::AuthRejection as R;
use crate::state::AppState;
use crate::storage::{CredentialChange, StorageError, Store};

const RECHECK: Duration = Duration::from_secs(1);

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// An OAuth access token (a JWT we signed).
    AccessToken,
    /// A personal access token.
    Pat,
    /// No token: the operator enabled anonymous access with a fixed scope set.
    Anonymous,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccessToken => "oauth_access_token",
            Self::Pat => "personal_access_token",
            Self::Anonymous => "anonymous",
        }
    }
}

/// The caller's organization as last checked (at most a second ago).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub status: OrgStatus,
    /// `None` for anonymous callers and former members.
    pub role: Option<Role>,
    /// Tool calls per day for the whole organization; `None` is unlimited.
    pub daily_quota: Option<i64>,
    /// Who the caller is, as last read with the rest (empty for anonymous callers):
    /// enough for `whoami` to answer without a query.
    pub identity: Identity,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub email: String,
    pub display_name: String,
    pub org_slug: String,
}

impl Identity {
    const EMPTY: Identity = Identity {
        email: String::new(),
        display_name: String::new(),
        org_slug: String::new(),
    };
}

/// Who is calling, and with what rights.
#[derive(Debug, Clone)]
pub struct Principal {
    pub kind: CredentialKind,
    pub user_id: String,
    pub org_id: String,
    pub scopes: ScopeSet,
    /// The OAuth client, for access tokens; `None` otherwise.
    pub client_id: Option<String>,
    pub expires_at: Option<i64>,
    pub standing: Standing,
    /// The digest that identifies the credential (PAT hash or access-token jti hash),
    /// for last-used bookkeeping; empty for anonymous callers.
    pub credential: String,
    /// The `/mcp` rate-limit bucket of the credential, made once when it is verified;
    /// `None` for anonymous callers, who are limited by address.
    pub limit_bucket: Option<Bucket>,
}

impl Principal {
    /// The caller of an endpoint with anonymous access enabled.
    pub fn anonymous(scopes: ScopeSet) -> Self {
        Self {
            kind: CredentialKind::Anonymous,
            user_id: "anonymous".into(),
            org_id: String::new(),
            scopes,
            client_id: None,
            expires_at: None,
            standing: Standing {
                status: OrgStatus::Active,
                role: None,
                daily_quota: None,
                identity: Identity::EMPTY,
            },
            credential: String::new(),
            limit_bucket: None,
        }
    }
}

struct Cached {
    principal: Arc<Principal>,
    /// What to look up again to see whether the token was revoked.
    revocation_key: String,
    checked: Instant,
}

/// Verified tokens by the SHA-256 of the token. Bounded: when full, expired entries
/// go first, then an arbitrary tenth (the next request per dropped token pays one
/// verification).
///
/// Entries are kept true by following `credential_changes` (a table the database's
/// triggers fill on every revocation and every organization or membership change): a
/// background task reads it a few times a second and drops the entries it affects.
/// While that feed is current (its last successful read began less than a second ago),
/// a cached token needs no query at all; when it is not (the database is unreachable),
/// each cached token is re-checked by itself at most a second after its last check.
pub struct TokenCache {
    entries: Mutex<HashMap<CacheKey, Cached>>,
    feed: Mutex<Feed>,
    /// When the last successful read of the feed began, in nanoseconds after `epoch`
    /// (0: never). Read on every request, so an atomic rather than the feed's lock.
    synced_ns: AtomicU64,
    epoch: Instant,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            feed: Mutex::default(),
            synced_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

/// A cache key: the token's raw SHA-256. Hashing its first eight bytes (with the map's
/// random keys) is enough, since only verified tokens get in; it saves hex-encoding and
/// hashing 64 characters on every request.
#[derive(Clone, Copy, PartialEq, Eq)]
struct CacheKey([u8; 32]);

impl CacheKey {
    fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(head));
    }
}

#[derive(Default)]
struct Feed {
    /// The highest change id applied.
    last_id: i64,
    /// Ids applied within the look-back window (ids may commit out of order on
    /// PostgreSQL, so the window is read again and these are skipped).
    applied: BTreeSet<i64>,
    /// The changes applied most recently, for entries verified while a read ran.
    recent: VecDeque<CredentialChange>,
}

/// How far back each read looks for changes that committed out of id order.
const LOOKBACK: i64 = 1000;
const RECENT: usize = 10_000;

impl TokenCache {
    fn feed_is_current(&self) -> bool {
        let synced = self.synced_ns.load(Ordering::Acquire);
        synced != 0 && self.epoch.elapsed().as_nanos() < u128::from(synced) + RECHECK.as_nanos()
    }

    fn feed_mark(&self) -> i64 {
        self.feed.lock().map(|f| f.last_id).unwrap_or(i64::MAX)
    }

    /// Whether a change applied after `mark` concerns this entry.
    fn changed_since(&self, mark: i64, entry: &Cached) -> bool {
        let Ok(f) = self.feed.lock() else {
            return true;
        };
        f.recent
            .iter()
            .filter(|c| c.id > mark)
            .any(|c| affects(c, entry))
    }

    /// Reads new changes and drops the cache entries they make stale.
    pub async fn sync(&self, store: &Store) -> Result<usize, StorageError> {
        let started = Instant::now();
        let mut applied = 0;
        loop {
            let after = self.feed.lock().map(|f| f.last_id).unwrap_or(0);
            if after == 0 && self.synced_ns.load(Ordering::Acquire) == 0 {
                // First read: history is irrelevant to an empty cache.
                let latest = store.latest_credential_change().await?;
                if let Ok(mut f) = self.feed.lock() {
                    f.last_id = latest;
                }
            }
            let after = self.feed.lock().map(|f| f.last_id).unwrap_or(0);
            let changes = store
                .credential_changes_after((after - LOOKBACK).max(0), 5000)
                .await?;
            let full = changes.len() == 5000;
            let fresh: Vec<CredentialChange> = match self.feed.lock() {
                Ok(mut f) => {
                    let fresh: Vec<CredentialChange> = changes
                        .into_iter()
                        .filter(|c| !f.applied.contains(&c.id) && c.id > after - LOOKBACK)
                        .collect();
                    for c in &fresh {
                        f.applied.insert(c.id);
                        f.last_id = f.last_id.max(c.id);
                        f.recent.push_back(c.clone());
                    }
                    let floor = f.last_id - LOOKBACK;
                    f.applied = f.applied.split_off(&floor);
                    while f.recent.len() > RECENT {
                        f.recent.pop_front();
                    }
                    fresh
                }
                Err(_) => Vec::new(),
            };
            if !fresh.is_empty()
                && let Ok(mut entries) = self.entries.lock()
            {
                entries.retain(|_, e| !fresh.iter().any(|c| affects(c, e)));
            }
            applied += fresh.len();
            if !full {
                break;
            }
        }
        let since_epoch = started.saturating_duration_since(self.epoch).as_nanos();
        self.synced_ns.store(
            u64::try_from(since_epoch).unwrap_or(u64::MAX).max(1),
            Ordering::Release,
        );
        Ok(applied)
    }
}

fn affects(change: &CredentialChange, entry: &Cached) -> bool {
    let p = &entry.principal;
    match change.kind.as_str() {
        "jti" | "pat" => entry
            .revocation_key
            .split_once(':')
            .is_some_and(|(_, d)| d == change.key),
        "org" => p.org_id == change.key,
        "member" => change
            .key
            .split_once(' ')
            .is_some_and(|(o, u)| o == p.org_id && u == p.user_id),
        _ => true,
    }
}

pub enum BearerError {
    Missing,
    /// Why (for metrics) and what to tell the client.
    Invalid(R, &'static str),
    InsufficientScope(ScopeSet),
    /// The caller's organization is suspended: refused everywhere.
    Suspended,
    Unavailable,
}

/// The 401 challenge. `scope` names what a client should ask for to get going: the
/// scopes granted by default (the minimal useful set, as MCP's scope selection advises).
fn challenge(state: &AppState, extra: &str) -> HeaderValue {
    let value = format!(
        "Bearer resource_metadata=\"{}{}\", scope=\"{}\"{extra}",
        state.config.server.public_url,
        super::metadata::PATH_SUFFIXED,
        state.config.oauth.default_scopes
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

impl BearerError {
    fn reason(&self) -> R {
        match self {
            Self::Missing => R::Missing,
            Self::Invalid(r, _) => *r,
            Self::InsufficientScope(_) => R::InsufficientScope,
            Self::Suspended => R::Suspended,
            Self::Unavailable => R::Unavailable,
        }
    }

    pub fn into_response(self, state: &AppState) -> Response {
        self.respond(state, serde_json::Value::Null)
    }

    /// The HTTP answer, with `id` (the JSON-RPC request's, when known) in the body.
    pub fn respond(self, state: &AppState, id: serde_json::Value) -> Response {
        state.metrics.mcp.auth_rejected(self.reason());
        let (status, header_value, message) = match self {
            Self::Missing => (
                StatusCode::UNAUTHORIZED,
                challenge(state, ""),
                "authorization required".to_owned(),
            ),
            Self::Invalid(_, why) => (
                StatusCode::UNAUTHORIZED,
                challenge(
                    state,
                    &format!(", error=\"invalid_token\", error_description=\"{why}\""),
                ),
                why.to_owned(),
            ),
            Self::InsufficientScope(needed) => {
                let value = format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{needed}\", resource_metadata=\"{}{}\", error_description=\"this tool needs more permissions\"",
                    state.config.server.public_url,
                    super::metadata::PATH_SUFFIXED
                );
                (
                    StatusCode::FORBIDDEN,
                    HeaderValue::from_str(&value)
                        .unwrap_or_else(|_| HeaderValue::from_static("Bearer")),
                    format!("insufficient scope: needs {needed}"),
                )
            }
            Self::Suspended => (
                StatusCode::FORBIDDEN,
                HeaderValue::from_static(
                    "Bearer error=\"insufficient_scope\", error_description=\"organization suspended\"",
                ),
                "this organization is suspended".to_owned(),
            ),
            Self::Unavailable => {
                let mut res = crate::http::json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "try again shortly",
                );
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                return res;
            }
        };
        let body = serde_json::json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32001, "message": message } });
        let mut res = (status, axum::Json(body)).into_response();
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header_value);
        res
    }
}

fn bearer(headers: &HeaderMap) -> Result<Option<&str>, BearerError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| BearerError::Invalid(R::Malformed, "malformed Authorization header"))?;
    match v.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(BearerError::Invalid(
            R::Malformed,
            "expected Authorization: Bearer <token>",
        )),
    }
}

/// Authenticates a request; `Ok(None)` when it carries no credentials.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Arc<Principal>>, BearerError> {
    let Some(token) = bearer(headers)? else {
        return Ok(None);
    };
    let key = CacheKey::of(token);
    let now = state.clock.now();
    let feed_current = state.token_cache.feed_is_current();
    // The revocation key is copied out only when the entry must be re-checked.
    let cached = state.token_cache.entries.lock().ok().and_then(|c| {
        c.get(&key).map(|e| {
            let recheck = !feed_current && e.checked.elapsed() >= RECHECK;
            (
                e.principal.clone(),
                recheck.then(|| e.revocation_key.clone()),
            )
        })
    });
    if let Some((principal, stale)) = cached {
        if principal.expires_at.is_some_and(|exp| exp <= now) {
            forget(state, &key);
            return Err(BearerError::Invalid(R::Expired, "token expired"));
        }
        let Some(revocation_key) = stale else {
            return Ok(Some(principal));
        };
        let rechecked = recheck(state, &revocation_key, &principal, now).await;
        return match rechecked {
            Ok(principal) => {
                if let Ok(mut c) = state.token_cache.entries.lock()
                    && let Some(e) = c.get_mut(&key)
                {
                    e.checked = Instant::now();
                    e.principal = principal.clone();
                }
                Ok(Some(principal))
            }
            Err(e) => {
                if !matches!(e, BearerError::Unavailable) {
                    forget(state, &key);
                }
                Err(e)
            }
        };
    }
    let mark = state.token_cache.feed_mark();
    let (mut principal, revocation_key) = verify(state, token, now).await?;
    principal.standing = standing(state, &principal.org_id, &principal.user_id).await?;
    let principal = Arc::new(principal);
    if let Ok(mut c) = state.token_cache.entries.lock() {
        let bound = state.config.mcp.token_cache_entries;
        if c.len() >= bound {
            c.retain(|_, e| e.principal.expires_at.is_none_or(|exp| exp > now));
            if c.len() >= bound {
                // Drop a tenth, not everything: clearing the whole map made a working
                // set at the bound re-verify every token (measured: 0.14× at 10,000).
                let excess = c.len() + 1 - bound * 9 / 10;
                let victims: Vec<CacheKey> = c.keys().take(excess).copied().collect();
                for k in victims {
                    c.remove(&k);
                }
            }
        }
        let entry = Cached {
            principal: principal.clone(),
            revocation_key,
            checked: Instant::now(),
        };
        // A change the feed applied while this token was being verified could not
        // drop an entry that did not exist yet: such an entry is not kept.
        if !state.token_cache.changed_since(mark, &entry) {
            c.insert(key, entry);
        }
    }
    Ok(Some(principal))
}

fn forget(state: &AppState, key: &CacheKey) {
    if let Ok(mut c) = state.token_cache.entries.lock() {
        c.remove(key);
    }
}

/// The caller's organization status, role and quota; a suspended organization and a
/// vanished one end here.
async fn standing(state: &AppState, org_id: &str, user_id: &str) -> Result<Standing, BearerError> {
    let row = state
        .store
        .find_standing(org_id, user_id)
        .await
        .map_err(|_| BearerError::Unavailable)?
        .ok_or(BearerError::Invalid(
            R::NotMember,
            "organization no longer exists",
        ))?;
    let status: OrgStatus = row.status.parse().unwrap_or(OrgStatus::Suspended);
    if status == OrgStatus::Suspended {
        return Err(BearerError::Suspended);
    }
    let role = row.role.as_deref().and_then(|r| r.parse::<Role>().ok());
    if role.is_none() {
        return Err(BearerError::Invalid(
            R::NotMember,
            "no longer a member of this organization",
        ));
    }
    Ok(Standing {
        status,
        role,
        daily_quota: row.daily_tool_call_quota,
        identity: Identity {
            email: row.email.unwrap_or_default(),
            display_name: row.display_name.unwrap_or_default(),
            org_slug: row.slug,
        },
    })
}

/// Re-reads revocation and standing for a cached token. `revocation_key` is
/// `jti:<digest>` or `pat:<digest>`.
async fn recheck(
    state: &AppState,
    key: &str,
    principal: &Arc<Principal>,
    now: i64,
) -> Result<Arc<Principal>, BearerError> {
    let live = match key.split_once(':') {
        Some(("jti", d)) => state.store.is_access_token_revoked(d).await.map(|r| !r),
        Some(("pat", d)) => state
            .store
            .find_pat_by_hash(&HashedToken::from_digest(d), now)
            .await
            .map(|p| p.is_some()),
        _ => Ok(false),
    }
    .map_err(|_| BearerError::Unavailable)?;
    if !live {
        return Err(BearerError::Invalid(R::Revoked, "token revoked"));
    }
    let standing = standing(state, &principal.org_id, &principal.user_id).await?;
    if standing == principal.standing {
        return Ok(principal.clone());
    }
    let mut updated = (**principal).clone();
    updated.standing = standing;
    Ok(Arc::new(updated))
}

/// Placeholder standing until the database has been asked.
const UNCHECKED: Standing = Standing {
    status: OrgStatus::Active,
    role: None,
    daily_quota: None,
    identity: Identity::EMPTY,
};

async fn verify(
    state: &AppState,
    token: &str,
    now: i64,
) -> Result<(Principal, String), BearerError> {
    if TokenKind::of(token) == Some(TokenKind::Pat) {
        let plain = PlainToken::parse(TokenKind::Pat, token)
            .map_err(|_| BearerError::Invalid(R::Malformed, "malformed token"))?;
        let hash = plain.hash();
        let pat = state
            .store
            .find_pat_by_hash(&hash, now)
            .await
            .map_err(|_| BearerError::Unavailable)?
            .ok_or(BearerError::Invalid(
                R::Revoked,
                "unknown, expired or revoked token",
            ))?;
        let principal = Principal {
            kind: CredentialKind::Pat,
            user_id: pat.user_id,
            org_id: pat.org_id,
            scopes: ScopeSet::parse(&pat.scopes).unwrap_or_default(),
            client_id: None,
            expires_at: pat.expires_at,
            standing: UNCHECKED,
            credential: hash.as_str().to_owned(),
            limit_bucket: Some(Bucket::credential(hash.as_str())),
        };
        return Ok((principal, format!("pat:{}", hash.as_str())));
    }
    let claims = state
        .keys
        .verify(
            &state.store,
            token,
            &state.config.server.public_url,
            state.resource.as_str(),
            now,
        )
        .await
        .map_err(|e| match e {
            jwt::JwtError::Expired => BearerError::Invalid(R::Expired, "token expired"),
            jwt::JwtError::WrongAudience => {
                BearerError::Invalid(R::WrongAudience, "token is for another resource")
            }
            jwt::JwtError::Malformed => BearerError::Invalid(R::Malformed, "invalid token"),
            _ => BearerError::Invalid(R::BadSignature, "invalid token"),
        })?;
    let jti = HashedToken::of(&claims.jti);
    let revoked = state
        .store
        .is_access_token_revoked(jti.as_str())
        .await
        .map_err(|_| BearerError::Unavailable)?;
    if revoked {
        return Err(BearerError::Invalid(R::Revoked, "token revoked"));
    }
    let principal = Principal {
        kind: CredentialKind::AccessToken,
        user_id: claims.sub,
        org_id: claims.org,
        scopes: ScopeSet::parse(&claims.scope).unwrap_or_default(),
        client_id: Some(claims.client_id),
        expires_at: Some(claims.exp),
        standing: UNCHECKED,
        credential: jti.as_str().to_owned(),
        limit_bucket: Some(Bucket::credential(jti.as_str())),
    };
    Ok((principal, format!("jti:{}", jti.as_str())))
}
