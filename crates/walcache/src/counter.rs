//! A striped event counter for the L1 hit path: each thread adds to its own cache line, and the
//! subscriber thread folds the stripes into the `metrics` facade once a second. No contended
//! atomic, no clock read on a hit.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const STRIPES: usize = 16;

#[repr(align(64))]
#[derive(Debug, Default)]
struct Line(AtomicU64);

#[derive(Debug, Default)]
pub(crate) struct StripedCounter {
    lines: [Line; STRIPES],
    published: AtomicU64,
}

/// A stripe for a new thread: threads take the stripes in turn. Callers keep it in a
/// thread-local they already touch on the hot path.
pub(crate) fn new_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
}

impl StripedCounter {
    /// Count one event on the caller's stripe (from [`new_stripe`]).
    #[inline]
    pub(crate) fn increment_at(&self, stripe: usize) {
        self.lines[stripe % STRIPES]
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn total(&self) -> u64 {
        self.lines
            .iter()
            .map(|l| l.0.load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }

    /// The count since the last call (for `Counter::increment`).
    pub(crate) fn take_unpublished(&self) -> u64 {
        let total = self.total();
        let before = self.published.swap(total, Ordering::AcqRel);
        total.wrapping_sub(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_across_threads_and_publishes_deltas() {
        let c = std::sync::Arc::new(StripedCounter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || {
                    let stripe = new_stripe();
                    (0..1000).for_each(|_| c.increment_at(stripe));
                })
            })
            .collect();
        for t in threads {
            t.join().expect("counter thread");
        }
        assert_eq!(c.total(), 4000);
        assert_eq!(c.take_unpublished(), 4000);
        assert_eq!(c.take_unpublished(), 0);
        c.increment_at(new_stripe());
        assert_eq!(c.take_unpublished(), 1);
    }
}
