//! The client's unit tests: commands, connection strings, dead-peer settings.
use super::*;

#[test]
fn start_replication_command() {
    let command = StartReplication::new("my slot", ["pub", "we\"ird'"])
        .start_lsn(Lsn(0x1_0000_0010))
        .command();
    assert_eq!(
        command,
        "START_REPLICATION SLOT \"my slot\" LOGICAL 1/10 (proto_version '1', \
         publication_names '\"pub\",\"we\"\"ird''\"', messages 'true')"
    );
    let command = StartReplication::new("s", ["p"]).messages(false).command();
    assert_eq!(
        command,
        "START_REPLICATION SLOT \"s\" LOGICAL 0/0 (proto_version '1', publication_names '\"p\"')"
    );
}

#[test]
fn config_from_connection_string() {
    let config: ReplicationConfig =
        "host=127.0.0.1 port=5433 user=walcached password=secret dbname=app"
            .parse()
            .unwrap();
    assert_eq!(config.host, "127.0.0.1");
    assert_eq!(config.port, 5433);
    assert_eq!(config.user, "walcached");
    assert_eq!(config.dbname, "app");
    assert_eq!(config.password.as_deref(), Some(&b"secret"[..]));
    let debug = format!("{config:?}");
    assert!(!debug.contains("secret"), "{debug}");

    let config: ReplicationConfig = "postgres://u@localhost/".parse().unwrap();
    assert_eq!((config.port, config.dbname.as_str()), (5432, "u"));

    assert_eq!(config.ssl_mode, SslMode::Prefer);
    assert_eq!(config.root_cert, None);
    assert_eq!(config.hostaddr, None);
    let config: ReplicationConfig = "host=db.example hostaddr=127.0.0.1 user=u".parse().unwrap();
    assert_eq!(config.host, "db.example");
    assert_eq!(config.hostaddr, Some(IpAddr::from([127, 0, 0, 1])));
    let config: ReplicationConfig = "hostaddr=127.0.0.1 user=u".parse().unwrap();
    assert_eq!(config.host, "127.0.0.1");
    let config: ReplicationConfig = "host=h user=u sslmode=require".parse().unwrap();
    assert_eq!(config.ssl_mode, SslMode::Require);
    let config: ReplicationConfig = "host=h user=u sslmode=disable".parse().unwrap();
    assert_eq!(config.ssl_mode, SslMode::Disable);
    let config: ReplicationConfig =
        "host=h user=u sslmode=verify-full sslrootcert=/etc/ca.pem connect_timeout=3"
            .parse()
            .unwrap();
    assert_eq!(config.ssl_mode, SslMode::VerifyFull);
    assert_eq!(config.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
    assert_eq!(config.connect_timeout, Duration::from_secs(3));
    let config: ReplicationConfig = "postgres://u@h/db?sslmode=verify-ca&sslrootcert=ca.pem"
        .parse()
        .unwrap();
    assert_eq!(config.ssl_mode, SslMode::VerifyCa);
    assert_eq!(config.root_cert.as_deref(), Some(Path::new("ca.pem")));
    let parsed = parse_connection_string("host=h user=u sslmode=verify-ca").unwrap();
    assert_eq!(
        parsed.pg.get_ssl_mode(),
        tokio_postgres::config::SslMode::Require
    );
    assert!(matches!(
        "host=h user=u sslmode=allow".parse::<ReplicationConfig>(),
        Err(Error::Unsupported("sslmode=allow"))
    ));
    assert!(matches!(
        "host=h user=u sslmode=bogus".parse::<ReplicationConfig>(),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        "host=h user=u sslrootcert=system".parse::<ReplicationConfig>(),
        Err(Error::Unsupported("sslrootcert=system"))
    ));
    assert!(matches!(
        "host=h user=u sslnegotiation=direct".parse::<ReplicationConfig>(),
        Err(Error::Unsupported("sslnegotiation=direct"))
    ));
    assert!(matches!(
        "host=h".parse::<ReplicationConfig>(),
        Err(Error::Config { .. })
    ));
}

#[test]
fn client_certificates_come_in_pairs() {
    for s in [
        "host=h user=u sslmode=verify-full sslcert=/c.crt sslkey='/k ey.pem'",
        "postgres://u@h/db?sslcert=%2Fc.crt&sslkey=%2Fk%20ey.pem",
    ] {
        let config: ReplicationConfig = s.parse().unwrap();
        let cert = config.get_client_cert().expect(s);
        assert_eq!(cert.cert_path(), Path::new("/c.crt"), "{s}");
        assert_eq!(cert.key_path(), Path::new("/k ey.pem"), "{s}");
        let parsed = parse_connection_string(s).unwrap();
        assert_eq!(parsed.client_cert.as_ref(), Some(cert), "{s}");
    }
    for s in [
        "host=h user=u sslcert=/c.crt",
        "host=h user=u sslkey=/c.key",
        "postgres://u@h/db?sslkey=%2Fc.key",
    ] {
        let error = s.parse::<ReplicationConfig>().unwrap_err();
        assert!(matches!(error, Error::Config { .. }), "{s}: {error:?}");
        let text = error.to_string();
        assert!(
            text.contains("sslcert and sslkey go together: set both"),
            "{s}: {text}"
        );
    }
    let config: ReplicationConfig = "host=h user=u".parse().unwrap();
    assert_eq!(config.get_client_cert(), None);
}

#[test]
fn dead_peer_settings_default_and_carry_over() {
    let defaults = |c: &ReplicationConfig| {
        (
            c.keepalives,
            c.keepalives_idle,
            c.keepalives_interval,
            c.keepalives_retries,
            c.tcp_user_timeout,
        )
    };
    let walcache_defaults = (
        true,
        Duration::from_secs(10),
        Duration::from_secs(5),
        3,
        Duration::from_secs(20),
    );
    assert_eq!(
        defaults(&ReplicationConfig::new("h", 5432, "u", "d")),
        walcache_defaults
    );
    let config: ReplicationConfig = "host=h user=u".parse().unwrap();
    assert_eq!(defaults(&config), walcache_defaults);
    // A bare tokio-postgres configuration (2 h idle, nothing else) gets them too.
    let mut pg = tokio_postgres::Config::new();
    pg.user("u");
    let config = ReplicationConfig::from_pg_config(&pg).unwrap();
    assert_eq!(defaults(&config), walcache_defaults);

    // What the string sets wins (tokio-postgres reads tcp_user_timeout in seconds).
    let parsed = parse_connection_string(
        "host=h user=u keepalives_idle=30 keepalives_interval=7 keepalives_retries=9 \
         tcp_user_timeout=40",
    )
    .unwrap();
    assert_eq!(parsed.pg.get_keepalives_idle(), Duration::from_secs(30));
    assert_eq!(
        parsed.pg.get_keepalives_interval(),
        Some(Duration::from_secs(7))
    );
    assert_eq!(parsed.pg.get_keepalives_retries(), Some(9));
    assert_eq!(
        parsed.pg.get_tcp_user_timeout(),
        Some(&Duration::from_secs(40))
    );
    let config = ReplicationConfig::from_pg_config(&parsed.pg).unwrap();
    assert_eq!(
        defaults(&config),
        (
            true,
            Duration::from_secs(30),
            Duration::from_secs(7),
            9,
            Duration::from_secs(40)
        )
    );
    // Zero (which tokio-postgres drops, or keeps for the count) means "not set".
    let parsed =
        parse_connection_string("host=h user=u keepalives_retries=0 tcp_user_timeout=0").unwrap();
    assert_eq!(parsed.pg.get_keepalives_retries(), Some(3));
    assert_eq!(
        parsed.pg.get_tcp_user_timeout(),
        Some(&Duration::from_secs(20))
    );
    // keepalives=0 turns them off, everywhere.
    let parsed = parse_connection_string("postgres://u@h/db?keepalives=0").unwrap();
    assert!(!parsed.pg.get_keepalives());
    let config: ReplicationConfig = "postgres://u@h/db?keepalives=0".parse().unwrap();
    assert!(!config.keepalives);
}

/// The socket options a connected socket carries: keepalive on, idle, interval, count,
/// and the user timeout.
fn dead_peer_options(tcp: &TcpStream) -> (bool, Duration, Duration, u32, Option<Duration>) {
    let socket = socket2::SockRef::from(tcp);
    (
        socket.keepalive().unwrap(),
        socket.tcp_keepalive_time().unwrap(),
        socket.tcp_keepalive_interval().unwrap(),
        socket.tcp_keepalive_retries().unwrap(),
        socket.tcp_user_timeout().unwrap(),
    )
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[tokio::test]
async fn sockets_are_configured_for_dead_peer_detection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    let tcp = TcpStream::connect(addr).await.unwrap();
    let config = ReplicationConfig::new("127.0.0.1", addr.port(), "u", "d");
    configure_dead_peer_detection(&tcp, &config).unwrap();
    assert_eq!(
        dead_peer_options(&tcp),
        (
            true,
            Duration::from_secs(10),
            Duration::from_secs(5),
            3,
            Some(Duration::from_secs(20))
        )
    );

    let tcp = TcpStream::connect(addr).await.unwrap();
    let config = config
        .keepalives_idle(Duration::from_secs(31))
        .keepalives_interval(Duration::from_secs(7))
        .keepalives_retries(4)
        .tcp_user_timeout(Duration::from_millis(1500));
    configure_dead_peer_detection(&tcp, &config).unwrap();
    assert_eq!(
        dead_peer_options(&tcp),
        (
            true,
            Duration::from_secs(31),
            Duration::from_secs(7),
            4,
            Some(Duration::from_millis(1500))
        )
    );

    let tcp = TcpStream::connect(addr).await.unwrap();
    let config = config.keepalives(false).tcp_user_timeout(Duration::ZERO);
    configure_dead_peer_detection(&tcp, &config).unwrap();
    let socket = socket2::SockRef::from(&tcp);
    assert!(!socket.keepalive().unwrap());
    assert_eq!(socket.tcp_user_timeout().unwrap(), None);
}

/// The replication connection's own socket, plain and over TLS, against a real server.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[tokio::test]
async fn replication_connections_detect_dead_peers() {
    let pg = walcache_testkit::PgServer::start_with_tls().unwrap();
    let expected = (
        true,
        Duration::from_secs(10),
        Duration::from_secs(5),
        3,
        Some(Duration::from_secs(20)),
    );
    for mode in [SslMode::Disable, SslMode::Require] {
        let config = ReplicationConfig::new("127.0.0.1", pg.port(), pg.superuser(), "postgres")
            .ssl_mode(mode);
        let client = ReplicationClient::connect(&config).await.unwrap();
        assert_eq!(client.is_tls(), mode == SslMode::Require);
        assert_eq!(
            dead_peer_options(client.conn.stream.tcp()),
            expected,
            "{mode}"
        );
        client.close().await.unwrap();
    }
}
