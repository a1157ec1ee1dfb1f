//! Durable sleeps through the `orbit` binary: 10,000 of them across a restart. A test binary of
//! its own, so no other test shares the machine while it measures.

mod support;

use orbit_store::prelude::*;
use serde_json::{Value, json};
use std::time::Duration;
use support::{CliEnv, eventually, worker};

/// 10,000 children of a map sleep until one instant. Their engine is killed with -9 once they
/// are all parked and another starts: the first runs at the instant (an alarm, not a poll),
/// every one within 1 s of it in a release build, and the engine that held them parked had
/// nothing of them in memory to lose.
#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_sleepers_wake_together_after_a_restart() {
    const N: usize = 10_000;
    let env = CliEnv::new();
    env.file(
        "nap.yaml",
        "name: nap\ntasks:\n  - name: sleepers\n    type: sleep\n    for_each: \"{{ range(input.n) | list }}\"\n    until: \"{{ input.at }}\"\n",
    );
    env.ok(&["apply", "nap.yaml"]);
    let at = chrono::Utc::now() + chrono::Duration::seconds(25);
    let input = json!({"n": N, "at": at.to_rfc3339()});
    env.file("input.json", &input.to_string());
    env.ok(&["trigger", "nap", "-i", "@input.json"]);
    let run = env.json(&["runs"])[0]["id"]
        .as_str()
        .expect("run")
        .to_owned();
    let mut first = worker(env.dir.path(), &env.db(), &["--concurrency", "500"]);
    let parked = |s: &Value| {
        s["children"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["state"] == "parked"))
            .and_then(|c| c["count"].as_u64())
            .unwrap_or(0)
    };
    eventually(Duration::from_secs(20), "10,000 parked children", || {
        (parked(&env.json(&["status", &run])) == N as u64).then_some(())
    });
    assert!(
        chrono::Utc::now() < at,
        "parking 10,000 took too long for the test's instant"
    );
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5));
    let _second = worker(env.dir.path(), &env.db(), &["--concurrency", "500"]);
    eventually(Duration::from_secs(60), "the run to succeed", || {
        (env.json(&["status", &run])["run"]["state"] == "succeeded").then_some(())
    });
    let store =
        orbit_store_sqlite::SqliteStore::open(&env.db(), orbit_store_sqlite::Durability::Full)
            .await
            .expect("open store");
    let attempts = store
        .attempts(run.parse().expect("run id"), None)
        .await
        .expect("attempts");
    let woken: Vec<_> = attempts
        .iter()
        .filter(|a| a.task_name.starts_with("sleepers[") && a.outcome == "succeeded")
        .collect();
    assert_eq!(woken.len(), N, "each child finished once");
    let late = woken.iter().map(|a| a.started_at - at).max().expect("some");
    let early = woken.iter().map(|a| a.started_at - at).min().expect("some");
    println!(
        "10,000 sleepers: first woken {} ms after the instant, last {} ms",
        early.num_milliseconds(),
        late.num_milliseconds()
    );
    assert!(
        early >= chrono::Duration::zero(),
        "none ran before its time: {early}"
    );
    // Woken by an alarm at the instant, not by the 1 s poll.
    assert!(
        early < chrono::Duration::milliseconds(250),
        "the first ran {early} after the instant"
    );
    // Within 1 s in a release build (`orbit bench sleepers`: 0.35-0.51 s on 2 cores); a debug
    // build on a busy CI machine drains slower (0.8-1.0 s seen), so it gets a wider bound.
    let bound = if cfg!(debug_assertions) { 3 } else { 1 };
    assert!(
        late < chrono::Duration::seconds(bound),
        "all ran within {bound} s of the instant: the last {late}"
    );
    let parks = attempts
        .iter()
        .filter(|a| a.task_name.starts_with("sleepers[") && a.outcome == "parked")
        .count();
    assert_eq!(parks, N, "each child parked once");
}
