//! An attempt's log: what the task printed, kept in memory while it runs and stored with the
//! attempt. Bounded, so a chatty task cannot exhaust memory: past the cap the oldest lines go.

use std::sync::{Arc, Mutex};

/// Most log kept per attempt.
pub const LOG_CAP: usize = 1 << 20;

#[derive(Clone, Debug, Default)]
pub struct LogBuffer(Arc<Mutex<String>>);

impl LogBuffer {
    pub fn new() -> LogBuffer {
        LogBuffer::default()
    }

    /// Appends one line (a newline is added).
    pub fn line(&self, text: &str) {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buf.push_str(text.trim_end_matches(['\n', '\r']));
        buf.push('\n');
        if buf.len() > LOG_CAP {
            let mut cut = buf.len() - LOG_CAP * 3 / 4;
            while !buf.is_char_boundary(cut) {
                cut += 1;
            }
            let cut = buf[cut..].find('\n').map_or(cut, |n| cut + n + 1);
            buf.replace_range(..cut, "[… earlier output dropped …]\n");
        }
    }

    pub fn take(&self) -> String {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn snapshot(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_when_over_the_cap() {
        let log = LogBuffer::new();
        let line = "x".repeat(1000);
        for i in 0..3000 {
            log.line(&format!("{i} {line}"));
        }
        let text = log.take();
        assert!(text.len() <= LOG_CAP + 100);
        assert!(text.starts_with("[… earlier output dropped …]\n"));
        assert!(text.ends_with(&format!("2999 {line}\n")));
    }
}
