//! Read commands: `orbit list`, `orbit runs`, `orbit status`, `orbit logs`.

use crate::BadInput;
use crate::cli::RunsArgs;
use crate::output::{self, brief, opt_time, span, table, time};
use orbit_core::RunState;
use orbit_store::{RunFilter, Store};
use serde_json::json;

pub async fn list(store: &dyn Store, json: bool) -> anyhow::Result<u8> {
    render_list(&store.list_pipelines().await?, json)
}

/// `orbit list`, from the store or from a server.
pub fn render_list(pipelines: &[orbit_store::StoredPipeline], json: bool) -> anyhow::Result<u8> {
    if json {
        let items: Vec<_> = pipelines
            .iter()
            .map(|p| json!({"name": p.name, "version": p.version, "tasks": p.pipeline.tasks.len(),
                "description": p.pipeline.description, "schedule": p.pipeline.schedule, "updatedAt": p.created_at}))
            .collect();
        output::json(&items)?;
    } else if pipelines.is_empty() {
        println!("no pipelines yet: `orbit run path/to/pipeline.yaml` saves and runs one");
    } else {
        let rows: Vec<Vec<String>> = pipelines
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    format!("v{}", p.version),
                    p.pipeline.tasks.len().to_string(),
                    p.pipeline.schedule.clone().unwrap_or_else(|| "-".into()),
                    time(p.created_at),
                    p.pipeline
                        .description
                        .as_deref()
                        .map(|d| brief(d, 60))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        table(
            &[
                "NAME",
                "VERSION",
                "TASKS",
                "SCHEDULE",
                "UPDATED",
                "DESCRIPTION",
            ],
            &rows,
        );
    }
    Ok(0)
}

pub async fn runs(store: &dyn Store, args: &RunsArgs, json: bool) -> anyhow::Result<u8> {
    let state = args
        .status
        .as_deref()
        .map(|s| {
            s.parse::<RunState>()
                .map_err(|e| BadInput(format!("--status: {e}")))
        })
        .transpose()?;
    let runs = store
        .list_runs(&RunFilter {
            state,
            pipeline: args.pipeline.clone(),
            limit: args.limit.clamp(1, 10_000),
            offset: 0,
        })
        .await?;
    render_runs(&runs, json)
}

pub fn render_runs(runs: &[orbit_store::RunRecord], json: bool) -> anyhow::Result<u8> {
    if json {
        return output::json(&runs).map(|()| 0);
    }
    if runs.is_empty() {
        println!("no runs");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.state.to_string(),
                format!("{} v{}", r.pipeline_name, r.pipeline_version),
                format!("{}/{}", r.tasks_total - r.tasks_pending, r.tasks_total),
                time(r.created_at),
                span(r.started_at, r.finished_at),
            ]
        })
        .collect();
    table(
        &["RUN", "STATE", "PIPELINE", "TASKS", "CREATED", "DURATION"],
        &rows,
    );
    Ok(0)
}

pub async fn status(store: &dyn Store, id: &str, json: bool) -> anyhow::Result<u8> {
    let run = store.find_run(id).await?;
    // The run's own tasks; a `for_each` task's children are counted, not listed.
    let page = orbit_store::TaskRunPage {
        limit: u32::MAX,
        ..Default::default()
    };
    let tasks = store.task_runs_page(run.id, &page).await?;
    let children = store.child_counts(run.id).await?;
    let sub_runs = store.child_runs(run.id).await?;
    let mut ready = tasks.clone();
    ready.extend(orbit_engine::waiting::ready_children(store, run.id, &children).await?);
    let mut waiting = orbit_engine::waiting::held_by_keys(store, &run, &ready).await?;
    waiting.extend(orbit_engine::waiting::held_by_rates(store, &ready, chrono::Utc::now()).await?);
    waiting.extend(orbit_engine::waiting::unclaimed(store, &ready, chrono::Utc::now()).await?);
    render_status(&run, &tasks, &children, &sub_runs, &waiting, json)
}

/// Run `id` (or a unique prefix), which must have task `task` when one is named.
async fn run_with_task(
    store: &dyn Store,
    id: &str,
    task: Option<&str>,
) -> anyhow::Result<orbit_store::RunRecord> {
    let run = store.find_run(id).await?;
    if let Some(t) = task
        && !store
            .task_runs(run.id)
            .await?
            .iter()
            .any(|tr| tr.task_name == t)
    {
        return Err(BadInput(format!("run {} has no task `{t}`", run.id)).into());
    }
    Ok(run)
}

pub async fn why(
    store: &dyn Store,
    id: &str,
    task: Option<&str>,
    json: bool,
) -> anyhow::Result<u8> {
    let run = run_with_task(store, id, task).await?;
    let lines = orbit_engine::why::explain(store, &run, task, chrono::Utc::now()).await?;
    render_why(&run, &lines, json)
}

/// `orbit why`, from the store or from a server.
pub fn render_why(
    run: &orbit_store::RunRecord,
    lines: &[orbit_engine::why::Why],
    json: bool,
) -> anyhow::Result<u8> {
    if json {
        return output::json(&lines).map(|()| 0);
    }
    if lines.is_empty() {
        println!("run {} is {}: no task is waiting", run.id, run.state);
    }
    for w in lines {
        println!(
            "{}  {}: {}",
            w.task.as_deref().unwrap_or("(run)"),
            w.state,
            w.reason
        );
    }
    Ok(0)
}

/// `waiting`: why ready tasks sit unclaimed (see `orbit_engine::waiting`).
pub fn render_status(
    run: &orbit_store::RunRecord,
    tasks: &[orbit_store::TaskRunRecord],
    children: &[orbit_store::ChildCount],
    sub_runs: &[orbit_store::RunRecord],
    waiting: &[String],
    json: bool,
) -> anyhow::Result<u8> {
    if json {
        output::json(
            &json!({"run": run, "tasks": tasks, "children": children, "subRuns": sub_runs, "waiting": waiting}),
        )?;
        return Ok(0);
    }
    println!("Run       {}", run.id);
    println!("Pipeline  {} v{}", run.pipeline_name, run.pipeline_version);
    if let Some(parent) = run.parent_run_id {
        println!(
            "Parent    {parent} (task `{}`)",
            run.parent_task.as_deref().unwrap_or_default()
        );
    }
    println!("State     {}", run.state);
    if let Some(by) = &run.triggered_by {
        println!("Trigger   {by}");
    }
    println!("Created   {}", time(run.created_at));
    println!("Started   {}", opt_time(run.started_at));
    println!("Finished  {}", opt_time(run.finished_at));
    println!("Duration  {}", span(run.started_at, run.finished_at));
    println!("Input     {}", brief(&run.input.to_string(), 100));
    println!();
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(tasks.len());
    for t in tasks {
        rows.push({
            vec![
                t.task_name.clone(),
                t.state.to_string(),
                // Tries against the limit; after a retry, also how many in all.
                if t.tries == t.attempt {
                    format!("{}/{}", t.tries, t.max_attempts)
                } else {
                    format!("{}/{} ({} in all)", t.tries, t.max_attempts, t.attempt)
                },
                span(
                    t.started_at,
                    t.finished_at.or(if t.state.is_terminal() {
                        t.started_at
                    } else {
                        None
                    }),
                ),
                t.error.as_deref().map(|e| brief(e, 80)).unwrap_or_default(),
            ]
        });
        let of: Vec<&orbit_store::ChildCount> = children
            .iter()
            .filter(|c| c.task_name == t.task_name)
            .collect();
        for s in sub_runs
            .iter()
            .filter(|s| s.parent_task.as_deref() == Some(t.task_name.as_str()))
        {
            rows.push(vec![
                format!("└ run {}", s.id),
                s.state.to_string(),
                String::new(),
                span(s.started_at, s.finished_at),
                format!("{} v{}", s.pipeline_name, s.pipeline_version),
            ]);
        }
        if !of.is_empty() {
            let n: u64 = of.iter().map(|c| c.count).sum();
            let by_state: Vec<String> = of
                .iter()
                .map(|c| format!("{} {}", c.count, c.state))
                .collect();
            rows.push(vec![
                format!("└ {}[…]", t.task_name),
                format!("{n} children"),
                String::new(),
                String::new(),
                by_state.join(", "),
            ]);
        }
    }
    table(&["TASK", "STATE", "ATTEMPTS", "DURATION", "ERROR"], &rows);
    for line in waiting {
        println!("waiting: {line}");
    }
    Ok(0)
}

pub async fn logs(
    store: &dyn Store,
    id: &str,
    task: Option<&str>,
    json: bool,
) -> anyhow::Result<u8> {
    let run = run_with_task(store, id, task).await?;
    render_logs(&store.attempts(run.id, task).await?, json)
}

/// `orbit logs`, from the store or from a server.
pub fn render_logs(attempts: &[orbit_store::AttemptRecord], json: bool) -> anyhow::Result<u8> {
    if json {
        return output::json(&attempts).map(|()| 0);
    }
    if attempts.is_empty() {
        println!("no finished attempts yet");
    }
    for a in attempts {
        let took = span(Some(a.started_at), Some(a.finished_at));
        let error = a
            .error
            .as_deref()
            .map(|e| format!(": {}", brief(e, 120)))
            .unwrap_or_default();
        println!(
            "── {} · attempt {} · {}{} · {} · {} ──",
            a.task_name, a.attempt, a.outcome, error, took, a.worker
        );
        print!("{}", a.log);
        if !a.log.is_empty() && !a.log.ends_with('\n') {
            println!();
        }
    }
    Ok(0)
}
