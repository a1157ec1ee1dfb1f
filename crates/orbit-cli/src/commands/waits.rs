//! Waking parked tasks: `orbit signal NAME` and `orbit approve RUN TASK`.

use super::client::Client;
use super::over_url::segment;
use crate::{BadInput, output};
use chrono::Utc;
use orbit_engine::waits::DecideError;
use orbit_store::{Decision, Store, StoreError};
use reqwest::Method;
use serde_json::{Value, json};

fn ttl_of(ttl: &str) -> anyhow::Result<chrono::Duration> {
    let d = orbit_core::duration::parse(ttl).map_err(|e| BadInput(format!("--ttl: {e}")))?;
    Ok(chrono::Duration::from_std(d).unwrap_or_default())
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if orbit_core::params::is_valid_event(name) {
        Ok(())
    } else {
        Err(BadInput(format!(
            "`{name}` is not a signal name (letters, digits, `-`, `_`, `.`, `:`, `@`; at most 200)"
        ))
        .into())
    }
}

pub async fn signal(
    store: &dyn Store,
    name: &str,
    payload: &Value,
    ttl: &str,
    json: bool,
) -> anyhow::Result<u8> {
    check_name(name)?;
    let now = Utc::now();
    let expires_at = now + ttl_of(ttl)?;
    let out = store.signal(name, payload, expires_at, now).await?;
    let delivered: Vec<Value> = out
        .delivered
        .iter()
        .map(|(run, task)| json!({"runId": run, "task": task}))
        .collect();
    show_signal(name, &delivered, out.kept, json)
}

pub async fn signal_over(
    server: &str,
    name: &str,
    payload: &Value,
    ttl: &str,
    json: bool,
) -> anyhow::Result<u8> {
    check_name(name)?;
    let a: Value = Client::new(server)?
        .call(
            Method::POST,
            &format!("/signals/{}?ttl={}", segment(name), segment(ttl)),
            Some(payload.clone()),
        )
        .await?;
    let delivered = a["delivered"].as_array().cloned().unwrap_or_default();
    show_signal(name, &delivered, a["kept"].as_bool().unwrap_or(false), json)
}

fn show_signal(name: &str, delivered: &[Value], kept: bool, json: bool) -> anyhow::Result<u8> {
    if json {
        output::json(&json!({"name": name, "delivered": delivered, "kept": kept}))?;
        return Ok(0);
    }
    if kept {
        println!("signal `{name}`: no task waits for it yet; kept for the first that does");
    }
    for d in delivered {
        println!(
            "signal `{name}` → {} of run {}",
            d["task"].as_str().unwrap_or_default(),
            d["runId"].as_str().unwrap_or_default()
        );
    }
    Ok(0)
}

/// A decision from the command line's flags: the decider is `--as`, else $USER.
pub fn decision(approved: bool, comment: Option<String>, by: Option<String>) -> Decision {
    let by = by
        .or_else(|| std::env::var("USER").ok())
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "cli".into());
    Decision {
        approved,
        by,
        comment,
    }
}

pub async fn decide(
    store: &dyn Store,
    run: &str,
    task: &str,
    decision: &Decision,
    json: bool,
) -> anyhow::Result<u8> {
    let run = store.find_run(run).await?;
    match orbit_engine::waits::decide(store, run.id, task, decision).await {
        Ok(_) => show_decision(&run.id.to_string(), task, decision, json),
        Err(e @ DecideError::NotAnApprover { .. }) => Err(BadInput(e.to_string()).into()),
        Err(DecideError::Store(StoreError::Conflict(m))) => Err(BadInput(m).into()),
        Err(DecideError::Store(e)) => Err(e.into()),
    }
}

pub async fn decide_over(
    server: &str,
    run: &str,
    task: &str,
    decision: &Decision,
    json: bool,
) -> anyhow::Result<u8> {
    let tr: Value = Client::new(server)?
        .call(
            Method::POST,
            &format!("/runs/{}/tasks/{}/decision", segment(run), segment(task)),
            Some(json!({
                "decision": if decision.approved { "approve" } else { "reject" },
                "comment": decision.comment,
                "by": decision.by,
            })),
        )
        .await?;
    show_decision(tr["runId"].as_str().unwrap_or(run), task, decision, json)
}

fn show_decision(run: &str, task: &str, decision: &Decision, json: bool) -> anyhow::Result<u8> {
    if json {
        output::json(&json!({
            "runId": run,
            "task": task,
            "approved": decision.approved,
            "by": decision.by,
            "comment": decision.comment,
        }))?;
    } else {
        println!(
            "{} `{task}` of run {run} as {}",
            if decision.approved {
                "approved"
            } else {
                "rejected"
            },
            decision.by
        );
    }
    Ok(0)
}
