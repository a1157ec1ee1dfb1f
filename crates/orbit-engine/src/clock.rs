//! Where the engine's roles read the time, so a test can control it.
//!
//! Everything time-based (lease expiry, backoff, the reaper, cron, retention) reads
//! [`Clock::now`] and sleeps on tokio's timer. [`Clock::System`] is the wall clock; a test under
//! `tokio::time::pause()` uses [`Clock::tokio`], which moves only when tokio's paused clock
//! does, so a 30-second backoff or an expired lease takes no real time and no sleep.

use chrono::{DateTime, Utc};

#[derive(Clone, Copy, Debug, Default)]
pub enum Clock {
    /// The system's wall clock.
    #[default]
    System,
    /// Wall time that advances with tokio's clock from `start`, where it read `base`.
    Tokio {
        base: DateTime<Utc>,
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that follows tokio's (paused or not) from now on.
    pub fn tokio() -> Clock {
        Clock::Tokio {
            base: Utc::now(),
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio { base, start } => {
                *base + chrono::Duration::from_std(start.elapsed()).unwrap_or(chrono::Duration::MAX)
            }
        }
    }

    /// The tokio instant at which this clock will read `at` (now, when `at` has passed).
    pub fn instant_of(&self, at: DateTime<Utc>) -> tokio::time::Instant {
        tokio::time::Instant::now() + (at - self.now()).to_std().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_with_paused_time_only() {
        let clock = Clock::tokio();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0, "paused: no time passes by itself");
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now() - t0, chrono::Duration::seconds(90));
        let at = clock.now() + chrono::Duration::seconds(5);
        assert_eq!(
            clock.instant_of(at) - tokio::time::Instant::now(),
            Duration::from_secs(5)
        );
    }
}
