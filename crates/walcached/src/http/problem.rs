//! Errors of the admin API as problem details (RFC 9457, `application/problem+json`).

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of a problem.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem (RFC 9457): what went wrong, for people (`title`, `detail`) and programs
/// (`type`, `status`, the extension members).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank`: the status says it all).
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What happened in this case, and how to fix it.
    pub detail: String,
    /// The configuration field involved, if any (e.g. `http.admin_token_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_field: Option<String>,
    /// The refresh job involved, if any (409: the one running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Seconds to wait before asking again (also in `Retry-After`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    #[serde(skip)]
    #[schema(ignore)]
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// Kinds of problem with a URI of their own, so programs need not parse `detail`.
pub(crate) mod kind {
    /// No route at this path or method.
    pub(crate) const NO_ROUTE: &str = "urn:walcached:problem:no-route";
    /// No admin token configured: mutating endpoints are disabled.
    pub(crate) const ADMIN_DISABLED: &str = "urn:walcached:problem:admin-disabled";
    /// The bearer token is missing or wrong.
    pub(crate) const UNAUTHORIZED: &str = "urn:walcached:problem:unauthorized";
    /// A refresh cycle is already queued or running.
    pub(crate) const REFRESH_RUNNING: &str = "urn:walcached:problem:refresh-running";
    /// Too many manual refresh cycles.
    pub(crate) const RATE_LIMITED: &str = "urn:walcached:problem:rate-limited";
    /// An idempotency key reused with another body.
    pub(crate) const KEY_REUSED: &str = "urn:walcached:problem:idempotency-key-reused";
}

impl Problem {
    /// A problem of kind `about:blank` with `status`'s reason phrase as its title.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            config_field: None,
            job: None,
            retry_after_secs: None,
            headers: Vec::new(),
        }
    }

    /// A problem of its own kind, with its own title.
    pub(crate) fn of_kind(
        status: StatusCode,
        kind: &str,
        title: &str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            kind: kind.to_owned(),
            title: title.to_owned(),
            ..Problem::new(status, detail)
        }
    }

    pub(crate) fn config_field(mut self, field: &str) -> Self {
        self.config_field = Some(field.to_owned());
        self
    }

    pub(crate) fn job(mut self, id: &str) -> Self {
        self.job = Some(id.to_owned());
        self
    }

    pub(crate) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self.header(header::RETRY_AFTER, &secs.to_string())
    }

    pub(crate) fn header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    /// The status as a [`StatusCode`].
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], body).into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}

/// `body` as `application/json` with `status`.
pub(crate) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {e}"),
        )
        .into_response(),
    }
}
