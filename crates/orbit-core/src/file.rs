//! Pipeline files: YAML in, a validated [`Pipeline`] or every problem with its line out.
//!
//! The file is first read into located values (each key and value keeps its line and column),
//! then checked here, so that a semantic problem (an unknown `needs`, a cycle, a missing
//! parameter) points at the line that causes it just like a syntax error does.

use crate::dag::Dag;
use crate::params::Params;
use crate::pipeline::{
    Concurrency, DEFAULT_HEARTBEAT_INTERVAL, ForEach, Pipeline, RateLimit, TaskDef, TaskType,
    is_valid_name,
};
use crate::retry::RetryPolicy;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use serde_saphyr::{Location, Spanned};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// One problem in a pipeline file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based; 0 when the problem has no place in the file.
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// Every problem found in one file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FileError {
    pub path: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if d.line > 0 {
                write!(f, "{}:{}:{}: {}", self.path, d.line, d.column, d.message)?;
            } else {
                write!(f, "{}: {}", self.path, d.message)?;
            }
        }
        Ok(())
    }
}

/// Parses and validates the pipeline in `text`; `path` names the file in messages and gives the
/// pipeline its name when the file has no `name:`.
pub fn parse_pipeline(path: &str, text: &str) -> Result<Pipeline, FileError> {
    parse_pipeline_with_warnings(path, text).map(|(p, _)| p)
}

/// [`parse_pipeline`], and the warnings about a valid file: things that work but are likely not
/// what the author meant (a shell command without a shell, input spliced into shell code).
pub fn parse_pipeline_with_warnings(
    path: &str,
    text: &str,
) -> Result<(Pipeline, Vec<Diagnostic>), FileError> {
    let fail = |diagnostics| FileError {
        path: path.to_owned(),
        diagnostics,
    };
    // YAML 1.2 booleans: a task named `n`, `no`, `on` or `off` stays a name (YAML 1.1 would
    // read `false`).
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    let mut raw: RawFile = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| fail(vec![syntax_diagnostic(&e)]))?;
    dialect::translate(&mut raw);
    let mut checker = Checker::default();
    let pipeline = checker.pipeline(raw, path);
    match pipeline {
        Some(p) if checker.diagnostics.is_empty() => {
            checker.warnings.sort_by_key(|d| (d.line, d.column));
            Ok((p, checker.warnings))
        }
        _ => {
            checker.diagnostics.sort_by_key(|d| (d.line, d.column));
            Err(fail(checker.diagnostics))
        }
    }
}

fn syntax_diagnostic(e: &serde_saphyr::Error) -> Diagnostic {
    let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
    // The library's text repeats the location and adds a source snippet; keep the first line.
    let full = e.to_string();
    let first = full.lines().next().unwrap_or("invalid YAML").trim();
    let message = first
        .strip_prefix("error: ")
        .unwrap_or(first)
        .trim_start_matches(&format!("line {line} column {column}: "))
        .to_owned();
    Diagnostic {
        line,
        column,
        message,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// Orbit-Py's workflow id: a document from its API may carry it; it names nothing here.
    #[serde(default, rename = "id")]
    _id: Option<Spanned<Value>>,
    name: Option<Spanned<Value>>,
    description: Option<Spanned<Value>>,
    schedule: Option<Spanned<Value>>,
    concurrency: Option<Spanned<Value>>,
    output: Option<Spanned<Value>>,
    defaults: Option<Spanned<Fields>>,
    tasks: Option<Spanned<Vec<Spanned<Fields>>>>,
}

type Located = Spanned<Value>;

/// A mapping whose keys and values keep their location, in file order.
struct Fields(Vec<(Spanned<String>, Located)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of keys to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<Spanned<String>, Located>()? {
                    out.push(entry);
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Default)]
struct Checker {
    diagnostics: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

/// Settings that `defaults:` gives every task.
#[derive(Clone)]
struct Defaults {
    retry: RetryPolicy,
    timeout: Option<Duration>,
    heartbeat_interval: Duration,
    priority: i32,
}

const TASK_KEYS: [&str; 15] = [
    "name",
    "type",
    "needs",
    "retry",
    "timeout",
    "priority",
    "heartbeat_interval",
    "idempotency_key",
    "queue",
    "allowed_next",
    "concurrency",
    "rate_limit",
    "for_each",
    "allow_failures",
    "fail_fast",
];

impl Checker {
    fn at<T>(&mut self, span: &Spanned<T>, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            line: span.referenced.line(),
            column: span.referenced.column(),
            // A message may quote what the file holds: never a megabyte of it.
            message: crate::echo::echo_within(&message.into(), 1000),
        });
    }

    fn pipeline(&mut self, raw: RawFile, path: &str) -> Option<Pipeline> {
        let name = self.pipeline_name(raw.name.as_ref(), path);
        let description = raw
            .description
            .as_ref()
            .and_then(|d| self.string(d, "description"));
        let schedule = raw.schedule.as_ref().and_then(|s| {
            let expr = self.string(s, "schedule")?;
            match crate::pipeline::parse_schedule(&expr) {
                Ok(_) => Some(expr),
                Err(e) => {
                    self.at(s, e);
                    None
                }
            }
        });
        let concurrency = raw
            .concurrency
            .as_ref()
            .and_then(|c| self.concurrency(c, "the pipeline"));
        let output = raw.output.as_ref().map(|o| o.value.clone());
        let defaults = self.defaults(raw.defaults.as_ref());
        let Some(tasks) = raw.tasks else {
            self.diagnostics.push(Diagnostic {
                line: 0,
                column: 0,
                message: "missing `tasks`: a pipeline needs at least one task".into(),
            });
            return None;
        };
        if tasks.value.is_empty() {
            self.at(
                &tasks,
                "`tasks` is empty: a pipeline needs at least one task",
            );
        }
        let mut defs = Vec::new();
        let mut lines = Vec::new();
        let mut seen: HashMap<String, u64> = HashMap::new();
        for raw_task in &tasks.value {
            if let Some((def, needs_spans)) = self.task(raw_task, &defaults) {
                if let Some(first) = seen.get(&def.name) {
                    let msg = format!(
                        "task `{}` is defined twice (first on line {first})",
                        def.name
                    );
                    self.at(raw_task, msg);
                    continue;
                }
                seen.insert(def.name.clone(), raw_task.referenced.line());
                let runs = def.params.get("pipeline").and_then(|p| p.as_str());
                if def.task_type == TaskType::Pipeline && runs.is_some() && runs == name.as_deref()
                {
                    let msg = format!(
                        "task `{}`: pipeline `{}` cannot run itself",
                        def.name,
                        runs.unwrap_or_default()
                    );
                    self.at(raw_task, msg);
                }
                lines.push((raw_task.referenced, needs_spans));
                defs.push(def);
            }
        }
        self.references(&defs, &lines);
        let name = name?;
        let pipeline = Pipeline {
            name,
            description,
            schedule,
            concurrency,
            output,
            tasks: defs,
        };
        self.cycles(&pipeline, &lines);
        Some(pipeline)
    }

    /// The pipeline's `name`, else its file's name (`etl.yaml`, `etl.pipeline.json`: `etl`).
    fn pipeline_name(&mut self, name: Option<&Located>, path: &str) -> Option<String> {
        if let Some(n) = name {
            return self.name(n, "pipeline");
        }
        let stem = std::path::Path::new(path)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("");
        let stem = stem.strip_suffix(".pipeline").unwrap_or(stem);
        if is_valid_name(stem) {
            return Some(stem.to_owned());
        }
        self.diagnostics.push(Diagnostic {
            line: 0,
            column: 0,
            message: "missing `name`".into(),
        });
        None
    }

    /// Every `needs` names another task; every `allowed_next` names a task that needs this one.
    fn references(&mut self, defs: &[TaskDef], lines: &[(Location, Vec<Located>)]) {
        let seen: std::collections::HashSet<&str> = defs.iter().map(|d| d.name.as_str()).collect();
        for (def, (_, needs_spans)) in defs.iter().zip(lines) {
            for (need, span) in def.needs.iter().zip(needs_spans) {
                if !seen.contains(need.as_str()) {
                    let msg = if need == &def.name {
                        format!("task `{need}` needs itself")
                    } else {
                        format!(
                            "task `{}` needs `{need}`, which is not a task in this pipeline",
                            def.name
                        )
                    };
                    self.at(span, msg);
                }
            }
        }
        for (def, (loc, _)) in defs.iter().zip(lines) {
            for next in &def.allowed_next {
                let chosen = defs.iter().find(|d| &d.name == next);
                if !chosen.is_some_and(|d| d.needs.contains(&def.name)) {
                    self.diagnostics.push(Diagnostic {
                        line: loc.line(),
                        column: loc.column(),
                        message: format!(
                            "task `{}`: `allowed_next` names `{next}`, which is not a task that needs `{}`",
                            def.name, def.name
                        ),
                    });
                }
            }
        }
    }

    /// Each cycle, at its first task.
    fn cycles(&mut self, pipeline: &Pipeline, lines: &[(Location, Vec<Located>)]) {
        if let Err(cycles) = Dag::new(pipeline) {
            for cycle in cycles.0 {
                let first = pipeline
                    .tasks
                    .iter()
                    .position(|t| t.name == cycle[0])
                    .unwrap_or(0);
                let loc = lines[first].0;
                self.diagnostics.push(Diagnostic {
                    line: loc.line(),
                    column: loc.column(),
                    message: format!("tasks form a cycle: {}", cycle.join(" -> ")),
                });
            }
        }
    }

    fn defaults(&mut self, raw: Option<&Spanned<Fields>>) -> Defaults {
        let mut d = Defaults {
            retry: RetryPolicy::default(),
            timeout: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            priority: 0,
        };
        for (key, value) in raw.map(|r| r.value.0.as_slice()).unwrap_or_default() {
            match key.value.as_str() {
                "retry" => d.retry = self.retry(value, &d.retry),
                "timeout" => d.timeout = self.positive_duration(value, "timeout"),
                "heartbeat_interval" => {
                    d.heartbeat_interval = self.positive_duration(value, "heartbeat_interval").unwrap_or(d.heartbeat_interval)
                }
                "priority" => d.priority = self.priority(value).unwrap_or(0),
                other => self.at(key, format!("unknown key `{other}` in `defaults` (expected retry, timeout, heartbeat_interval or priority)")),
            }
        }
        d
    }

    /// A task and the location of each of its `needs`.
    fn task(
        &mut self,
        raw: &Spanned<Fields>,
        defaults: &Defaults,
    ) -> Option<(TaskDef, Vec<Located>)> {
        let field = |k: &str| {
            raw.value
                .0
                .iter()
                .find(|(key, _)| key.value == k)
                .map(|(_, v)| v)
        };
        let Some(name) = field("name") else {
            self.at(raw, "task without a `name`");
            return None;
        };
        let name = self.name(name, "task")?;
        let task_type = self.task_type(raw, field("type"), &name);
        let (needs, needs_spans) = match field("needs") {
            None => (Vec::new(), Vec::new()),
            Some(n) => self.names(n, &name, "needs"),
        };
        let retry = field("retry").map_or_else(
            || defaults.retry.clone(),
            |r| self.retry(r, &defaults.retry),
        );
        let timeout =
            field("timeout").map_or(defaults.timeout, |t| self.positive_duration(t, "timeout"));
        let heartbeat_interval = field("heartbeat_interval")
            .and_then(|h| self.positive_duration(h, "heartbeat_interval"))
            .unwrap_or(defaults.heartbeat_interval);
        let priority = field("priority")
            .map_or(Some(defaults.priority), |p| self.priority(p))
            .unwrap_or(0);
        let idempotency_key =
            field("idempotency_key").and_then(|k| self.string(k, "idempotency_key"));
        let queue = field("queue").and_then(|q| self.name(q, "queue"));
        if let (Some(q), Some(TaskType::Worker)) = (field("queue"), task_type) {
            self.at(q, format!("task `{name}`: a worker task has no `queue`; it is queued for the service task it names"));
        }
        let allowed_next =
            field("allowed_next").map_or_else(Vec::new, |a| self.names(a, &name, "allowed_next").0);
        let concurrency =
            field("concurrency").and_then(|c| self.concurrency(c, &format!("task `{name}`")));
        let rate_limit =
            field("rate_limit").and_then(|r| self.rate_limit(r, &format!("task `{name}`")));
        let for_each = self.for_each(
            &name,
            field("for_each"),
            field("allow_failures"),
            field("fail_fast"),
        );
        if let (Some(_), false) = (&for_each, allowed_next.is_empty()) {
            self.at(raw, format!("task `{name}`: a `for_each` task cannot choose `allowed_next`; its children's outputs go to every task that needs it"));
        }
        let mut params = Map::new();
        for (key, value) in &raw.value.0 {
            if !TASK_KEYS.contains(&key.value.as_str()) {
                params.insert(key.value.clone(), value.value.clone());
            }
        }
        let task_type = task_type?;
        if task_type == TaskType::Shell {
            self.lint_shell(&name, field("command"), field("shell"));
        }
        if let Err(e) = Params::from_json(task_type, &params, false) {
            self.bad_params(raw, &format!("task `{name}` ({task_type}): {e}"));
        }
        Some((
            TaskDef {
                name,
                task_type,
                params,
                needs,
                retry,
                timeout,
                priority,
                heartbeat_interval,
                idempotency_key,
                queue,
                allowed_next,
                concurrency,
                rate_limit,
                for_each,
            },
            needs_spans,
        ))
    }

    fn task_type(
        &mut self,
        raw: &Spanned<Fields>,
        field: Option<&Located>,
        name: &str,
    ) -> Option<TaskType> {
        let Some(t) = field else {
            self.at(
                raw,
                format!("task `{name}` has no `type` (one of: shell, http, sleep, script, worker, pipeline)"),
            );
            return None;
        };
        let parsed = t.value.as_str().and_then(TaskType::parse);
        if parsed.is_none() {
            self.at(t, format!("task `{name}` has unknown type {} (expected one of: shell, http, sleep, script, worker, pipeline)", short(&t.value)));
        }
        parsed
    }

    /// A parameter error, at the key its message names first (`unknown parameter `comand`,
    /// expected `command``), else at the task.
    fn bad_params(&mut self, raw: &Spanned<Fields>, msg: &str) {
        let loc = raw
            .value
            .0
            .iter()
            .filter_map(|(k, _)| {
                msg.find(&format!("`{}`", k.value))
                    .map(|pos| (pos, k.referenced))
            })
            .min_by_key(|(pos, _)| *pos)
            .map(|(_, loc)| loc);
        match loc {
            Some(loc) => self.diagnostics.push(Diagnostic {
                line: loc.line(),
                column: loc.column(),
                message: msg.to_owned(),
            }),
            None => self.at(raw, msg),
        }
    }
}

/// A value as a person would recognise it in a message, kept short.
fn short(v: &Value) -> String {
    let s = match v {
        Value::Null => return "nothing".into(),
        Value::String(s) => format!("`{s}`"),
        Value::Array(_) => return "a list".into(),
        Value::Object(_) => return "a mapping".into(),
        other => other.to_string(),
    };
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

mod dialect;
mod lint;
#[cfg(test)]
mod tests;
mod values;
