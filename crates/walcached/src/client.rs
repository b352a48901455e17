//! A small client of a running daemon's admin API, for `walcached status` and `walcached
//! refresh` (HTTP/1.1 over TCP with hyper, one connection per request).

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::config::Secret;

/// Connecting and each whole exchange.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens there (connection refused, or the address does not resolve): no
    /// daemon is running with this configuration.
    #[error("no daemon answers at {address}: {source}")]
    Unreachable {
        /// The address tried.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection or the exchange failed, or took longer than 10 s.
    #[error("the request to {address} failed: {reason}")]
    Failed {
        /// The address tried.
        address: String,
        /// What went wrong.
        reason: String,
    },
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl Response {
    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A header's value, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The admin API of the daemon listening at `address` (`host:port`).
#[derive(Debug, Clone)]
pub struct Client {
    address: String,
    token: Option<Secret>,
}

impl Client {
    /// Talk to `address`, presenting `token` (if any) as the bearer token.
    pub fn new(address: impl Into<String>, token: Option<Secret>) -> Self {
        Client {
            address: address.into(),
            token,
        }
    }

    /// The address to reach a daemon listening on `listen`: an unspecified address (`0.0.0.0`,
    /// `[::]`) is reached on loopback.
    pub fn address_for(listen: &str) -> String {
        if let Some(port) = listen.strip_prefix("0.0.0.0:") {
            format!("127.0.0.1:{port}")
        } else if let Some(port) = listen.strip_prefix("[::]:") {
            format!("[::1]:{port}")
        } else {
            listen.to_owned()
        }
    }

    /// `GET path`.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub async fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    /// Send one request with `headers` (besides `Host`, `Authorization` and, with a body,
    /// `Content-Type: application/json`) and `body`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Unreachable`] when nothing listens; [`ClientError::Failed`] otherwise.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response, ClientError> {
        let failed = |reason: String| ClientError::Failed {
            address: self.address.clone(),
            reason,
        };
        let stream = match tokio::time::timeout(
            TIMEOUT,
            tokio::net::TcpStream::connect(&self.address),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(ClientError::Unreachable {
                    address: self.address.clone(),
                    source: e,
                })
            }
            Err(_) => return Err(failed(format!("connecting took longer than {TIMEOUT:?}"))),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.address);
        if let Some(token) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {}", token.expose()));
        }
        if !body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| failed(format!("bad request: {e}")))?;
        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let driver = tokio::spawn(connection);
            let response = sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            driver.abort();
            Ok::<_, hyper::Error>(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(TIMEOUT, exchange).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed(format!("no answer within {TIMEOUT:?}"))),
        }
    }
}
