//! `orbit context TASK_RUN` and `orbit replay TASK_RUN`: an attempt's recorded context, and the
//! attempt executed again here with a diff against what it did then.

use crate::output;
use orbit_store::Store;
use serde_json::{Value, json};
use similar::{ChangeTag, TextDiff};
use std::sync::Arc;

pub async fn context(
    store: &Arc<dyn Store>,
    task_run: &str,
    attempt: Option<u32>,
    json: bool,
) -> anyhow::Result<u8> {
    let engine = super::run::engine(store, 1)?;
    let r = engine.recorded(task_run, attempt).await?;
    let doc = json!({
        "taskRun": r.task_run.id,
        "task": r.task_run.task_name,
        "attempt": r.attempt,
        "type": r.task_type,
        "params": r.params,
        "context": r.context,
    });
    if json {
        output::json(&doc)?;
    } else {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(0)
}

pub async fn replay(
    store: &Arc<dyn Store>,
    task_run: &str,
    attempt: Option<u32>,
    json: bool,
) -> anyhow::Result<u8> {
    let engine = super::run::engine(store, 1)?;
    let r = engine.replay(task_run, attempt).await?;
    let rec = &r.recorded;
    // What the recorded attempt gave: the task run's output when that attempt is the one that
    // succeeded, else its error.
    let then: Result<Value, String> = match &rec.record {
        Some(a) if a.outcome == "succeeded" || a.outcome == "reused" => {
            Ok(rec.task_run.output.clone().unwrap_or(Value::Null))
        }
        Some(a) => Err(a.error.clone().unwrap_or_else(|| a.outcome.clone())),
        None => Err("(it has not run yet)".into()),
    };
    let same_output = then == r.output;
    let recorded_log = rec.record.as_ref().map_or("", |a| a.log.as_str());
    if json {
        output::json(&json!({
            "taskRun": rec.task_run.id,
            "task": rec.task_run.task_name,
            "attempt": rec.attempt,
            "recorded": {"output": then.as_ref().ok(), "error": then.as_ref().err(), "log": recorded_log},
            "replayed": {"output": r.output.as_ref().ok(), "error": r.output.as_ref().err(), "log": r.log},
            "sameOutput": same_output,
            "sameLog": recorded_log == r.log,
        }))?;
        return Ok(u8::from(!same_output));
    }
    println!(
        "replayed attempt {} of `{}` (task run {}) here; the run is untouched",
        rec.attempt, rec.task_run.task_name, rec.task_run.id
    );
    let show = |v: &Result<Value, String>| match v {
        Ok(o) => serde_json::to_string_pretty(o).unwrap_or_default(),
        Err(e) => format!("failed: {e}"),
    };
    if same_output {
        println!("output: the same as recorded");
    } else {
        println!("output differs (- recorded, + replayed):");
        print_diff(&show(&then), &show(&r.output));
    }
    if recorded_log == r.log {
        println!("log: the same as recorded");
    } else {
        println!("log differs (- recorded, + replayed):");
        print_diff(recorded_log, &r.log);
    }
    Ok(u8::from(!same_output))
}

fn print_diff(before: &str, after: &str) {
    for change in TextDiff::from_lines(before, after).iter_all_changes() {
        let sign = match change.tag() {
            ChangeTag::Delete => "-",
            ChangeTag::Insert => "+",
            ChangeTag::Equal => " ",
        };
        print!("{sign} {change}");
        if change.missing_newline() {
            println!();
        }
    }
}
