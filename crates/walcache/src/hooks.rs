//! Test-only pause points that let a test force an interleaving deterministically.
//!
//! Compiled only with the `test-hooks` feature, which the crate enables for its own tests
//! through a dev-dependency on itself. Without it, `Hooks` is a zero-sized type whose
//! `pass` is an immediately ready future, so release builds carry no cost.
//!
//! A test arms a point with `Hooks::pause_next`; the next task to pass that point (on this
//! handle only: hooks are per handle, never process-wide) stops there until the returned
//! `Pause` is released or dropped. `Pause::reached` waits until a task has stopped there.
//!
//! They also count, per handle, the events a test waits for that the process-wide metrics
//! recorder cannot tell apart by handle (`Hooks::count`): under plain `cargo test` every test
//! of a binary shares one recorder, and another test's handle moves the same counters.
#![cfg_attr(not(feature = "test-hooks"), allow(unreachable_pub))]

/// A place in the library where a test can stop a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HookPoint {
    /// `Cache::invalidate` / `invalidate_tag`: L1 has dropped the entry, the L2 delete has not
    /// been sent yet.
    BeforeL2Invalidate,
    /// `Cache::invalidate_all`: L1 is flushed, the L2 flush script has not been sent yet.
    BeforeL2Flush,
    /// A read (single-flight leader or `get`): the L2 read returned, nothing filled yet.
    AfterL2Read,
    /// A caller found a load of the key in flight and joined it, before waiting for it.
    JoinedFlight,
    /// Applying a namespace flush locally: half of it done (the subscriber's thread blocks here).
    InsideApplyFlush,
    /// A fill into L1: its checks passed, nothing inserted yet (the filling thread blocks here).
    BeforeL1Insert,
    /// A fill into L1: inserted, the generations not re-read yet (the filling thread blocks
    /// here).
    AfterL1Insert,
}

/// Something a handle did, counted per handle (see `Hooks::count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HookEvent {
    /// The whole L1 was flushed, for this reason (the `reason` label of
    /// [`L1_FLUSHES_TOTAL`](crate::metrics::L1_FLUSHES_TOTAL)).
    L1Flush(&'static str),
    /// A message on the invalidation channels did not decode
    /// ([`UNDECODABLE_MESSAGES_TOTAL`](crate::metrics::UNDECODABLE_MESSAGES_TOTAL)).
    UndecodableMessage,
    /// A message was ignored whole: the `channel` and `reason` labels of
    /// [`MESSAGES_REJECTED_TOTAL`](crate::metrics::MESSAGES_REJECTED_TOTAL).
    MessageRejected(&'static str, &'static str),
    /// A namespace flush from the application channel was applied (after coalescing: see
    /// [`APP_FLUSHES_COALESCED_TOTAL`](crate::metrics::APP_FLUSHES_COALESCED_TOTAL)).
    AppFlush,
}

#[cfg(feature = "test-hooks")]
pub use enabled::{Hooks, Pause};

#[cfg(feature = "test-hooks")]
mod enabled {
    use std::collections::HashMap;
    use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

    use super::{HookEvent, HookPoint};

    #[derive(Default)]
    struct GateState {
        /// A task has stopped at the point.
        reached: bool,
        released: bool,
    }

    #[derive(Default)]
    struct Gate {
        state: Mutex<GateState>,
        changed: Condvar,
        notify: tokio::sync::Notify,
    }

    impl Gate {
        fn lock(&self) -> MutexGuard<'_, GateState> {
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }

        fn update(&self, f: impl FnOnce(&mut GateState)) {
            f(&mut self.lock());
            self.changed.notify_all();
            self.notify.notify_waiters();
        }

        async fn wait_async(&self, done: impl Fn(&GateState) -> bool) {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if done(&self.lock()) {
                    return;
                }
                notified.await;
            }
        }
    }

    /// The pause points of one handle, and the counts of its events.
    #[derive(Default)]
    pub struct Hooks {
        armed: Mutex<HashMap<HookPoint, Arc<Gate>>>,
        counts: Mutex<HashMap<HookEvent, u64>>,
    }

    impl std::fmt::Debug for Hooks {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Hooks").finish_non_exhaustive()
        }
    }

    /// An armed pause point; releasing or dropping it lets the stopped task go on.
    #[must_use = "dropping a Pause releases it at once"]
    pub struct Pause {
        gate: Arc<Gate>,
    }

    impl std::fmt::Debug for Pause {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Pause").finish_non_exhaustive()
        }
    }

    impl Hooks {
        pub(crate) fn new() -> Self {
            Hooks::default()
        }

        /// Stop the next task that passes `point` until the returned `Pause` is released.
        /// Arming a point again replaces an unused earlier arming.
        pub fn pause_next(&self, point: HookPoint) -> Pause {
            let gate = Arc::new(Gate::default());
            self.armed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(point, Arc::clone(&gate));
            Pause { gate }
        }

        /// How many times this handle did `event` so far.
        pub fn count(&self, event: HookEvent) -> u64 {
            self.counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&event)
                .copied()
                .unwrap_or(0)
        }

        /// Count `event` for this handle.
        pub(crate) fn record(&self, event: HookEvent) {
            *self
                .counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(event)
                .or_insert(0) += 1;
        }

        fn take(&self, point: HookPoint) -> Option<Arc<Gate>> {
            self.armed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&point)
        }

        /// Pass `point` from async code: stops here if the point is armed.
        pub(crate) async fn pass(&self, point: HookPoint) {
            let Some(gate) = self.take(point) else {
                return;
            };
            gate.update(|s| s.reached = true);
            gate.wait_async(|s| s.released).await;
        }

        /// Pass `point` from synchronous code: blocks the thread if the point is armed.
        pub(crate) fn pass_blocking(&self, point: HookPoint) {
            let Some(gate) = self.take(point) else {
                return;
            };
            gate.update(|s| s.reached = true);
            let mut state = gate.lock();
            while !state.released {
                state = gate
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    impl Pause {
        /// Wait until a task has stopped at the point (wrap it in a timeout: it waits forever
        /// if no task comes).
        pub async fn reached(&self) {
            self.gate.wait_async(|s| s.reached).await;
        }

        /// Whether a task has stopped at the point.
        pub fn is_reached(&self) -> bool {
            self.gate.lock().reached
        }

        /// Let the stopped task (or the next one to come) go on.
        pub fn release(self) {
            drop(self);
        }
    }

    impl Drop for Pause {
        fn drop(&mut self) {
            self.gate.update(|s| s.released = true);
        }
    }
}

#[cfg(not(feature = "test-hooks"))]
pub(crate) use disabled::Hooks;

#[cfg(not(feature = "test-hooks"))]
mod disabled {
    use super::{HookEvent, HookPoint};

    /// Without the `test-hooks` feature: no pause points, no cost.
    #[derive(Debug)]
    pub(crate) struct Hooks;

    impl Hooks {
        pub(crate) fn new() -> Self {
            Hooks
        }

        #[inline(always)]
        pub(crate) fn pass(&self, _: HookPoint) -> std::future::Ready<()> {
            std::future::ready(())
        }

        #[inline(always)]
        pub(crate) fn pass_blocking(&self, _: HookPoint) {}

        #[inline(always)]
        pub(crate) fn record(&self, _: HookEvent) {}
    }
}
