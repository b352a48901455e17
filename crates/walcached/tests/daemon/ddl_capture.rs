//! DDL capture (issue "Schema drift", docs/adr/0010-ddl-capture.md): statements that change
//! rows without row events are announced in the WAL and flushed in commit order. The catalog
//! check runs every hour in these tests, so only the announcements can explain a prompt flush.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};

use walcache_protocol::Body;
use walcache_testkit::{wait_until, PgServer, RedisServer};
use walcached::config::Config;

use crate::support::{config, Daemon, Listener, DEADLINE};

const EVENTS: &str = "
    CREATE TABLE events (id int, day date, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
    CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
    INSERT INTO events VALUES (1, '2024-05-01');
    CREATE TABLE marker (id int PRIMARY KEY, v int);
    INSERT INTO marker VALUES (1, 0);";

const RULES: &str = "
[[rules]]
table = \"public.events\"
namespace = \"events\"
keys = [\"{id}:{day}\"]

[[rules]]
table = \"public.marker\"
namespace = \"marker\"
keys = [\"{id}\"]
";

/// The catalog checked once an hour: drift is caught by DDL capture or not at all.
fn hourly(cfg: String) -> String {
    crate::support::with_catalog_interval(cfg, 3_600_000)
}

struct Stack {
    pg: PgServer,
    redis: RedisServer,
    db: String,
    client: tokio_postgres::Client,
    toml: String,
    /// The id of the last marker row inserted.
    markers: AtomicI32,
}

async fn stack(schema: &str, rules: &str) -> Stack {
    let pg = PgServer::start().expect("postgres");
    let redis = RedisServer::start().expect("redis");
    let db = pg.create_database("ddl").await.expect("database");
    let client = pg.connect(&db).await.expect("connect");
    client.batch_execute(schema).await.expect("schema");
    let toml = hourly(config(&pg, &db, &redis, rules));
    Stack {
        pg,
        redis,
        db,
        client,
        toml,
        markers: AtomicI32::new(100),
    }
}

impl Stack {
    async fn install(&mut self) -> walcached::ddl_capture::Installed {
        let config = Config::parse(&self.toml, &HashMap::<String, String>::new()).expect("config");
        walcached::ddl_capture::install(&mut self.client, &config)
            .await
            .expect("install")
    }

    /// Start the daemon and a listener that has heard everything the start-up published (a
    /// marker change announced after it).
    async fn start(&self) -> (Daemon, Listener) {
        let daemon = Daemon::start(&self.toml).await;
        let listener = Listener::start(&self.redis).await;
        let marker = self.marker().await;
        listener.wait_keys(&[&marker]).await;
        listener.clear();
        (daemon, listener)
    }

    /// Run `sql` (one or more statements, one transaction unless it says otherwise).
    async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Insert a new marker row and return its key (`marker/<id>`). Each marker is a row of
    /// its own: an earlier marker announced again (a visibility recheck re-announces a
    /// transaction) cannot pass for a later one.
    async fn marker(&self) -> String {
        let id = self.markers.fetch_add(1, Ordering::Relaxed) + 1;
        self.client
            .execute("INSERT INTO marker VALUES ($1, 0)", &[&id])
            .await
            .expect("insert marker");
        format!("marker/{id}")
    }
}

/// Wait until `namespace` is flushed and the `marker` key announced; the flush must come first
/// (its statement committed before the marker's INSERT), or in the same batch (one LSN: a
/// batch's messages go out together).
async fn wait_flush_before_marker(listener: &Listener, namespace: &str, marker: &str) {
    wait_until("the flush and the marker", DEADLINE, || async {
        listener.keys().iter().any(|k| k == marker)
            && listener.flushes().iter().any(|n| n == namespace)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: saw {:?}", listener.data()));
    let data = listener.data();
    let marker = data
        .iter()
        .position(|m| {
            matches!(&m.body, Body::Keys(k)
                if k.iter().any(|k| format!("{}/{}", k.namespace, k.key) == marker))
        })
        .expect("the marker key");
    let in_order = data.iter().enumerate().any(|(i, m)| {
        matches!(&m.body, Body::Flush(ns) if ns.iter().any(|n| n == namespace))
            && (i < marker || m.lsn == data[marker].lsn)
    });
    assert!(
        in_order,
        "the flush of {namespace} comes before the later marker key: {data:?}"
    );
}

/// Issue row 2 with DDL capture: TRUNCATE of a partition (which pgoutput never sends under
/// `publish_via_partition_root`) is announced by its trigger and flushed in commit order, also
/// under `session_replication_role = replica` (migration tools, restores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_truncate_is_flushed_in_commit_order_also_under_replica_role() {
    let mut s = stack(EVENTS, RULES).await;
    let installed = s.install().await;
    assert_eq!(installed.partitions, 1, "events_2024 carries the trigger");
    let (daemon, listener) = s.start().await;
    s.exec("TRUNCATE events_2024").await;
    let marker = s.marker().await;
    wait_flush_before_marker(&listener, "events", &marker).await;

    listener.clear();
    s.exec(
        "INSERT INTO events VALUES (2, '2024-06-01');
             SET session_replication_role = replica;
             TRUNCATE events_2024;
             RESET session_replication_role;",
    )
    .await;
    let marker = s.marker().await;
    wait_flush_before_marker(&listener, "events", &marker).await;
    daemon.stop().await;
}

/// A partition created and dropped between two catalog checks: the daemon learns its oid from
/// the CREATE's announcement, so the DROP (whose announcement no longer knows the parent) is
/// still the rule's. A partition created empty flushes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_created_and_dropped_between_catalog_checks_flushes_its_namespace() {
    let mut s = stack(EVENTS, RULES).await;
    s.install().await;
    let (daemon, listener) = s.start().await;
    s.exec(
        "CREATE TABLE events_2025 PARTITION OF events
                 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');",
    )
    .await;
    let marker = s.marker().await;
    listener.wait_keys(&[&marker]).await;
    assert!(
        !listener.flushes().iter().any(|n| n == "events"),
        "an empty partition created flushes nothing: {:?}",
        listener.data()
    );
    let covered: i64 = s
        .client
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'walcache_truncate' \
             AND tgrelid = 'events_2025'::regclass AND tgenabled = 'A'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(covered, 1, "the new partition got its TRUNCATE trigger");
    s.exec("INSERT INTO events VALUES (3, '2025-03-01')").await;
    listener.wait_keys(&["events/3:2025-03-01"]).await;
    listener.clear();
    s.exec("DROP TABLE events_2025").await;
    let marker = s.marker().await;
    wait_flush_before_marker(&listener, "events", &marker).await;
    daemon.stop().await;
}

/// DETACH and an identity change are DDL on the rule's table: flushed in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_and_alter_table_flush_in_commit_order() {
    let mut s = stack(EVENTS, RULES).await;
    s.install().await;
    let (daemon, listener) = s.start().await;
    s.exec("ALTER TABLE events DETACH PARTITION events_2024")
        .await;
    let marker = s.marker().await;
    wait_flush_before_marker(&listener, "events", &marker).await;
    listener.clear();
    s.exec("ALTER TABLE marker REPLICA IDENTITY FULL; ALTER TABLE events ADD COLUMN note text;")
        .await;
    let marker = s.marker().await;
    wait_flush_before_marker(&listener, "events", &marker).await;
    daemon.stop().await;
}

/// Issue row 1 with DDL capture: the DROP's announcement flushes the namespace and makes the
/// daemon check the catalog at once, which adds the re-created table back to its publication
/// (an hour before the next scheduled check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_and_recreated_is_published_again_at_once() {
    let mut s = stack(EVENTS, RULES).await;
    s.install().await;
    let (daemon, listener) = s.start().await;
    s.exec(
        "DROP TABLE marker;
             CREATE TABLE marker (id int PRIMARY KEY, v int);
             INSERT INTO marker VALUES (1, 0);",
    )
    .await;
    wait_until("the re-created table published again", DEADLINE, || async {
        s.client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication_tables \
                 WHERE pubname = 'walcached' AND tablename = 'marker')",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await
    .unwrap();
    assert!(listener.flushes().iter().any(|n| n == "marker"));
    let marker = s.marker().await;
    listener.wait_keys(&[&marker]).await;
    daemon.stop().await;
}

/// Announcements are the daemon's only with its prefix; one it cannot read flushes every
/// namespace (what it said is unknown), transactional or not. Another application's messages
/// change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_announcement_flushes_everything_and_foreign_messages_nothing() {
    let s = stack(EVENTS, RULES).await;
    let (daemon, listener) = s.start().await;
    s.exec(
        "SELECT pg_logical_emit_message(true, 'another-app', '{\"v\": 1}');
             SELECT pg_logical_emit_message(false, 'another-app', 'x');",
    )
    .await;
    let marker = s.marker().await;
    listener.wait_keys(&[&marker]).await;
    assert!(
        listener.flushes().is_empty(),
        "another application's messages flush nothing: {:?}",
        listener.data()
    );
    for transactional in [true, false] {
        listener.clear();
        s.client
            .execute(
                "SELECT pg_logical_emit_message($1, 'walcache', '\\x00garbage')",
                &[&transactional],
            )
            .await
            .unwrap();
        wait_until("every namespace flushed", DEADLINE, || async {
            let f = listener.flushes();
            f.iter().any(|n| n == "events") && f.iter().any(|n| n == "marker")
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e} (transactional: {transactional}): {:?}",
                listener.data()
            )
        });
    }
    daemon.stop().await;
}

/// A trigger function must never raise: with the announcement failing (its function
/// replaced by one that raises), the application's DDL and TRUNCATE still go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_announcement_never_aborts_the_applications_statement() {
    let mut s = stack(EVENTS, RULES).await;
    s.install().await;
    s.exec(
        "CREATE OR REPLACE FUNCTION walcache.emit(content jsonb) RETURNS void
             LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'emit is broken'; END $$;",
    )
    .await;
    s.client
        .batch_execute(
            "TRUNCATE events_2024;
             ALTER TABLE events ADD COLUMN note text;
             CREATE TABLE events_2026 PARTITION OF events
                 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
             DROP TABLE events_2026;
             SET session_replication_role = replica;
             ALTER TABLE marker ADD COLUMN w int;
             RESET session_replication_role;",
        )
        .await
        .expect("the application's statements succeed");
    let columns: i64 = s
        .client
        .query_one(
            "SELECT count(*) FROM information_schema.columns \
             WHERE (table_name, column_name) IN (('events', 'note'), ('marker', 'w'))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(columns, 2);
}

/// `check` reports DDL capture absent (a warning naming the drift bound), complete, and
/// incomplete (a partition whose trigger was disabled); install is idempotent; `uninstall`
/// leaves nothing behind. The CLI refuses a role that is not a superuser, with the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_capture_and_install_uninstall_round_trip() {
    let mut s = stack(EVENTS, RULES).await;
    let finding = |report: &walcached::check::Report| {
        report
            .findings()
            .iter()
            .find(|f| f.subject == "ddl capture")
            .map(ToString::to_string)
            .expect("a ddl capture finding")
    };
    let config = Config::parse(&s.toml, &HashMap::<String, String>::new()).expect("config");
    let absent = finding(&walcached::check::check(&config).await);
    assert!(
        absent.starts_with("warning")
            && absent.contains("not installed")
            && absent.contains("3600000 ms"),
        "{absent}"
    );
    s.install().await;
    s.install().await;
    let ok = finding(&walcached::check::check(&config).await);
    assert!(ok.starts_with("ok"), "{ok}");
    s.exec("ALTER TABLE events_2024 DISABLE TRIGGER walcache_truncate")
        .await;
    let gap = finding(&walcached::check::check(&config).await);
    assert!(
        gap.starts_with("warning") && gap.contains("events_2024"),
        "{gap}"
    );

    s.exec("CREATE ROLE plain LOGIN NOSUPERUSER").await;
    let plain_url = s.pg.url(&s.db).replace("postgres@", "plain@");
    let out = crate::cli::walcached_args(
        &["ddl-capture", "install", "--admin-url", &plain_url],
        &s.toml,
    )
    .await;
    let (code, _, stderr) = crate::cli::outcome(&out);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("plain is not a superuser") && stderr.contains("--admin-url"),
        "{stderr}"
    );
    let out = crate::cli::walcached_args(&["ddl-capture", "uninstall"], &s.toml).await;
    let (code, stdout, stderr) = crate::cli::outcome(&out);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let left: i64 = s
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'walcache%') \
                  + (SELECT count(*) FROM pg_trigger WHERE tgname = 'walcache_truncate') \
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = 'walcache')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "uninstall leaves nothing behind");
    let out = crate::cli::walcached_args(&["ddl-capture", "install"], &s.toml).await;
    let (code, stdout, stderr) = crate::cli::outcome(&out);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("1 partitions carry the TRUNCATE trigger"),
        "{stdout}"
    );
}

/// Connect to the stack's database as `role` (no password: the test cluster trusts local
/// connections).
async fn connect_as(s: &Stack, role: &str) -> tokio_postgres::Client {
    let conn =
        s.pg.conn_string(&s.db)
            .replace("user=postgres", &format!("user={role}"));
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The SECURITY DEFINER functions run as the installing superuser and call one another by
/// their names in the schema `walcache`. A schema created beforehand by an ordinary role (a
/// database owner may create schemas) lets that role replace `walcache.emit` and run code as
/// superuser on its next DDL: install must refuse such a schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_refuses_a_walcache_schema_an_ordinary_role_owns() {
    let mut s = stack(EVENTS, RULES).await;
    s.exec(
        "CREATE ROLE plain LOGIN NOSUPERUSER;
             CREATE SCHEMA walcache AUTHORIZATION plain;",
    )
    .await;
    let config = Config::parse(&s.toml, &HashMap::<String, String>::new()).expect("config");
    let installed = walcached::ddl_capture::install(&mut s.client, &config).await;
    if installed.is_ok() {
        // What the schema's owner can do then: swap the function the triggers call.
        let plain = connect_as(&s, "plain").await;
        plain
            .batch_execute(
                "DROP FUNCTION walcache.emit(jsonb);
                 CREATE FUNCTION walcache.emit(content jsonb) RETURNS void
                 LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'ALTER ROLE plain SUPERUSER'; END $$;
                 CREATE TABLE walcache.bait (id int);",
            )
            .await
            .expect("the schema's owner replaces a function and runs DDL");
    }
    let superuser: bool = s
        .client
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'plain'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!superuser, "an ordinary role made itself superuser");
    let err = installed.expect_err("install refuses a schema an ordinary role owns");
    let text = format!("{err:?}");
    assert!(text.contains("owned by role plain"), "{text}");
}

/// Rules on two tables of one partition tree (a parent and one of its partitions, itself
/// partitioned) list the same leaves twice: install, and the event trigger for partitions
/// created later, still give every partition its TRUNCATE trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_covers_rules_on_nested_tables_of_one_tree() {
    let mut s = stack(
        "CREATE TABLE events (id int, day date, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
         CREATE TABLE events_2024 PARTITION OF events
             FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY RANGE (day);
         CREATE TABLE events_2024_h1 PARTITION OF events_2024
             FOR VALUES FROM ('2024-01-01') TO ('2024-07-01');",
        "
[[rules]]
table = \"public.events\"
namespace = \"events\"
keys = [\"{id}:{day}\"]

[[rules]]
table = \"public.events_2024\"
namespace = \"events_2024\"
keys = [\"{id}:{day}\"]
",
    )
    .await;
    let installed = s.install().await;
    assert_eq!(
        installed.partitions, 2,
        "events_2024 and events_2024_h1 carry the trigger"
    );
    s.exec(
        "CREATE TABLE events_2024_h2 PARTITION OF events_2024
                 FOR VALUES FROM ('2024-07-01') TO ('2025-01-01');",
    )
    .await;
    let covered: i64 = s
        .client
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'walcache_truncate' \
             AND tgrelid = 'events_2024_h2'::regclass AND tgenabled = 'A'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(covered, 1, "the new partition got its TRUNCATE trigger");
}

/// A rule's table may itself be a partition (here of a tree whose root no rule maps). DDL on
/// an ancestor recurses to it (`ALTER COLUMN … TYPE … USING` rewrites its rows), and its new
/// partitions name the tree's root, not the rule's table: both must still flush the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_on_a_partition_is_flushed_by_its_ancestors_ddl_and_its_new_partitions_truncate() {
    let mut s = stack(
        "CREATE TABLE events (id int, day date, v int, PRIMARY KEY (id, day))
             PARTITION BY RANGE (day);
         CREATE TABLE events_2024 PARTITION OF events
             FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY RANGE (day);
         CREATE TABLE events_2024_h1 PARTITION OF events_2024
             FOR VALUES FROM ('2024-01-01') TO ('2024-07-01');
         INSERT INTO events VALUES (1, '2024-05-01', 1);
         CREATE TABLE marker (id int PRIMARY KEY, v int);
         INSERT INTO marker VALUES (1, 0);",
        "
[[rules]]
table = \"public.events_2024\"
namespace = \"events_2024\"
keys = [\"{id}:{day}\"]

[[rules]]
table = \"public.marker\"
namespace = \"marker\"
keys = [\"{id}\"]
",
    )
    .await;
    s.install().await;
    let (daemon, listener) = s.start().await;
    s.exec("ALTER TABLE events ALTER COLUMN v TYPE bigint USING v * 10")
        .await;
    let marker = s.marker().await;
    wait_flush_before_marker(&listener, "events_2024", &marker).await;

    s.exec(
        "CREATE TABLE events_2024_h2 PARTITION OF events_2024
                 FOR VALUES FROM ('2024-07-01') TO ('2025-01-01');
             INSERT INTO events VALUES (2, '2024-08-01', 2);",
    )
    .await;
    listener.wait_keys(&["events_2024/2:2024-08-01"]).await;
    listener.clear();
    s.exec("TRUNCATE events_2024_h2").await;
    let marker = s.marker().await;
    wait_flush_before_marker(&listener, "events_2024", &marker).await;
    daemon.stop().await;
}

/// `ALTER TYPE … RENAME VALUE` changes the text of every row holding the value, with no row
/// event: the tables with a column of the type are announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enum_value_renamed_flushes_the_tables_using_the_type() {
    let mut s = stack(
        "CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE TABLE feelings (id int PRIMARY KEY, m mood);
         INSERT INTO feelings VALUES (1, 'sad');
         CREATE TABLE marker (id int PRIMARY KEY, v int);
         INSERT INTO marker VALUES (1, 0);",
        "
[[rules]]
table = \"public.feelings\"
namespace = \"feelings\"
keys = [\"{id}\"]

[[rules]]
table = \"public.marker\"
namespace = \"marker\"
keys = [\"{id}\"]
",
    )
    .await;
    s.install().await;
    let (daemon, listener) = s.start().await;
    s.exec("ALTER TYPE mood RENAME VALUE 'sad' TO 'unhappy'")
        .await;
    let marker = s.marker().await;
    wait_flush_before_marker(&listener, "feelings", &marker).await;
    daemon.stop().await;
}

/// A partition attached (its oid named by no statement of its own) and dropped while the
/// daemon is down: on the replay, the ATTACH's announcement lists every partition of the tree,
/// so the daemon knows the table when its DROP (which can no longer name the tree) is decoded,
/// and flushes after the rows it held were announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_attached_and_dropped_while_the_daemon_is_down_is_flushed_at_its_drop() {
    let mut s = stack(EVENTS, RULES).await;
    s.install().await;
    let (daemon, listener) = s.start().await;
    daemon.stop().await;
    s.exec(
        "CREATE TABLE ev_x (id int NOT NULL, day date NOT NULL);
             ALTER TABLE events ATTACH PARTITION ev_x
                 FOR VALUES FROM ('2030-01-01') TO ('2031-01-01');",
    )
    .await;
    s.exec("INSERT INTO events VALUES (7, '2030-02-01')").await;
    s.exec("DROP TABLE ev_x").await;
    let marker = s.marker().await;
    // One transaction per batch: the replay would otherwise publish the ATTACH's flush and
    // the row in one batch, where the order of the two says nothing.
    let one_per_batch = s.toml.replace(
        "status_interval_ms = 200",
        "status_interval_ms = 200\nbatch_max_keys = 1",
    );
    let daemon = Daemon::start(&one_per_batch).await;
    wait_until("the replay published", DEADLINE, || async {
        listener.keys().contains(&marker)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", listener.data()));
    let data = listener.data();
    let row = data
        .iter()
        .rposition(
            |m| matches!(&m.body, Body::Keys(k) if k.iter().any(|k| k.key == "7:2030-02-01")),
        )
        .unwrap_or_else(|| panic!("the attached row's key: {data:?}"));
    let flushed_after = data[row + 1..]
        .iter()
        .any(|m| matches!(&m.body, Body::Flush(ns) if ns.iter().any(|n| n == "events")));
    assert!(
        flushed_after,
        "the DROP of the attached partition flushes after its row was announced: {data:?}"
    );
    daemon.stop().await;
}

/// The event trigger skips the DDL of its own partition coverage by a token only superusers
/// can read: a session setting `walcache.internal` itself does not silence it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cannot_switch_the_announcements_off() {
    let mut s = stack(EVENTS, RULES).await;
    s.install().await;
    let (daemon, listener) = s.start().await;
    s.exec(
        "SET walcache.internal = 'on';
             ALTER TABLE events DETACH PARTITION events_2024;
             RESET walcache.internal;",
    )
    .await;
    let marker = s.marker().await;
    wait_flush_before_marker(&listener, "events", &marker).await;
    daemon.stop().await;
}
