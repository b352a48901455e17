//! The OpenAPI 3.1 document of the HTTP endpoint, generated from the handlers and types
//! (utoipa), served at `GET /api/v1/openapi.json` and checked in at
//! `crates/walcached/openapi.json`: a change to the API is a visible diff, and a test fails
//! until the file is regenerated (`walcached openapi > crates/walcached/openapi.json`, or
//! `WALCACHED_BLESS=1 cargo test -p walcached --lib openapi`).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "walcached",
        version = "1.0.0",
        description = "The walcache daemon's operator endpoint: metrics, health, and the admin \
            API (`/api/v1/`). Errors are problem details (RFC 9457, `application/problem+json`). \
            Mutating endpoints need the admin token as a bearer token and are disabled without \
            one; `status` and job reads need it once one is configured. Retiring a route \
            follows RFC 9745 (`Deprecation`) and RFC 8594 (`Sunset`): see docs/admin-api.md."
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "admin", description = "The admin API, version 1"),
        (name = "operations", description = "Metrics and health, for Prometheus and orchestrators"),
    )
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi
            .components
            .get_or_insert_with(utoipa::openapi::Components::new);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token (http.admin_token_file or WALCACHED_HTTP_ADMIN_TOKEN)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document's parts that are not routes.
pub(super) fn base() -> Document {
    ApiDoc::openapi()
}

/// The whole document: its title, description and security scheme, and every route.
pub fn openapi() -> Document {
    super::routes().split_for_parts().1
}

/// The document as served and checked in: pretty JSON, ending with a newline.
pub fn openapi_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut s = openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serialises");
        s.push('\n');
        s
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "admin",
    responses((status = 200, description = "The OpenAPI 3.1 document of this endpoint", content_type = "application/json"))
)]
pub(super) async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in document is the generated one. To regenerate after changing the API:
    /// `WALCACHED_BLESS=1 cargo test -p walcached --lib openapi` (or
    /// `walcached openapi > crates/walcached/openapi.json`), and review the diff.
    #[test]
    fn openapi_document_matches_the_checked_in_file() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let generated = openapi_json();
        if std::env::var_os("WALCACHED_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(path, generated).expect("write openapi.json");
            return;
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "crates/walcached/openapi.json differs from the API the code serves: regenerate it \
             with `WALCACHED_BLESS=1 cargo test -p walcached --lib openapi` (or `walcached \
             openapi > crates/walcached/openapi.json`) and review the diff"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_admin_route() {
        let doc: serde_json::Value = serde_json::from_str(openapi_json()).expect("JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/api/v1/status",
            "/api/v1/refresh",
            "/api/v1/refresh/{id}",
            "/api/v1/namespaces/{ns}/flush",
            "/api/v1/openapi.json",
            "/metrics",
            "/healthz",
            "/readyz",
        ] {
            assert!(paths.contains_key(p), "{p}");
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }
}
