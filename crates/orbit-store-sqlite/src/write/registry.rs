//! Pipelines, nodes and worker services, and task progress.

use super::{exec, flush_events, uuid};
use crate::us;
use crate::writer::{Writer, sql};
use chrono::{DateTime, Utc};
use orbit_core::Pipeline;
use orbit_core::protocol::Registration;
use orbit_store::plan::{Event, EventKind};
use orbit_store::{NodeInfo, Result, ServiceTask, StoreError, StoredPipeline};
use rusqlite::{OptionalExtension, params};
use serde_json::json;
use uuid::Uuid;

pub async fn save_pipeline(
    writer: &Writer,
    pipeline: &Pipeline,
    source: Option<&str>,
    now: DateTime<Utc>,
) -> Result<StoredPipeline> {
    let hash = pipeline.content_hash();
    let definition =
        serde_json::to_string(pipeline).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let name = pipeline.name.clone();
    let source = source.map(str::to_owned);
    let schedule = pipeline.schedule.clone();
    let (id, version, hash, source, created_at) = writer
        .transaction(move |t| {
            let latest = t
                .prepare_cached(
                    "SELECT id, version, hash, source, created_at, deleted_at FROM pipelines \
                     WHERE name = ?1 ORDER BY version DESC LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row([&name], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, Option<i64>>(5)?,
                        ))
                    })
                    .optional()
                })
                .map_err(sql)?;
            if let Some((id, version, stored, source, created, None)) = &latest
                && *stored == hash
            {
                return Ok((uuid(id)?, *version, hash, source.clone(), *created));
            }
            let version = latest.map_or(0, |l| l.1) + 1;
            let id = Uuid::now_v7();
            exec(
                t,
                "INSERT INTO pipelines (id, name, version, hash, definition, source, created_at, schedule) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id.to_string(),
                    &name,
                    version,
                    &hash,
                    &definition,
                    &source,
                    us(now),
                    &schedule
                ],
            )?;
            let saved = json!({"pipeline": name, "version": version});
            flush_events(
                t,
                &[Event::global(EventKind::PipelineSaved, saved)],
                us(now),
            )?;
            Ok((id, version, hash, source, us(now)))
        })
        .await?;
    Ok(StoredPipeline {
        id,
        name: pipeline.name.clone(),
        version,
        hash,
        pipeline: pipeline.clone(),
        source,
        created_at: DateTime::from_timestamp_micros(created_at).unwrap_or_default(),
    })
}

pub async fn delete_pipeline(writer: &Writer, name: &str, now: DateTime<Utc>) -> Result<u64> {
    let name = name.to_owned();
    let now = us(now);
    writer
        .transaction(move |t| {
            let hidden = exec(
                t,
                "UPDATE pipelines SET deleted_at = ?1 WHERE name = ?2 AND deleted_at IS NULL",
                params![now, &name],
            )?;
            if hidden > 0 {
                let deleted = Event::global(EventKind::PipelineDeleted, json!({"pipeline": name}));
                flush_events(t, &[deleted], now)?;
            }
            Ok(hidden as u64)
        })
        .await
}

pub async fn node_heartbeat(writer: &Writer, node: &NodeInfo, now: DateTime<Utc>) -> Result<()> {
    let queues =
        serde_json::to_string(&node.queues).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let node = node.clone();
    let now = us(now);
    writer
        .transaction(move |t| {
            exec(
                t,
                "INSERT INTO nodes (id, kind, host, pid, version, queues, concurrency, heartbeat_ms, started_at, last_seen_at, service) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10) \
                 ON CONFLICT (id) DO UPDATE SET last_seen_at = excluded.last_seen_at, stopped_at = NULL",
                params![
                    &node.id,
                    &node.kind,
                    &node.host,
                    i64::from(node.pid),
                    &node.version,
                    queues,
                    i64::from(node.concurrency),
                    i64::try_from(node.heartbeat_ms).unwrap_or(i64::MAX),
                    now,
                    &node.service
                ],
            )?;
            Ok(())
        })
        .await
}

pub async fn node_stopped(writer: &Writer, id: &str, now: DateTime<Utc>) -> Result<()> {
    let id = id.to_owned();
    let now = us(now);
    writer
        .transaction(move |t| {
            exec(
                t,
                "UPDATE nodes SET stopped_at = ?1, last_seen_at = ?1 WHERE id = ?2",
                params![now, &id],
            )?;
            Ok(())
        })
        .await
}

pub async fn register_service(
    writer: &Writer,
    reg: &Registration,
    now: DateTime<Utc>,
) -> Result<Vec<ServiceTask>> {
    let reg = reg.clone();
    writer
        .transaction(move |t| {
            let at = us(now);
            exec(
                t,
                "INSERT INTO services (id, version, url, registered_at, last_seen_at) VALUES (?1, ?2, ?3, ?4, ?4) \
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version, url = excluded.url, last_seen_at = excluded.last_seen_at",
                params![&reg.service_id, &reg.version, &reg.url, at],
            )?;
            let mut tasks = Vec::with_capacity(reg.tasks.len());
            for task in &reg.tasks {
                let current: Option<(String, i64)> = t
                    .prepare_cached("SELECT code_hash, code_version FROM service_tasks WHERE name = ?1")
                    .and_then(|mut s| {
                        s.query_row([&task.name], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()
                    })
                    .map_err(sql)?;
                let (version, changed) = match current {
                    Some((hash, v)) if hash == task.code_hash => (v, false),
                    Some((_, v)) => (v + 1, true),
                    None => (1, true),
                };
                let options =
                    serde_json::to_string(task).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                exec(
                    t,
                    "INSERT INTO service_tasks (name, service_id, code_hash, code_version, options, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO UPDATE SET service_id = excluded.service_id, \
                     code_hash = excluded.code_hash, code_version = excluded.code_version, options = excluded.options, \
                     updated_at = excluded.updated_at",
                    params![&task.name, &reg.service_id, &task.code_hash, version, options, at],
                )?;
                if changed {
                    exec(
                        t,
                        "INSERT INTO task_code_history (task_name, code_version, service_id, code_hash, created_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![&task.name, version, &reg.service_id, &task.code_hash, at],
                    )?;
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
            Ok(tasks)
        })
        .await
}

pub async fn set_progress(
    writer: &Writer,
    id: Uuid,
    epoch: i64,
    progress: f64,
    message: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let message = message.map(str::to_owned);
    let now = us(now);
    writer
        .transaction(move |t| {
            let done = exec(
                t,
                "UPDATE task_runs SET progress = ?1, progress_message = ?2, updated_at = ?3 \
                 WHERE id = ?4 AND state = 'running' AND lease_epoch = ?5",
                params![progress, message, now, id.to_string(), epoch],
            )?;
            Ok(done == 1)
        })
        .await
}

pub async fn forget_attempt_cells(writer: &Writer, before: DateTime<Utc>) -> Result<u64> {
    let minute = before.timestamp().div_euclid(60);
    let before = before.timestamp_micros();
    writer
        .transaction(move |t| {
            exec(
                t,
                "DELETE FROM rate_buckets WHERE updated_at + per_ms * 1000 < ?1",
                [before],
            )?;
            exec(t, "DELETE FROM signals WHERE expires_at < ?1", [before])?;
            exec(t, "DELETE FROM attempt_cells WHERE minute < ?1", [minute]).map(|n| n as u64)
        })
        .await
}

/// Sets or removes a concurrency key's named limit; whether one was there before.
pub async fn set_key_limit(
    writer: &Writer,
    key: &str,
    limit: Option<u32>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let key = key.to_owned();
    writer
        .transaction(move |t| {
            let existed = exec(t, "DELETE FROM concurrency_limits WHERE key = ?1", [&key])? > 0;
            if let Some(n) = limit {
                exec(
                    t,
                    "INSERT INTO concurrency_limits (key, max_running, updated_at) VALUES (?1, ?2, ?3)",
                    params![&key, n, us(now)],
                )?;
            }
            Ok(existed)
        })
        .await
}
