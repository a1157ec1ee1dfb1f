//! Runs and task runs.

use super::limit;
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::Utc;
use orbit_core::{RunState, TaskState};
use orbit_store::{AttemptRecord, RunFilter, RunRecord, TaskRunRecord};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// pending, running, succeeded, failed or cancelled
    pub status: Option<String>,
    /// Only runs of this pipeline.
    pub pipeline: Option<String>,
    /// Page size (default 50, at most 1000).
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunPage {
    pub runs: Vec<RunRecord>,
    pub limit: u32,
    pub offset: u32,
}

/// Runs, newest first.
#[utoipa::path(get, path = "/runs", tag = "runs", params(RunsQuery),
    responses((status = 200, body = RunPage), (status = 400, body = crate::error::ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    q: Result<Query<RunsQuery>, QueryRejection>,
) -> ApiResult<Json<RunPage>> {
    let Query(q) = q?;
    let state = q
        .status
        .as_deref()
        .map(|v| {
            v.parse::<RunState>()
                .map_err(|e| ApiError::bad_request(format!("status: {e}")))
        })
        .transpose()?;
    let filter = RunFilter {
        state,
        pipeline: q.pipeline,
        limit: limit(q.limit, 50),
        offset: q.offset.unwrap_or(0),
    };
    let runs = s.store.list_runs(&filter).await?;
    Ok(Json(RunPage {
        runs,
        limit: filter.limit,
        offset: filter.offset,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(rename_all = "camelCase")]
pub struct DetailQuery {
    /// Only task runs in this state (waiting, ready, running, succeeded, dead, skipped,
    /// cancelled).
    pub task_state: Option<String>,
    /// Task runs per page (default 50, at most 1000), in pipeline file order.
    pub task_limit: Option<u32>,
    pub task_offset: Option<u32>,
}

/// Which task runs a run detail holds, of how many.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskPage {
    pub offset: u32,
    pub limit: u32,
    /// Task runs matching the filter, on every page.
    pub total: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunDetail {
    pub run: RunRecord,
    /// One page of its task runs (`taskLimit`, `taskOffset`, `taskState`).
    pub tasks: Vec<TaskRunRecord>,
    pub tasks_page: TaskPage,
    /// How many task runs are in each state.
    pub task_counts: std::collections::BTreeMap<String, u64>,
    /// The code version each task's latest attempt ran (runs of at most
    /// [`FULL_DETAIL_TASKS`] tasks).
    pub code_versions: std::collections::BTreeMap<String, i64>,
    /// Tasks whose code version differs from the one they ran in the pipeline's previous run
    /// (runs of at most [`FULL_DETAIL_TASKS`] tasks).
    pub changed_since_previous_run: Vec<String>,
    /// The pipeline version the run follows, with its definition (its graph); null for a run
    /// of more than [`FULL_DETAIL_TASKS`] tasks, whose definition alone is megabytes (the run
    /// names the pipeline and its version).
    pub pipeline: Option<super::pipelines::PipelineView>,
    /// Why ready tasks sit unclaimed, one line each (e.g. no worker claims their queue).
    pub waiting: Vec<String>,
    /// The children of its `for_each` tasks, counted by task and state (`tasks` lists the
    /// run's own tasks; `GET /runs/{id}/tasks/{task}/children` pages through children).
    pub children: Vec<orbit_store::ChildCount>,
    /// The runs its `type: pipeline` tasks made (each names its `parentTask`).
    pub sub_runs: Vec<RunRecord>,
    /// What each task that is not running waits for (`GET /runs/{id}/why`), for runs of at
    /// most [`FULL_DETAIL_TASKS`] tasks of their own.
    #[schema(value_type = Vec<Object>)]
    pub why: Vec<orbit_engine::why::Why>,
}

/// Up to this many tasks, a run detail also compares code versions with the previous run and
/// carries the pipeline's definition: both cost time and bytes in proportion to the run.
pub const FULL_DETAIL_TASKS: i64 = 1000;

/// The code version of each task's latest attempt in `run`.
async fn code_versions(
    s: &AppState,
    run: uuid::Uuid,
) -> ApiResult<std::collections::BTreeMap<String, i64>> {
    Ok(s.store
        .attempts(run, None)
        .await?
        .into_iter()
        .filter_map(|a| a.code_version.map(|v| (a.task_name, v)))
        .collect())
}

/// One run (by id or a unique prefix) with a page of its task runs.
#[utoipa::path(get, path = "/runs/{id}", tag = "runs", params(("id" = String, Path), DetailQuery),
    responses((status = 200, body = RunDetail), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<DetailQuery>, QueryRejection>,
) -> ApiResult<Json<RunDetail>> {
    let Path(id) = id?;
    let Query(q) = q?;
    let state = q
        .task_state
        .as_deref()
        .map(|v| {
            v.parse::<TaskState>()
                .map_err(|e| ApiError::bad_request(format!("taskState: {e}")))
        })
        .transpose()?;
    let run = s.store.find_run(&id).await?;
    let page = orbit_store::TaskRunPage {
        state,
        children_of: None,
        limit: limit(q.task_limit, 50),
        offset: q.task_offset.unwrap_or(0),
    };
    let tasks = s.store.task_runs_page(run.id, &page).await?;
    let counts = s.store.task_run_counts(run.id).await?;
    let children = s.store.child_counts(run.id).await?;
    let sub_runs = s.store.child_runs(run.id).await?;
    let count = |st: TaskState| counts.iter().find(|(c, _)| *c == st).map_or(0, |(_, n)| *n);
    // The page lists the run's own tasks: children are counted apart.
    let of_children = |st: Option<TaskState>| -> u64 {
        children
            .iter()
            .filter(|c| st.is_none_or(|st| c.state == st))
            .map(|c| c.count)
            .sum()
    };
    // Read apart, the two counts may straddle a commit (an expansion): never below zero.
    let total = match state {
        Some(st) => count(st),
        None => counts.iter().map(|(_, n)| n).sum(),
    }
    .saturating_sub(of_children(state));
    let full = run.tasks_total - of_children(None) as i64 <= FULL_DETAIL_TASKS;
    let (versions, changed) = if full {
        let versions = code_versions(&s, run.id).await?;
        let changed = changed_since_previous(&s, &run, &versions).await?;
        (versions, changed)
    } else {
        Default::default()
    };
    let pipeline = if full {
        Some((&s.store.pipeline_version(run.pipeline_id).await?).into())
    } else {
        None
    };
    let waiting = if count(TaskState::Ready) > 0 {
        let ready = orbit_store::TaskRunPage {
            state: Some(TaskState::Ready),
            children_of: None,
            limit: 200,
            offset: 0,
        };
        let mut ready = s.store.task_runs_page(run.id, &ready).await?;
        ready.extend(
            orbit_engine::waiting::ready_children(s.store.as_ref(), run.id, &children).await?,
        );
        let mut lines = orbit_engine::waiting::held_by_keys(s.store.as_ref(), &run, &ready).await?;
        lines.extend(
            orbit_engine::waiting::held_by_rates(s.store.as_ref(), &ready, Utc::now()).await?,
        );
        if count(TaskState::Running) == 0 {
            lines.extend(
                orbit_engine::waiting::unclaimed(s.store.as_ref(), &ready, Utc::now()).await?,
            );
        }
        lines
    } else {
        Vec::new()
    };
    let why = if full && !run.state.is_terminal() {
        orbit_engine::why::explain(s.store.as_ref(), &run, None, Utc::now()).await?
    } else {
        Vec::new()
    };
    Ok(Json(RunDetail {
        run,
        tasks,
        tasks_page: TaskPage {
            offset: page.offset,
            limit: page.limit,
            total,
        },
        task_counts: counts
            .into_iter()
            .map(|(st, n)| (st.as_str().to_owned(), n))
            .collect(),
        code_versions: versions,
        changed_since_previous_run: changed,
        pipeline,
        waiting,
        children,
        sub_runs,
        why,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WhyQuery {
    /// Only this task's line.
    pub task: Option<String>,
}

/// Why a run's tasks are not running.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhyAnswer {
    pub run: RunRecord,
    /// One line per task that waits (and one for the run while it is pending), with what for.
    #[schema(value_type = Vec<Object>)]
    pub why: Vec<orbit_engine::why::Why>,
}

/// What each task of a run that is not running waits for: its upstream tasks (and who runs
/// them), a backoff, a full concurrency key, a spent rate limit, or no worker for its queue.
#[utoipa::path(get, path = "/runs/{id}/why", tag = "runs", params(("id" = String, Path), WhyQuery),
    responses((status = 200, body = WhyAnswer), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn why(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<WhyQuery>, QueryRejection>,
) -> ApiResult<Json<WhyAnswer>> {
    let Path(id) = id?;
    let Query(q) = q?;
    let run = s.store.find_run(&id).await?;
    if let Some(t) = &q.task
        && !s
            .store
            .task_runs(run.id)
            .await?
            .iter()
            .any(|tr| &tr.task_name == t)
    {
        return Err(ApiError::not_found(format!(
            "run {} has no task `{t}`",
            run.id
        )));
    }
    let why =
        orbit_engine::why::explain(s.store.as_ref(), &run, q.task.as_deref(), Utc::now()).await?;
    Ok(Json(WhyAnswer { run, why }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ChildrenQuery {
    /// Only children in this state.
    pub state: Option<String>,
    /// Page size (default 100, at most 1000), in list order.
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

/// A page of the children of a `for_each` task of a run, in the order of its list.
#[utoipa::path(get, path = "/runs/{id}/tasks/{task}/children", tag = "runs",
    params(("id" = String, Path), ("task" = String, Path), ChildrenQuery),
    responses((status = 200, body = Vec<TaskRunRecord>), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn children(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<ChildrenQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<TaskRunRecord>>> {
    let Path((id, task)) = path?;
    let Query(q) = q?;
    let state = q
        .state
        .as_deref()
        .map(|v| {
            v.parse::<TaskState>()
                .map_err(|e| ApiError::bad_request(format!("state: {e}")))
        })
        .transpose()?;
    let run = s.store.find_run(&id).await?;
    let page = orbit_store::TaskRunPage {
        state,
        children_of: Some(task),
        limit: limit(q.limit, 100),
        offset: q.offset.unwrap_or(0),
    };
    Ok(Json(s.store.task_runs_page(run.id, &page).await?))
}

/// Tasks whose code version in `run` differs from the one they ran in the pipeline's run
/// before it.
async fn changed_since_previous(
    s: &AppState,
    run: &RunRecord,
    versions: &std::collections::BTreeMap<String, i64>,
) -> ApiResult<Vec<String>> {
    let filter = RunFilter {
        pipeline: Some(run.pipeline_name.clone()),
        limit: 100,
        ..RunFilter::default()
    };
    let previous = s.store.list_runs(&filter).await?.into_iter().find(|r| {
        r.created_at < run.created_at || (r.created_at == run.created_at && r.id < run.id)
    });
    Ok(match previous {
        None => Vec::new(),
        Some(p) => {
            let before = code_versions(s, p.id).await?;
            versions
                .iter()
                .filter(|(task, v)| before.get(*task).is_some_and(|b| b != *v))
                .map(|(task, _)| task.clone())
                .collect()
        }
    })
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retried {
    pub run: RunRecord,
    /// The task runs put back in the queue.
    pub requeued: Vec<String>,
}

/// Retry a failed or cancelled run: its dead and cancelled tasks get a fresh set of attempts.
#[utoipa::path(post, path = "/runs/{id}/retry", tag = "runs", params(("id" = String, Path)),
    responses((status = 200, body = Retried), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn retry(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Retried>> {
    let Path(id) = id?;
    let run = s.store.find_run(&id).await?;
    if !matches!(run.state, RunState::Failed | RunState::Cancelled) {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "conflict",
            format!(
                "run {} is {}; only failed or cancelled runs can be retried",
                run.id, run.state
            ),
        ));
    }
    let names: Vec<String> = s
        .store
        .task_runs(run.id)
        .await?
        .into_iter()
        .filter(|t| matches!(t.state, TaskState::Dead | TaskState::Cancelled))
        .map(|t| t.task_name)
        .collect();
    let requeued = s
        .store
        .requeue(run.id, &names, orbit_store::TriggeredBy::Retry, Utc::now())
        .await?
        .tasks;
    Ok(Json(Retried {
        run: s.store.run(run.id).await?,
        requeued,
    }))
}

/// Resume an interrupted run: the tasks its gone process held are taken back at once (lost
/// attempts, retried) and this server's workers go on with it. Refused, as `orbit resume` is,
/// for a run with dead steps (retry it) or a settled one.
#[utoipa::path(post, path = "/runs/{id}/resume", tag = "runs", params(("id" = String, Path)),
    responses((status = 200, body = RunRecord), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn resume(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<RunRecord>> {
    use orbit_engine::recovery::{RecoveryError, check_resumable};
    let Path(id) = id?;
    let run = s.store.find_run(&id).await?;
    check_resumable(s.store.as_ref(), run.id)
        .await
        .map_err(|e| match e {
            RecoveryError::Engine(e) => ApiError::from(e),
            other => ApiError::new(StatusCode::CONFLICT, "conflict", other.to_string()),
        })?;
    s.store
        .requeue(run.id, &[], orbit_store::TriggeredBy::Recover, Utc::now())
        .await?;
    s.engine.reap_orphans(Some(run.id)).await?;
    Ok(Json(s.store.run(run.id).await?))
}

/// Cancel a run that has not settled; running attempts are stopped at their next heartbeat.
#[utoipa::path(post, path = "/runs/{id}/cancel", tag = "runs", params(("id" = String, Path)),
    responses((status = 200, body = RunRecord), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn cancel(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<RunRecord>> {
    let Path(id) = id?;
    let run = s.store.find_run(&id).await?;
    Ok(Json(
        orbit_engine::subruns::cancel_tree(s.store.as_ref(), run.id, Utc::now()).await?,
    ))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deleted {
    pub run: uuid::Uuid,
    /// Objects removed from object storage (a large input, large outputs).
    pub objects: usize,
}

/// Delete a settled run with its task runs, attempts, logs, events and stored objects. 409 while
/// it is pending or running (cancel it first).
#[utoipa::path(delete, path = "/runs/{id}", tag = "runs", params(("id" = String, Path)),
    responses((status = 200, body = Deleted), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Deleted>> {
    let Path(id) = id?;
    let run = s.store.find_run(&id).await?;
    let objects = orbit_engine::runs::delete_run(
        s.store.as_ref(),
        s.engine.storage(),
        run.id,
        orbit_engine::runs::Pace::AtOnce,
    )
    .await?;
    Ok(Json(Deleted {
        run: run.id,
        objects,
    }))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunDetail {
    pub task_run: TaskRunRecord,
    /// Every attempt, oldest first, with its log.
    pub attempts: Vec<AttemptRecord>,
    /// The task as its pipeline version defines it (type, params, retry policy, …).
    #[schema(value_type = Object)]
    pub definition: Option<orbit_core::TaskDef>,
    /// What it was given: the outputs of the tasks it needs, by name.
    #[schema(value_type = Object)]
    pub upstream: serde_json::Map<String, serde_json::Value>,
    /// What the running attempt has printed so far, when it runs in this server.
    pub live_log: Option<String>,
}

/// One task run (by id or a unique prefix) with its attempts and logs.
#[utoipa::path(get, path = "/task-runs/{id}", tag = "runs", params(("id" = String, Path)),
    responses((status = 200, body = TaskRunDetail), (status = 404, body = crate::error::ErrorBody)))]
pub async fn task_run(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<TaskRunDetail>> {
    let Path(id) = id?;
    let task_run = s.store.task_run(&id).await?;
    let attempts = s
        .store
        .attempts(task_run.run_id, Some(&task_run.task_name))
        .await?;
    let run = s.store.run(task_run.run_id).await?;
    // A `for_each` child runs its parent's definition.
    let name = orbit_core::pipeline::parent_of(&task_run.task_name)
        .map_or(task_run.task_name.as_str(), |(parent, _)| parent);
    let definition = s
        .store
        .pipeline_version(run.pipeline_id)
        .await?
        .pipeline
        .tasks
        .into_iter()
        .find(|t| t.name == name);
    let needs = definition.as_ref().map_or(Vec::new(), |d| d.needs.clone());
    let upstream = s
        .store
        .outputs(task_run.run_id, &needs)
        .await?
        .into_iter()
        .collect();
    let live_log = s.engine.live_logs().so_far(task_run.id);
    Ok(Json(TaskRunDetail {
        task_run,
        attempts,
        definition,
        upstream,
        live_log,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunBody {
    /// The task to run again, with everything downstream of it.
    pub from: String,
    /// Another run input; the old run's when absent.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Option<serde_json::Value>,
    /// Other outputs for `from`'s upstream tasks, by task name.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub upstream: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rerun {
    /// The new run (its `rerunOf` names the old one).
    pub run: RunRecord,
    /// The tasks it took over from the old run (their task runs name their `origin`).
    pub reused: Vec<String>,
}

/// Run a run again from one of its tasks: a new run of the same pipeline version that keeps
/// the recorded outputs of every task not downstream of `from` and runs `from` and everything
/// after it, optionally with another input or other outputs for `from`'s upstream tasks. Any
/// run, settled or not.
#[utoipa::path(post, path = "/runs/{id}/rerun", tag = "runs", params(("id" = String, Path)), request_body = RerunBody,
    responses((status = 201, body = Rerun), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn rerun(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<RerunBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Rerun>)> {
    let Path(id) = id?;
    let Json(body) = body?;
    let run = s.store.find_run(&id).await?;
    let created = orbit_engine::runs::rerun(
        s.store.as_ref(),
        s.engine.storage(),
        run.id,
        &body.from,
        orbit_engine::runs::RerunEdits {
            input: body.input,
            upstream: body.upstream.unwrap_or_default(),
        },
        Utc::now(),
    )
    .await?;
    let reused = s
        .store
        .task_runs(created.run.id)
        .await?
        .into_iter()
        .filter(|t| t.origin.is_some())
        .map(|t| t.task_name)
        .collect();
    Ok((
        StatusCode::CREATED,
        Json(Rerun {
            run: created.run,
            reused,
        }),
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RerunQuery {
    /// The task a re-run would start from.
    pub from: String,
}

/// What a re-run from `from` would start with, to edit: the run's input and the outputs of
/// `from`'s upstream tasks (read back from object storage when kept there).
#[derive(Serialize, ToSchema)]
pub struct RerunContext {
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    #[schema(value_type = Object)]
    pub upstream: serde_json::Map<String, serde_json::Value>,
}

#[utoipa::path(get, path = "/runs/{id}/rerun", tag = "runs", params(("id" = String, Path), RerunQuery),
    responses((status = 200, body = RerunContext), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn rerun_context(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<RerunQuery>, QueryRejection>,
) -> ApiResult<Json<RerunContext>> {
    let Path(id) = id?;
    let Query(q) = q?;
    let run = s.store.find_run(&id).await?;
    let stored = s.store.pipeline_version(run.pipeline_id).await?;
    let needs = stored
        .pipeline
        .task(&q.from)
        .map(|t| t.needs.clone())
        .ok_or_else(|| ApiError::not_found(format!("run {} has no task `{}`", run.id, q.from)))?;
    let storage = s.engine.storage();
    let input = storage
        .hydrate(run.input)
        .await
        .map_err(orbit_engine::EngineError::from)?;
    let mut upstream = serde_json::Map::new();
    for (name, output) in s.store.outputs(run.id, &needs).await? {
        upstream.insert(
            name,
            storage
                .hydrate(output)
                .await
                .map_err(orbit_engine::EngineError::from)?,
        );
    }
    Ok(Json(RerunContext { input, upstream }))
}

/// A run's timeline: each task's queue wait, attempts, backoffs, parks and children as
/// segments on one time axis, the critical path marked.
#[utoipa::path(get, path = "/runs/{id}/timeline", tag = "runs", params(("id" = String, Path)),
    responses((status = 200, body = orbit_engine::timeline::Timeline), (status = 404, body = crate::error::ErrorBody)))]
pub async fn timeline(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<orbit_engine::timeline::Timeline>> {
    let Path(id) = id?;
    let run = s.store.find_run(&id).await?;
    if run.tasks_total > 1000 {
        return Err(ApiError::bad_request(format!(
            "run {} has {} task runs; a timeline is drawn for runs of up to 1000",
            run.id, run.tasks_total
        )));
    }
    let stored = s.store.pipeline_version(run.pipeline_id).await?;
    let tasks = s.store.task_runs(run.id).await?;
    let attempts = s.store.attempts(run.id, None).await?;
    Ok(Json(orbit_engine::timeline::build(
        &run,
        &stored.pipeline,
        &tasks,
        &attempts,
        Utc::now(),
    )))
}
