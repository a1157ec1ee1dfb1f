//! `orbit rerun RUN --from TASK`: a run again from one of its tasks, with what came before it
//! kept.

use super::client::Client;
use super::over_url::segment;
use crate::{BadInput, output};
use orbit_engine::runs::RerunEdits;
use orbit_store::Store;
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// What was asked on the command line.
pub struct Ask {
    pub run: String,
    pub from: String,
    pub input: Option<Value>,
    pub edit: bool,
}

pub async fn local(
    store: &Arc<dyn Store>,
    ask: Ask,
    no_wait: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let old = store.find_run(&ask.run).await?;
    let pipeline = store.pipeline_version(old.pipeline_id).await?;
    let needs = pipeline
        .pipeline
        .task(&ask.from)
        .map(|t| t.needs.clone())
        .ok_or_else(|| {
            BadInput(format!(
                "pipeline `{}` version {} has no task `{}`",
                pipeline.name, pipeline.version, ask.from
            ))
        })?;
    let storage = super::storage()?;
    let edits = if ask.edit {
        let input = storage.hydrate(old.input.clone()).await?;
        let mut upstream = Map::new();
        for (name, output) in store.outputs(old.id, &needs).await? {
            upstream.insert(name, storage.hydrate(output).await?);
        }
        edited(input, upstream)?
    } else {
        RerunEdits {
            input: ask.input,
            ..RerunEdits::default()
        }
    };
    let created = orbit_engine::runs::rerun(
        store.as_ref(),
        &storage,
        old.id,
        &ask.from,
        edits,
        chrono::Utc::now(),
    )
    .await
    .map_err(|e| match e {
        orbit_engine::EngineError::BadRequest(m) => anyhow::Error::from(BadInput(m)),
        other => other.into(),
    })?;
    let run = created.run;
    let tasks = store.task_runs(run.id).await?;
    let kept: Vec<&str> = tasks
        .iter()
        .filter(|t| t.origin.is_some())
        .map(|t| t.task_name.as_str())
        .collect();
    if json && no_wait {
        output::json(&json!({"run": run.id, "rerunOf": old.id, "from": ask.from, "reused": kept}))?;
        return Ok(0);
    }
    if !json {
        println!(
            "run {} re-runs {} from `{}`; kept from it: {}",
            run.id,
            old.id,
            ask.from,
            if kept.is_empty() {
                "nothing".to_owned()
            } else {
                kept.join(", ")
            }
        );
    }
    if no_wait {
        return Ok(0);
    }
    super::control::drive_to_the_end(store, run.id, json).await
}

pub async fn over_url(server: &str, ask: Ask, json: bool) -> anyhow::Result<u8> {
    let client = Client::new(server)?;
    let mut body = json!({"from": ask.from});
    if ask.edit {
        let ctx: Value = client
            .call(
                Method::GET,
                &format!(
                    "/runs/{}/rerun?from={}",
                    segment(&ask.run),
                    segment(&ask.from)
                ),
                None,
            )
            .await?;
        let upstream = ctx["upstream"].as_object().cloned().unwrap_or_default();
        let edits = edited(ctx["input"].clone(), upstream)?;
        body["input"] = edits.input.unwrap_or(Value::Null);
        body["upstream"] = Value::Object(edits.upstream);
    } else if let Some(input) = ask.input {
        body["input"] = input;
    }
    let r: Value = client
        .call(
            Method::POST,
            &format!("/runs/{}/rerun", segment(&ask.run)),
            Some(body),
        )
        .await?;
    if json {
        output::json(&r)?;
    } else {
        println!(
            "run {} re-runs {} from `{}`; kept from it: {}; the server runs it",
            r["run"]["id"].as_str().unwrap_or("?"),
            r["run"]["rerunOf"].as_str().unwrap_or("?"),
            ask.from,
            r["reused"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "nothing".into())
        );
    }
    Ok(0)
}

/// The input and upstream outputs as the user saved them from $EDITOR: only what changed is
/// sent.
fn edited(input: Value, upstream: Map<String, Value>) -> anyhow::Result<RerunEdits> {
    let doc = json!({"input": input, "upstream": upstream});
    let text = serde_json::to_string_pretty(&doc)?;
    let path = std::env::temp_dir().join(format!("orbit-rerun-{}.json", std::process::id()));
    std::fs::write(&path, &text)?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status()
        .map_err(|e| BadInput(format!("cannot start the editor `{editor}`: {e}")))?;
    let saved = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    if !status.success() {
        return Err(BadInput(format!(
            "the editor `{editor}` failed ({status}); nothing was re-run"
        ))
        .into());
    }
    let saved: Value = serde_json::from_str(&saved?)
        .map_err(|e| BadInput(format!("the edited document is not valid JSON: {e}")))?;
    let Value::Object(mut saved) = saved else {
        return Err(BadInput(
            "the edited document must stay an object with `input` and `upstream`".into(),
        )
        .into());
    };
    let new_input = saved.remove("input").unwrap_or(Value::Null);
    let new_upstream = match saved.remove("upstream") {
        Some(Value::Object(m)) => m,
        None => Map::new(),
        Some(_) => {
            return Err(BadInput("`upstream` must stay an object of task outputs".into()).into());
        }
    };
    Ok(RerunEdits {
        input: (new_input != input).then_some(new_input),
        upstream: new_upstream
            .into_iter()
            .filter(|(k, v)| upstream.get(k) != Some(v))
            .collect(),
    })
}
