//! `walcached status` and `walcached refresh` against a running daemon's admin API (this
//! binary's, not the library's).

use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use serde_json::Value;
use walcached::client::{Client, ClientError, Response};
use walcached::config::{Config, ProcessEnv};

use super::{config_error, EXIT_OK, EXIT_RUNTIME};

/// How often `refresh` asks how its job stands.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How often `refresh` says it is still waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// What `walcached refresh` asks for.
pub(crate) struct RefreshRequest {
    pub(crate) idempotency_key: Option<String>,
    pub(crate) reason: Option<String>,
}

fn client_for(config: &Config) -> Option<(Client, String)> {
    if config.http.listen.is_empty() {
        return None;
    }
    let address = Client::address_for(&config.http.listen);
    Some((
        Client::new(address.clone(), config.http.admin_token.clone()),
        address,
    ))
}

/// A problem's `detail`, or the body as text.
fn explain(response: &Response) -> String {
    response
        .json()
        .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&response.body).trim().to_owned())
}

/// Ask the daemon for a cycle and wait for it. `None`: no daemon to ask (no endpoint, no
/// token, nothing listening): the caller runs the cycle itself.
pub(crate) async fn refresh(config: &Config, request: &RefreshRequest) -> Option<u8> {
    let (client, address) = client_for(config)?;
    if config.http.admin_token.is_none() {
        eprintln!(
            "walcached: no admin token configured (http.admin_token_file), so the daemon's \
             refresh endpoint is not used: running the cycle in this process"
        );
        return None;
    }
    let key = request
        .idempotency_key
        .clone()
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let body = match &request.reason {
        Some(reason) => serde_json::json!({ "reason": reason }).to_string(),
        None => "{}".to_owned(),
    };
    let asked = client
        .request(
            Method::POST,
            "/api/v1/refresh",
            &[("Idempotency-Key", &key)],
            Bytes::from(body),
        )
        .await;
    let response = match asked {
        Ok(r) => r,
        Err(ClientError::Unreachable { .. }) => {
            eprintln!(
                "walcached: no daemon answers at {address}: running the cycle in this process"
            );
            return None;
        }
        Err(e) => {
            eprintln!("walcached: {e}");
            return Some(EXIT_RUNTIME);
        }
    };
    if response.status != StatusCode::ACCEPTED {
        eprintln!(
            "walcached: the daemon at {address} refused the refresh ({}): {}",
            response.status,
            explain(&response)
        );
        return Some(EXIT_RUNTIME);
    }
    let Some(location) = response.header("location").map(str::to_owned) else {
        eprintln!("walcached: the daemon at {address} accepted the refresh without a Location");
        return Some(EXIT_RUNTIME);
    };
    let id = location.rsplit('/').next().unwrap_or_default().to_owned();
    println!("refresh job {id} accepted by the daemon at {address}; waiting for it");
    Some(wait_for_job(&client, &location, &id).await)
}

async fn wait_for_job(client: &Client, location: &str, id: &str) -> u8 {
    let mut last_said = Instant::now();
    loop {
        let response = match client.get(location).await {
            Ok(r) if r.status == StatusCode::OK => r,
            Ok(r) => {
                eprintln!(
                    "walcached: cannot follow job {id} ({}): {}",
                    r.status,
                    explain(&r)
                );
                return EXIT_RUNTIME;
            }
            Err(e) => {
                eprintln!("walcached: cannot follow job {id}: {e}");
                return EXIT_RUNTIME;
            }
        };
        let job = response.json().unwrap_or_default();
        match job["state"].as_str() {
            Some("succeeded") => {
                let r = &job["report"];
                println!(
                    "refresh complete: {} namespaces, {} keys scanned, {} keys deleted, {} tag \
                     versions pruned, {:.3} seconds (job {id})",
                    r["namespaces"],
                    r["keys_scanned"],
                    r["keys_deleted"],
                    r["tag_versions_pruned"],
                    r["seconds"].as_f64().unwrap_or_default()
                );
                return EXIT_OK;
            }
            Some("failed") => {
                eprintln!(
                    "walcached: refresh job {id} failed: {}; run it again",
                    job["error"].as_str().unwrap_or("unknown error")
                );
                return EXIT_RUNTIME;
            }
            _ => {}
        }
        if last_said.elapsed() >= PROGRESS_EVERY {
            last_said = Instant::now();
            println!("refresh job {id}: {}", job["state"].as_str().unwrap_or("?"));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// `walcached status`.
pub(crate) async fn status(config_path: &Path, raw: bool) -> u8 {
    let config = match Config::load(config_path, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let Some((client, address)) = client_for(&config) else {
        eprintln!("walcached: http.listen is empty: the daemon serves no status");
        return EXIT_RUNTIME;
    };
    let response = match client.get("/api/v1/status").await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("walcached: {e} (is `walcached run` running with this configuration?)");
            return EXIT_RUNTIME;
        }
    };
    let body = match (response.status, response.json()) {
        (StatusCode::OK, Some(body)) => body,
        _ => {
            eprintln!(
                "walcached: the daemon at {address} answered {}: {}",
                response.status,
                explain(&response)
            );
            return EXIT_RUNTIME;
        }
    };
    if raw {
        println!("{}", String::from_utf8_lossy(&response.body));
    } else {
        print!("{}", summary(&address, &body));
    }
    if body["ready"].as_bool() == Some(true) {
        EXIT_OK
    } else {
        EXIT_RUNTIME
    }
}

fn summary(address: &str, s: &Value) -> String {
    use std::fmt::Write as _;
    let yes = |v: &Value| v.as_bool() == Some(true);
    let mut out = String::new();
    let state = if yes(&s["ready"]) {
        "ready"
    } else if yes(&s["caught_up"]) {
        "not ready: namespaces out of service"
    } else if yes(&s["streaming"]) {
        "not ready: streaming, not caught up"
    } else {
        "not ready: not streaming"
    };
    let _ = writeln!(out, "daemon at {address}: {state}");
    let _ = writeln!(
        out,
        "epoch {}, last data message {}, lag {} bytes / {:.3} s",
        s["epoch"].as_str().unwrap_or("?"),
        s["published_seq"],
        s["lag"]["bytes"],
        s["lag"]["seconds"].as_f64().unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "slot {} (publication {}), confirmed {}",
        s["slot"]["name"].as_str().unwrap_or("?"),
        s["slot"]["publication"].as_str().unwrap_or("?"),
        s["slot"]["confirmed_lsn"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "redis {} (version {}, run_id {})",
        s["redis"]["url"].as_str().unwrap_or("?"),
        s["redis"]["version"].as_str().unwrap_or("?"),
        s["redis"]["run_id"].as_str().unwrap_or("?")
    );
    let _ = writeln!(out, "namespaces:");
    for ns in s["namespaces"].as_array().into_iter().flatten() {
        let tables: Vec<&str> = ns["tables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let _ = writeln!(
            out,
            "  {:<24} {}, {} ({})",
            ns["name"].as_str().unwrap_or("?"),
            if yes(&ns["in_service"]) {
                "in service"
            } else {
                "OUT OF SERVICE"
            },
            if yes(&ns["certified"]) {
                "certified"
            } else {
                "not certified"
            },
            tables.join(", ")
        );
    }
    let r = &s["refresh"];
    let _ = write!(
        out,
        "refresh: every {} s, {} cycles completed",
        r["interval_secs"], r["cycles_completed"]
    );
    if let Some(id) = r["current_job"]["id"].as_str() {
        let _ = write!(
            out,
            "; job {id} {}",
            r["current_job"]["state"].as_str().unwrap_or("?")
        );
    }
    if let Some(id) = r["last_job"]["id"].as_str() {
        let _ = write!(
            out,
            "; last job {id} {}",
            r["last_job"]["state"].as_str().unwrap_or("?")
        );
    }
    out.push('\n');
    out
}
