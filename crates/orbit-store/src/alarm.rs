//! A wake-up at a known instant: claimers that found work held back until then (a rate
//! limit's next token) are signalled at that time instead of polling.

use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The earliest wake-up still to come; a later one is already covered by it (the claim it
/// triggers sets the next).
#[derive(Clone, Debug, Default)]
pub struct Alarm {
    next: Arc<Mutex<Option<DateTime<Utc>>>>,
}

impl Alarm {
    /// Ticks `signal` at `at` (on the caller's clock, whose present is `now`), unless an earlier
    /// wake-up is already set.
    pub fn set(&self, at: DateTime<Utc>, now: DateTime<Utc>, signal: Arc<watch::Sender<u64>>) {
        {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            if next.is_some_and(|n| n <= at && n > now) {
                return;
            }
            *next = Some(at);
        }
        let delay = (at - now).to_std().unwrap_or_default();
        let next = self.next.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            {
                let mut n = next.lock().unwrap_or_else(|e| e.into_inner());
                if *n == Some(at) {
                    *n = None;
                }
            }
            signal.send_modify(|n| *n = n.wrapping_add(1));
        });
    }
}
