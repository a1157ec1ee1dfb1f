//! Live progress of `orbit run`: a bar and a line per task state change on a terminal, plain
//! lines otherwise, JSON lines with `--json`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use orbit_core::transition::ParkKind;
use orbit_engine::EngineEvent;
use orbit_store::plan::EventKind;
use orbit_store::{RunRecord, StoredPipeline};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::IsTerminal;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct Progress {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

enum Mode {
    Bar(ProgressBar),
    Plain,
    Json,
}

impl Progress {
    pub fn start(
        run: &RunRecord,
        pipeline: &StoredPipeline,
        json: bool,
        mut events: broadcast::Receiver<EngineEvent>,
    ) -> Progress {
        let total = run.tasks_total.max(0) as u64;
        let mode = if json {
            Mode::Json
        } else if std::io::stdout().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{bar:30}] {pos}/{len} tasks  {elapsed}  {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            Mode::Bar(bar)
        } else {
            Mode::Plain
        };
        let header = format!(
            "run {} of `{}` v{} ({} tasks)",
            run.id, pipeline.name, pipeline.version, total
        );
        match &mode {
            Mode::Bar(bar) => bar.println(header),
            Mode::Plain => println!("{header}"),
            Mode::Json => println!(
                "{}",
                json!({"event": EventKind::RunCreated.as_str(), "run": run.id, "pipeline": pipeline.name, "version": pipeline.version, "tasks": total})
            ),
        }
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let run_id = run.id;
        let task = tokio::spawn(async move {
            let mut view = View {
                mode,
                run: run_id,
                running: BTreeSet::new(),
            };
            loop {
                tokio::select! {
                    biased;
                    ev = events.recv() => match ev {
                        Ok(ev) => view.show(ev),
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => break,
                    },
                    _ = stopped.cancelled() => {
                        while let Ok(ev) = events.try_recv() {
                            view.show(ev);
                        }
                        break;
                    }
                }
            }
            if let Mode::Bar(bar) = &view.mode {
                bar.finish_and_clear();
            }
        });
        Progress { stop, task }
    }

    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

struct View {
    mode: Mode,
    run: Uuid,
    running: BTreeSet<String>,
}

impl View {
    fn show(&mut self, ev: EngineEvent) {
        let Some((mut line, json, done)) = describe(&ev, self.run) else {
            return;
        };
        match &ev {
            // A `for_each` task's children are counted, not listed one by one: only their
            // failures get a line.
            EngineEvent::TaskStarted { task, .. } | EngineEvent::TaskSucceeded { task, .. }
                if orbit_core::pipeline::parent_of(task).is_some() =>
            {
                line = None;
            }
            EngineEvent::TaskExpanded { children, .. } => {
                if let Mode::Bar(bar) = &self.mode {
                    bar.inc_length(*children as u64);
                }
            }
            EngineEvent::TaskStarted { task, .. } => {
                self.running.insert(task.clone());
            }
            EngineEvent::TaskSucceeded { task, .. }
            | EngineEvent::TaskRetrying { task, .. }
            | EngineEvent::TaskDead { task, .. }
            | EngineEvent::TaskParked { task, .. }
            | EngineEvent::LeaseLost { task, .. } => {
                self.running.remove(task);
            }
            EngineEvent::RunSettled { .. } => {}
        }
        match &self.mode {
            Mode::Json => println!("{}", json),
            Mode::Plain => {
                if let Some(l) = line {
                    println!("{l}");
                }
            }
            Mode::Bar(bar) => {
                if let Some(l) = line.filter(|l| !l.starts_with('▶')) {
                    bar.println(l);
                }
                bar.inc(done);
                let running: Vec<&str> = self.running.iter().map(String::as_str).collect();
                bar.set_message(if running.is_empty() {
                    String::new()
                } else {
                    format!("running: {}", running.join(", "))
                });
            }
        }
    }
}

/// An event of run `this` as a line for people, an object for `--json`, and how many tasks it
/// finished (the bar's progress); `None` for other runs' events and for settling.
fn describe(ev: &EngineEvent, this: Uuid) -> Option<(Option<String>, Value, u64)> {
    Some(match ev {
        EngineEvent::TaskStarted { run, task, attempt } if *run == this => {
            let line = if *attempt > 1 {
                format!("▶ {task} (attempt {attempt})")
            } else {
                format!("▶ {task}")
            };
            (
                Some(line),
                json!({"event": EventKind::TaskStarted.as_str(), "task": task, "attempt": attempt}),
                0,
            )
        }
        EngineEvent::TaskSucceeded {
            run,
            task,
            attempt,
            took,
        } if *run == this => (
            Some(format!(
                "✓ {task}  {}",
                orbit_core::duration::display(*took)
            )),
            json!({"event": EventKind::TaskSucceeded.as_str(), "task": task, "attempt": attempt, "tookMs": took.as_millis() as u64}),
            1,
        ),
        EngineEvent::TaskRetrying {
            run,
            task,
            attempt,
            error,
            at,
        } if *run == this => {
            let wait = (*at - chrono::Utc::now()).to_std().unwrap_or_default();
            (
                Some(format!(
                    "↻ {task}  attempt {attempt} failed: {}; retrying in {}",
                    crate::output::brief(error, 120),
                    orbit_core::duration::display(wait)
                )),
                json!({"event": EventKind::TaskRetrying.as_str(), "task": task, "attempt": attempt, "error": error, "retryAt": at}),
                0,
            )
        }
        EngineEvent::TaskDead {
            run,
            task,
            attempt,
            error,
            cancelled,
        } if *run == this => {
            let mut line = format!(
                "✗ {task}  dead after attempt {attempt}: {}",
                crate::output::brief(error, 160)
            );
            if !cancelled.is_empty() {
                line.push_str(&format!("\n⊘ not started: {}", cancelled.join(", ")));
            }
            (
                Some(line),
                json!({"event": EventKind::TaskDead.as_str(), "task": task, "attempt": attempt, "error": error, "cancelled": cancelled}),
                1 + cancelled.len() as u64,
            )
        }
        EngineEvent::TaskExpanded {
            run,
            task,
            children,
        } if *run == this => (
            Some(format!("⇉ {task}  {children} children, one per element")),
            json!({"event": EventKind::TaskExpanded.as_str(), "task": task, "children": children}),
            0,
        ),
        EngineEvent::TaskParked { run, task, park } if *run == this => {
            let until = park
                .until
                .map(|u| {
                    format!(
                        " until {}",
                        u.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )
                })
                .unwrap_or_default();
            let until = if park.kind == ParkKind::Run {
                String::new()
            } else {
                until
            };
            let why = match (park.kind, &park.event, &park.note) {
                (ParkKind::Signal, Some(event), _) => format!("waiting for signal `{event}`"),
                (ParkKind::Approval, _, Some(note)) => format!("waiting for approval: {note}"),
                (ParkKind::Approval, _, None) => "waiting for approval".to_owned(),
                (ParkKind::Run, _, Some(note)) => format!("waiting for {note}"),
                _ => "sleeping".to_owned(),
            };
            (
                Some(format!("⏸ {task}  {why}{until}")),
                json!({"event": EventKind::TaskParked.as_str(), "task": task, "kind": park.kind.as_str(), "until": park.until, "signal": park.event, "message": park.note}),
                0,
            )
        }
        EngineEvent::LeaseLost { run, task, attempt } if *run == this => (
            Some(format!(
                "! {task}  attempt {attempt}: lease lost, result discarded"
            )),
            json!({"event": "lease_lost", "task": task, "attempt": attempt}),
            0,
        ),
        _ => return None,
    })
}
