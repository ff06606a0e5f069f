//! `/authorize`: validate the client and redirect URI first (errors are pages), then the
//! rest (errors go back to the client with `state` and `iss`); sign in, consent, code.

use std::net::IpAddr;

use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::clients::{self, find_client, verified_domain};
use super::error::ErrorCode;
use super::session::{self, Session};
use crate::crypto::password::verify_password;
use crate::crypto::{PlainToken, TokenKind, random};
use crate::domain::{CodeChallenge, Email, RedirectKind, RedirectUri, ResourceUri, ScopeSet};
use crate::limits::{self, Bucket, ClientAddr};
use crate::state::AppState;
use crate::storage::{AuditEntry, ClientRow, CodeRow, ConsentRow, StorageError};

/// A fully checked authorization request.
pub struct AuthorizeRequest {
    client: ClientRow,
    redirect_uri: RedirectUri,
    state: Option<String>,
    challenge: CodeChallenge,
    scopes: ScopeSet,
    resource: ResourceUri,
    /// The query string as received, carried through the sign-in and consent forms.
    raw: String,
}

pub enum AuthorizeError {
    /// Before the client and redirect URI are trusted: show a page, never redirect.
    Page {
        status: StatusCode,
        title: &'static str,
        message: String,
    },
    /// After: send the error back to the client.
    Redirect {
        redirect_uri: RedirectUri,
        code: ErrorCode,
        description: String,
        state: Option<String>,
    },
}

impl From<StorageError> for AuthorizeError {
    fn from(e: StorageError) -> Self {
        tracing::error!(error = ?e, "storage error during authorization");
        Self::Page {
            status: StatusCode::SERVICE_UNAVAILABLE,
            title: "Temporarily unavailable",
            message: "Gatehouse could not reach its database. Please try again in a moment.".into(),
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    client_name: &'a str,
    verified: bool,
    verified_domain: String,
    redirect_host: String,
    request: &'a str,
    csrf: String,
    error: Option<&'a str>,
    email: &'a str,
    orgs: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "consent.html")]
struct ConsentPage<'a> {
    client_name: &'a str,
    verified_domain: Option<String>,
    user_email: &'a str,
    org_name: &'a str,
    scopes: Vec<(String, String)>,
    redirect_uri: &'a str,
    loopback: bool,
    /// The scheme of an app's own redirect (`cursor`), shown as such.
    app_scheme: Option<String>,
    request: &'a str,
    csrf: String,
}

/// An HTML page with a CSP that allows our stylesheet and forms posting to us (and the
/// redirects that follow a form, which browsers check against `form-action`).
fn page(
    status: StatusCode,
    html: Result<String, askama::Error>,
    redirect_to: Option<&RedirectUri>,
) -> Response {
    let Ok(html) = html else {
        tracing::error!("template rendering failed");
        return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    };
    let form_action = match redirect_to
        .and_then(|r| Some((r.kind(), url::Url::parse(r.as_str()).ok()?)))
    {
        Some((RedirectKind::Loopback, u)) => format!(
            "'self' {}://{}:*",
            u.scheme(),
            u.host_str().unwrap_or("localhost")
        ),
        // A scheme source: the browser hands the redirect to the app.
        Some((RedirectKind::PrivateUse, u)) => format!("'self' {}:", u.scheme()),
        Some((RedirectKind::Https, u)) => format!("'self' {}", u.origin().ascii_serialization()),
        None => "'self'".into(),
    };
    let csp = format!(
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut res = (status, Html(html)).into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

fn redirect_to(target: String) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&target) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `redirect_uri` plus response parameters, keeping any query it already had.
pub(crate) fn client_redirect(uri: &RedirectUri, params: &[(&str, &str)]) -> String {
    match url::Url::parse(uri.as_str()) {
        Ok(mut u) => {
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in params {
                    q.append_pair(k, v);
                }
            }
            u.to_string()
        }
        Err(_) => uri.as_str().to_owned(),
    }
}

impl AuthorizeError {
    fn page(status: StatusCode, title: &'static str, message: impl Into<String>) -> Self {
        Self::Page {
            status,
            title,
            message: message.into(),
        }
    }

    fn into_response(self, issuer: &str) -> Response {
        match self {
            Self::Page {
                status,
                title,
                message,
            } => page(
                status,
                ErrorPage {
                    title,
                    message: &message,
                }
                .render(),
                None,
            ),
            Self::Redirect {
                redirect_uri,
                code,
                description,
                state,
            } => {
                let mut params = vec![
                    ("error", code.as_str()),
                    ("error_description", description.as_str()),
                ];
                if let Some(s) = &state {
                    params.push(("state", s));
                }
                params.push(("iss", issuer));
                redirect_to(client_redirect(&redirect_uri, &params))
            }
        }
    }
}

/// Checks an authorization request, in the order RFC 6749 §4.1.2.1 requires.
pub async fn validate(state: &AppState, raw: &str) -> Result<AuthorizeRequest, AuthorizeError> {
    let bad = |m: &str| {
        AuthorizeError::page(
            StatusCode::BAD_REQUEST,
            "This sign-in link is not valid",
            m.to_owned(),
        )
    };
    if raw.len() > 8192 {
        return Err(bad("The request is too long."));
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect();
    let one = |name: &str| -> Result<Option<String>, usize> {
        let mut found = pairs.iter().filter(|(k, _)| k == name);
        match (found.next(), found.next()) {
            (None, _) => Ok(None),
            (Some((_, v)), None) => Ok(Some(v.clone())),
            _ => Err(2),
        }
    };
    let client_id = one("client_id")
        .map_err(|_| bad("client_id appears more than once."))?
        .filter(|c| !c.is_empty())
        .ok_or_else(|| bad("The request names no client (client_id is missing)."))?;
    let client = find_client(state, &client_id)
        .await?
        .ok_or_else(|| bad("The application asking to connect is not registered here. It may need to register again."))?;
    let registered: Vec<RedirectUri> = client
        .redirect_uri_list()
        .iter()
        .filter_map(|u| RedirectUri::parse(u).ok())
        .collect();
    let redirect_uri =
        match one("redirect_uri").map_err(|_| bad("redirect_uri appears more than once."))? {
            Some(raw_uri) => {
                let uri = RedirectUri::parse(&raw_uri)
                    .map_err(|e| bad(&format!("The return address is not acceptable: {e}.")))?;
                if !registered.iter().any(|r| r.matches(&uri)) {
                    return Err(bad(
                        "The return address is not one this application registered.",
                    ));
                }
                uri
            }
            None => match registered.as_slice() {
                [only] if !only.is_loopback() => only.clone(),
                _ => return Err(bad("The request has no return address (redirect_uri).")),
            },
        };

    // From here on, errors go back to the client, if its redirect URI is vouched for (a
    // metadata document's domain, or the operator). A self-registered client's URI is
    // not: before the person has signed in and decided, its errors are our page, so that
    // a broken request cannot turn this server into an open redirector (RFC 9700 §4.11.2).
    let state_param = one("state").ok().flatten();
    let trusted = clients::is_verified(&client);
    let fail = |code: ErrorCode, d: &str| {
        if trusted {
            AuthorizeError::Redirect {
                redirect_uri: redirect_uri.clone(),
                code,
                description: d.to_owned(),
                state: state_param.clone(),
            }
        } else {
            bad(&format!("{d} ({}).", code.as_str()))
        }
    };
    for (k, _) in &pairs {
        if pairs.iter().filter(|(k2, _)| k2 == k).count() > 1 {
            return Err(fail(
                ErrorCode::InvalidRequest,
                &format!("parameter {k} appears more than once"),
            ));
        }
    }
    match one("response_type").ok().flatten().as_deref() {
        Some("code") => {}
        None => return Err(fail(ErrorCode::InvalidRequest, "response_type is required")),
        Some(_) => {
            return Err(fail(
                ErrorCode::UnsupportedResponseType,
                "only response_type=code is supported",
            ));
        }
    }
    let challenge = CodeChallenge::parse(
        one("code_challenge").ok().flatten().as_deref(),
        one("code_challenge_method").ok().flatten().as_deref(),
    )
    .map_err(|e| fail(ErrorCode::InvalidRequest, &e.to_string()))?;
    let resource = match one("resource").ok().flatten() {
        Some(r) => state
            .resource
            .resolve(&r, &state.config.server.public_url)
            .map_err(|e| fail(ErrorCode::InvalidTarget, &e.to_string()))?,
        None => state.resource.clone(),
    };
    let mut scopes = ScopeSet::parse(&one("scope").ok().flatten().unwrap_or_default())
        .map_err(|e| fail(ErrorCode::InvalidScope, &e.to_string()))?;
    // Unknown scopes (Claude has sent scope=claudeai) are dropped, not refused.
    scopes.retain(|s| {
        s.as_str() == "offline_access" || state.config.oauth.scopes.contains(s.as_str())
    });
    if !scopes.iter().any(|s| s.as_str() != "offline_access") {
        scopes = scopes.union(&state.config.oauth.default_scopes);
    }
    Ok(AuthorizeRequest {
        client,
        redirect_uri,
        state: state_param,
        challenge,
        scopes,
        resource,
        raw: raw.to_owned(),
    })
}

fn login_page(
    state: &AppState,
    req: &AuthorizeRequest,
    nonce: &str,
    error: Option<&str>,
    email: &str,
    orgs: Vec<(String, String)>,
    status: StatusCode,
) -> Response {
    let csrf = session::csrf_token(state, nonce, "login", &req.raw);
    let domain = verified_domain(&req.client).unwrap_or_default();
    page(
        status,
        LoginPage {
            client_name: &req.client.name,
            verified: clients::is_verified(&req.client),
            verified_domain: if domain.is_empty() {
                "registered by the operator".into()
            } else {
                domain
            },
            redirect_host: match req.redirect_uri.kind() {
                RedirectKind::Https => req.redirect_uri.host(),
                RedirectKind::Loopback => "an application on this computer (localhost)".into(),
                RedirectKind::PrivateUse => format!(
                    "an application on this device (its {}: link)",
                    req.redirect_uri.scheme()
                ),
            },
            request: &req.raw,
            csrf,
            error,
            email,
            orgs,
        }
        .render(),
        // A sign-in can end in a redirect to the client (consent already given), and
        // browsers check every redirect after a form post against form-action.
        Some(&req.redirect_uri),
    )
}

fn with_cookie(mut res: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(c) = cookie {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

/// The session, if it still names a member of an organization that may sign in.
async fn live_session(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(Session, String, String)>, StorageError> {
    let Some(s) = session::current_session(state, headers) else {
        return Ok(None);
    };
    let Some(m) = state.store.find_membership(&s.org_id, &s.user_id).await? else {
        return Ok(None);
    };
    if let Some(key) = &s.api_key_id {
        let live = state.store.find_api_key(key).await?;
        if live.is_none_or(|k| k.revoked_at.is_some()) {
            return Ok(None);
        }
    }
    let Some(org) = state.store.find_org(&s.org_id).await? else {
        return Ok(None);
    };
    if org.status == "suspended" {
        return Ok(None);
    }
    Ok(Some((s, m.email, org.name)))
}

fn consent_binding(req: &AuthorizeRequest, s: &Session) -> String {
    format!("{}\n{}\n{}", req.raw, s.user_id, s.org_id)
}

async fn issue_code(
    state: &AppState,
    req: &AuthorizeRequest,
    s: &Session,
) -> Result<Response, AuthorizeError> {
    let now = state.clock.now();
    let code = PlainToken::generate(TokenKind::Code);
    state
        .store
        .insert_code(&CodeRow {
            code_hash: code.hash().as_str().to_owned(),
            client_id: req.client.id.clone(),
            redirect_uri: req.redirect_uri.as_str().to_owned(),
            code_challenge: req.challenge.as_str().to_owned(),
            scopes: req.scopes.to_string(),
            resource: req.resource.as_str().to_owned(),
            user_id: s.user_id.clone(),
            org_id: s.org_id.clone(),
            family_id: random::id("fam"),
            created_at: now,
            expires_at: now + state.config.tokens.code_ttl_secs,
            used_at: None,
            api_key_id: s.api_key_id.clone(),
        })
        .await?;
    let mut params = vec![("code", code.expose())];
    if let Some(st) = &req.state {
        params.push(("state", st));
    }
    params.push(("iss", &state.config.server.public_url));
    Ok(redirect_to(client_redirect(&req.redirect_uri, &params)))
}

pub async fn get_authorize(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let issuer = state.config.server.public_url.clone();
    match authorize(&state, &headers, query.unwrap_or_default()).await {
        Ok(res) => res,
        Err(e) => e.into_response(&issuer),
    }
}

async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    raw: String,
) -> Result<Response, AuthorizeError> {
    let req = validate(state, &raw).await?;
    let (nonce, set_nonce) = session::csrf_nonce(state, headers);
    let Some((s, email, org_name)) = live_session(state, headers).await? else {
        return Ok(with_cookie(
            login_page(state, &req, &nonce, None, "", Vec::new(), StatusCode::OK),
            set_nonce,
        ));
    };
    if let Some(c) = state
        .store
        .find_consent(
            &s.user_id,
            &s.org_id,
            &req.client.id,
            req.redirect_uri.as_str(),
        )
        .await?
    {
        // A remembered consent answers silently only where nobody else can receive the
        // code: an https redirect. Any program on the person's machine can listen on a
        // loopback port or claim an app scheme and start this request itself, so those
        // always see the page (RFC 8252 §8.6), one click when signed in.
        let granted = ScopeSet::parse(&c.scopes).unwrap_or_default();
        if !req.redirect_uri.is_on_device() && req.scopes.is_subset(&granted) {
            return issue_code(state, &req, &s).await;
        }
    }
    let csrf = session::csrf_token(state, &nonce, "consent", &consent_binding(&req, &s));
    let scopes = req
        .scopes
        .iter()
        .map(|sc| {
            let words = state
                .config
                .oauth
                .scopes
                .describe(sc.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    "Stay connected without asking you again (refresh tokens)".into()
                });
            (sc.as_str().to_owned(), words)
        })
        .collect();
    let html = ConsentPage {
        client_name: &req.client.name,
        verified_domain: verified_domain(&req.client),
        user_email: &email,
        org_name: &org_name,
        scopes,
        redirect_uri: req.redirect_uri.as_str(),
        loopback: req.redirect_uri.is_loopback(),
        app_scheme: req
            .redirect_uri
            .is_private_use()
            .then(|| req.redirect_uri.scheme()),
        request: &req.raw,
        csrf,
    }
    .render();
    Ok(with_cookie(
        page(StatusCode::OK, html, Some(&req.redirect_uri)),
        set_nonce,
    ))
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    request: String,
    csrf: String,
    #[serde(default)]
    api_key: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    org: String,
}

fn expired_form() -> AuthorizeError {
    AuthorizeError::page(
        StatusCode::BAD_REQUEST,
        "This form has expired",
        "Go back to the application and start connecting again.",
    )
}

/// A form whose CSRF token is not this browser's, or that another site sent.
fn forged_form() -> AuthorizeError {
    AuthorizeError::page(
        StatusCode::FORBIDDEN,
        "This form has expired",
        "Go back to the application and start connecting again.",
    )
}

/// Whether the browser says another site sent the form: `Sec-Fetch-Site` other than
/// same-origin (or none, a typed URL), or an `Origin` that is not ours. `Origin: null`
/// is what our own pages send under `Referrer-Policy: no-referrer`; the CSRF token
/// decides those.
fn cross_site(state: &AppState, headers: &HeaderMap) -> bool {
    let fetch_site = headers
        .get("sec-fetch-site")
        .map(|v| v.to_str().unwrap_or_default());
    if fetch_site.is_some_and(|v| !matches!(v, "same-origin" | "none")) {
        return true;
    }
    match headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or_default())
    {
        None | Some("null") => false,
        Some(origin) => url::Url::parse(&state.config.server.public_url)
            .map_or(true, |u| u.origin().ascii_serialization() != origin),
    }
}

pub async fn post_login(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let issuer = state.config.server.public_url.clone();
    match login(&state, &headers, addr, form).await {
        Ok(res) => res,
        Err(e) => e.into_response(&issuer),
    }
}

/// "Try again in …" for a person.
fn wait_words(secs: u64) -> String {
    match secs {
        0..=1 => "a second".into(),
        2..=119 => format!("{secs} seconds"),
        _ => format!("{} minutes", secs.div_ceil(60)),
    }
}

async fn login(
    state: &AppState,
    headers: &HeaderMap,
    addr: IpAddr,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, AuthorizeError> {
    let source = Some(addr.to_string());
    if cross_site(state, headers) {
        return Err(forged_form());
    }
    let Ok(Form(form)) = form else {
        return Err(expired_form());
    };
    let req = validate(state, &form.request).await?;
    if !session::csrf_ok(state, headers, "login", &req.raw, &form.csrf) {
        return Err(forged_form());
    }
    let (nonce, _) = session::csrf_nonce(state, headers);
    let now = state.clock.now();
    let failed = |email: &str, why: &str| {
        tracing::info!(reason = why, "sign-in failed");
        AuditEntry::new(now, "anonymous", "auth.sign_in_failed")
            .source(source.clone())
            .detail(serde_json::json!({ "method": if email.is_empty() { "api_key" } else { "password" }, "reason": why }))
    };
    let wrong = "That did not work. Check the key, or the email and password, and try again.";

    // Failed attempts count per address and per account (hashed: the email field may
    // hold a mistyped password). Checked before any credential, so a locked account
    // cannot be probed; counted only on failure.
    let limits = &state.config.limits;
    let by_address = Bucket::address("sign_in", addr);
    let by_account = (form.api_key.trim().is_empty() && !form.email.trim().is_empty())
        .then(|| Bucket::account("sign_in", &form.email));
    let mut over = limits::check(&state.store, &by_address, limits.sign_in_per_address, now)
        .await?
        .err();
    if over.is_none()
        && let (Some(bucket), Some(rate)) = (&by_account, limits.sign_in_per_account)
    {
        over = limits::counts(&state.store, bucket, rate, now)
            .await?
            .check_progressive(now, rate)
            .err();
    }
    if let Some(e) = over {
        tracing::info!(client.address = %addr, retry_after = e.retry_after_secs, "sign-in throttled");
        let message = format!(
            "Too many failed attempts. Try again in {}.",
            wait_words(e.retry_after_secs)
        );
        let mut res = login_page(
            state,
            &req,
            &nonce,
            Some(&message),
            &form.email,
            Vec::new(),
            StatusCode::TOO_MANY_REQUESTS,
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(e.retry_after_secs));
        return Ok(res);
    }
    let count_failure = || async {
        limits::count(&state.store, &by_address, limits.sign_in_per_address, now).await?;
        if let Some(bucket) = &by_account {
            limits::count(&state.store, bucket, limits.sign_in_per_account, now).await?;
        }
        Ok::<_, crate::storage::StorageError>(())
    };

    let session = if !form.api_key.trim().is_empty() {
        let found = match PlainToken::parse(TokenKind::ApiKey, form.api_key.trim()) {
            Ok(key) => state.store.find_api_key_by_hash(&key.hash()).await?,
            Err(_) => None,
        };
        match found {
            Some(k) => Session {
                user_id: k.user_id,
                org_id: k.org_id,
                api_key_id: Some(k.id),
            },
            None => {
                count_failure().await?;
                state.store.append_audit(&failed("", "bad_api_key")).await?;
                return Ok(login_page(
                    state,
                    &req,
                    &nonce,
                    Some(wrong),
                    "",
                    Vec::new(),
                    StatusCode::UNAUTHORIZED,
                ));
            }
        }
    } else {
        let user = match Email::parse(&form.email) {
            Ok(e) => state.store.find_user_by_email(&e).await?,
            Err(_) => None,
        };
        let hash = user.as_ref().and_then(|u| u.password_hash.clone());
        // Always verify (against a dummy hash for unknown users) so timing reveals nothing.
        let ok = verify_password(hash, form.password.clone()).await;
        let Some(user) = user.filter(|_| ok) else {
            count_failure().await?;
            state
                .store
                .append_audit(&failed(&form.email, "bad_password"))
                .await?;
            return Ok(login_page(
                state,
                &req,
                &nonce,
                Some(wrong),
                &form.email,
                Vec::new(),
                StatusCode::UNAUTHORIZED,
            ));
        };
        if user.disabled_at.is_some() {
            state
                .store
                .append_audit(&failed(&form.email, "user_disabled"))
                .await?;
            return Ok(login_page(
                state,
                &req,
                &nonce,
                Some("This account is disabled. Ask an administrator of your organization."),
                &form.email,
                Vec::new(),
                StatusCode::FORBIDDEN,
            ));
        }
        let memberships = state.store.list_memberships_of_user(&user.id).await?;
        let chosen = match memberships.as_slice() {
            [] => None,
            [only] => Some(only.clone()),
            many => many.iter().find(|m| m.org_slug == form.org).cloned(),
        };
        let Some(m) = chosen else {
            if memberships.is_empty() {
                state
                    .store
                    .append_audit(&failed(&form.email, "no_organization"))
                    .await?;
                return Ok(login_page(
                    state,
                    &req,
                    &nonce,
                    Some("Your account does not belong to any organization yet."),
                    &form.email,
                    Vec::new(),
                    StatusCode::FORBIDDEN,
                ));
            }
            let orgs = memberships
                .iter()
                .map(|m| (m.org_slug.clone(), m.org_slug.clone()))
                .collect();
            return Ok(login_page(
                state,
                &req,
                &nonce,
                Some("Choose the organization to connect, and enter your password again."),
                &form.email,
                orgs,
                StatusCode::OK,
            ));
        };
        Session {
            user_id: m.user_id,
            org_id: m.org_id,
            api_key_id: None,
        }
    };
    let org = state.store.find_org(&session.org_id).await?;
    if org.as_ref().is_none_or(|o| o.status == "suspended") {
        state
            .store
            .append_audit(&failed(&form.email, "organization_suspended").org(&session.org_id))
            .await?;
        return Ok(login_page(
            state,
            &req,
            &nonce,
            Some("This organization is suspended."),
            &form.email,
            Vec::new(),
            StatusCode::FORBIDDEN,
        ));
    }
    state
        .store
        .append_audit(
            &AuditEntry::new(now, format!("user:{}", session.user_id), "auth.sign_in")
                .org(&session.org_id)
                .source(source)
                .detail(serde_json::json!({ "client_id": req.client.id })),
        )
        .await?;
    let res = redirect_to(format!("/authorize?{}", req.raw));
    let res = with_cookie(res, session::session_cookie(state, &session));
    Ok(with_cookie(res, session::new_csrf_nonce(state).1))
}

#[derive(Debug, Deserialize)]
pub struct ConsentForm {
    request: String,
    csrf: String,
    decision: String,
}

pub async fn post_authorize(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    form: Result<Form<ConsentForm>, FormRejection>,
) -> Response {
    let issuer = state.config.server.public_url.clone();
    match decide(&state, &headers, Some(addr.to_string()), form).await {
        Ok(res) => res,
        Err(e) => e.into_response(&issuer),
    }
}

async fn decide(
    state: &AppState,
    headers: &HeaderMap,
    source: Option<String>,
    form: Result<Form<ConsentForm>, FormRejection>,
) -> Result<Response, AuthorizeError> {
    if cross_site(state, headers) {
        return Err(forged_form());
    }
    let Ok(Form(form)) = form else {
        return Err(expired_form());
    };
    let req = validate(state, &form.request).await?;
    let Some((s, _, _)) = live_session(state, headers).await? else {
        let (nonce, set) = session::csrf_nonce(state, headers);
        return Ok(with_cookie(
            login_page(
                state,
                &req,
                &nonce,
                Some("Please sign in again."),
                "",
                Vec::new(),
                StatusCode::UNAUTHORIZED,
            ),
            set,
        ));
    };
    if !session::csrf_ok(
        state,
        headers,
        "consent",
        &consent_binding(&req, &s),
        &form.csrf,
    ) {
        return Err(forged_form());
    }
    let now = state.clock.now();
    let audit = |action: &str| {
        AuditEntry::new(now, format!("user:{}", s.user_id), action)
            .org(&s.org_id)
            .target(format!("client:{}", req.client.id))
            .source(source.clone())
            .detail(serde_json::json!({ "scopes": req.scopes.to_string(), "redirect_uri": req.redirect_uri.as_str() }))
    };
    match form.decision.as_str() {
        "approve" => {
            state
                .store
                .save_consent(
                    &ConsentRow {
                        user_id: s.user_id.clone(),
                        org_id: s.org_id.clone(),
                        client_id: req.client.id.clone(),
                        redirect_uri: req.redirect_uri.as_str().to_owned(),
                        scopes: req.scopes.to_string(),
                        created_at: now,
                    },
                    audit("oauth.consent_granted"),
                )
                .await?;
            issue_code(state, &req, &s).await
        }
        _ => {
            state
                .store
                .append_audit(&audit("oauth.consent_denied"))
                .await?;
            Err(AuthorizeError::Redirect {
                redirect_uri: req.redirect_uri,
                code: ErrorCode::AccessDenied,
                description: "the user denied access".into(),
                state: req.state,
            })
        }
    }
}
