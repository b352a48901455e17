//! Who may call the admin API, and the audit line of every admin action.
//!
//! One bearer token (`http.admin_token_file` or `WALCACHED_HTTP_ADMIN_TOKEN`). Mutating
//! endpoints need it and are disabled without one; `GET /api/v1/status` needs it once one is
//! configured. Tokens are compared as SHA-256 digests in constant time (the digest also hides
//! the length). Callers are named in logs by the token's fingerprint — the first 12 hex
//! digits of a SHA-256 over a fixed label and the token, which does not reveal it — never by
//! the token.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::problem::{kind, Problem};
use super::AppState;
use crate::config::Secret;

/// The target of audit lines.
pub const AUDIT_TARGET: &str = "walcached::audit";

/// The admin token, kept only as digests.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
    fingerprint: String,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl AdminToken {
    /// From the configured secret.
    pub fn new(token: &Secret) -> Self {
        AdminToken {
            digest: Sha256::digest(token.expose().as_bytes()).into(),
            fingerprint: fingerprint(token.expose()),
        }
    }

    /// How logs and jobs name callers holding this token: `token:` and 12 hex digits.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether `presented` is the token (constant time).
    pub fn verify(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// `token:` and the first 12 hex digits of SHA-256("walcached admin token\0" ‖ token).
pub fn fingerprint(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"walcached admin token\0");
    h.update(token.as_bytes());
    let digest = h.finalize();
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("token:{hex}")
}

/// Who is calling: the token's fingerprint (or `anonymous`) and the peer's address.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's fingerprint, or `anonymous` (status without a configured token).
    pub who: String,
    /// The peer's address (`unknown` when the server was not given it).
    pub remote: String,
}

/// A caller allowed to change things: a token is configured and was presented.
#[derive(Debug, Clone)]
pub struct Operator(pub Caller);

/// A caller allowed to read the status: anyone without a configured token, else its holder.
#[derive(Debug, Clone)]
pub struct Reader(pub Caller);

fn remote(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string())
}

fn action(parts: &Parts) -> String {
    format!("{} {}", parts.method, parts.uri.path())
}

/// Check the bearer token; on refusal, write the audit line and return the problem.
fn authorize(
    parts: &Parts,
    token: Option<&AdminToken>,
    mutating: bool,
) -> Result<Caller, Box<Problem>> {
    let remote = remote(parts);
    let Some(token) = token else {
        if !mutating {
            return Ok(Caller {
                who: "anonymous".to_owned(),
                remote,
            });
        }
        audit_refusal("anonymous", &remote, &action(parts), "disabled");
        return Err(Box::new(
            Problem::of_kind(
                StatusCode::FORBIDDEN,
                kind::ADMIN_DISABLED,
                "Admin endpoints disabled",
                "no admin token is configured, so the endpoints that change things are disabled: \
             set http.admin_token_file (or WALCACHED_HTTP_ADMIN_TOKEN) and restart",
            )
            .config_field("http.admin_token_file"),
        ));
    };
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let (outcome, detail) = match presented {
        Some(p) if token.verify(p) => {
            return Ok(Caller {
                who: token.fingerprint().to_owned(),
                remote,
            })
        }
        Some(_) => (
            "wrong_token",
            "the bearer token is not the configured admin token",
        ),
        None => (
            "no_token",
            "send the admin token as `Authorization: Bearer <token>` (http.admin_token_file)",
        ),
    };
    // A wrong token is not named by its fingerprint: that would log a digest of whatever
    // was sent, secrets typed into the wrong place among them.
    audit_refusal("anonymous", &remote, &action(parts), outcome);
    Err(Box::new(
        Problem::of_kind(
            StatusCode::UNAUTHORIZED,
            kind::UNAUTHORIZED,
            "Unauthorized",
            detail,
        )
        .config_field("http.admin_token_file")
        .header(header::WWW_AUTHENTICATE, "Bearer realm=\"walcached\""),
    ))
}

fn audit_refusal(who: &str, remote: &str, action: &str, result: &str) {
    tracing::warn!(target: AUDIT_TARGET, who, remote, action = ?action, result, "admin request refused");
}

/// Log the audit line of an admin action: who, from where, what, and the result.
pub fn audit(caller: &Caller, action: &str, result: &str, detail: &str) {
    tracing::info!(
        target: AUDIT_TARGET,
        who = %caller.who,
        remote = %caller.remote,
        action,
        result,
        detail,
        "admin action"
    );
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let token = state.admin.as_ref().and_then(|a| a.token.as_ref());
        authorize(parts, token, true)
            .map(Operator)
            .map_err(|p| p.into_response())
    }
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let token = state.admin.as_ref().and_then(|a| a.token.as_ref());
        authorize(parts, token, false)
            .map(Reader)
            .map_err(|p| p.into_response())
    }
}

/// Whether `listen` is a loopback address (`127.0.0.0/8`, `::1`, `localhost`).
pub fn is_loopback(listen: &str) -> bool {
    let host = listen
        .rsplit_once(':')
        .map_or(listen, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_fingerprints_do_not_reveal_them() {
        let t = AdminToken::new(&Secret::new("0123456789abcdef-secret"));
        assert!(t.verify("0123456789abcdef-secret"));
        assert!(!t.verify("0123456789abcdef-secreT"));
        assert!(!t.verify(""));
        assert!(t.fingerprint().starts_with("token:"));
        assert_eq!(t.fingerprint().len(), "token:".len() + 12);
        assert!(!t.fingerprint().contains("secret"));
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn loopback_addresses() {
        for l in [
            "127.0.0.1:9187",
            "[::1]:9187",
            "localhost:9187",
            "127.1.2.3:1",
        ] {
            assert!(is_loopback(l), "{l}");
        }
        for l in [
            "0.0.0.0:9187",
            "[::]:9187",
            "10.0.0.5:9187",
            "example.com:80",
        ] {
            assert!(!is_loopback(l), "{l}");
        }
    }
}
