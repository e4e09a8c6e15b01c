//! Retrying transient database errors: consumes an operation and a
//! [`Policy`], produces the operation's result after retrying the failures
//! that a database restart, a lost connection, a serialization failure, a
//! deadlock, a lock timeout or too many connections cause, with exponential
//! backoff and jitter. Every other error is returned at once.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The first delay; each retry doubles it.
    pub base: Duration,
    /// The longest delay between two attempts.
    pub max_delay: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            attempts: crate::spec::DEFAULT_RETRY_ATTEMPTS,
            base: Duration::from_millis(100),
            max_delay: Duration::from_millis(crate::spec::DEFAULT_RETRY_MAX_DELAY_MS),
        }
    }
}

impl Policy {
    /// The delay before retry number `retry` (from 1): the base doubled
    /// each time, capped, with ±50% jitter so that many workers do not
    /// retry in lockstep.
    pub fn delay(&self, retry: u32) -> Duration {
        let doubled = self
            .base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let capped = doubled.min(self.max_delay);
        capped.mul_f64(0.5 + fastrand::f64())
    }
}

/// Errors that know whether trying again may help.
pub trait Transient {
    /// Whether the error is one a retry may get past.
    fn is_transient(&self) -> bool;
}

/// Runs `op` until it succeeds, fails with an error that is not transient,
/// or has used `policy.attempts` attempts. Each retry is logged with what
/// was being done and counted in `retries`.
pub async fn retry<T, E, F, Fut>(
    policy: &Policy,
    what: &str,
    retries: &AtomicU64,
    mut op: F,
) -> Result<T, E>
where
    E: Transient + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_transient() && attempt < policy.attempts => {
                let delay = policy.delay(attempt);
                tracing::warn!(
                    attempt,
                    of = policy.attempts,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    %error,
                    "{what} failed; retrying."
                );
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Flaky(bool);
    impl Transient for Flaky {
        fn is_transient(&self) -> bool {
            self.0
        }
    }
    impl std::fmt::Display for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "flaky({})", self.0)
        }
    }

    fn fast(attempts: u32) -> Policy {
        Policy {
            attempts,
            base: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let retries = AtomicU64::new(0);
        let mut calls = 0;
        let result: Result<u32, Flaky> = retry(&fast(5), "test", &retries, || {
            calls += 1;
            let n = calls;
            async move { if n < 3 { Err(Flaky(true)) } else { Ok(n) } }
        })
        .await;
        assert_eq!(result.ok(), Some(3));
        assert_eq!(retries.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn permanent_errors_and_exhausted_attempts_are_returned() {
        let retries = AtomicU64::new(0);
        let permanent: Result<(), Flaky> =
            retry(&fast(5), "test", &retries, || async { Err(Flaky(false)) }).await;
        assert!(matches!(permanent, Err(Flaky(false))));
        assert_eq!(retries.load(Ordering::Relaxed), 0);
        let exhausted: Result<(), Flaky> =
            retry(&fast(3), "test", &retries, || async { Err(Flaky(true)) }).await;
        assert!(matches!(exhausted, Err(Flaky(true))));
        assert_eq!(retries.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn delays_double_up_to_the_cap_with_jitter() {
        let p = Policy {
            attempts: 10,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let first = p.delay(1);
            assert!(
                first >= Duration::from_millis(50) && first <= Duration::from_millis(150),
                "{first:?}"
            );
            let late = p.delay(9);
            assert!(
                late >= Duration::from_millis(500) && late <= Duration::from_millis(1500),
                "{late:?}"
            );
        }
    }
}
