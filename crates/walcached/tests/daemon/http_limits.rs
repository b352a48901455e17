//! The operator endpoint against slow and many clients: a connection that never finishes its
//! headers is closed, and connections past the limit are refused at once, so that idle
//! sockets cannot take the file descriptors the daemon's PostgreSQL and Redis connections
//! need (found in review: 1,100 half-sent requests all stayed open).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use walcached::http::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};
use walcached::status::Status;

/// A server on a free loopback port; its address and the token that stops it.
async fn serve() -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let app = walcached::http::router(handle, Arc::new(Status::default()));
    let shutdown = CancellationToken::new();
    tokio::spawn(walcached::http::serve_app(listener, app, shutdown.clone()));
    (addr, shutdown)
}

/// Reads until the peer closes the connection (a FIN or a reset); the bytes read.
async fn read_to_close(stream: &mut tokio::net::TcpStream, deadline: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    match tokio::time::timeout(deadline, stream.read_to_end(&mut out))
        .await
        .expect("the server closes the connection in time")
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("read: {e}"),
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_headers_never_end_is_closed() {
    let (addr, shutdown) = serve().await;
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    read_to_close(&mut slow, HEADER_READ_TIMEOUT * 2).await;
    assert!(
        started.elapsed() >= HEADER_READ_TIMEOUT / 2,
        "{:?}",
        started.elapsed()
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_once() {
    let (addr, shutdown) = serve().await;
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .expect("write");
        idle.push(s);
    }
    let mut extra = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let answer = read_to_close(&mut extra, HEADER_READ_TIMEOUT / 2).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // Once they are gone, requests are served again.
    drop(idle);
    walcache_testkit::wait_until("/healthz answers again", Duration::from_secs(10), || {
        let addr = addr.clone();
        async move {
            matches!(
                crate::cli::http_get(&addr, "/healthz").await,
                Some((200, _))
            )
        }
    })
    .await
    .expect("served again");
    shutdown.cancel();
}

/// Under `/api/`, errors axum answers before any handler runs (a method the route does not
/// take, a body of the wrong type) are problems too, as the API's documentation promises
/// (found in review: an empty 405 and a plain-text 413).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_before_a_handler_are_problems_too() {
    let (addr, shutdown) = serve().await;
    for request in [
        "DELETE /api/v1/status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_owned(),
        "POST /api/v1/refresh HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\n\
         content-length: 2\r\nconnection: close\r\n\r\nhi"
            .to_owned(),
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let answer =
            String::from_utf8_lossy(&read_to_close(&mut s, HEADER_READ_TIMEOUT).await).into_owned();
        let (head, body) = answer.split_once("\r\n\r\n").expect("a response");
        assert!(head.starts_with("HTTP/1.1 4"), "{request}: {answer}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{request}: {answer}"
        );
        let problem: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert!(
            problem["status"]
                .as_u64()
                .is_some_and(|s| (400..500).contains(&s)),
            "{problem}"
        );
    }
    // Outside /api/, plain answers stay plain (Prometheus and probes read them).
    let (status, body) = crate::cli::http_get(&addr, "/healthz")
        .await
        .expect("/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    shutdown.cancel();
}
