//! Retry policy and exponential backoff with jitter.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The longest a retry waits unless told otherwise: a day.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

/// How often and how patiently a task is retried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included. 1 means no retry.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    #[serde(with = "crate::duration::millis")]
    pub initial: Duration,
    /// Each further delay is the previous one times `factor`.
    pub factor: f64,
    /// No delay is longer than this.
    #[serde(with = "crate::duration::millis")]
    pub max_delay: Duration,
    /// Spread delays randomly over [delay/2, delay] so that tasks failing together do not
    /// retry together.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial: Duration::from_secs(1),
            factor: 2.0,
            max_delay: DEFAULT_MAX_DELAY,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// Whether another attempt may follow attempt number `attempt` (1-based).
    pub fn allows_another(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The delay after failed attempt number `attempt` (1-based). `random` in [0, 1) comes from
    /// the caller so that this stays a pure function.
    pub fn delay_after(&self, attempt: u32, random: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1000) as i32;
        let base = self.initial.as_secs_f64() * self.factor.max(1.0).powi(exponent);
        let capped = base.min(self.max_delay.as_secs_f64());
        let secs = if self.jitter {
            capped * (0.5 + 0.5 * random.clamp(0.0, 1.0))
        } else {
            capped
        };
        crate::duration::seconds(secs).unwrap_or(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_without_jitter() {
        let p = RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        };
        assert_eq!(p.delay_after(1, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay_after(2, 0.0), Duration::from_secs(2));
        assert_eq!(p.delay_after(3, 0.0), Duration::from_secs(4));
        assert!(p.allows_another(2));
        assert!(!p.allows_another(3));
    }

    proptest! {
        #[test]
        fn backoff_is_monotone_and_capped(
            initial_ms in 0u64..100_000,
            factor in 1.0f64..10.0,
            cap_ms in 1u64..10_000_000,
            attempt in 1u32..200,
        ) {
            let p = RetryPolicy {
                max_attempts: 1000,
                initial: Duration::from_millis(initial_ms),
                factor,
                max_delay: Duration::from_millis(cap_ms),
                jitter: false,
            };
            let d1 = p.delay_after(attempt, 0.0);
            let d2 = p.delay_after(attempt + 1, 0.0);
            prop_assert!(d1 <= d2);
            prop_assert!(d2 <= p.max_delay + Duration::from_micros(1));
        }

        #[test]
        fn jitter_stays_within_half_to_full(attempt in 1u32..30, r in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            let full = RetryPolicy { jitter: false, ..p.clone() }.delay_after(attempt, 0.0);
            let d = p.delay_after(attempt, r);
            prop_assert!(d <= full + Duration::from_micros(1));
            prop_assert!(d + Duration::from_micros(1) >= full / 2);
        }
    }
}
