//! Large inputs and outputs, moved between the worker and object storage directly.
//!
//! An assignment's `input` or an `upstream` value may be a reference to an object; the
//! assignment carries a short-lived URL for each (pre-signed by S3 or GCS, or the
//! orchestrator's own storage route with a token for that object alone). The handler sees the
//! content. An output over the assignment's threshold is PUT to a URL granted for this attempt's
//! own object, and the callback carries only the reference.

use crate::worker::{Client, SdkError};
use orbit_core::object::{ObjectRef, looks_like_reference};
use orbit_core::protocol::{Assignment, GrantRequest, OutputGrant};
use serde_json::{Map, Value};
use std::time::Duration;

/// The assignment's input and upstream outputs with every reference replaced by its content.
pub(crate) async fn hydrate(
    client: &Client,
    a: &Assignment,
) -> Result<(Value, Map<String, Value>), String> {
    let input = fetch(client, a, &a.input).await?;
    let mut upstream = Map::with_capacity(a.upstream.len());
    for (name, value) in &a.upstream {
        upstream.insert(name.clone(), fetch(client, a, value).await?);
    }
    Ok((input, upstream))
}

async fn fetch(client: &Client, a: &Assignment, value: &Value) -> Result<Value, String> {
    let Some(r) = ObjectRef::of(value) else {
        return Ok(value.clone());
    };
    let url = a
        .objects
        .get(&r.id())
        .ok_or_else(|| format!("the assignment grants no access to object `{}`", r.id()))?;
    let response = client
        .http()
        .get(client.resolve(url))
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .map_err(|e| format!("cannot read object `{}`: {e}", r.id()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("reading object `{}` was refused: {status}", r.id()));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("cannot read object `{}`: {e}", r.id()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("object `{}` is not JSON: {e}", r.id()))
}

/// The output as the callback sends it: inline when small, else written to the attempt's own
/// object and replaced by its reference.
pub(crate) async fn store_output(
    client: &Client,
    a: &Assignment,
    output: Value,
) -> Result<Value, String> {
    let Some(threshold) = a.output_threshold else {
        return Ok(output);
    };
    let json = serde_json::to_vec(&output).map_err(|e| format!("the output is not JSON: {e}"))?;
    if json.len() as u64 <= threshold && !looks_like_reference(&output) {
        return Ok(output);
    }
    let grant: OutputGrant = client
        .task_request(
            "/api/v1/grant",
            a,
            &GrantRequest {
                task_run_id: a.task_run_id,
            },
        )
        .await
        .map_err(|e: SdkError| format!("cannot get a grant to store the output: {e}"))?;
    let response = client
        .http()
        .put(client.resolve(&grant.url))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(json)
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .map_err(|e| format!("cannot store the output: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("storing the output was refused: {status} {body}"));
    }
    Ok(grant.reference.to_value())
}
