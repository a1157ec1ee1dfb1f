//! Handlers through `run_local`: no server, no database.

use orbit_sdk::{Context, Handler, TaskError, TaskOptions, TaskResult, Worker, run_local};
use serde_json::{Value, json};

#[orbit_sdk::task]
async fn double(ctx: Context) -> Result<Value, TaskError> {
    let n = ctx.input["n"].as_i64().ok_or(TaskError::fatal("no n"))?;
    ctx.log.info(format!("doubling {n}"));
    ctx.progress(0.5, "half way").await;
    Ok(json!(n * 2))
}

#[orbit_sdk::task]
async fn double_changed(ctx: Context) -> Result<Value, TaskError> {
    let n = ctx.input["n"].as_i64().ok_or(TaskError::fatal("no n"))?;
    Ok(json!(n * 2 + 1))
}

fn worker() -> Worker {
    let mut w = Worker::builder().service_id("t").build().expect("worker");
    w.register("double", double)
        .register_with(
            "pick",
            TaskOptions {
                allowed_next: vec!["a".into(), "b".into()],
                ..TaskOptions::default()
            },
            |ctx: Context| async move {
                let to = ctx.input["to"].as_str().unwrap_or("a").to_owned();
                Ok::<_, TaskError>(TaskResult::next(json!({"to": to}), [to]))
            },
        )
        .register("sum", |ctx: Context| async move {
            let a = ctx.upstream("a").and_then(Value::as_i64).unwrap_or(0);
            Ok::<_, TaskError>(json!(a + 1))
        });
    w
}

#[tokio::test]
async fn run_local_runs_the_handler_with_the_same_context() {
    let w = worker();
    let out = run_local(&w, "double", json!({"n": 21})).await.expect("ok");
    assert_eq!(out.output, json!(42));
    assert_eq!(out.run_next, None);
    let err = run_local(&w, "double", json!({})).await.unwrap_err();
    assert!(!err.retryable && err.message == "no n", "{err:?}");
    let mut upstream = serde_json::Map::new();
    upstream.insert("a".into(), json!(4));
    let out = orbit_sdk::run_local_with(&w, "sum", json!(null), upstream)
        .await
        .expect("ok");
    assert_eq!(out.output, json!(5));
    assert!(run_local(&w, "missing", json!(null)).await.is_err());
}

#[tokio::test]
async fn run_local_checks_routing_like_the_orchestrator() {
    let w = worker();
    let out = run_local(&w, "pick", json!({"to": "b"})).await.expect("ok");
    assert_eq!(out.run_next, Some(vec!["b".to_string()]));
    let err = run_local(&w, "pick", json!({"to": "z"})).await.unwrap_err();
    assert!(err.message.contains("`z`") && !err.retryable, "{err:?}");
}

#[test]
fn the_code_hash_comes_from_the_handler_source() {
    let a = double.code_hash().expect("a #[task] has a hash");
    assert_eq!(a.len(), 64);
    assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(Some(a.clone()), double.code_hash(), "stable");
    assert_ne!(
        Some(a),
        double_changed.code_hash(),
        "changed code, new hash"
    );
    let reg = worker().registration(None);
    let pick = reg.tasks.iter().find(|t| t.name == "pick").expect("pick");
    assert_eq!(
        pick.code_hash, "unversioned:pick",
        "a closure has no source hash"
    );
    assert_eq!(pick.allowed_next, ["a", "b"]);
}
