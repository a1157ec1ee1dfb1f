//! Durable waits, signals, approvals and re-runs through the `orbit` binary: real processes,
//! a real SQLite database, a restart in between.

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{CliEnv, eventually};

/// A wait for a signal, an approval and a re-run, by hand as a user would: the signal comes
/// before the wait and is kept; the approval is refused to a stranger and taken from an
/// approver; the run is then re-run from its last task with the earlier outputs kept.
#[test]
fn a_signal_an_approval_and_a_rerun_from_the_command_line() {
    let env = CliEnv::new();
    env.file(
        "order.yaml",
        "name: order\ntasks:\n  - name: pay\n    type: wait\n    event: \"payment.{{ input.orderId }}\"\n    timeout: 1h\n  - name: review\n    type: approval\n    message: \"Ship order {{ input.orderId }}?\"\n    approvers: [alice]\n    needs: pay\n  - name: ship\n    type: shell\n    command: \"echo shipped {{ tasks.review.output.decidedBy }}\"\n    needs: review\n",
    );
    // Kept: no task waits for it yet.
    let sent = env.json(&["signal", "payment.o-7", "-d", r#"{"amount": 42}"#]);
    assert_eq!(sent["kept"], true, "{sent}");
    let mut running = env.spawn(&["run", "order.yaml", "-i", r#"{"orderId": "o-7"}"#]);
    let run = eventually(Duration::from_secs(20), "the approval to wait", || {
        let runs = env.json(&["runs"]);
        let id = runs[0]["id"].as_str()?.to_owned();
        (env.state_of(&id, "review") == "parked").then_some(id)
    });
    assert_eq!(
        env.state_of(&run, "pay"),
        "succeeded",
        "the kept signal woke it"
    );
    let why = env.ok(&["why", &run, "review"]);
    assert!(
        why.contains("waiting for approval by alice (Ship order o-7?)"),
        "{why}"
    );
    let stranger = env
        .orbit()
        .args(["approve", &run, "review", "--as", "mallory"])
        .output()
        .expect("approve");
    assert_eq!(stranger.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("approvers are: alice"),
        "{}",
        String::from_utf8_lossy(&stranger.stderr)
    );
    env.ok(&["approve", &run, "review", "--as", "alice", "-m", "fine"]);
    let again = env
        .orbit()
        .args(["approve", &run, "review", "--as", "alice"])
        .output()
        .expect("approve");
    assert_eq!(again.status.code(), Some(2), "a decision is taken once");
    assert!(
        running
            .wait_exit(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    let status = env.json(&["status", &run]);
    let task = |n: &str| {
        status["tasks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["taskName"] == n))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(task("pay")["output"], json!({"amount": 42}));
    assert_eq!(task("review")["output"]["approved"], true);
    assert_eq!(task("review")["output"]["decidedBy"], "alice");
    assert_eq!(task("review")["output"]["comment"], "fine");
    assert_eq!(task("ship")["output"], "shipped alice");

    // Re-run from `ship`: `pay` and `review` are kept (no new signal or decision needed).
    let started = Instant::now();
    let out = env.ok(&["rerun", &run, "--from", "ship"]);
    assert!(out.contains("kept from it: pay, review"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let new = env.json(&["runs"])[0].clone();
    let new_id = new["id"].as_str().expect("id");
    assert_ne!(new_id, run);
    assert_eq!(new["rerunOf"], run.as_str());
    assert_eq!(new["rerunFrom"], "ship");
    assert_eq!(new["state"], "succeeded");
    let detail = env.json(&["status", new_id]);
    let old_ids: std::collections::HashMap<String, String> = status["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| {
            (
                t["taskName"].as_str().unwrap_or_default().to_owned(),
                t["id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for t in detail["tasks"].as_array().expect("tasks") {
        let name = t["taskName"].as_str().unwrap_or_default();
        if name == "ship" {
            assert!(t.get("origin").is_none(), "ship ran again: {t}");
            assert_eq!(t["attempt"], 1);
        } else {
            assert_eq!(
                t["origin"].as_str(),
                old_ids.get(name).map(String::as_str),
                "{t}"
            );
            assert_eq!(t["attempt"], 0, "{name} did not run again");
        }
        assert_eq!(t["output"], task(name)["output"], "{name}");
    }
    // From the start, with another input: the wait waits again.
    let mut fresh = env.spawn(&[
        "rerun",
        &run,
        "--from",
        "pay",
        "-i",
        r#"{"orderId": "o-8"}"#,
    ]);
    let third = eventually(Duration::from_secs(20), "the new wait", || {
        let id = env.json(&["runs"])[0]["id"].as_str()?.to_owned();
        (id != new_id && id != run && env.state_of(&id, "pay") == "parked").then_some(id)
    });
    let delivered = env.json(&["signal", "payment.o-8", "-d", "7"]);
    assert_eq!(delivered["delivered"][0]["task"], "pay", "{delivered}");
    eventually(Duration::from_secs(20), "the next approval", || {
        (env.state_of(&third, "review") == "parked").then_some(())
    });
    env.ok(&[
        "approve", &third, "review", "--reject", "--as", "alice", "-m", "no",
    ]);
    let status = fresh.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!status.success(), "a rejection fails the run");
    assert_eq!(env.state_of(&third, "review"), "dead");
    assert_eq!(env.state_of(&third, "ship"), "cancelled");
}

/// A rejection routes like a `run_next` choice (`on_reject` runs, the other branch is skipped),
/// and a wait's timeout with `on_timeout: skip` succeeds with `null` and skips what follows.
#[test]
fn a_rejection_routes_and_a_timeout_skips() {
    let env = CliEnv::new();
    env.file(
        "route.yaml",
        "name: route\ntasks:\n  - name: gate\n    type: approval\n    allowed_next: [go, stop]\n    on_reject: stop\n  - {name: go, type: shell, command: 'echo go', needs: gate}\n  - {name: stop, type: shell, command: 'echo stop', needs: gate}\n  - name: late\n    type: wait\n    event: never.comes\n    timeout: 1s\n    on_timeout: skip\n  - {name: after_late, type: shell, command: 'echo no', needs: late}\n",
    );
    let mut running = env.spawn(&["run", "route.yaml"]);
    let run = eventually(Duration::from_secs(20), "the approval to wait", || {
        let id = env.json(&["runs"])[0]["id"].as_str()?.to_owned();
        (env.state_of(&id, "gate") == "parked").then_some(id)
    });
    env.ok(&[
        "approve", &run, "gate", "--reject", "--as", "ann", "-m", "not now",
    ]);
    let status = running.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(
        status.success(),
        "a routed rejection and a skipped timeout fail nothing"
    );
    let s = env.json(&["status", &run]);
    let task = |n: &str| {
        s["tasks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["taskName"] == n))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(task("gate")["state"], "succeeded");
    assert_eq!(task("gate")["output"]["approved"], false);
    assert_eq!(task("gate")["output"]["run_next"], json!(["stop"]));
    assert_eq!(task("go")["state"], "skipped");
    assert_eq!(task("stop")["output"], "stop");
    assert_eq!(task("late")["state"], "succeeded");
    assert_eq!(task("late")["output"], Value::Null);
    assert_eq!(task("after_late")["state"], "skipped");
    assert_eq!(s["run"]["state"], "succeeded");
}
