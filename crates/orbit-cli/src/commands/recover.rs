//! Recovery: `orbit check-interrupted`, `orbit resume RUN`, `orbit recover [--auto-resume]`, and
//! the global `--auto-recover`. Output follows the Orbit (TypeScript) seed's.

use super::run::{engine, interrupts, owner};
use crate::output::time;
use chrono::Utc;
use orbit_core::RunState;
use orbit_engine::recovery::{
    InterruptedRun, RecoveryError, check_resumable, detect_interrupted_runs, resume_run,
};
use orbit_store::Store;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub fn this_host() -> String {
    owner()
        .rsplit_once(':')
        .map(|(h, _)| h.to_owned())
        .unwrap_or_default()
}

async fn detect(store: &dyn Store, idle: Duration) -> anyhow::Result<Vec<InterruptedRun>> {
    Ok(detect_interrupted_runs(store, &this_host(), idle, Utc::now()).await?)
}

pub async fn check_interrupted(
    store: &dyn Store,
    idle: Duration,
    json: bool,
) -> anyhow::Result<u8> {
    let runs = detect(store, idle).await?;
    if json {
        crate::output::json(&runs)?;
        return Ok(0);
    }
    println!("Checking for Interrupted Runs\n");
    if runs.is_empty() {
        println!("No interrupted runs found");
        return Ok(0);
    }
    println!("Found {} interrupted run(s):\n", runs.len());
    for r in &runs {
        println!("Run ID: {}", r.run.id);
        println!("  Pipeline: {}", r.run.pipeline_name);
        println!(
            "  Started: {}",
            r.run.started_at.map_or_else(|| "-".into(), time)
        );
        println!("  Last activity: {}", time(r.last_activity));
        println!("  Completed steps: {}", r.steps.completed.len());
        println!("  Failed steps: {}", r.steps.failed.len());
        println!("  Next step: {}\n", r.steps.next_step().unwrap_or("-"));
    }
    println!("To resume a specific run, use: orbit resume <runId>");
    println!("To auto-resume all runs, use: orbit recover --auto-resume");
    Ok(0)
}

pub async fn resume(store: &Arc<dyn Store>, id: &str, json: bool) -> anyhow::Result<u8> {
    let run = store.find_run(id).await?;
    check_resumable(store.as_ref(), run.id).await?;
    if !json {
        println!("Resuming Run: {}\n", run.id);
    }
    let pipeline = store.pipeline_version(run.pipeline_id).await?;
    super::run::runs_here(&pipeline, &pipeline.name)?;
    let engine = engine(store, 10)?;
    let progress = crate::progress::Progress::start(&run, &pipeline, json, engine.subscribe());
    let go_on = format!("orbit resume {}", orbit_core::id::short(&run.id));
    let result = resume_run(&engine, run.id, interrupts(&engine, go_on)).await;
    progress.finish().await;
    let resumed = result?;
    if json {
        crate::output::json(&resumed)?;
    } else {
        match resumed.state {
            Some(RunState::Succeeded) => println!("\n✓ Run {} resumed successfully", run.id),
            Some(s) => println!("\n✗ Run {} resumed and {s}", run.id),
            None => println!("\n! Run {} interrupted again; it can be resumed", run.id),
        }
        println!("ℹ Steps executed: {}", resumed.steps_executed);
    }
    Ok(if resumed.state == Some(RunState::Succeeded) {
        0
    } else {
        1
    })
}

pub async fn recover(
    store: &Arc<dyn Store>,
    auto_resume: bool,
    idle: Duration,
    json: bool,
) -> anyhow::Result<u8> {
    if !json {
        println!("Run Recovery\n\nScanning for interrupted runs...\n");
    }
    let runs = detect(store.as_ref(), idle).await?;
    if !auto_resume {
        if json {
            crate::output::json(&runs)?;
        } else {
            for r in &runs {
                println!("Interrupted: run {} ({})", r.run.id, r.run.pipeline_name);
            }
            println!(
                "\nDetected: {}\nResume them with: orbit recover --auto-resume",
                runs.len()
            );
        }
        return Ok(0);
    }
    let (mut recovered, mut failed) = (0, 0);
    let engine = engine(store, 10)?;
    let shutdown = interrupts(&engine, "orbit recover --auto-resume".into());
    for r in &runs {
        if !json {
            println!(
                "Attempting to recover run {} ({})...",
                r.run.id, r.run.pipeline_name
            );
        }
        let outcome = resume_run(&engine, r.run.id, shutdown.clone()).await;
        let line = match &outcome {
            Ok(res) if res.state == Some(RunState::Succeeded) => {
                recovered += 1;
                format!(
                    "✓ Recovered run {}, executed {} step(s)",
                    r.run.id, res.steps_executed
                )
            }
            Ok(res) => {
                failed += 1;
                let how = res
                    .state
                    .map_or("was interrupted again".to_owned(), |s| format!("ended {s}"));
                format!("✗ Failed to recover run {}: it {how}", r.run.id)
            }
            Err(e @ RecoveryError::FailedSteps(_))
            | Err(e @ RecoveryError::Settled(..))
            | Err(e @ RecoveryError::Engine(_)) => {
                failed += 1;
                format!("✗ Failed to recover run {}: {e}", r.run.id)
            }
        };
        if json {
            println!(
                "{}",
                json!({"run": r.run.id, "recovered": matches!(&outcome, Ok(res) if res.state == Some(RunState::Succeeded)), "message": line})
            );
        } else {
            println!("{line}");
        }
    }
    if json {
        crate::output::json(
            &json!({"detected": runs.len(), "recovered": recovered, "failed": failed}),
        )?;
    } else {
        println!(
            "\nRecovery Summary:\n  Detected: {}\n  Recovered: {recovered}\n  Failed: {failed}\n",
            runs.len()
        );
        if runs.is_empty() {
            println!("No interrupted runs found");
        } else if failed == 0 {
            println!("All interrupted runs recovered successfully");
        } else {
            println!("{failed} run(s) could not be recovered");
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}
