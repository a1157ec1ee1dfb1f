//! `orbit dlq list | show | retry | purge`. Entries older than `DLQ_RETENTION_DAYS` (default 30)
//! are purged whenever the queue is looked at.

use crate::BadInput;
use crate::cli::DlqAction;
use crate::output::{brief, table, time};
use chrono::Utc;
use orbit_core::TaskState;
use orbit_core::dag::Dag;
use orbit_engine::recovery::{DeadLetterDetail, dead_letter_detail};
use orbit_engine::runs::{Pace, purge_dead_letters};
use orbit_store::Store;
use serde_json::json;
use std::sync::Arc;

fn retention() -> anyhow::Result<chrono::Duration> {
    Ok(
        orbit_engine::runs::dlq_retention(std::env::var("DLQ_RETENTION_DAYS").ok())
            .map_err(BadInput)?,
    )
}

pub async fn dlq(store: &Arc<dyn Store>, action: DlqAction, json: bool) -> anyhow::Result<u8> {
    let storage = super::storage()?;
    purge_dead_letters(
        store.as_ref(),
        &storage,
        Utc::now() - retention()?,
        Pace::AtOnce,
    )
    .await?;
    match action {
        DlqAction::List { limit } => list(store.as_ref(), limit, json).await,
        DlqAction::Show { id } => show(store.as_ref(), &id, json).await,
        DlqAction::Retry { id, no_wait } => retry(store, &id, no_wait, json).await,
        DlqAction::Purge { older_than } => {
            let cutoff = Utc::now()
                - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
            let done = purge_dead_letters(store.as_ref(), &storage, cutoff, Pace::AtOnce).await?;
            render_purged(&done, json)
        }
    }
}

/// `orbit dlq purge`, from the store or from a server.
pub fn render_purged(done: &orbit_engine::runs::Retention, json: bool) -> anyhow::Result<u8> {
    let n = done.entries;
    if json {
        crate::output::json(
            &json!({"purged": n, "runsDeleted": done.runs, "objectsDeleted": done.objects}),
        )?;
    } else {
        println!(
            "purged {n} dead-letter entr{}; deleted {} failed run{} left without one ({} stored object{})",
            if n == 1 { "y" } else { "ies" },
            done.runs,
            if done.runs == 1 { "" } else { "s" },
            done.objects,
            if done.objects == 1 { "" } else { "s" },
        );
    }
    Ok(0)
}

async fn list(store: &dyn Store, limit: u32, json: bool) -> anyhow::Result<u8> {
    render_list(&store.dead_letters(limit).await?, json)
}

/// `orbit dlq list`, from the store or from a server.
pub fn render_list(entries: &[orbit_store::DeadLetter], json: bool) -> anyhow::Result<u8> {
    if json {
        return crate::output::json(&entries).map(|()| 0);
    }
    if entries.is_empty() {
        println!("the dead-letter queue is empty");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                e.task_name.clone(),
                orbit_core::id::short(&e.run_id),
                e.attempts.to_string(),
                time(e.created_at),
                e.error.as_deref().map(|x| brief(x, 70)).unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["ID", "TASK", "RUN", "ATTEMPTS", "DEAD SINCE", "ERROR"],
        &rows,
    );
    Ok(0)
}

async fn show(store: &dyn Store, id: &str, json: bool) -> anyhow::Result<u8> {
    render_detail(&dead_letter_detail(store, id).await?, json)
}

/// `orbit dlq show`, from the store or from a server.
pub fn render_detail(d: &DeadLetterDetail, json: bool) -> anyhow::Result<u8> {
    if json {
        return crate::output::json(d).map(|()| 0);
    }
    let entry = &d.entry;
    println!("Entry     {}", entry.id);
    println!("Task      {} (run {})", entry.task_name, entry.run_id);
    println!(
        "Pipeline  {} v{} (code {})",
        d.pipeline,
        d.code_version.pipeline_version,
        &d.code_version.hash[..12.min(d.code_version.hash.len())]
    );
    println!(
        "Dead      {} after {} attempt(s)",
        time(entry.created_at),
        entry.attempts
    );
    println!("Input     {}", serde_json::to_string_pretty(&d.input)?);
    println!("Attempts:");
    for a in &d.attempts {
        println!(
            "  {} · {} · {}: {}",
            a.attempt,
            a.outcome,
            time(a.finished_at),
            a.error.as_deref().unwrap_or("-")
        );
    }
    Ok(0)
}

async fn retry(store: &Arc<dyn Store>, id: &str, no_wait: bool, json: bool) -> anyhow::Result<u8> {
    let entry = store.dead_letter(id).await?;
    let pipeline = store.pipeline_version(entry.pipeline_id).await?;
    let dag = Dag::new(&pipeline.pipeline)?;
    let states: Vec<TaskState> = {
        let trs = store.task_runs(entry.run_id).await?;
        dag_order_states(&dag, &trs)
    };
    let target = dag.index_of(&entry.task_name).ok_or_else(|| {
        BadInput(format!(
            "task `{}` is not in its pipeline any more",
            entry.task_name
        ))
    })?;
    let mut again = vec![entry.task_name.clone()];
    again.extend(
        dag.revived_by(target, |i| states[i] == TaskState::Dead)
            .into_iter()
            .filter(|&i| states[i] == TaskState::Cancelled)
            .map(|i| dag.name(i).to_owned()),
    );
    super::control::requeue_and_drive(
        store,
        entry.run_id,
        &again,
        orbit_store::TriggeredBy::Dlq,
        no_wait,
        json,
    )
    .await
}

/// Task states indexed like the DAG.
fn dag_order_states(dag: &Dag, task_runs: &[orbit_store::TaskRunRecord]) -> Vec<TaskState> {
    (0..dag.len())
        .map(|i| {
            task_runs
                .iter()
                .find(|t| t.task_name == dag.name(i))
                .map_or(TaskState::Waiting, |t| t.state)
        })
        .collect()
}
