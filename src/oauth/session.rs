//! The browser side of sign-in: a CSRF cookie and a signed session cookie.
//! Both are MACed with a secret shared by every instance, so any instance can check them.

use axum::http::{HeaderMap, HeaderValue, header};

use crate::crypto::random;
use crate::state::AppState;

pub const CSRF_COOKIE: &str = "gh_csrf";
pub const SESSION_COOKIE: &str = "gh_session";
/// How long a sign-in lasts in the browser.
const SESSION_SECS: i64 = 8 * 3600;

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn cookie_header(state: &AppState, name: &str, value: &str, max_age: i64) -> Option<HeaderValue> {
    let secure = if state.config.server.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .ok()
}

/// The browser's CSRF nonce, and a `Set-Cookie` if it had none.
pub fn csrf_nonce(state: &AppState, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    match cookie(headers, CSRF_COOKIE)
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        Some(v) => (v, None),
        None => {
            let (v, set) = new_csrf_nonce(state);
            (v, set)
        }
    }
}

/// A new CSRF nonce and its `Set-Cookie`. Sign-in replaces the nonce the browser had,
/// so nothing set before sign-in (possibly by someone else) outlives it.
pub fn new_csrf_nonce(state: &AppState) -> (String, Option<HeaderValue>) {
    let v = random::base62(32);
    let set = cookie_header(state, CSRF_COOKIE, &v, SESSION_SECS);
    (v, set)
}

/// A CSRF token bound to the browser's nonce and to what the form is about.
pub fn csrf_token(state: &AppState, nonce: &str, purpose: &str, bound: &str) -> String {
    state.mac.sign(purpose, &[nonce, bound])
}

pub fn csrf_ok(
    state: &AppState,
    headers: &HeaderMap,
    purpose: &str,
    bound: &str,
    token: &str,
) -> bool {
    match cookie(headers, CSRF_COOKIE) {
        Some(nonce) => state.mac.verify(purpose, &[&nonce, bound], token),
        None => false,
    }
}

/// Who is signed in, in which organization.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub org_id: String,
    /// The API key the user signed in with (`None`: a password). The session lasts only
    /// as long as the key, and the grants made in it are revoked with it.
    pub api_key_id: Option<String>,
}

pub fn session_cookie(state: &AppState, s: &Session) -> Option<HeaderValue> {
    let exp = state.clock.now() + SESSION_SECS;
    let via = s.api_key_id.as_deref().unwrap_or("-");
    let body = format!("{}.{}.{exp}.{via}", s.user_id, s.org_id);
    let tag = state.mac.sign("session", &[&body]);
    cookie_header(
        state,
        SESSION_COOKIE,
        &format!("{body}.{tag}"),
        SESSION_SECS,
    )
}

pub fn current_session(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let raw = cookie(headers, SESSION_COOKIE)?;
    let (body, tag) = raw.rsplit_once('.')?;
    if !state.mac.verify("session", &[body], tag) {
        return None;
    }
    let mut parts = body.split('.');
    let (user_id, org_id, exp) = (parts.next()?, parts.next()?, parts.next()?);
    if exp.parse::<i64>().ok()? <= state.clock.now() {
        return None;
    }
    let api_key_id = match parts.next() {
        None | Some("-") => None,
        Some(id) => Some(id.to_owned()),
    };
    Some(Session {
        user_id: user_id.to_owned(),
        org_id: org_id.to_owned(),
        api_key_id,
    })
}
