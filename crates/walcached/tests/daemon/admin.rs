//! The admin API (`/api/v1/`) of a real daemon: its OpenAPI document, refresh jobs with their
//! idempotency keys, conflicts and rate limit, the bearer token, namespace flushes, status,
//! the audit lines, and the `status` and `refresh` commands that call it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use metrics_exporter_prometheus::PrometheusBuilder;
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber;
use walcache_protocol::{Body, Naming};
use walcache_testkit::{wait_until, RedisServer};
use walcached::client::{Client, Response};
use walcached::config::Config;
use walcached::pipeline::RunOptions;
use walcached::status::Status;

use crate::cli::{outcome, walcached_args};
use crate::support::{config, users_stack, Listener, TestLog, DEADLINE, USERS_RULE};

/// The admin token of these tests.
const TOKEN: &str = "test-admin-token-0123456789";
/// A token that is not it.
const WRONG: &str = "not-the-admin-token-9876543210";

/// A whole daemon (pipeline, refresh schedule, HTTP endpoint) on a loopback port of its own,
/// logging to its own [`TestLog`].
struct ApiDaemon {
    address: String,
    status: Arc<Status>,
    log: TestLog,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), walcached::pipeline::RunError>>,
}

impl ApiDaemon {
    /// Start `config_toml` with `env` (e.g. the admin token) and wait until it is caught up.
    async fn start(config_toml: &str, env: &[(&str, &str)]) -> ApiDaemon {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let config = Config::parse(config_toml, &env).expect("config");
        let listener = walcached::http::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let endpoint = walcached::daemon::Endpoint {
            listener,
            metrics: PrometheusBuilder::new().build_recorder().handle(),
        };
        let status = Arc::new(Status::default());
        let shutdown = CancellationToken::new();
        let log = TestLog::default();
        let run = walcached::daemon::run(
            config,
            Some(endpoint),
            Arc::clone(&status),
            shutdown.clone(),
            RunOptions::default(),
        );
        let task = tokio::spawn(run.with_subscriber(log.dispatch()));
        let s = Arc::clone(&status);
        wait_until("daemon caught up", DEADLINE, || async { s.is_caught_up() })
            .await
            .unwrap_or_else(|e| panic!("{e}: {}", log.text()));
        ApiDaemon {
            address,
            status,
            log,
            shutdown,
            task,
        }
    }

    fn client(&self, token: Option<&str>) -> Client {
        Client::new(
            self.address.clone(),
            token.map(walcached::config::Secret::new),
        )
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the daemon stops")
            .expect("no panic")
            .expect("clean stop");
    }

    /// Audit lines (target `walcached::audit`) containing `needle`.
    fn audit(&self, needle: &str) -> Vec<String> {
        self.log
            .text()
            .lines()
            .filter(|l| l.contains("walcached::audit") && l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// The config of these tests: the `users` rule, no refresh schedule (cycles only when asked
/// for), and `refresh` extra lines.
fn api_config(
    pg: &walcache_testkit::PgServer,
    db: &str,
    redis: &RedisServer,
    refresh: &str,
) -> String {
    format!(
        "{}\n[refresh]\ninterval_secs = 0\n{refresh}\n",
        config(pg, db, redis, USERS_RULE)
    )
}

async fn post_refresh(c: &Client, key: Option<&str>, body: &str) -> Response {
    let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    c.request(
        Method::POST,
        "/api/v1/refresh",
        &headers,
        Bytes::from(body.to_owned()),
    )
    .await
    .expect("an answer")
}

fn problem(r: &Response) -> Value {
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{r:?}"
    );
    r.json().expect("a JSON problem")
}

async fn generation(c: &mut MultiplexedConnection, ns: &str) -> u64 {
    let g: Option<u64> = redis::cmd("GET")
        .arg(Naming::default().generation_key(ns))
        .query_async(c)
        .await
        .expect("GET generation");
    g.unwrap_or(0)
}

#[tokio::test]
async fn the_openapi_document_is_served_is_3_1_and_describes_every_route() {
    let (pg, redis, db, _c) = users_stack().await;
    let d = ApiDaemon::start(
        &api_config(&pg, &db, &redis, ""),
        &[("WALCACHED_HTTP_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let c = d.client(Some(TOKEN));
    let r = c.get("/api/v1/openapi.json").await.expect("an answer");
    assert_eq!(r.status, StatusCode::OK);
    let checked_in = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))
        .expect("crates/walcached/openapi.json");
    assert!(
        r.body == checked_in.as_bytes(),
        "the served document differs from crates/walcached/openapi.json: regenerate it with \
         `WALCACHED_BLESS=1 cargo test -p walcached --lib openapi`"
    );
    let doc = r.json().expect("JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    let paths = doc["paths"].as_object().expect("paths");
    for required in [
        "/api/v1/status",
        "/api/v1/refresh",
        "/api/v1/refresh/{id}",
        "/api/v1/namespaces/{ns}/flush",
    ] {
        assert!(paths.contains_key(required), "{required} is documented");
    }
    // Every documented operation is served (not the fallback's "no route", not 405), and
    // every method a path does not document is not.
    let methods = [Method::GET, Method::POST, Method::PUT, Method::DELETE];
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "0000000000000000")
            .replace("{ns}", "users");
        for m in &methods {
            let documented = item.get(m.as_str().to_lowercase()).is_some();
            let r = c
                .request(m.clone(), &concrete, &[], Bytes::new())
                .await
                .expect("an answer");
            let no_route = r.status == StatusCode::METHOD_NOT_ALLOWED
                || r.json()
                    .is_some_and(|p| p["type"] == "urn:walcached:problem:no-route");
            assert_eq!(
                !no_route, documented,
                "{m} {path}: documented {documented}, answered {}",
                r.status
            );
        }
    }
    // And a path the document does not name is not served.
    let r = c.get("/api/v1/nothing-here").await.expect("an answer");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(problem(&r)["type"], "urn:walcached:problem:no-route");
    d.stop().await;
}

#[tokio::test]
async fn refresh_jobs_are_idempotent_by_key_and_one_at_a_time() {
    let (pg, redis, db, _c) = users_stack().await;
    // Twenty keys that are not envelopes, deleted one per second: the cycle runs for ~20 s,
    // long enough to ask again while it runs.
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let prefix = Naming::default().value_key_prefix("users");
    for i in 0..20 {
        let () = redis::cmd("SET")
            .arg(format!("{prefix}0:s1:junk{i}"))
            .arg("junk")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let d = ApiDaemon::start(
        &api_config(&pg, &db, &redis, "max_deletes_per_second = 1"),
        &[("WALCACHED_HTTP_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let c = d.client(Some(TOKEN));

    let first = post_refresh(&c, Some("key-1"), "{}").await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    let job = first.json().expect("a job");
    let id = job["id"].as_str().expect("an id").to_owned();
    let location = format!("/api/v1/refresh/{id}");
    assert_eq!(first.header("location"), Some(location.as_str()));
    assert_eq!(job["trigger"], "manual");

    // The same key and body, while the cycle runs: the same job, 202 again.
    wait_until("the cycle runs", DEADLINE, || async {
        let r = c.get(&location).await.expect("an answer");
        r.json().is_some_and(|j| j["state"] == "running")
    })
    .await
    .expect("the job starts");
    let again = post_refresh(&c, Some("key-1"), "{ }").await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{again:?}");
    let again_job = again.json().unwrap();
    assert_eq!(again_job["id"], id.as_str(), "one job");
    assert_eq!(again_job["state"], "running");
    assert_eq!(again.header("location"), Some(location.as_str()));

    // The same key with another body: 422.
    let other_body = post_refresh(&c, Some("key-1"), r#"{"reason": "other"}"#).await;
    assert_eq!(other_body.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        problem(&other_body)["type"],
        "urn:walcached:problem:idempotency-key-reused"
    );

    // A new request while the cycle runs: 409 and where the running job is.
    for key in [Some("key-2"), None] {
        let conflict = post_refresh(&c, key, "{}").await;
        assert_eq!(conflict.status, StatusCode::CONFLICT, "{conflict:?}");
        assert_eq!(conflict.header("location"), Some(location.as_str()));
        assert_eq!(problem(&conflict)["job"], id.as_str());
    }

    // Status shows the running job; the audit log has every decision, never the token.
    let status = c
        .get("/api/v1/status")
        .await
        .unwrap()
        .json()
        .expect("status");
    assert_eq!(status["refresh"]["current_job"]["id"], id.as_str());
    let fingerprint = walcached::http::auth::fingerprint(TOKEN);
    for result in [
        "result=\"accepted\"",
        "result=\"replayed\"",
        "result=\"refused_key_reused\"",
        "result=\"refused_running\"",
    ] {
        let lines = d.audit(result);
        assert!(
            lines.iter().any(|l| l.contains(&fingerprint)
                && l.contains("action=\"refresh\"")
                && l.contains("remote=127.0.0.1:")),
            "an audit line with {result} by {fingerprint}: {:?}",
            d.audit("")
        );
    }
    assert!(!d.log.text().contains(TOKEN), "the token is never logged");
    d.stop().await;
}

#[tokio::test]
async fn tokens_are_required_and_manual_cycles_are_rate_limited() {
    let (pg, redis, db, _c) = users_stack().await;
    // Configured for every interface (the test binds its own loopback port): the token would
    // travel in plain HTTP, which the daemon warns about.
    let cfg =
        api_config(&pg, &db, &redis, "").replace("listen = \"\"", "listen = \"0.0.0.0:9187\"");
    let d = ApiDaemon::start(&cfg, &[("WALCACHED_HTTP_ADMIN_TOKEN", TOKEN)]).await;
    assert_eq!(
        d.log
            .lines("WARN", "plain HTTP on a non-loopback address")
            .len(),
        1,
        "{}",
        d.log.text()
    );

    // Without the token, or with a wrong one: 401, and nothing happens.
    for token in [None, Some(WRONG)] {
        let c = d.client(token);
        for r in [
            post_refresh(&c, Some("k"), "{}").await,
            c.request(
                Method::POST,
                "/api/v1/namespaces/users/flush",
                &[],
                Bytes::new(),
            )
            .await
            .unwrap(),
            c.get("/api/v1/status").await.unwrap(),
        ] {
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{token:?}: {r:?}");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"walcached\"")
            );
            assert_eq!(problem(&r)["config_field"], "http.admin_token_file");
        }
    }
    assert!(
        !d.audit("result=\"no_token\"").is_empty() && !d.audit("result=\"wrong_token\"").is_empty(),
        "refusals are audited: {:?}",
        d.audit("")
    );
    assert!(
        !d.log.text().contains(WRONG),
        "a wrong token is never logged"
    );

    // With it: a cycle (nothing to delete: quick), then the limit.
    let c = d.client(Some(TOKEN));
    let first = post_refresh(&c, None, r#"{"reason": "test"}"#).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    let location = first.header("location").expect("Location").to_owned();
    wait_until("the job succeeds", DEADLINE, || async {
        let r = c.get(&location).await.expect("an answer");
        r.json().is_some_and(|j| j["state"] == "succeeded")
    })
    .await
    .expect("the cycle completes");
    let job = c.get(&location).await.unwrap().json().unwrap();
    assert_eq!(job["report"]["namespaces"], 1, "{job}");
    assert_eq!(job["reason"], "test");

    let limited = post_refresh(&c, Some("another"), "{}").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "{limited:?}");
    let retry: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=300).contains(&retry), "{retry}");
    let p = problem(&limited);
    assert_eq!(p["type"], "urn:walcached:problem:rate-limited");
    assert_eq!(p["retry_after_secs"], retry);
    assert!(!d.audit("result=\"refused_rate_limited\"").is_empty());

    // An unknown job.
    let r = c.get("/api/v1/refresh/ffffffffffffffff").await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    problem(&r);
    d.stop().await;
}

#[tokio::test]
async fn a_flush_bumps_the_generation_and_is_announced_and_status_reports_the_daemon() {
    let (pg, redis, db, _c) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let d = ApiDaemon::start(
        &api_config(&pg, &db, &redis, ""),
        &[("WALCACHED_HTTP_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let c = d.client(Some(TOKEN));
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    let status = c.get("/api/v1/status").await.unwrap();
    assert_eq!(status.status, StatusCode::OK);
    let s = status.json().expect("JSON");
    assert_eq!(s["streaming"], true, "{s}");
    assert_eq!(s["epoch"], d.status.epoch().to_string());
    assert_ne!(s["epoch"], "0");
    assert_eq!(s["slot"]["name"], "walcached");
    assert!(s["slot"]["confirmed_lsn"].as_str().unwrap().contains('/'));
    assert!(s["lag"]["bytes"].is_u64() && s["lag"]["seconds"].is_f64());
    assert!(s["redis"]["run_id"].as_str().is_some_and(|r| r.len() == 40));
    assert_eq!(s["rules"][0]["table"], "public.users");
    let ns = &s["namespaces"][0];
    assert_eq!(ns["name"], "users");
    assert_eq!(ns["in_service"], true);
    assert_eq!(ns["tables"][0], "public.users");
    wait_until("users certified", DEADLINE, || async {
        let s = c.get("/api/v1/status").await.unwrap().json().unwrap();
        s["namespaces"][0]["certified"] == true
    })
    .await
    .expect("a heartbeat certifies the namespace");

    let before = generation(&mut conn, "users").await;
    let r = c
        .request(
            Method::POST,
            "/api/v1/namespaces/users/flush",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let body = r.json().unwrap();
    assert_eq!(body["namespace"], "users");
    assert_eq!(body["epoch"], d.status.epoch().to_string());
    assert!(
        generation(&mut conn, "users").await > before,
        "a new generation"
    );
    // Its own message (the daemon flushed every namespace once already, at its first start).
    let seq = body["seq"].as_u64().expect("seq");
    let announced = || {
        listener
            .data()
            .into_iter()
            .find(|m| m.epoch == d.status.epoch() && m.seq == seq)
    };
    wait_until("the flush is announced", DEADLINE, || async {
        announced().is_some()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: saw {:?}", listener.data()));
    assert!(
        matches!(&announced().unwrap().body, Body::Flush(ns) if ns == &["users".to_owned()]),
        "{:?}",
        announced()
    );
    assert!(
        !d.audit("result=\"flushed\"").is_empty(),
        "{:?}",
        d.audit("")
    );

    let unknown = c
        .request(
            Method::POST,
            "/api/v1/namespaces/nobody/flush",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(problem(&unknown)["detail"]
        .as_str()
        .unwrap()
        .contains("users"));
    d.stop().await;
}

#[tokio::test]
async fn without_a_token_the_mutating_endpoints_are_disabled_and_status_is_open() {
    // The HTTP endpoint alone: no servers needed to refuse.
    let cfg = r#"
[postgres]
url = "postgres://walcached@127.0.0.1:1/app"

[redis]
url = "redis://127.0.0.1:1/"

[[rules]]
table = "public.users"
namespace = "users"
keys = ["{id}"]
"#;
    let config = Config::parse(cfg, &HashMap::<String, String>::new()).expect("config");
    let admin = walcached::http::Admin::new(
        &config,
        Arc::new(walcached::refresh::RefreshJobs::new(
            std::time::Duration::ZERO,
        )),
        Arc::default(),
        None,
    );
    let log = TestLog::default();
    let app = {
        let _guard = tracing::dispatcher::set_default(&log.dispatch());
        walcached::http::app(
            PrometheusBuilder::new().build_recorder().handle(),
            Arc::new(Status::default()),
            Some(Arc::new(admin)),
        )
    };
    let listener = walcached::http::bind("127.0.0.1:0").await.unwrap();
    let c = Client::new(listener.local_addr().unwrap().to_string(), None);
    let stop = CancellationToken::new();
    let server = tokio::spawn(walcached::http::serve_app(listener, app, stop.clone()));

    for r in [
        post_refresh(&c, None, "{}").await,
        c.request(
            Method::POST,
            "/api/v1/namespaces/users/flush",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap(),
    ] {
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
        let p = problem(&r);
        assert_eq!(p["type"], "urn:walcached:problem:admin-disabled");
        assert_eq!(p["config_field"], "http.admin_token_file");
    }
    let s = c.get("/api/v1/status").await.unwrap();
    assert_eq!(s.status, StatusCode::OK, "{s:?}");
    assert_eq!(s.json().unwrap()["streaming"], false);
    assert!(
        log.text().contains("walcached::audit") && log.text().contains("result=\"disabled\""),
        "{}",
        log.text()
    );
    stop.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_status_and_refresh_commands_call_the_running_daemon() {
    let (pg, redis, db, _c) = users_stack().await;
    let base = api_config(&pg, &db, &redis, "");
    let d = ApiDaemon::start(&base, &[("WALCACHED_HTTP_ADMIN_TOKEN", TOKEN)]).await;
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), format!("{TOKEN}\n")).unwrap();
    // The commands' configuration: the same, with the daemon's address and the token file.
    let cli = base.replace(
        "listen = \"\"",
        &format!(
            "listen = \"{}\"\nadmin_token_file = \"{}\"",
            d.address,
            token_file.path().display()
        ),
    );
    assert_ne!(cli, base);

    let out = walcached_args(&["status"], &cli).await;
    let (code, stdout, stderr) = outcome(&out);
    assert_eq!(code, 0, "ready: {stdout}{stderr}");
    assert!(
        stdout.contains(&format!("daemon at {}: ready", d.address)),
        "{stdout}"
    );
    assert!(
        stdout.contains("users") && stdout.contains("certified"),
        "{stdout}"
    );

    let out = walcached_args(&["refresh", "--reason", "from the cli"], &cli).await;
    let (code, stdout, stderr) = outcome(&out);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("accepted by the daemon") && stdout.contains("refresh complete"),
        "{stdout}"
    );
    assert!(
        d.audit("result=\"accepted\"")
            .iter()
            .any(|l| l.contains("from the cli")),
        "{:?}",
        d.audit("")
    );
    d.stop().await;
}
