//! `type: http`. The response body is the output (JSON when it parses, text otherwise).

use super::Invocation;
use orbit_core::params::{HttpParams, reqwest_like_method};
use orbit_core::transition::Failure;
use serde_json::Value;
use std::time::{Duration, Instant};

/// For a task without its own timeout: no request waits forever.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn run(p: HttpParams, inv: &Invocation<'_>) -> Result<Value, Failure> {
    let method = reqwest_like_method(&p.method)
        .and_then(|m| reqwest::Method::from_bytes(m.as_bytes()).ok())
        .ok_or_else(|| Failure::fatal(format!("`{}` is not an HTTP method", p.method)))?;
    let mut req = inv
        .http
        .request(method.clone(), &p.url)
        .timeout(inv.timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT))
        .header("Idempotency-Key", inv.effect_key)
        .header("traceparent", inv.traceparent);
    for (k, v) in &p.headers {
        req = req.header(k.as_str(), v.to_text());
    }
    if let Some(body) = &p.body {
        req = req.json(body);
    }
    let started = Instant::now();
    let resp = req.send().await.map_err(|e| {
        let msg = format!("{method} {}: {}", p.url, describe(&e));
        if e.is_builder() {
            Failure::fatal(msg)
        } else {
            Failure::error(msg)
        }
    })?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after);
    let text = resp
        .text()
        .await
        .map_err(|e| Failure::error(format!("reading the response body: {}", describe(&e))))?;
    inv.log.line(&format!(
        "{method} {} -> {status} in {} ms",
        p.url,
        started.elapsed().as_millis()
    ));
    let preview: String = text.chars().take(2000).collect();
    if !preview.is_empty() {
        inv.log.line(&preview);
    }
    let expected = p
        .expect_status
        .as_ref()
        .map_or((200..300).contains(&status), |s| s.contains(status));
    if !expected {
        let msg = format!(
            "{method} {} returned {status}: {}",
            p.url,
            preview.chars().take(200).collect::<String>()
        );
        // Told when to come back: that is not the task failing, and costs no attempt.
        if let (429 | 503, Some(after)) = (status, retry_after) {
            return Err(Failure::throttled(msg, after));
        }
        // A client error will not go away by asking again, except these two.
        let mut failure = if (400..500).contains(&status) && status != 408 && status != 429 {
            Failure::fatal(msg)
        } else {
            Failure::error(msg)
        };
        failure.retry_after = retry_after;
        return Err(failure);
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A `Retry-After` value: seconds, or an HTTP date (RFC 9110); a date in the past is now.
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or_default(),
    )
}

/// reqwest's error with its causes, which hold the useful part ("connection refused").
fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::retry_after;
    use std::time::Duration;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after(" 30 "), Some(Duration::from_secs(30)));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let d = retry_after(&later).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(retry_after("soon"), None);
    }
}
