//! The checker on hand-made observations: every class, the "oldest newer version" rule,
//! commits that return out of version order, and fault windows that widen the bound.
//! "Not found" answers against committed absences.

use walcache_audit::{
    check, classify, parse_duration, row_key, split_row_key, Bounds, Class, Commit, Fault, History,
    Read, Zipf,
};

const MS: u64 = 1_000_000;

fn commit(id: i64, version: i64, t_ms: u64) -> Commit {
    Commit::at(id, version, t_ms * MS)
}

/// A DELETE of `id` committing `version`, sent at `sent_ms`, returned at `t_ms`.
fn delete(id: i64, version: i64, sent_ms: u64, t_ms: u64) -> Commit {
    Commit {
        id,
        version,
        absent: true,
        t_start_ns: sent_ms * MS,
        t_ns: t_ms * MS,
    }
}

/// A read of `version` that started at `t_ms` and took 1 ms.
fn read(id: i64, version: i64, t_ms: u64) -> Read {
    Read {
        id,
        version: Some(version),
        t_ns: t_ms * MS,
        t_end_ns: (t_ms + 1) * MS,
        reader: 7,
    }
}

fn not_found(id: i64, t_ms: u64, t_end_ms: u64) -> Read {
    Read {
        id,
        version: None,
        t_ns: t_ms * MS,
        t_end_ns: t_end_ms * MS,
        reader: 7,
    }
}

fn bounds(base_ms: u64) -> Bounds {
    Bounds {
        base_ns: base_ms * MS,
        grace_ns: 5_000 * MS,
        faults: Vec::new(),
    }
}

/// Row 1: v0 at 0 ms, v1 returns at 1000 ms, v2 at 1200 ms. Row 2: v0 only.
fn commits() -> Vec<Commit> {
    vec![
        commit(1, 0, 0),
        commit(1, 1, 1000),
        commit(1, 2, 1200),
        commit(2, 0, 0),
    ]
}

#[test]
fn classifies_fresh_stale_within_and_stale_beyond() {
    let history = History::new(&commits());
    let b = bounds(100);
    let class = |r: Read| classify(&history, &b, &r);

    // Fresh: the newest version; an old version read before the newer COMMIT returned; a read
    // starting at the very instant of the return (not strictly after it); an untouched row;
    // a version newer than any recorded (its writer had not recorded it yet).
    for r in [
        read(1, 2, 5000),
        read(1, 0, 999),
        read(1, 0, 1000),
        read(1, 1, 1100),
        read(2, 0, 5000),
        read(1, 3, 5000),
        read(99, 0, 5000),
    ] {
        let v = class(r);
        assert_eq!(v.class, Class::Fresh, "{r:?}");
        assert_eq!(v.staleness_ns, 0);
        assert_eq!(v.newer, None);
    }

    // Stale within: v0 read 50 ms after v1 returned.
    let v = class(read(1, 0, 1050));
    assert_eq!(v.class, Class::StaleWithin);
    assert_eq!(v.staleness_ns, 50 * MS);
    assert_eq!(v.newer.map(|n| n.version), Some(1));

    // Exactly at the bound is within it.
    assert_eq!(class(read(1, 0, 1100)).class, Class::StaleWithin);

    // Stale beyond: v0 read 150 ms after v1 returned; staleness counts from the OLDEST newer
    // version (v1 at 1000), not the newest (v2 at 1200).
    let v = class(read(1, 0, 1250));
    assert_eq!(v.class, Class::StaleBeyond);
    assert_eq!(v.staleness_ns, 250 * MS);
    assert_eq!(v.newer.map(|n| n.version), Some(1));

    // v1 read after v2 returned: stale by the time since v2.
    let v = class(read(1, 1, 1250));
    assert_eq!(v.class, Class::StaleWithin);
    assert_eq!(v.staleness_ns, 50 * MS);
}

#[test]
fn commits_returning_out_of_version_order_use_the_earliest_return() {
    // v2's writer saw its COMMIT return before v1's writer did (both racing on one row).
    let history = History::new(&[commit(1, 0, 0), commit(1, 2, 1000), commit(1, 1, 1010)]);
    let b = bounds(100);
    let v = classify(&history, &b, &read(1, 0, 1005));
    assert_eq!(v.class, Class::StaleWithin);
    assert_eq!(v.staleness_ns, 5 * MS);
    assert_eq!(v.newer.map(|n| n.version), Some(2));
    // v1 is stale once v2 has returned, even though v1 returned later.
    let v = classify(&history, &b, &read(1, 1, 1020));
    assert_eq!(v.staleness_ns, 20 * MS);
}

#[test]
fn a_fault_window_widens_the_bound_until_its_grace_ends() {
    let history = History::new(&commits());
    let mut b = bounds(100);
    b.grace_ns = 500 * MS;
    b.faults.push(Fault {
        kind: "daemon-kill".into(),
        start_ns: 900 * MS,
        end_ns: 1000 * MS,
        bound_ns: 2000 * MS,
    });
    // 300 ms stale inside the window (900 ms .. 1500 ms): within the fault's bound.
    let v = classify(&history, &b, &read(1, 0, 1300));
    assert_eq!((v.class, v.bound_ns), (Class::StaleWithin, 2000 * MS));
    // After the window the base bound is back.
    let v = classify(&history, &b, &read(1, 0, 1600));
    assert_eq!((v.class, v.bound_ns), (Class::StaleBeyond, 100 * MS));
}

#[test]
fn check_totals_percentiles_nines_faults_and_violations() {
    let mut b = bounds(100);
    b.faults.push(Fault {
        kind: "pubsub-kill".into(),
        start_ns: 1000 * MS,
        end_ns: 1010 * MS,
        bound_ns: 100 * MS,
    });
    let reads = vec![
        read(1, 2, 5000), // fresh
        read(2, 0, 5000), // fresh
        read(1, 0, 990),  // fresh
        read(1, 0, 1010), // stale 10 ms
        read(1, 1, 1230), // stale 30 ms
        read(1, 0, 1400), // stale 400 ms: beyond
    ];
    let s = check(
        &commits(),
        &reads,
        &b,
        0,
        5_000 * MS,
        &[10.0, 100.0, 1000.0],
    );
    assert_eq!(
        (s.reads, s.fresh, s.stale_within, s.stale_beyond),
        (6, 3, 2, 1)
    );
    let p = s.stale_within_staleness.expect("stale-within reads");
    assert_eq!((p.p50_ms, p.max_ms), (10.0, 30.0));
    // Steady state: only the read at 990 ms starts outside the fault's window (1000 ms to
    // 1010 ms + 5 s); per table: all six are table 0's.
    assert_eq!((s.steady.reads, s.steady.stale_within), (1, 0));
    assert_eq!(s.tables.len(), 1);
    assert_eq!((s.tables[0].reads, s.tables[0].stale_beyond), (6, 1));

    // Within 10 ms: 4 of 6; within 100 ms: 5 of 6 (0 nines); within 1 s: all.
    assert_eq!(s.nines[0].reads_within, 4);
    assert_eq!(s.nines[1].reads_within, 5);
    assert_eq!(s.nines[1].nines, Some(0));
    assert_eq!(s.nines[2].nines, None);

    // In the 5 s after the fault: the three reads from 1010 ms on, and the two at 5000 ms.
    let f = &s.faults[0];
    assert_eq!(
        (f.reads_after, f.stale_after, f.beyond_after),
        (5, 3, 1),
        "{f:?}"
    );
    assert_eq!(f.worst_staleness_ms, 400.0);

    assert_eq!(s.violations.len(), 1);
    let v = &s.violations[0];
    assert_eq!(
        (v.id, v.version_seen, v.newer_version),
        (1, Some(0), Some(1))
    );
    assert_eq!(v.staleness_ms, Some(400.0));
    assert!(v
        .last_fault
        .as_deref()
        .is_some_and(|f| f.starts_with("pubsub-kill")));
}

#[test]
fn not_found_is_judged_against_the_newest_absence_sent_before_the_read_ended() {
    // Row 5: present v0; DELETE v1 sent at 100, returned at 110; INSERT v2 returned at 300;
    // DELETE v3 sent at 500, returned at 520. Row 6: never absent.
    let history = History::new(&[
        commit(5, 0, 0),
        delete(5, 1, 100, 110),
        commit(5, 2, 300),
        delete(5, 3, 500, 520),
        commit(6, 0, 0),
    ]);
    let b = bounds(100);
    let class = |r: Read| classify(&history, &b, &r);
    // Between the DELETE and the INSERT: fresh; during the DELETE (sent, not returned): fresh.
    assert_eq!(class(not_found(5, 200, 201)).class, Class::Fresh);
    assert_eq!(class(not_found(5, 95, 105)).class, Class::Fresh);
    // "Not found" 50 ms after the INSERT returned: stale within; 150 ms: beyond.
    let v = class(not_found(5, 350, 351));
    assert_eq!((v.class, v.staleness_ns), (Class::StaleWithin, 50 * MS));
    assert_eq!(class(not_found(5, 450, 451)).class, Class::StaleBeyond);
    // A read that ends after the second DELETE was sent may have seen it: fresh.
    assert_eq!(class(not_found(5, 450, 501)).class, Class::Fresh);
    // A present version read after the DELETE returned: stale.
    assert_eq!(class(read(5, 0, 150)).staleness_ns, 40 * MS);
    // "Not found" for a row that was never absent, or before its first DELETE was sent:
    // beyond any bound, with no newer version to blame.
    for r in [not_found(6, 10, 11), not_found(5, 10, 11)] {
        let v = class(r);
        assert_eq!((v.class, v.newer), (Class::StaleBeyond, None), "{r:?}");
    }
}

#[test]
fn row_keys_keep_tables_apart() {
    let k = row_key(3, 1_000_000);
    assert_eq!(split_row_key(k), (3, 1_000_000));
    assert_ne!(row_key(1, 7), row_key(2, 7));
}

#[test]
fn nines_count_leading_nines() {
    // 999 fresh reads and one stale: exactly 3 nines within 0 ms.
    let history = [commit(1, 0, 0), commit(1, 1, 10)];
    let mut reads: Vec<Read> = (0..999).map(|_| read(1, 1, 20)).collect();
    reads.push(read(1, 0, 20));
    let s = check(&history, &reads, &bounds(100), 0, 0, &[0.0]);
    assert_eq!(s.nines[0].nines, Some(3));
}

#[test]
fn zipf_is_skewed_and_in_range() {
    let z = Zipf::new(1000, 1.0);
    assert_eq!(z.id_for(0.0), 1);
    assert_eq!(z.id_for(0.999_999_999), 1000);
    let mut rng = rand::rng();
    let mut counts = vec![0u32; 1001];
    for _ in 0..100_000 {
        let id = z.sample(&mut rng);
        assert!((1..=1000).contains(&id));
        counts[id as usize] += 1;
    }
    // Id 1 carries about 1/H(1000) ≈ 13% of the mass; id 1000 about 0.013%.
    assert!(counts[1] > 10_000 && counts[1] < 16_000, "{}", counts[1]);
    assert!(counts[1] > 50 * counts[1000]);
}

#[test]
fn parses_durations() {
    let d = |s| parse_duration(s).expect(s);
    assert_eq!(d("250ms").as_millis(), 250);
    assert_eq!(d("45s").as_secs(), 45);
    assert_eq!(d("10m").as_secs(), 600);
    assert_eq!(d("30").as_secs(), 30);
    assert!(parse_duration("10 parsecs").is_err());
}
