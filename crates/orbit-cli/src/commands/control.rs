//! Steering runs: `orbit cancel RUN`, `orbit retry RUN`, `orbit delete RUN`.

use crate::BadInput;
use chrono::Utc;
use orbit_core::{RunState, TaskState};
use orbit_store::{Store, TriggeredBy};
use serde_json::json;
use std::sync::Arc;

pub async fn cancel(store: &dyn Store, id: &str, json: bool) -> anyhow::Result<u8> {
    let run = store.find_run(id).await?;
    let stopped = store
        .task_runs(run.id)
        .await?
        .iter()
        .filter(|t| !t.state.is_terminal())
        .count();
    let run = orbit_engine::subruns::cancel_tree(store, run.id, Utc::now()).await?;
    if json {
        crate::output::json(
            &json!({"run": run.id, "state": run.state, "tasksCancelled": stopped}),
        )?;
    } else {
        println!(
            "cancelled run {} ({stopped} task(s) stopped or never started)",
            run.id
        );
    }
    Ok(0)
}

pub async fn delete(store: &dyn Store, id: &str, json: bool) -> anyhow::Result<u8> {
    let run = store.find_run(id).await?;
    if !run.state.is_terminal() {
        return Err(BadInput(format!(
            "run {} is {}; cancel it first (`orbit cancel {}`)",
            run.id, run.state, run.id
        ))
        .into());
    }
    let objects = orbit_engine::runs::delete_run(
        store,
        super::storage()?.as_ref(),
        run.id,
        orbit_engine::runs::Pace::AtOnce,
    )
    .await?;
    if json {
        crate::output::json(&json!({"run": run.id, "deleted": true, "objects": objects}))?;
    } else {
        println!(
            "deleted run {} and {objects} stored object{}",
            run.id,
            if objects == 1 { "" } else { "s" }
        );
    }
    Ok(0)
}

pub async fn retry(
    store: &Arc<dyn Store>,
    id: &str,
    no_wait: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let run = store.find_run(id).await?;
    if run.state == RunState::Succeeded {
        return Err(BadInput(format!(
            "run {} succeeded; there is nothing to retry",
            run.id
        ))
        .into());
    }
    if !run.state.is_terminal() {
        // A run nobody executes any more (its process died) with dead steps: resuming refuses
        // it, as the seed does, so retrying is what takes it.
        let host = super::recover::this_host();
        let holders =
            orbit_engine::recovery::live_holders(store.as_ref(), run.id, &host, Utc::now()).await?;
        if !holders.is_empty() {
            return Err(BadInput(format!(
                "run {} is {} on {}; wait for it, or `orbit cancel {}` first",
                run.id,
                run.state,
                holders.join(", "),
                run.id
            ))
            .into());
        }
    }
    let again: Vec<String> = store
        .task_runs(run.id)
        .await?
        .into_iter()
        .filter(|t| matches!(t.state, TaskState::Dead | TaskState::Cancelled))
        .map(|t| t.task_name)
        .collect();
    if again.is_empty() && !run.state.is_terminal() {
        return Err(BadInput(format!(
            "run {} is {} with no failed or cancelled step; `orbit resume {}` goes on with it",
            run.id, run.state, run.id
        ))
        .into());
    }
    requeue_and_drive(store, run.id, &again, TriggeredBy::Retry, no_wait, json).await
}

/// Re-queues `tasks` of `run` and, unless `no_wait`, executes the run here until it settles.
pub async fn requeue_and_drive(
    store: &Arc<dyn Store>,
    run: uuid::Uuid,
    tasks: &[String],
    by: TriggeredBy,
    no_wait: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let requeued = store.requeue(run, tasks, by, Utc::now()).await?;
    if !json {
        println!(
            "re-queued {} task(s) of run {run}: {}",
            requeued.tasks.len(),
            requeued.tasks.join(", ")
        );
    }
    if no_wait {
        if json {
            crate::output::json(&json!({"run": run, "requeued": requeued.tasks}))?;
        }
        return Ok(0);
    }
    drive_to_the_end(store, run, json).await
}

/// Executes `run` here until it settles and says how it ended; exit status 0 when it
/// succeeded.
pub async fn drive_to_the_end(
    store: &Arc<dyn Store>,
    run: uuid::Uuid,
    json: bool,
) -> anyhow::Result<u8> {
    let run = store.run(run).await?;
    let pipeline = store.pipeline_version(run.pipeline_id).await?;
    let state = super::run::drive(store, &run, &pipeline, 10, json).await?;
    if !json {
        match state {
            Some(s) => println!("run {} {s}", run.id),
            None => println!("run {} interrupted; it can be resumed", run.id),
        }
    }
    Ok(if state == Some(RunState::Succeeded) {
        0
    } else {
        1
    })
}
