//! Live updates: the event log as Server-Sent Events (`GET /events`) and over a WebSocket
//! (`GET /ws`), plus the lines that attempts running in this process print.
//!
//! A stream reads the event table after the last id it sent, then sleeps until the store says a
//! commit appended events. Nothing polls on a timer, but a slow fallback picks up commits made by
//! other processes on a SQLite file (PostgreSQL wakes every server through LISTEN/NOTIFY).

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use orbit_engine::LiveLine;
use orbit_store::EventRecord;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use utoipa::IntoParams;
use uuid::Uuid;

/// Most events read from the store in one go.
const PAGE: u32 = 500;
/// How long a stream sleeps without a change signal before looking anyway: commits of other
/// processes on one SQLite file do not signal this one.
const FALLBACK: Duration = Duration::from_secs(3);

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    /// Only this run's events, and the lines its attempts print in this server.
    pub run: Option<String>,
    /// Resume after this event id (SSE clients send `Last-Event-ID` instead). Without it the
    /// stream starts with what happens next, or with the whole history of `run` when given.
    pub after: Option<i64>,
}

/// One message of a live stream.
#[derive(Serialize, Debug)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Live {
    /// A committed state change from the event log.
    Event(EventRecord),
    /// A line printed by an attempt running in this process (not stored until it finishes).
    Log(LiveLine),
}

struct Filter {
    run: Option<Uuid>,
    after: i64,
}

async fn filter(s: &AppState, q: LiveQuery, last_event_id: Option<i64>) -> ApiResult<Filter> {
    let run = match q.run.as_deref() {
        Some(id) => Some(s.store.find_run(id).await?.id),
        None => None,
    };
    let after = match (last_event_id.or(q.after), run) {
        (Some(after), _) => after,
        (None, Some(_)) => 0,
        (None, None) => s.store.latest_event_id().await?,
    };
    Ok(Filter { run, after })
}

/// Sends what the filter selects into `tx` until the receiver goes away.
async fn pump(s: AppState, mut f: Filter, tx: mpsc::Sender<Live>) {
    let mut changes = s.store.change_signal();
    // Only a run's stream carries log lines: a page watching everything has no use for every
    // line of every attempt, and while nobody listens the engine does not copy them.
    let mut lines = f.run.map(|_| s.engine.live_logs().subscribe());
    loop {
        changes.borrow_and_update();
        let events = match s.store.events(f.after, f.run, PAGE).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "live stream cannot read events");
                Vec::new()
            }
        };
        let full = events.len() == PAGE as usize;
        for e in events {
            f.after = e.id;
            if tx.send(Live::Event(e)).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = s.shutdown.cancelled() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                line = next_line(&mut lines) => match line {
                    Ok(line) if f.run == Some(line.run_id) => {
                        if tx.send(Live::Log(line)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tokio::time::sleep(FALLBACK) => break,
            }
        }
    }
}

async fn next_line(
    lines: &mut Option<broadcast::Receiver<LiveLine>>,
) -> Result<LiveLine, broadcast::error::RecvError> {
    match lines {
        Some(lines) => lines.recv().await,
        None => std::future::pending().await,
    }
}

fn stream(s: AppState, f: Filter) -> impl Stream<Item = Live> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(pump(s, f, tx));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

fn last_event_id(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event id"))
        })
        .transpose()
}

/// Live events as Server-Sent Events: each state change is a `message` whose `id` is the event
/// id (reconnecting clients resume with `Last-Event-ID`) and whose data is the event as JSON;
/// with `run`, the lines its attempts print in this server are `log` events.
#[utoipa::path(get, path = "/events", tag = "events", params(LiveQuery),
    responses((status = 200, description = "text/event-stream"), (status = 404, body = crate::error::ErrorBody)))]
pub async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<LiveQuery>, QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let Query(q) = q?;
    let f = filter(&s, q, last_event_id(&headers)?).await?;
    let events = futures::StreamExt::map(stream(s, f), |live| {
        let event = match &live {
            Live::Event(e) => Event::default().id(e.id.to_string()),
            Live::Log(_) => Event::default().event("log"),
        };
        Ok(event
            .json_data(&live)
            .unwrap_or_else(|_| Event::default().comment("unencodable event")))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The same stream over a WebSocket (the Orbit-Py seed's `/api/v1/ws`): one JSON text message
/// per event or log line.
#[utoipa::path(get, path = "/ws", tag = "events", params(LiveQuery),
    responses((status = 101, description = "WebSocket upgrade"), (status = 404, body = crate::error::ErrorBody)))]
pub async fn ws(
    State(s): State<AppState>,
    q: Result<Query<LiveQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let upgrade =
        upgrade.map_err(|e| ApiError::bad_request(format!("not a WebSocket upgrade: {e}")))?;
    let f = filter(&s, q, None).await?;
    Ok(upgrade
        .on_upgrade(move |socket| forward(socket, stream(s, f)))
        .into_response())
}

async fn forward(mut socket: WebSocket, live: impl Stream<Item = Live>) {
    let mut live = std::pin::pin!(live);
    loop {
        tokio::select! {
            next = futures::StreamExt::next(&mut live) => {
                let Some(message) = next else { return };
                let Ok(text) = serde_json::to_string(&message) else { continue };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            // The client speaks only to close; anything else is ignored.
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
