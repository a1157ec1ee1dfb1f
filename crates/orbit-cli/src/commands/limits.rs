//! `orbit limits`: named limits of concurrency keys.

use crate::cli::LimitsAction;
use crate::output::{self, table};
use orbit_store::{KeyUsage, Store};
use serde_json::json;

pub async fn limits(store: &dyn Store, action: LimitsAction, json: bool) -> anyhow::Result<u8> {
    match action {
        LimitsAction::List => render(&store.key_limits().await?, json),
        LimitsAction::Set { key, limit } => {
            store
                .set_key_limit(&key, Some(limit), chrono::Utc::now())
                .await?;
            render(&store.key_usage(std::slice::from_ref(&key)).await?, json)
        }
        LimitsAction::Delete { key } => {
            if !store.set_key_limit(&key, None, chrono::Utc::now()).await? {
                return Err(orbit_store::StoreError::NotFound(format!(
                    "limit of key `{}`",
                    orbit_core::echo::echo(&key)
                ))
                .into());
            }
            deleted(&key, json)
        }
    }
}

pub fn render(all: &[KeyUsage], json: bool) -> anyhow::Result<u8> {
    if json {
        output::json(&all)?;
        return Ok(0);
    }
    if all.is_empty() {
        println!("no named limits (orbit limits set KEY N)");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|u| {
            vec![
                u.key.clone(),
                u.limit.map_or_else(|| "-".into(), |l| l.to_string()),
                u.running.to_string(),
                u.runs_running.to_string(),
            ]
        })
        .collect();
    table(&["KEY", "LIMIT", "TASKS RUNNING", "RUNS RUNNING"], &rows);
    Ok(0)
}

pub fn deleted(key: &str, json: bool) -> anyhow::Result<u8> {
    if json {
        output::json(&json!({ "deleted": key }))?;
    } else {
        println!("limit of key `{key}` deleted");
    }
    Ok(0)
}
