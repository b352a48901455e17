//! Client certificates (mutual TLS) to a Redis that requires them.

use walcache::{ErrorKind, Walcache};
use walcache_testkit::{ClientKeyFormat, RedisServer};

use crate::support::{self, LoadError};

/// The error and its sources, joined.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        text.push_str(": ");
        text.push_str(&error.to_string());
        source = error.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_client_certificates() {
    support::recorder();
    let redis = RedisServer::start_with_tls_client_auth().expect("redis with client auth");
    let url = redis.tls_url().expect("a rediss:// URL");
    let ca = redis.ca_cert_path().expect("the test CA").to_owned();
    let certs = redis.tls_certs().expect("TLS");
    let (cert, key) = certs.client_cert("service-a").expect("client certificate");
    let (rsa_cert, rsa_key) = certs
        .client_cert_with("service-b", ClientKeyFormat::Pkcs1)
        .expect("client certificate");

    // Without a certificate the server refuses the handshake: build() fails, as for any
    // Redis it cannot reach.
    let e = Walcache::builder()
        .redis_url(&url)
        .redis_ca_file(&ca)
        .without_invalidation_stream()
        .build()
        .await
        .expect_err("a Redis requiring client certificates refuses a client without one");
    assert_eq!(e.kind(), ErrorKind::Redis, "{}", error_chain(&e));
    assert!(
        error_chain(&e).contains("CertificateRequired"),
        "{}",
        error_chain(&e)
    );

    // With one (PKCS#8 EC and PKCS#1 RSA keys), two handles share L2 over mutual TLS.
    let a = Walcache::builder()
        .redis_url(&url)
        .redis_ca_file(&ca)
        .redis_client_cert(&cert, &key)
        .without_invalidation_stream()
        .build()
        .await
        .expect("handle with a client certificate");
    let b = Walcache::builder()
        .redis_url(&url)
        .redis_ca_file(&ca)
        .redis_client_cert(&rsa_cert, &rsa_key)
        .without_invalidation_stream()
        .build()
        .await
        .expect("handle with an RSA client certificate");
    let ca_cache = a.cache::<i64, String>("mtls").build().unwrap();
    let cb_cache = b.cache::<i64, String>("mtls").build().unwrap();
    ca_cache
        .try_get_with(&1, async {
            Ok::<_, LoadError>("over mutual tls".to_owned())
        })
        .await
        .unwrap();
    ca_cache.wait_for_l2_fills().await;
    // The other handle reads it from L2, through its own connection and certificate.
    assert_eq!(cb_cache.get(&1).await.as_deref(), Some("over mutual tls"));

    // Configuration errors at build(), naming the setting, the file and the fix.
    let config_error = |builder: walcache::WalcacheBuilder| async move {
        let e = builder
            .without_invalidation_stream()
            .build()
            .await
            .expect_err("a configuration error");
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        e.to_string()
    };
    let text = config_error(
        Walcache::builder()
            .redis_url("redis://127.0.0.1:1/")
            .redis_client_cert(&cert, &key),
    )
    .await;
    assert!(
        text.contains("redis_client_cert") && text.contains("use a rediss:// URL"),
        "{text}"
    );
    let text = config_error(
        Walcache::builder()
            .redis_url(&url)
            .redis_ca_file(&ca)
            .redis_client_cert(&cert, &rsa_key),
    )
    .await;
    assert!(
        text.contains(&rsa_key.display().to_string())
            && text.contains("does not belong to the certificate"),
        "{text}"
    );
    let secret_line = std::fs::read_to_string(&rsa_key).unwrap();
    let secret_line = secret_line.lines().nth(1).unwrap();
    assert!(!text.contains(secret_line), "{text}");
    let missing = redis.dir().join("missing.key");
    let text = config_error(
        Walcache::builder()
            .redis_url(&url)
            .redis_client_cert(&cert, &missing),
    )
    .await;
    assert!(
        text.contains(&missing.display().to_string()) && text.contains("cannot be read"),
        "{text}"
    );
    let text = config_error(
        Walcache::builder()
            .redis_url(&url)
            .redis_client_cert(&key, &key),
    )
    .await;
    assert!(text.contains("no CERTIFICATE block"), "{text}");
}
