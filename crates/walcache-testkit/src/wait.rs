//! Deadline waits: poll a condition instead of sleeping a guessed amount.

use std::future::Future;
use std::time::{Duration, Instant};

/// A [`wait_until`] or [`wait_until_blocking`] condition did not hold before the deadline.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}")]
pub struct WaitError {
    /// The description passed to the wait.
    pub what: String,
    /// How long was waited.
    pub waited: Duration,
}

/// The pause between two polls: starts at 1 ms and doubles up to 10 ms.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(1))
    }

    fn next(&mut self) -> Duration {
        let current = self.0;
        self.0 = (self.0 * 2).min(Duration::from_millis(10));
        current
    }
}

/// Waits for an async condition, polling every few milliseconds until it holds or `deadline`
/// has passed.
///
/// The deadline is measured on the real clock ([`std::time::Instant`]), so it also works when
/// tokio's clock is paused.
///
/// # Errors
///
/// [`WaitError`] when the condition still does not hold after `deadline`.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use walcache_testkit::wait_until;
///
/// let start = std::time::Instant::now();
/// wait_until("20 ms to pass", Duration::from_secs(5), || async move {
///     start.elapsed() >= Duration::from_millis(20)
/// })
/// .await
/// .unwrap();
/// # }
/// ```
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<(), WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    let mut backoff = Backoff::new();
    loop {
        if f().await {
            return Ok(());
        }
        let waited = start.elapsed();
        if waited >= deadline {
            return Err(WaitError {
                what: what.to_owned(),
                waited,
            });
        }
        tokio::time::sleep(backoff.next().min(deadline - waited)).await;
    }
}

/// Blocking twin of [`wait_until`], for synchronous code and `Drop` implementations.
///
/// # Errors
///
/// [`WaitError`] when the condition still does not hold after `deadline`.
pub fn wait_until_blocking(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut() -> bool,
) -> Result<(), WaitError> {
    let start = Instant::now();
    let mut backoff = Backoff::new();
    loop {
        if f() {
            return Ok(());
        }
        let waited = start.elapsed();
        if waited >= deadline {
            return Err(WaitError {
                what: what.to_owned(),
                waited,
            });
        }
        std::thread::sleep(backoff.next().min(deadline - waited));
    }
}
