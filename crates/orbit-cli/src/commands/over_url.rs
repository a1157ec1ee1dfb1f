//! The read and control commands against a server (`--url` / `ORBIT_URL`): `list`, `apply`,
//! `logs`, `graph`, `cancel`, `delete`, `retry`, `resume`, `dlq …`. Each calls the API and prints
//! what its local form prints, from the same renderers.

use super::client::Client;
use super::{inspect, is_file_argument, load_file};
use crate::BadInput;
use crate::cli::{DlqAction, LimitsAction};
use crate::output;
use orbit_store::{AttemptRecord, RunRecord};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::PathBuf;

/// A path segment as it goes into a URL: names and ids are letters, digits and `-_.`; anything
/// else is percent-encoded.
pub(super) fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PipelineView {
    name: String,
    version: i64,
    description: Option<String>,
    schedule: Option<String>,
    definition: orbit_core::Pipeline,
    created_at: chrono::DateTime<chrono::Utc>,
}

pub async fn list(server: &str, json: bool) -> anyhow::Result<u8> {
    let pipelines: Vec<PipelineView> = Client::new(server)?
        .call(Method::GET, "/pipelines", None)
        .await?;
    let stored: Vec<orbit_store::StoredPipeline> = pipelines
        .into_iter()
        .map(|p| orbit_store::StoredPipeline {
            id: uuid::Uuid::nil(),
            name: p.name,
            version: p.version,
            hash: String::new(),
            pipeline: orbit_core::Pipeline {
                description: p.description,
                schedule: p.schedule,
                ..p.definition
            },
            source: None,
            created_at: p.created_at,
        })
        .collect();
    inspect::render_list(&stored, json)
}

/// Saves each file as a pipeline, on the server or in the store: its version, and whether it
/// changed.
pub async fn apply(
    server: Option<&str>,
    database: &str,
    files: &[PathBuf],
    json: bool,
) -> anyhow::Result<u8> {
    let mut results = Vec::new();
    // Every file is checked before anything is saved: one bad file applies none.
    let loaded = files
        .iter()
        .map(|f| load_file(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    match server {
        Some(server) => {
            let client = Client::new(server)?;
            for (pipeline, text) in &loaded {
                let (status, view): (_, PipelineView) = client
                    .call_with_status(Method::POST, "/pipelines", Some(json!({"yaml": text})))
                    .await?;
                results.push((pipeline.name.clone(), view.version, status.as_u16() == 201));
            }
        }
        None => {
            let store = super::open_store(database).await?;
            for (pipeline, text) in &loaded {
                orbit_engine::subruns::check_cycles(store.as_ref(), pipeline)
                    .await
                    .map_err(crate::BadInput)?;
                let before = store.pipeline(&pipeline.name).await.ok().map(|p| p.id);
                let stored = store
                    .save_pipeline(pipeline, Some(text), chrono::Utc::now())
                    .await?;
                results.push((stored.name, stored.version, before != Some(stored.id)));
            }
        }
    }
    if json {
        let list: Vec<_> = results
            .iter()
            .map(|(n, v, changed)| json!({"name": n, "version": v, "changed": changed}))
            .collect();
        output::json(&list)?;
    } else {
        for (name, version, changed) in &results {
            let what = if *changed { "saved" } else { "unchanged" };
            println!("{name} v{version} {what}");
        }
    }
    Ok(0)
}

#[derive(Deserialize)]
struct TaskRunDetail {
    attempts: Vec<AttemptRecord>,
}

pub async fn logs(server: &str, run: &str, task: Option<&str>, json: bool) -> anyhow::Result<u8> {
    let client = Client::new(server)?;
    let d = super::remote::run_detail(&client, run).await?;
    if let Some(t) = task.filter(|t| !d.tasks.iter().any(|tr| tr.task_name == *t)) {
        return Err(BadInput(format!("run {} has no task `{t}`", d.run.id)).into());
    }
    let mut attempts = Vec::new();
    for tr in d
        .tasks
        .iter()
        .filter(|t| task.is_none_or(|n| n == t.task_name))
    {
        let detail: TaskRunDetail = client
            .call(Method::GET, &format!("/task-runs/{}", tr.id), None)
            .await?;
        attempts.extend(detail.attempts);
    }
    attempts.sort_by_key(|a| (a.finished_at, a.attempt));
    inspect::render_logs(&attempts, json)
}

pub async fn graph(server: &str, arg: &str, json: bool) -> anyhow::Result<u8> {
    let pipeline = if is_file_argument(arg) {
        load_file(std::path::Path::new(arg))?.0
    } else {
        Client::new(server)?
            .call::<PipelineView>(Method::GET, &format!("/pipelines/{}", segment(arg)), None)
            .await?
            .definition
    };
    super::graph::render_pipeline(&pipeline, json)
}

pub async fn cancel(server: &str, run: &str, json: bool) -> anyhow::Result<u8> {
    let r: RunRecord = Client::new(server)?
        .call(
            Method::POST,
            &format!("/runs/{}/cancel", segment(run)),
            None,
        )
        .await?;
    if json {
        output::json(&json!({"run": r.id, "state": r.state}))?;
    } else {
        println!("cancelled run {}", r.id);
    }
    Ok(0)
}

pub async fn delete(server: &str, run: &str, json: bool) -> anyhow::Result<u8> {
    let d: Value = Client::new(server)?
        .call(Method::DELETE, &format!("/runs/{}", segment(run)), None)
        .await?;
    if json {
        output::json(&d)?;
    } else {
        let objects = d["objects"].as_u64().unwrap_or(0);
        println!(
            "deleted run {} and {objects} stored object{}",
            d["run"].as_str().unwrap_or(run),
            if objects == 1 { "" } else { "s" }
        );
    }
    Ok(0)
}

pub async fn retry(server: &str, run: &str, json: bool) -> anyhow::Result<u8> {
    let r: Value = Client::new(server)?
        .call(Method::POST, &format!("/runs/{}/retry", segment(run)), None)
        .await?;
    let run = r["run"]["id"].as_str().unwrap_or(run).to_owned();
    requeued(&format!("run {run}"), &r["requeued"], json)
}

fn requeued(of: &str, tasks: &Value, json: bool) -> anyhow::Result<u8> {
    if json {
        output::json(&json!({"of": of, "requeued": tasks}))?;
    } else {
        let names: Vec<&str> = tasks
            .as_array()
            .map(|t| t.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "re-queued {} task(s) of {of}: {}; the server runs them",
            names.len(),
            names.join(", ")
        );
    }
    Ok(0)
}

pub async fn resume(server: &str, run: &str, json: bool) -> anyhow::Result<u8> {
    let r: RunRecord = Client::new(server)?
        .call(
            Method::POST,
            &format!("/runs/{}/resume", segment(run)),
            None,
        )
        .await?;
    if json {
        output::json(&r)?;
    } else {
        println!(
            "Resuming Run: {}\n\nthe server goes on with it; follow it with `orbit status {} --url {server}`",
            r.id,
            orbit_core::id::short(&r.id)
        );
    }
    Ok(0)
}

pub async fn limits(server: &str, action: LimitsAction, json: bool) -> anyhow::Result<u8> {
    let client = Client::new(server)?;
    match action {
        LimitsAction::List => {
            let all: Vec<orbit_store::KeyUsage> = client.call(Method::GET, "/limits", None).await?;
            super::limits::render(&all, json)
        }
        LimitsAction::Set { key, limit } => {
            let usage: orbit_store::KeyUsage = client
                .call(
                    Method::PUT,
                    &format!("/limits/{}", segment(&key)),
                    Some(serde_json::json!({ "limit": limit })),
                )
                .await?;
            super::limits::render(&[usage], json)
        }
        LimitsAction::Delete { key } => {
            let _: Value = client
                .call(Method::DELETE, &format!("/limits/{}", segment(&key)), None)
                .await?;
            super::limits::deleted(&key, json)
        }
    }
}

pub async fn dlq(server: &str, action: DlqAction, json: bool) -> anyhow::Result<u8> {
    let client = Client::new(server)?;
    match action {
        DlqAction::List { limit } => {
            let entries: Vec<orbit_store::DeadLetter> = client
                .call(Method::GET, &format!("/dlq?limit={limit}"), None)
                .await?;
            super::dlq::render_list(&entries, json)
        }
        DlqAction::Show { id } => {
            let d: orbit_engine::recovery::DeadLetterDetail = client
                .call(Method::GET, &format!("/dlq/{}", segment(&id)), None)
                .await?;
            super::dlq::render_detail(&d, json)
        }
        DlqAction::Retry { id, .. } => {
            let r: Value = client
                .call(Method::POST, &format!("/dlq/{}/retry", segment(&id)), None)
                .await?;
            requeued(&format!("dead-letter entry {id}"), &r["tasks"], json)
        }
        DlqAction::Purge { older_than } => {
            let days = older_than.as_secs() / 86_400;
            let done: orbit_engine::runs::Retention = client
                .call(
                    Method::POST,
                    &format!("/dlq/purge?olderThanDays={days}"),
                    None,
                )
                .await?;
            super::dlq::render_purged(&done, json)
        }
    }
}
