//! The daemon builds keys from PostgreSQL's text output of a row; the library builds them from
//! Rust values. Here a real PostgreSQL (session pinned as the daemon pins it) renders random
//! values, and both sides must produce the same canonical key bytes.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use walcache_protocol::{ColumnType, KeyPart};
use walcache_testkit::PgServer;

const CASES: u32 = 200;

/// One value, as the Rust side knows it and as SQL that makes PostgreSQL print it.
#[derive(Debug, Clone)]
struct Case {
    ty: ColumnType,
    rust: KeyPart<'static>,
    sql: String,
}

fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `us` microseconds as an interval PostgreSQL computes exactly: `int8 * interval` goes through
/// a float, so whole days and the (small) remainder are added separately.
fn exact_interval(us: i64) -> String {
    const DAY: i64 = 86_400_000_000;
    let (days, rem) = (us.div_euclid(DAY), us.rem_euclid(DAY));
    format!("make_interval(days => {days}) + ({rem}::int8 * interval '1 microsecond')")
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![
        any::<i64>().prop_map(|v| Case {
            ty: ColumnType::Int8,
            rust: KeyPart::Int(v),
            sql: format!("({v})::int8"),
        }),
        any::<i32>().prop_map(|v| Case {
            ty: ColumnType::Int4,
            rust: KeyPart::Int(i64::from(v)),
            sql: format!("({v})::int4"),
        }),
        any::<bool>().prop_map(|v| Case {
            ty: ColumnType::Bool,
            rust: KeyPart::Bool(v),
            sql: format!("{v}::bool"),
        }),
        any::<u128>().prop_map(|v| Case {
            ty: ColumnType::Uuid,
            rust: KeyPart::Uuid(v),
            sql: format!("'{v:032x}'::uuid"),
        }),
        "[^\u{0}]{0,24}".prop_map(|s| Case {
            ty: ColumnType::Text,
            sql: format!("{}::text", sql_str(&s)),
            rust: KeyPart::Text(s.into()),
        }),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(|b| {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            Case {
                ty: ColumnType::Bytea,
                sql: format!("'\\x{hex}'::bytea"),
                rust: KeyPart::Bytes(b.into()),
            }
        }),
        // Microseconds from 4713 BC to 5874897 AD is PostgreSQL's range; stay well inside it.
        (-200_000_000_000_000_000i64..200_000_000_000_000_000i64).prop_map(|us| Case {
            ty: ColumnType::Timestamptz,
            rust: KeyPart::Timestamp(us),
            sql: format!("(timestamptz 'epoch' + {})", exact_interval(us)),
        }),
        (-200_000_000_000_000_000i64..200_000_000_000_000_000i64).prop_map(|us| Case {
            ty: ColumnType::Timestamp,
            rust: KeyPart::Timestamp(us),
            sql: format!("(timestamp 'epoch' + {})", exact_interval(us)),
        }),
        (-2_000_000i32..2_000_000i32).prop_map(|d| Case {
            ty: ColumnType::Date,
            rust: KeyPart::Date(d),
            sql: format!("(date '1970-01-01' + ({d})::int4)"),
        }),
        ("-?[0-9]{1,12}", "(\\.[0-9]{0,8})?").prop_map(|(i, f)| {
            let text = format!("{i}{f}");
            Case {
                ty: ColumnType::Numeric,
                rust: KeyPart::numeric(&text)
                    .expect("generated decimals are valid")
                    .into_owned(),
                sql: format!("'{text}'::numeric"),
            }
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_postgres_text_equal_keys_from_rust_values() {
    let pg = PgServer::start().expect("postgres");
    let db = pg.connect("postgres").await.expect("connect");
    // The daemon pins these in its startup packet.
    db.batch_execute(
        "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET extra_float_digits = 3; \
         SET bytea_output = hex;",
    )
    .await
    .expect("session settings");

    let mut runner = TestRunner::new(Config {
        cases: CASES,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(case(), CASES as usize);
    let cases = strategy
        .new_tree(&mut runner)
        .expect("generate cases")
        .current();
    // One round trip: every value rendered by its type's output function, as pgoutput sends
    // it (`format('%s', ..)`: a `::text` cast is not always the output function — bool casts
    // to 'true', but its output function, and so the replication stream, says 't').
    let select = cases
        .iter()
        .map(|c| format!("format('%s', {})", c.sql))
        .collect::<Vec<_>>()
        .join(", ");
    let row = db
        .query_one(&format!("SELECT {select}"), &[])
        .await
        .expect("render values");
    for (i, c) in cases.iter().enumerate() {
        let text: String = row.get(i);
        let from_pg =
            c.ty.parse_pg_text(&text)
                .unwrap_or_else(|e| panic!("{} output {text:?} did not parse: {e}", c.ty.name()));
        assert_eq!(
            from_pg.to_canonical(),
            c.rust.to_canonical(),
            "{}: PostgreSQL printed {text:?} for {:?}",
            c.ty.name(),
            c.rust
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_values_agree_with_postgres() {
    let pg = PgServer::start().expect("postgres");
    let db = pg.connect("postgres").await.expect("connect");
    db.batch_execute("SET DateStyle = ISO; SET TimeZone = 'UTC'; SET bytea_output = hex;")
        .await
        .expect("session settings");
    let cases: Vec<(ColumnType, &str, KeyPart<'static>)> = vec![
        (
            ColumnType::Timestamptz,
            "'infinity'::timestamptz",
            KeyPart::Timestamp(i64::MAX),
        ),
        (
            ColumnType::Timestamptz,
            "'-infinity'::timestamptz",
            KeyPart::Timestamp(i64::MIN),
        ),
        (
            ColumnType::Date,
            "'infinity'::date",
            KeyPart::Date(i32::MAX),
        ),
        (
            ColumnType::Numeric,
            "'NaN'::numeric",
            KeyPart::numeric("NaN").unwrap(),
        ),
        (
            ColumnType::Numeric,
            "'-0.000'::numeric",
            KeyPart::numeric("0").unwrap(),
        ),
        (
            ColumnType::Numeric,
            "'0010.500'::numeric",
            KeyPart::numeric("10.5").unwrap(),
        ),
        (ColumnType::Int2, "(-32768)::int2", KeyPart::Int(-32768)),
        (ColumnType::Bool, "true", KeyPart::Bool(true)),
        (
            ColumnType::Timestamptz,
            "'0044-03-15 12:00:00 BC'::timestamptz",
            ColumnType::Timestamptz
                .parse_pg_text("0044-03-15 12:00:00+00 BC")
                .unwrap()
                .into_owned(),
        ),
    ];
    for (ty, sql, rust) in cases {
        let text: String = db
            .query_one(&format!("SELECT format('%s', {sql})"), &[])
            .await
            .expect("render")
            .get(0);
        let parsed = ty.parse_pg_text(&text).expect("parses");
        assert_eq!(
            parsed.to_canonical(),
            rust.to_canonical(),
            "{sql} printed {text:?}"
        );
    }
}
