//! Generations: the counters that let a fill notice that an invalidation raced it.
//!
//! Every invalidation that can touch a key bumps a counter *before* it removes anything: the
//! key's stripe (by key hash), its namespace's counter, its namespace's tag counter (a tag of
//! the namespace), or the process-wide counter (reconnects, gaps). A fill snapshots the
//! counters before any I/O and inserts into L1 only if the snapshot is unchanged afterwards
//! (the tag counter only for an entry that carries tags); if it changed after the insert, it
//! removes what it inserted.
//!
//! That pair is a store-buffering handshake across two locations, one of them inside moka:
//! the fill writes the entry (moka's map) then reads our counter; the invalidation writes our
//! counter then reads the map to remove the entry. SeqCst on our counters alone cannot order
//! moka's accesses (acquire/release allow both reads to miss the other's write). So both
//! sides put a `fence(SeqCst)` between their write and their read ([`handshake_fence`]):
//! the two fences are ordered in the single total order S, and if the fill's fence comes
//! first, the invalidation's removal (sequenced after its fence) sees the entry; if the
//! invalidation's fence comes first, the fill's re-read sees the bump and the fill removes
//! its own entry. Either way the entry does not survive. A whole-L1 flush is moka's
//! `invalidate_all`, which compares entries' write times with the flush time rather than
//! reading the map, and keeps an entry written in the flush's own clock tick; so every L1
//! entry also records its namespace's counter when it is filled ([`NamespaceGenerations::stamp`])
//! and a hit whose counter moved since is a miss. The same order argument as for tags (see
//! [`TagStamps`]) makes that exact: the flush bumps the counter before it sweeps L1, the fill
//! reads its stamp before its check of the counters, and re-reads them after the insert.
//!
//! The namespace's generation in Redis (part of every value key) is known locally too, so a
//! live read costs one GET. It changes only together with a namespace bump, generation first:
//! a read takes its snapshot *before* it reads the generation, so a snapshot that includes a
//! flush's bump is never paired with the generation from before that flush. A generation read
//! from Redis is learned only if no flush happened since the reader's snapshot, checked under
//! the namespace's generation lock, which the flush holds too: a read that fetched the old
//! generation just before a flush cannot reinstate it just after.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

const STRIPES: usize = 64;
/// Stripes of the per-tag counters (by tag hash): a tag invalidation makes stale, on their
/// next hit, the L1 entries carrying a tag of its stripe.
const TAG_STRIPES: usize = 256;

/// One namespace's per-tag counters, striped by tag hash, that a tagged L1 entry records when
/// it is filled and that its every hit compares: an entry whose tag's counter moved since is
/// not served.
///
/// moka's predicate invalidation (`invalidate_entries_if`) alone is not enough: it is applied
/// lazily, and the fuzz test (`tests/it/fuzz.rs`) saw entries it should have covered served
/// milliseconds after the invalidation completed. The stamps make a tag invalidation O(1) in
/// this process and exact (up to stripe collisions, which only invalidate more).
///
/// Order, for a fill racing a tag invalidation (both sides SeqCst with [`handshake_fence`]):
/// the invalidation bumps the namespace's tag counter, then the tag's stripe; the fill reads
/// the stripe (its stamp), then checks the tag counter against its snapshot from before its
/// I/O, and only then inserts. If that check misses the first bump, the stamp read came
/// before the second: the entry carries the old stamp and is refused on hit. Otherwise the
/// fill does not insert. (Stamps read after the check could be the new ones on an entry
/// inserted after the invalidation returned, served until the fill's re-read removed it.)
/// Only fills of tagged entries in the namespace check the tag counter: a tag invalidation
/// disturbs no other fill.
#[derive(Debug)]
pub(crate) struct TagStamps {
    stripes: [AtomicU64; TAG_STRIPES],
}

impl TagStamps {
    pub(crate) fn new() -> Self {
        TagStamps {
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn stripe(&self, tag: &str) -> &AtomicU64 {
        // The modulo keeps the index below TAG_STRIPES, so the cast cannot truncate.
        &self.stripes[(key_hash(tag) % TAG_STRIPES as u64) as usize]
    }

    /// The tag's counter now, to record in an entry.
    pub(crate) fn stamp(&self, tag: &str) -> u64 {
        self.stripe(tag).load(Ordering::SeqCst)
    }

    /// A tag was invalidated.
    pub(crate) fn bump(&self, tag: &str) {
        self.stripe(tag).fetch_add(1, Ordering::SeqCst);
    }
}

/// `l2_generation` value meaning "not known: read it from Redis together with the value".
pub(crate) const UNKNOWN_GENERATION: u64 = u64::MAX;

#[derive(Debug)]
pub(crate) struct NamespaceGenerations {
    namespace: AtomicU64,
    /// Moves with every tag invalidation of the namespace, before the tag's stripe.
    tags: AtomicU64,
    /// The namespace's per-tag counters.
    pub(crate) tag_stamps: TagStamps,
    stripes: [AtomicU64; STRIPES],
    /// The namespace's generation in Redis (part of every value key), or [`UNKNOWN_GENERATION`].
    l2_generation: AtomicU64,
    /// Held while the generation changes: by a flush (with its namespace bump) and by a
    /// learn (with its check that no flush happened since the reader's snapshot). Only the
    /// miss path and invalidations take it; the hit path never does.
    l2_lock: Mutex<()>,
}

/// What a fill saw before its I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snapshot {
    global: u64,
    namespace: u64,
    stripe: u64,
    tags: u64,
}

impl Snapshot {
    /// Whether no invalidation that concerns an entry moved the counters between `self` and
    /// `now`: for an untagged entry, tag invalidations do not.
    pub(crate) fn holds(&self, now: &Snapshot, tagged: bool) -> bool {
        self.global == now.global
            && self.namespace == now.namespace
            && self.stripe == now.stripe
            && (!tagged || self.tags == now.tags)
    }
}

/// The fence on both sides of the insert / re-read versus bump / remove handshake (see the
/// module documentation). Call it between a fill's insert and its re-read of the counters,
/// and between an invalidation's bump and its removal from L1.
#[inline]
pub(crate) fn handshake_fence() {
    std::sync::atomic::fence(Ordering::SeqCst);
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
            tags: AtomicU64::new(0),
            tag_stamps: TagStamps::new(),
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
            l2_generation: AtomicU64::new(UNKNOWN_GENERATION),
            l2_lock: Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.l2_lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stripe(&self, hash: u64) -> &AtomicU64 {
        // STRIPES is a power of two and the index is masked below it.
        &self.stripes[(hash as usize) & (STRIPES - 1)]
    }

    pub(crate) fn snapshot(&self, global: &AtomicU64, hash: u64) -> Snapshot {
        Snapshot {
            global: global.load(Ordering::SeqCst),
            namespace: self.namespace.load(Ordering::SeqCst),
            stripe: self.stripe(hash).load(Ordering::SeqCst),
            tags: self.tags.load(Ordering::SeqCst),
        }
    }

    /// A tag of the namespace was invalidated: the tag counter moves, then the tag's stripe
    /// (see [`TagStamps`]).
    pub(crate) fn bump_tag(&self, tag: &str) {
        self.tags.fetch_add(1, Ordering::SeqCst);
        handshake_fence();
        self.tag_stamps.bump(tag);
    }

    pub(crate) fn bump_key(&self, hash: u64) {
        self.stripe(hash).fetch_add(1, Ordering::SeqCst);
    }

    /// A flush of the namespace: forget its generation (`None`: relearn it from Redis) or
    /// learn the new one, *then* bump the namespace counter, as one step for learners.
    pub(crate) fn flush(&self, new_generation: Option<u64>) {
        let _lock = self.lock();
        match new_generation {
            None => self
                .l2_generation
                .store(UNKNOWN_GENERATION, Ordering::SeqCst),
            Some(g) => self.learn_locked(g),
        }
        self.namespace.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn l2_generation(&self) -> u64 {
        self.l2_generation.load(Ordering::SeqCst)
    }

    /// Set the generation read from Redis right after subscribing (authoritative: it may go
    /// backwards, to a Redis that restarted empty).
    pub(crate) fn set_l2_generation(&self, generation: u64) {
        let _lock = self.lock();
        self.l2_generation.store(generation, Ordering::SeqCst);
    }

    /// The counters that flushes move, for [`learn_l2_generation`](Self::learn_l2_generation)
    /// by a caller that has no key.
    /// Every L1 entry of the namespace is dropped (a whole-L1 flush) without a new
    /// generation: the counter moves so that entries filled before are refused on hit. (A
    /// read learning the generation meanwhile retries; that is all it costs.)
    pub(crate) fn bump_namespace(&self) {
        self.namespace.fetch_add(1, Ordering::SeqCst);
    }

    /// The namespace's counter now, for an L1 entry to record: a hit whose recorded counter
    /// differs was filled before a flush.
    pub(crate) fn stamp(&self) -> u64 {
        self.namespace.load(Ordering::SeqCst)
    }

    pub(crate) fn flushes(&self, global: &AtomicU64) -> Snapshot {
        Snapshot {
            global: global.load(Ordering::SeqCst),
            namespace: self.namespace.load(Ordering::SeqCst),
            stripe: 0,
            tags: 0,
        }
    }

    /// Learn `generation`, read from Redis after `seen` was taken, unless a flush (of the
    /// namespace, or of the whole process) happened since: then it may predate that flush.
    /// Returns whether it was learned or already known.
    pub(crate) fn learn_l2_generation(
        &self,
        global: &AtomicU64,
        seen: &Snapshot,
        generation: u64,
    ) -> bool {
        let _lock = self.lock();
        if global.load(Ordering::SeqCst) != seen.global
            || self.namespace.load(Ordering::SeqCst) != seen.namespace
        {
            return false;
        }
        self.learn_locked(generation);
        true
    }

    /// Generations only move forward (a flush increments them), so a smaller one was read
    /// before a flush that this process already knows of: it never replaces a larger one.
    fn learn_locked(&self, generation: u64) {
        let _ = self
            .l2_generation
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |known| {
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
        g.flush(None);
        let s2 = g.snapshot(&global, h);
        assert_ne!(s1, s2);
        global.fetch_add(1, Ordering::AcqRel);
        let s3 = g.snapshot(&global, h);
        assert_ne!(s2, s3);
        // A tag invalidation concerns tagged entries only.
        g.bump_tag("users");
        let s4 = g.snapshot(&global, h);
        assert!(s3.holds(&s4, false));
        assert!(!s3.holds(&s4, true));
        assert!(!s2.holds(&s4, false));
    }

    #[test]
    fn learned_generations_only_move_forward() {
        let global = AtomicU64::new(0);
        let g = NamespaceGenerations::new();
        let seen = g.flushes(&global);
        assert_eq!(g.l2_generation(), UNKNOWN_GENERATION);
        assert!(g.learn_l2_generation(&global, &seen, 3));
        assert_eq!(g.l2_generation(), 3);
        g.learn_l2_generation(&global, &seen, 2);
        assert_eq!(
            g.l2_generation(),
            3,
            "an older read never replaces a newer one"
        );
        g.learn_l2_generation(&global, &seen, 4);
        assert_eq!(g.l2_generation(), 4, "a newer one replaces an older one");
        g.set_l2_generation(5);
        g.flush(Some(4));
        assert_eq!(g.l2_generation(), 5, "a flush learns forward only too");
        // Redis went back to 0: a read at 5 that Redis answered at 0 corrects it...
        g.correct_l2_generation(5, 0);
        assert_eq!(g.l2_generation(), 0);
        // ...but a correction for a generation the process no longer holds does nothing.
        g.correct_l2_generation(5, 1);
        assert_eq!(g.l2_generation(), 0);
    }

    #[test]
    fn a_generation_read_before_a_flush_is_not_learned_after_it() {
        let global = AtomicU64::new(0);
        let g = NamespaceGenerations::new();
        let h = key_hash("1");
        let seen = g.snapshot(&global, h);
        // The reader fetched generation 7 from Redis; a flush lands before it learns it.
        g.flush(None);
        assert!(!g.learn_l2_generation(&global, &seen, 7));
        assert_eq!(g.l2_generation(), UNKNOWN_GENERATION);
        // The same for a process-wide flush (a reconnect, a gap).
        let seen = g.snapshot(&global, h);
        global.fetch_add(1, Ordering::SeqCst);
        assert!(!g.learn_l2_generation(&global, &seen, 7));
        // A key invalidation is no flush: it does not stop the learn.
        let seen = g.snapshot(&global, h);
        g.bump_key(h);
        assert!(g.learn_l2_generation(&global, &seen, 7));
        assert_eq!(g.l2_generation(), 7);
    }
}
