//! Pipelines, nodes and worker services, and task progress.

use super::{begin, flush_events};
use crate::rows::pipeline_from_row;
use crate::unavailable;
use chrono::{DateTime, Utc};
use orbit_core::Pipeline;
use orbit_core::protocol::Registration;
use orbit_store::plan::{Event, EventKind};
use orbit_store::{NodeInfo, Result, ServiceTask, StoreError, StoredPipeline};
use serde_json::json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

pub async fn save_pipeline(
    pool: &PgPool,
    pipeline: &Pipeline,
    source: Option<&str>,
    now: DateTime<Utc>,
) -> Result<StoredPipeline> {
    let hash = pipeline.content_hash();
    let definition =
        serde_json::to_value(pipeline).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut tx = begin(pool).await?;
    // Two servers saving the same name at once take turns instead of racing for a version.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(&pipeline.name)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    let latest =
        sqlx::query("SELECT * FROM pipelines WHERE name = $1 ORDER BY version DESC LIMIT 1")
            .bind(&pipeline.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
    if let Some(row) = &latest {
        let stored = pipeline_from_row(row)?;
        let deleted: Option<DateTime<Utc>> = row.try_get("deleted_at").map_err(unavailable)?;
        if stored.hash == hash && deleted.is_none() {
            return Ok(stored);
        }
    }
    let version = latest.map_or(Ok(0), |r| {
        r.try_get::<i64, _>("version").map_err(unavailable)
    })? + 1;
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO pipelines (id, name, version, hash, definition, source, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(&pipeline.name)
    .bind(version)
    .bind(&hash)
    .bind(&definition)
    .bind(source)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    let saved = json!({"pipeline": pipeline.name, "version": version});
    flush_events(
        &mut tx,
        &[Event::global(EventKind::PipelineSaved, saved)],
        now,
    )
    .await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(StoredPipeline {
        id,
        name: pipeline.name.clone(),
        version,
        hash,
        pipeline: pipeline.clone(),
        source: source.map(str::to_owned),
        created_at: now,
    })
}

pub async fn delete_pipeline(pool: &PgPool, name: &str, now: DateTime<Utc>) -> Result<u64> {
    let mut tx = begin(pool).await?;
    let hidden =
        sqlx::query("UPDATE pipelines SET deleted_at = $1 WHERE name = $2 AND deleted_at IS NULL")
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
    if hidden > 0 {
        let deleted = Event::global(EventKind::PipelineDeleted, json!({"pipeline": name}));
        flush_events(&mut tx, &[deleted], now).await?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(hidden)
}

pub async fn node_heartbeat(pool: &PgPool, node: &NodeInfo, now: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        "INSERT INTO nodes (id, kind, host, pid, version, queues, concurrency, heartbeat_ms, started_at, last_seen_at, service) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10) \
         ON CONFLICT (id) DO UPDATE SET last_seen_at = excluded.last_seen_at, stopped_at = NULL",
    )
    .bind(&node.id)
    .bind(&node.kind)
    .bind(&node.host)
    .bind(i64::from(node.pid))
    .bind(&node.version)
    .bind(json!(node.queues))
    .bind(i64::from(node.concurrency))
    .bind(i64::try_from(node.heartbeat_ms).unwrap_or(i64::MAX))
    .bind(now)
    .bind(&node.service)
    .execute(pool)
    .await
    .map_err(unavailable)?;
    Ok(())
}

pub async fn node_stopped(pool: &PgPool, id: &str, now: DateTime<Utc>) -> Result<()> {
    sqlx::query("UPDATE nodes SET stopped_at = $1, last_seen_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(pool)
        .await
        .map_err(unavailable)?;
    Ok(())
}

pub async fn register_service(
    pool: &PgPool,
    reg: &Registration,
    now: DateTime<Utc>,
) -> Result<Vec<ServiceTask>> {
    let mut tx = pool.begin().await.map_err(unavailable)?;
    sqlx::query(
        "INSERT INTO services (id, version, url, registered_at, last_seen_at) VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, url = excluded.url, last_seen_at = excluded.last_seen_at",
    )
    .bind(&reg.service_id)
    .bind(&reg.version)
    .bind(&reg.url)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    let mut tasks = Vec::with_capacity(reg.tasks.len());
    for task in &reg.tasks {
        // Row lock: two workers of one service registering at once bump the version once.
        let current: Option<(String, i64)> = sqlx::query_as(
            "SELECT code_hash, code_version FROM service_tasks WHERE name = $1 FOR UPDATE",
        )
        .bind(&task.name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        let (version, changed) = match current {
            Some((hash, v)) if hash == task.code_hash => (v, false),
            Some((_, v)) => (v + 1, true),
            None => (1, true),
        };
        let options = serde_json::to_value(task).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO service_tasks (name, service_id, code_hash, code_version, options, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET service_id = excluded.service_id, \
             code_hash = excluded.code_hash, code_version = excluded.code_version, options = excluded.options, \
             updated_at = excluded.updated_at",
        )
        .bind(&task.name)
        .bind(&reg.service_id)
        .bind(&task.code_hash)
        .bind(version)
        .bind(&options)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if changed {
            sqlx::query(
                "INSERT INTO task_code_history (task_name, code_version, service_id, code_hash, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(&task.name)
            .bind(version)
            .bind(&reg.service_id)
            .bind(&task.code_hash)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        tasks.push(ServiceTask {
            name: task.name.clone(),
            service_id: reg.service_id.clone(),
            code_hash: task.code_hash.clone(),
            code_version: version,
            options: task.clone(),
            updated_at: now,
            changed,
        });
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(tasks)
}

pub async fn set_progress(
    pool: &PgPool,
    id: Uuid,
    epoch: i64,
    progress: f64,
    message: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE task_runs SET progress = $1, progress_message = $2, updated_at = $3 \
         WHERE id = $4 AND state = 'running' AND lease_epoch = $5",
    )
    .bind(progress)
    .bind(message)
    .bind(now)
    .bind(id)
    .bind(epoch)
    .execute(pool)
    .await
    .map_err(unavailable)?;
    Ok(done.rows_affected() == 1)
}
