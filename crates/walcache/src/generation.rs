//! Generations: the counters that let a fill notice that an invalidation raced it.
//!
//! Every invalidation that can touch a key bumps a counter *before* it removes anything: the
//! key's stripe (by key hash), its namespace's counter, or the process-wide counter (tags,
//! reconnects, gaps). A fill snapshots the three counters before any I/O and inserts into L1
//! only if the snapshot is unchanged afterwards; if it changed after the insert, it removes
//! what it inserted.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

const STRIPES: usize = 64;

/// `l2_generation` value meaning "not known: read it from Redis together with the value".
pub(crate) const UNKNOWN_GENERATION: u64 = u64::MAX;

#[derive(Debug)]
pub(crate) struct NamespaceGenerations {
    namespace: AtomicU64,
    stripes: [AtomicU64; STRIPES],
    /// The namespace's generation in Redis (part of every value key), or [`UNKNOWN_GENERATION`].
    l2_generation: AtomicU64,
}

/// What a fill saw before its I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snapshot {
    global: u64,
    namespace: u64,
    stripe: u64,
}

pub(crate) fn key_hash(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl NamespaceGenerations {
    pub(crate) fn new() -> Self {
        NamespaceGenerations {
            namespace: AtomicU64::new(0),
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
            l2_generation: AtomicU64::new(UNKNOWN_GENERATION),
        }
    }

    fn stripe(&self, hash: u64) -> &AtomicU64 {
        // STRIPES is a power of two and the index is masked below it.
        &self.stripes[(hash as usize) & (STRIPES - 1)]
    }

    pub(crate) fn snapshot(&self, global: &AtomicU64, hash: u64) -> Snapshot {
        Snapshot {
            global: global.load(Ordering::Acquire),
            namespace: self.namespace.load(Ordering::Acquire),
            stripe: self.stripe(hash).load(Ordering::Acquire),
        }
    }

    pub(crate) fn bump_key(&self, hash: u64) {
        self.stripe(hash).fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn bump_namespace(&self) {
        self.namespace.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn l2_generation(&self) -> u64 {
        self.l2_generation.load(Ordering::Acquire)
    }

    pub(crate) fn set_l2_generation(&self, generation: u64) {
        self.l2_generation.store(generation, Ordering::Release);
    }

    /// Learn the generation from Redis. Generations only move forward (a flush increments
    /// them), so a smaller one was read before a flush that this process already knows of:
    /// it never replaces a larger one. First-writer-wins would let a reader that fetched the
    /// old generation just before a flush pin the process to it for good, reading keys that
    /// no delete touches any more.
    pub(crate) fn learn_l2_generation(&self, generation: u64) {
        let _ = self
            .l2_generation
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |known| {
                (known == UNKNOWN_GENERATION || known < generation).then_some(generation)
            });
    }

    /// A script found Redis at `current` for a read made at `used`. Take `current` if the
    /// process still holds `used`: also when Redis went backwards (restarted empty, without a
    /// daemon to move it past every generation a process may hold), which monotonic learning
    /// alone would never follow.
    pub(crate) fn correct_l2_generation(&self, used: u64, current: u64) {
        let _ =
            self.l2_generation
                .compare_exchange(used, current, Ordering::AcqRel, Ordering::Acquire);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_moves_with_every_kind_of_bump() {
        let global = AtomicU64::new(0);
        let g = NamespaceGenerations::new();
        let h = key_hash("42");
        let s0 = g.snapshot(&global, h);
        assert_eq!(s0, g.snapshot(&global, h));
        g.bump_key(h);
        let s1 = g.snapshot(&global, h);
        assert_ne!(s0, s1);
        g.bump_namespace();
        let s2 = g.snapshot(&global, h);
        assert_ne!(s1, s2);
        global.fetch_add(1, Ordering::AcqRel);
        assert_ne!(s2, g.snapshot(&global, h));
    }

    #[test]
    fn learned_generations_only_move_forward() {
        let g = NamespaceGenerations::new();
        assert_eq!(g.l2_generation(), UNKNOWN_GENERATION);
        g.learn_l2_generation(3);
        assert_eq!(g.l2_generation(), 3);
        g.learn_l2_generation(2);
        assert_eq!(
            g.l2_generation(),
            3,
            "an older read never replaces a newer one"
        );
        g.learn_l2_generation(4);
        assert_eq!(g.l2_generation(), 4, "a newer one replaces an older one");
        g.set_l2_generation(UNKNOWN_GENERATION);
        g.set_l2_generation(5);
        g.learn_l2_generation(4);
        assert_eq!(g.l2_generation(), 5);
        // Redis went back to 0: a read at 5 that Redis answered at 0 corrects it...
        g.correct_l2_generation(5, 0);
        assert_eq!(g.l2_generation(), 0);
        // ...but a correction for a generation the process no longer holds does nothing.
        g.correct_l2_generation(5, 1);
        assert_eq!(g.l2_generation(), 0);
    }
}
