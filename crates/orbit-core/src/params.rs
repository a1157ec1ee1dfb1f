//! Typed parameters of each task type, read from a task's (rendered) JSON parameters.

use crate::pipeline::TaskType;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// `type: shell`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellParams {
    /// An argv list, or a string: split into words (no shell) unless `shell: true`.
    pub command: Command,
    #[serde(default)]
    pub shell: bool,
    #[serde(default)]
    pub env: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub cwd: Option<String>,
}

/// `command:` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Line(String),
    Argv(Vec<String>),
}

/// An environment value: YAML lets people write `PORT: 8080` or `DEBUG: true`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
}

impl Scalar {
    pub fn to_text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Number(n) => n.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// `type: http`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpParams {
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default)]
    pub headers: BTreeMap<String, Scalar>,
    /// Sent as JSON when present.
    #[serde(default)]
    pub body: Option<Value>,
    /// One status or a list; any 2xx when absent.
    #[serde(default)]
    pub expect_status: Option<StatusSet>,
}

fn default_method() -> String {
    "GET".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum StatusSet {
    One(u16),
    Many(Vec<u16>),
}

impl StatusSet {
    pub fn contains(&self, status: u16) -> bool {
        match self {
            StatusSet::One(s) => *s == status,
            StatusSet::Many(v) => v.contains(&status),
        }
    }
}

/// `type: sleep`: `duration` or `until`, one of them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepParams {
    #[serde(default)]
    pub duration: Option<DurationText>,
    /// An instant: RFC 3339 text (`2026-12-01T09:00:00Z`) or Unix seconds.
    #[serde(default)]
    pub until: Option<Value>,
    /// Sleep inside the attempt, keeping its worker slot (and concurrency key) the whole
    /// time, instead of parking.
    #[serde(default)]
    pub hold: bool,
}

impl SleepParams {
    /// When a sleep that starts at `start` ends.
    pub fn end(&self, start: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
        match (&self.duration, &self.until) {
            (Some(d), None) => {
                let d = d.to_duration().map_err(|e| format!("`duration`: {e}"))?;
                Ok(start
                    .checked_add_signed(
                        chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX),
                    )
                    .unwrap_or(DateTime::<Utc>::MAX_UTC))
            }
            (None, Some(until)) => instant(until).map_err(|e| format!("`until`: {e}")),
            (Some(_), Some(_)) => Err("give either `duration` or `until`, not both".into()),
            (None, None) => Err("missing required parameter `duration` (or `until`)".into()),
        }
    }
}

/// An instant written as RFC 3339 text or a number of Unix seconds.
pub fn instant(v: &Value) -> Result<DateTime<Utc>, String> {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                format!(
                    "`{}` is not an RFC 3339 time such as 2026-12-01T09:00:00Z ({e})",
                    crate::echo::echo(s)
                )
            }),
        Value::Number(n) => n
            .as_f64()
            .and_then(|s| DateTime::from_timestamp_micros((s * 1e6) as i64))
            .ok_or_else(|| format!("{n} is not a time in Unix seconds")),
        other => Err(format!(
            "must be an RFC 3339 time or Unix seconds, not {other}"
        )),
    }
}

/// What a `wait` or `approval` task does when its `timeout` passes first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// The task fails (not retried).
    #[default]
    Fail,
    /// The task succeeds with a `null` output and the tasks that only it leads to are skipped.
    Skip,
}

/// `type: wait`: parked until a signal named `event` arrives (its payload is the output). The
/// task's own `timeout` is how long it waits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitParams {
    pub event: String,
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

/// `type: approval`: parked until someone approves or rejects it; the task's own `timeout` is
/// how long it waits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalParams {
    /// What the approver reads.
    #[serde(default)]
    pub message: Option<String>,
    /// Who may decide (API token names or dashboard users); anyone when empty.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// With `allowed_next`: the tasks an approval runs (a name or a list).
    #[serde(default)]
    pub on_approve: Option<Names>,
    /// With `allowed_next`: the tasks a rejection runs; without, a rejection fails the task.
    #[serde(default)]
    pub on_reject: Option<Names>,
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

/// A task name or a list of them.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Names {
    One(String),
    Many(Vec<String>),
}

impl Names {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Names::One(n) => vec![n.clone()],
            Names::Many(v) => v.clone(),
        }
    }
}

/// Whether `name` can be a signal's name: it is a URL path segment.
pub fn is_valid_event(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'))
}

/// A duration written as text (`1.5s`) or a number of seconds.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum DurationText {
    Seconds(f64),
    Text(String),
}

impl DurationText {
    pub fn to_duration(&self) -> Result<Duration, String> {
        match self {
            DurationText::Seconds(s) => crate::duration::seconds(*s)
                .ok_or_else(|| format!("{s} is not a valid number of seconds")),
            DurationText::Text(t) => crate::duration::parse(t),
        }
    }
}

/// `type: script`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptParams {
    #[serde(default = "default_interpreter")]
    pub interpreter: String,
    /// Inline program text.
    #[serde(default)]
    pub source: Option<String>,
    /// A program file, relative to the working directory.
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub cwd: Option<String>,
}

fn default_interpreter() -> String {
    "python3".into()
}

/// `type: worker`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerParams {
    /// The registered service task; the pipeline task's name when absent.
    #[serde(default)]
    pub task: Option<String>,
    /// The handler's input (a template over the context); the run's input when absent.
    #[serde(default)]
    pub input: Option<Value>,
}

/// `type: pipeline`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineParams {
    /// The pipeline to run (its latest version).
    pub pipeline: String,
    /// The child run's input (a template over the context); the run's input when absent.
    #[serde(default)]
    pub input: Option<Value>,
}

/// A task's parameters in their typed shape.
#[derive(Clone, Debug)]
pub enum Params {
    Shell(ShellParams),
    Http(HttpParams),
    Sleep(SleepParams),
    Wait(WaitParams),
    Approval(ApprovalParams),
    Script(ScriptParams),
    Worker(WorkerParams),
    Pipeline(PipelineParams),
}

impl Params {
    /// Reads the parameters of `task_type`. With `rendered == false` the values may still hold
    /// templates, so checks that need the final value (a duration, a method) are skipped for
    /// templated values.
    pub fn from_json(
        task_type: TaskType,
        params: &Map<String, Value>,
        rendered: bool,
    ) -> Result<Params, String> {
        let value = Value::Object(params.clone());
        let typed = match task_type {
            TaskType::Shell => Params::Shell(from_value(value)?),
            TaskType::Http => Params::Http(from_value(value)?),
            TaskType::Sleep => Params::Sleep(from_value(value)?),
            TaskType::Wait => Params::Wait(from_value(value)?),
            TaskType::Approval => Params::Approval(from_value(value)?),
            TaskType::Script => Params::Script(from_value(value)?),
            TaskType::Worker => Params::Worker(from_value(value)?),
            TaskType::Pipeline => Params::Pipeline(from_value(value)?),
        };
        typed.check(rendered)?;
        Ok(typed)
    }

    fn check(&self, rendered: bool) -> Result<(), String> {
        let settled = |s: &str| rendered || !crate::template::is_template(s);
        match self {
            Params::Shell(p) => match &p.command {
                Command::Line(l) if l.trim().is_empty() => Err("`command` is empty".into()),
                Command::Argv(v) if v.is_empty() => Err("`command` is an empty list".into()),
                Command::Line(l) if !p.shell && settled(l) && shlex::split(l).is_none() => {
                    Err(format!("`command` has unbalanced quotes: {l}"))
                }
                Command::Argv(_) if p.shell => {
                    Err("`shell: true` needs `command` as one string (it is run by `sh -c`)".into())
                }
                _ => Ok(()),
            },
            Params::Http(p) => {
                if settled(&p.method) && reqwest_like_method(&p.method).is_none() {
                    return Err(format!("`method` `{}` is not an HTTP method", p.method));
                }
                if settled(&p.url)
                    && !(p.url.starts_with("http://") || p.url.starts_with("https://"))
                {
                    return Err(format!(
                        "`url` `{}` must start with http:// or https://",
                        p.url
                    ));
                }
                Ok(())
            }
            Params::Sleep(p) => match (&p.duration, &p.until) {
                (Some(DurationText::Text(t)), None) if !settled(t) => Ok(()),
                (None, Some(Value::String(t))) if !settled(t) => Ok(()),
                _ => p.end(Utc::now()).map(|_| ()),
            },
            Params::Wait(p) => {
                if settled(&p.event) && !is_valid_event(&p.event) {
                    return Err(format!(
                        "`event` `{}` is not a signal name (letters, digits, `-`, `_`, `.`, `:`, `@`; at most 200)",
                        crate::echo::echo(&p.event)
                    ));
                }
                Ok(())
            }
            Params::Approval(_) => Ok(()),
            Params::Script(p) => match (&p.source, &p.file) {
                (Some(_), Some(_)) => Err("give either `source` or `file`, not both".into()),
                (None, None) => {
                    Err("missing required parameter `source` (inline program) or `file`".into())
                }
                _ => Ok(()),
            },
            Params::Worker(p) => match &p.task {
                Some(t) if !crate::pipeline::is_valid_name(t) => Err(format!(
                    "`task` `{t}` is not a task name (letters, digits, `-`, `_`, `.`; no templates)"
                )),
                _ => Ok(()),
            },
            Params::Pipeline(p) => {
                if settled(&p.pipeline) && !crate::pipeline::is_valid_name(&p.pipeline) {
                    return Err(format!(
                        "`pipeline` `{}` is not a pipeline name (letters, digits, `-`, `_`, `.`)",
                        crate::echo::echo(&p.pipeline)
                    ));
                }
                Ok(())
            }
        }
    }
}

/// The uppercase method if it is one we send.
pub fn reqwest_like_method(m: &str) -> Option<String> {
    let up = m.to_ascii_uppercase();
    ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        .contains(&up.as_str())
        .then_some(up)
}

fn from_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| {
        let msg = e.to_string();
        // serde's wording is for programmers; say it the way a pipeline author thinks of it.
        if let Some(rest) = msg.strip_prefix("missing field ") {
            format!("missing required parameter {rest}")
        } else if let Some(rest) = msg.strip_prefix("unknown field ") {
            format!("unknown parameter {rest}")
        } else if msg.starts_with("data did not match any variant of untagged enum Command") {
            "`command` must be a string or a list of strings".into()
        } else if msg.contains("untagged enum DurationText") {
            "`duration` must be a duration such as `5s` or a number of seconds".into()
        } else if msg.contains("untagged enum StatusSet") {
            "`expect_status` must be a status code or a list of them".into()
        } else if msg.contains("untagged enum Scalar") {
            "environment and header values must be strings, numbers or booleans".into()
        } else {
            msg
        }
    })
}
