//! The example service as users run it: its JSON logs (`LOG_FORMAT=json`) parse line by line,
//! a request's lines carry its method and path, and no configured secret is printed.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walcache_testkit::{wait_until, PgServer, RedisServer};

const DEADLINE: Duration = Duration::from_secs(30);

/// A minimal HTTP/1.1 request: `(status, body)`, or `None` if nothing answers.
async fn http(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_carry_the_request_and_hold_no_secret() {
    const DB_PASSWORD: &str = "Db-pw-in-the-URL-3e9d";
    let key_secret = "a7".repeat(32);
    let pg = PgServer::start().expect("postgres");
    let redis = RedisServer::start().expect("redis");
    let db = pg.create_database("service").await.expect("database");
    // Trust authentication: the password is accepted and never needed, only configured.
    let url = pg.url(&db).replacen('@', &format!(":{DB_PASSWORD}@"), 1);
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_service"))
        .env("DATABASE_URL", &url)
        .env("REDIS_URL", redis.url())
        .env("LISTEN", &listen)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info,service=debug")
        .env("WALCACHE_SIGNING_KEYS", format!("k1:{key_secret}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the service");
    wait_until("/healthz to answer", DEADLINE, || async {
        matches!(http(&listen, "GET", "/healthz", "").await, Some((200, _)))
    })
    .await
    .expect("the service starts");
    let (status, _) = http(&listen, "PUT", "/users/7", r#"{"email":"a@x.org"}"#)
        .await
        .expect("PUT");
    assert_eq!(status, 200);
    let (status, body) = http(&listen, "GET", "/users/7", "").await.expect("GET");
    assert_eq!((status, body.contains("a@x.org")), (200, true), "{body}");

    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    // The service logs to standard output (tracing-subscriber's default).
    let mut logs = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_string(&mut logs).await.expect("stdout");
    }

    for secret in [DB_PASSWORD, key_secret.as_str()] {
        assert!(!logs.contains(secret), "a secret in the logs: {logs}");
    }
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let served: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "request served")
        .collect();
    for (method, path) in [("PUT", "/users/7"), ("GET", "/users/7")] {
        assert!(
            served.iter().any(|l| l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["method"] == method && s["path"] == path))),
            "no {method} {path} line: {logs}"
        );
    }
}
