//! `orbit bench retention`: whether claims keep their pace while run retention deletes a big
//! backlog. It runs `--runs` runs of `--tasks` no-op tasks to the end (task runs, attempts and
//! events: what retention really deletes), drains `--drain` tasks with nothing else going on,
//! then lets run retention delete every one of those runs while it drains `--drain` tasks again
//! and again until the deleting is done. One JSON line: the rate before, the slowest and median
//! rates while deleting, and how fast the rows went.

use crate::bench::{Fresh, fresh_store, percentile};
use crate::bench_scale::{drained, engine, new_run, pipeline_of};
use crate::cli::{BenchArgs, Scenario};
use chrono::Utc;
use orbit_engine::roles::RunRetention;
use orbit_store_sqlite::Durability;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub async fn run(
    scenario: &Scenario,
    args: &BenchArgs,
    durability: Durability,
) -> anyhow::Result<Value> {
    let Scenario::Retention { runs, tasks, drain } = *scenario else {
        anyhow::bail!("not the retention scenario");
    };
    let dir = tempfile::tempdir()?;
    let Fresh {
        store,
        db: _db,
        label,
        ..
    } = fresh_store(args, durability, dir.path()).await?;
    let engine = engine(&store, args.concurrency, dir.path())?;
    let filled = Instant::now();
    let old = pipeline_of(&store, "old", tasks).await?;
    for _ in 0..runs {
        store.create_run(new_run(&old, 0)).await?;
    }
    while engine.process(usize::MAX).await?.claimed > 0 {}
    let fill_ms = filled.elapsed().as_secs_f64() * 1000.0;
    // Retention's clock, a month on from the end of the fill: the backlog is past the window,
    // the drains' own runs (finished later) are not.
    let later = Utc::now() + chrono::Duration::days(30);
    let before = rate(drained(&store, &engine, drain).await?, drain);

    // Retention as `orbit server` runs it, with every finished run past its window.
    let retention = RunRetention::new(
        store.clone(),
        engine.storage().clone(),
        chrono::Duration::days(30),
        Duration::from_secs(60),
    );
    let deleting = Instant::now();
    let rounds = tokio::spawn(async move {
        let mut deleted = 0;
        loop {
            match retention.tick(later).await {
                Ok(0) => return Ok(deleted),
                Ok(n) => deleted += n,
                Err(e) => return Err(e),
            }
        }
    });
    let mut during = Vec::new();
    while !rounds.is_finished() {
        during.push(rate(drained(&store, &engine, drain).await?, drain));
    }
    let deleted = rounds.await??;
    let delete_s = deleting.elapsed().as_secs_f64();
    anyhow::ensure!(
        deleted == runs,
        "retention deleted {deleted} of {runs} runs"
    );
    let left = store.queue_stats().await?;
    during.sort_by(f64::total_cmp);
    Ok(json!({
        "scenario": "retention",
        "durability": label,
        "deleted_runs": deleted,
        "backlog_task_runs": runs * tasks,
        "fill_ms": fill_ms,
        "drain_tasks": drain,
        "tasks_per_sec_before": before,
        "drains_while_deleting": during.len(),
        "tasks_per_sec_while_deleting_min": during.first(),
        "tasks_per_sec_while_deleting_p50": (!during.is_empty()).then(|| percentile(&during, 0.5)),
        "delete_seconds": delete_s,
        "task_runs_deleted_per_sec": (runs * tasks) as f64 / delete_s,
        "task_runs_left": left.completed + left.pending + left.running + left.waiting,
        "peak_rss_bytes": crate::bench::peak_rss_bytes(),
    }))
}

fn rate(took: Duration, tasks: usize) -> f64 {
    tasks as f64 / took.as_secs_f64()
}
