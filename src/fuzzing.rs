//! Entry points for the fuzz targets under `fuzz/` (cargo feature `fuzzing`). Each is a
//! thin wrapper over a parser that a request meets before any database or network call,
//! so the targets drive the server's own code. Not an API: nothing else may use this.

pub use axum::http::HeaderMap;
use axum::http::{HeaderName, HeaderValue};

/// Headers from `(name, value)` pairs. Pairs that are not valid header syntax are
/// skipped: hyper refuses them before any handler runs.
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// `POST /mcp` before dispatch: the envelope, the era, the 2026-07-28 header checks,
/// list cursors and tool-argument validation.
pub mod mcp {
    use axum::http::HeaderMap;
    use serde_json::{Map, Value};

    pub use crate::mcp::rpc::Era;
    use crate::mcp::server::{self, Message};
    pub use crate::mcp::tools::Registry;

    /// What the envelope check made of one JSON-RPC message.
    pub enum Envelope {
        Request {
            id: Value,
            method: String,
            params: Map<String, Value>,
        },
        Notification,
        ClientResponse,
    }

    /// A refused message: the id echoed back, the JSON-RPC code and the HTTP status.
    pub struct Refusal {
        pub id: Value,
        pub code: i64,
        pub status: u16,
    }

    pub fn parse_envelope(obj: &Map<String, Value>) -> Result<Envelope, Refusal> {
        match server::parse_envelope(obj.clone()) {
            Ok(Message::Request { id, method, params }) => {
                Ok(Envelope::Request { id, method, params })
            }
            Ok(Message::Notification) => Ok(Envelope::Notification),
            Ok(Message::ClientResponse) => Ok(Envelope::ClientResponse),
            Err((id, e)) => Err(Refusal {
                id,
                code: e.code,
                status: e.status.as_u16(),
            }),
        }
    }

    pub fn classify(
        method: &str,
        params: &Map<String, Value>,
        header_version: Option<&str>,
    ) -> Era {
        server::classify(method, params, header_version)
    }

    /// The JSON-RPC code of a refusal.
    pub fn check_modern(
        headers: &HeaderMap,
        header_version: Option<&str>,
        method: &str,
        params: &Map<String, Value>,
    ) -> Result<Era, i64> {
        server::check_modern(headers, header_version, method, params).map_err(|e| e.code)
    }

    pub fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
        server::header_text(headers, name)
    }

    /// The JSON-RPC code of a refusal.
    pub fn cursor_start(cursor: Option<&Value>, len: usize) -> Result<usize, i64> {
        crate::mcp::dispatch::cursor_start(cursor, len).map_err(|e| e.code)
    }

    pub fn next_cursor(offset: usize) -> String {
        crate::mcp::dispatch::next_cursor(offset)
    }

    /// The schema errors of `args` for a registered tool, `None` for an unknown tool.
    pub fn argument_errors(registry: &Registry, tool: &str, args: &Value) -> Option<Vec<String>> {
        registry.find_tool(tool).map(|t| t.argument_errors(args))
    }
}

/// The authorization server's request parsers: forms, Basic credentials, the token
/// request, registration metadata, and the redirect back to a client.
pub mod oauth {
    use axum::http::HeaderMap;

    use crate::domain::RedirectUri;
    pub use crate::oauth::OAuthError;
    pub use crate::oauth::client_auth::ClientCredentials;
    pub use crate::oauth::form::Params;
    use crate::oauth::token::TokenRequest;

    pub fn client_credentials(
        headers: &HeaderMap,
        form_id: Option<&str>,
        form_secret: Option<&str>,
    ) -> Result<ClientCredentials, OAuthError> {
        crate::oauth::client_auth::client_credentials(headers, form_id, form_secret)
    }

    /// A `/token` request by grant type (the verifier is parsed, then left out).
    pub enum TokenGrant {
        AuthorizationCode {
            code: String,
            redirect_uri: Option<String>,
        },
        RefreshToken {
            refresh_token: String,
            scope: Option<String>,
        },
    }

    pub fn token_request(params: &Params) -> Result<TokenGrant, OAuthError> {
        crate::oauth::token::parse_request(params).map(|r| match r {
            TokenRequest::AuthorizationCode {
                code, redirect_uri, ..
            } => TokenGrant::AuthorizationCode { code, redirect_uri },
            TokenRequest::RefreshToken {
                refresh_token,
                scope,
            } => TokenGrant::RefreshToken {
                refresh_token,
                scope,
            },
        })
    }

    /// Checked `/register` metadata.
    pub struct Registration {
        pub name: String,
        pub redirect_uris: Vec<RedirectUri>,
        pub auth_method: &'static str,
        pub grant_types: Vec<String>,
    }

    /// A `/register` body as the JSON extractor reads it, then checked; `Err(None)` when
    /// it is not registration JSON at all (the extractor's rejection).
    pub fn register(body: &[u8]) -> Result<Registration, Option<OAuthError>> {
        let req = serde_json::from_slice(body).map_err(|_| None)?;
        let r = crate::oauth::register::parse(req).map_err(Some)?;
        Ok(Registration {
            name: r.name,
            redirect_uris: r.redirect_uris,
            auth_method: r.auth_method,
            grant_types: r.grant_types,
        })
    }

    /// Where `/authorize` sends the browser back: `uri` plus response parameters.
    pub fn client_redirect(uri: &RedirectUri, params: &[(&str, &str)]) -> String {
        crate::oauth::authorize::client_redirect(uri, params)
    }
}
