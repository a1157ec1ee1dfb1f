//! What people and other systems do to parked tasks: the rules shared by the API and the CLI.

use orbit_core::params::{ApprovalParams, Params};
use orbit_store::{Decision, Store, StoreError, TaskRunRecord};
use uuid::Uuid;

/// Why a decision was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("`{by}` may not decide `{task}`; its approvers are: {}", approvers.join(", "))]
    NotAnApprover {
        by: String,
        task: String,
        approvers: Vec<String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Records `decision` on task `task` of `run` (an `approval` waiting for one), if its decider is
/// among the task's `approvers` (anyone when it names none). Returns the task run as it is now.
pub async fn decide(
    store: &dyn Store,
    run: Uuid,
    task: &str,
    decision: &Decision,
) -> Result<TaskRunRecord, DecideError> {
    let record = store.run(run).await?;
    let tr = store
        .task_runs(run)
        .await?
        .into_iter()
        .find(|t| t.task_name == task)
        .ok_or_else(|| StoreError::NotFound(format!("run {run} has no task `{task}`")))?;
    let stored = store.pipeline_version(record.pipeline_id).await?;
    let approvers = stored
        .pipeline
        .task(task)
        .and_then(
            |def| match Params::from_json(def.task_type, &def.params, false) {
                Ok(Params::Approval(ApprovalParams { approvers, .. })) => Some(approvers),
                _ => None,
            },
        )
        .unwrap_or_default();
    if !approvers.is_empty() && !approvers.contains(&decision.by) {
        return Err(DecideError::NotAnApprover {
            by: decision.by.clone(),
            task: task.to_owned(),
            approvers,
        });
    }
    store
        .decide(run, task, decision, chrono::Utc::now())
        .await?;
    Ok(store.task_run(&tr.id.to_string()).await?)
}
