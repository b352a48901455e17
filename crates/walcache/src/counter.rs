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

fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

impl StripedCounter {
    #[inline]
    pub(crate) fn increment(&self) {
        self.lines[stripe()].0.fetch_add(1, Ordering::Relaxed);
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
                std::thread::spawn(move || (0..1000).for_each(|_| c.increment()))
            })
            .collect();
        for t in threads {
            t.join().expect("counter thread");
        }
        assert_eq!(c.total(), 4000);
        assert_eq!(c.take_unpublished(), 4000);
        assert_eq!(c.take_unpublished(), 0);
        c.increment();
        assert_eq!(c.take_unpublished(), 1);
    }
}
