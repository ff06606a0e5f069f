//! The identity token each upstream call carries instead of the caller's token: a JWT
//! signed with Gatehouse's own keys (the ones `/jwks` publishes), for one upstream
//! (`aud`), one tool and one set of arguments (`args_sha256`), valid for at most a
//! minute. An upstream that checks it knows who is calling and that Gatehouse sent
//! this very call; a leaked one opens nothing else, not even the same tool with other
//! arguments, and Gatehouse's own endpoints refuse it (another `typ` and audience).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::crypto::keys::KeySet;

/// The JOSE `typ` of identity tokens.
pub const TYP: &str = "gatehouse-identity+jwt";
/// Where stdio upstreams find the token: `params._meta` of the `tools/call` request.
pub const META_KEY: &str = "dev.gatehouse/identity";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdentityClaims {
    pub iss: String,
    /// The upstream (its `audience` setting).
    pub aud: String,
    /// The user.
    pub sub: String,
    /// Their organization (empty for anonymous callers).
    pub org: String,
    /// Their role in it (`owner`, `admin`, `member`), if any.
    pub roles: Vec<String>,
    /// The scopes granted to the caller's token, space-separated.
    pub scope: String,
    /// The MCP client, for OAuth access tokens; absent for personal access tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `oauth_access_token`, `personal_access_token` or `anonymous`.
    pub credential: String,
    /// The request it is for: `tools/call`, `prompts/get` or `resources/read`; empty
    /// for the gateway's own requests (listing, negotiation).
    #[serde(default)]
    pub method: String,
    /// The tool's name at the upstream (for `prompts/get` the prompt's name, for
    /// `resources/read` the resource's URI).
    pub tool: String,
    /// base64url(SHA-256(RFC 8785 canonical JSON of the call's arguments)).
    pub args_sha256: String,
    /// REST (OpenAPI) upstreams only, which see the request rather than the arguments:
    /// its method, its whole URL (query included, unlike DPoP's `htu`), and
    /// base64url(SHA-256(its body bytes)) (of nothing when it has no body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
}

pub fn sign(keys: &KeySet, claims: &IdentityClaims) -> Result<String, serde_json::Error> {
    keys.signing().sign_jwt(TYP, claims)
}

/// The `args_sha256` of `arguments`.
pub fn args_digest(arguments: &Value) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical_json(arguments).as_bytes()))
}

/// RFC 8785 (JCS): object members sorted by their UTF-16 code units, no whitespace,
/// numbers as ECMAScript prints doubles, strings with the minimal JSON escapes. Any
/// language's JCS library gives the same text, so an upstream can check the digest.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&js_number(n.as_f64().unwrap_or(0.0))),
        // serde_json escapes exactly as JCS asks: `"`, `\` and control characters only.
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
    }
}

/// ECMAScript's Number::toString for a finite double (ECMA-262 §6.1.6.1.20), from
/// Rust's shortest round-trip digits.
fn js_number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return "0".into();
    }
    let sign = if x < 0.0 { "-" } else { "" };
    // `{:e}` gives the shortest digits that read back as `x`: "d.ddde±n".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i32;
    let n = exp.parse::<i32>().unwrap_or(0) + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let e = if e >= 0 {
            format!("+{e}")
        } else {
            e.to_string()
        };
        if k == 1 {
            format!("{digits}e{e}")
        } else {
            format!("{}.{}e{e}", &digits[..1], &digits[1..])
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_print_as_ecmascript_does() {
        let cases = [
            (0.0, "0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (100.0, "100"),
            (123456789.0, "123456789"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (1.2345e-7, "1.2345e-7"),
            (333333333.3333333, "333333333.3333333"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (9007199254740992.0, "9007199254740992"),
            (0.1, "0.1"),
        ];
        for (x, want) in cases {
            assert_eq!(js_number(x), want, "{x}");
        }
    }

    #[test]
    fn canonical_json_sorts_by_utf16_and_drops_whitespace() {
        // "\u{1f600}" sorts before "\u{fb33}" by UTF-16 code units (0xD83D < 0xFB33),
        // although not by code points (RFC 8785 §3.2.3).
        let v =
            json!({ "b": [1, 2.50, "x\n"], "a": { "z": null, "\u{fb33}": 1, "\u{1f600}": true } });
        assert_eq!(
            canonical_json(&v),
            "{\"a\":{\"z\":null,\"\u{1f600}\":true,\"\u{fb33}\":1},\"b\":[1,2.5,\"x\\n\"]}"
        );
        assert_eq!(args_digest(&json!({})), args_digest(&json!({})));
        assert_ne!(args_digest(&json!({"a": 1})), args_digest(&json!({"a": 2})));
    }
}
