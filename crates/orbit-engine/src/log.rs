//! An attempt's log: what the task printed, kept in memory while it runs and stored with the
//! attempt. Bounded, so a chatty task cannot exhaust memory: past the cap the oldest lines go.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use uuid::Uuid;

/// Most log kept per attempt.
pub const LOG_CAP: usize = 1 << 20;

#[derive(Clone, Debug, Default)]
pub struct LogBuffer {
    text: Arc<Mutex<String>>,
    /// Where each line also goes while someone watches (see [`LiveLogs`]).
    tap: Option<Arc<Tap>>,
}

#[derive(Debug)]
struct Tap {
    run_id: Uuid,
    task_run_id: Uuid,
    task: Arc<str>,
    lines: broadcast::Sender<LiveLine>,
}

impl LogBuffer {
    pub fn new() -> LogBuffer {
        LogBuffer::default()
    }

    /// Appends one line (a newline is added).
    pub fn line(&self, text: &str) {
        let text = text.trim_end_matches(['\n', '\r']);
        if let Some(tap) = &self.tap
            && tap.lines.receiver_count() > 0
        {
            let _ = tap.lines.send(LiveLine {
                run_id: tap.run_id,
                task_run_id: tap.task_run_id,
                task: tap.task.to_string(),
                line: text.to_owned(),
            });
        }
        let mut buf = self.text.lock().unwrap_or_else(|p| p.into_inner());
        buf.push_str(text);
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
        std::mem::take(&mut *self.text.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn snapshot(&self) -> String {
        self.text.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One line an attempt printed, as it printed it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveLine {
    pub run_id: Uuid,
    pub task_run_id: Uuid,
    pub task: String,
    pub line: String,
}

/// The logs of the attempts running in this process, so a page can show a task's output while
/// it runs. Attempts elsewhere (other nodes, SDK workers) show their log when they finish.
#[derive(Clone, Debug)]
pub struct LiveLogs {
    running: Arc<Mutex<HashMap<Uuid, LogBuffer>>>,
    lines: broadcast::Sender<LiveLine>,
}

impl Default for LiveLogs {
    fn default() -> Self {
        LiveLogs {
            running: Arc::default(),
            lines: broadcast::channel(1024).0,
        }
    }
}

impl LiveLogs {
    /// A buffer for an attempt that starts now; [`LiveLogs::finish`] forgets it.
    pub fn start(&self, run_id: Uuid, task_run_id: Uuid, task: &str) -> LogBuffer {
        let log = LogBuffer {
            text: Arc::default(),
            tap: Some(Arc::new(Tap {
                run_id,
                task_run_id,
                task: task.into(),
                lines: self.lines.clone(),
            })),
        };
        self.lock().insert(task_run_id, log.clone());
        log
    }

    pub fn finish(&self, task_run_id: Uuid) {
        self.lock().remove(&task_run_id);
    }

    /// What a running attempt has printed so far, if it runs in this process.
    pub fn so_far(&self, task_run_id: Uuid) -> Option<String> {
        self.lock().get(&task_run_id).map(LogBuffer::snapshot)
    }

    /// Every line printed from now on, by any attempt of this process.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveLine> {
        self.lines.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, LogBuffer>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
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

    #[test]
    fn live_lines_reach_watchers_and_finished_attempts_are_forgotten() {
        let live = LiveLogs::default();
        let (run, id) = (Uuid::now_v7(), Uuid::now_v7());
        let log = live.start(run, id, "extract");
        log.line("before anyone watched");
        let mut watcher = live.subscribe();
        log.line("second\n");
        let got = watcher.try_recv().expect("a line");
        assert_eq!((got.run_id, got.task_run_id), (run, id));
        assert_eq!(
            (got.task.as_str(), got.line.as_str()),
            ("extract", "second")
        );
        assert_eq!(
            live.so_far(id).as_deref(),
            Some("before anyone watched\nsecond\n")
        );
        live.finish(id);
        assert_eq!(live.so_far(id), None);
        assert_eq!(log.take(), "before anyone watched\nsecond\n");
    }
}
