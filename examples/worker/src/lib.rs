//! An example worker service: a router choosing between two paths, an idempotent payment and
//! a task that reports progress. `main.rs` serves it; the tests run its handlers locally.

use orbit_sdk::{Context, TaskError, TaskOptions, TaskResult, Worker};
use serde_json::{Value, json};
use std::time::Duration;

/// Express shipping for orders marked `fast`, standard for the rest.
#[orbit_sdk::task]
async fn route(ctx: Context) -> Result<TaskResult, TaskError> {
    let fast = ctx.input["fast"].as_bool().unwrap_or(false);
    let path = if fast { "express" } else { "standard" };
    ctx.log.info(format!("routing order to {path}"));
    Ok(TaskResult::next(json!({ "path": path }), [path]))
}

#[orbit_sdk::task]
async fn ship(ctx: Context) -> Result<Value, TaskError> {
    let order = ctx.input["order"].as_str().unwrap_or("?").to_owned();
    let speed = ctx.input["speed"].as_str().unwrap_or("standard").to_owned();
    Ok(json!({ "order": order, "shipping": speed, "days": if speed == "express" { 1 } else { 5 } }))
}

/// Charges an order. Idempotent twice over: the orchestrator reuses the output of an earlier
/// run with the same key (`v<code version>-<order id>`), and the effect key goes to the payment
/// provider so a retried attempt is not charged again.
#[orbit_sdk::task]
async fn payment(ctx: Context) -> Result<Value, TaskError> {
    let order = ctx.input["orderId"]
        .as_str()
        .ok_or_else(|| TaskError::fatal("input has no `orderId`"))?;
    let amount = ctx.input["amount"].as_f64().unwrap_or(0.0);
    if amount < 0.0 {
        return Err(TaskError::fatal(format!(
            "refusing a negative amount {amount}"
        )));
    }
    ctx.log.info(format!(
        "charging {amount} for {order} (code v{}, provider key {})",
        ctx.code_version,
        ctx.effect_key()
    ));
    Ok(json!({ "order": order, "charged": amount, "receipt": format!("rcpt-{order}") }))
}

/// Reports progress while it "works".
#[orbit_sdk::task]
async fn report(ctx: Context) -> Result<Value, TaskError> {
    let steps = ctx.input["steps"].as_u64().unwrap_or(4).clamp(1, 100);
    for i in 1..=steps {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ctx.progress(i as f64 / steps as f64, format!("step {i} of {steps}"))
            .await;
    }
    let receipt = ctx
        .upstream("payment")
        .and_then(|p| p.get("receipt"))
        .cloned()
        .unwrap_or(Value::Null);
    Ok(json!({ "steps": steps, "receipt": receipt }))
}

/// The service with its four tasks.
pub fn service(url: &str, secret: &str) -> Result<Worker, orbit_sdk::SdkError> {
    let mut worker = Worker::builder()
        .orchestrator_url(url)
        .service_id("shop")
        .secret_key(secret)
        .version(env!("CARGO_PKG_VERSION"))
        .concurrency(8)
        .build()?;
    worker
        .register_with(
            "route",
            TaskOptions {
                allowed_next: vec!["express".into(), "standard".into()],
                ..TaskOptions::default()
            },
            route,
        )
        .register("ship", ship)
        .register_with(
            "payment",
            TaskOptions {
                idempotency_key: Some("v{{ code_version }}-{{ input.orderId }}".into()),
                retries: Some(3),
                ..TaskOptions::default()
            },
            payment,
        )
        .register("report", report);
    Ok(worker)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use orbit_sdk::run_local;

    fn local() -> Worker {
        // run_local needs neither an orchestrator nor a real key.
        service("", "").unwrap()
    }

    #[tokio::test]
    async fn route_chooses_express_for_fast_orders_only() {
        let w = local();
        let fast = run_local(&w, "route", json!({"fast": true})).await.unwrap();
        assert_eq!(fast.run_next, Some(vec!["express".to_string()]));
        let slow = run_local(&w, "route", json!({})).await.unwrap();
        assert_eq!(slow.run_next, Some(vec!["standard".to_string()]));
        assert_eq!(slow.output, json!({"path": "standard"}));
    }

    #[tokio::test]
    async fn payment_refuses_bad_input_for_good() {
        let w = local();
        let e = run_local(&w, "payment", json!({"amount": 3}))
            .await
            .unwrap_err();
        assert!(!e.retryable, "{e}");
        let e = run_local(&w, "payment", json!({"orderId": "o1", "amount": -1}))
            .await
            .unwrap_err();
        assert!(e.message.contains("negative"), "{e}");
        let ok = run_local(&w, "payment", json!({"orderId": "o1", "amount": 9.5}))
            .await
            .unwrap();
        assert_eq!(ok.output["receipt"], "rcpt-o1");
    }

    #[tokio::test]
    async fn report_reports_progress_and_finishes() {
        let w = local();
        let out = run_local(&w, "report", json!({"steps": 2})).await.unwrap();
        assert_eq!(out.output["steps"], 2);
    }
}
