//! Commands that can talk to a running `orbit server` (`--url` / `ORBIT_URL`): `trigger`,
//! `status`, `runs`, `services`. They print what the local commands print.

use super::client::Client;
use super::{inspect, open_store, saved_pipeline};
use crate::BadInput;
use crate::cli::{RunsArgs, TriggerArgs};
use crate::commands::run::{idempotency_ttl, parse_input};
use crate::output::{self, table, time};
use chrono::Utc;
use orbit_store::{NewRun, NodeRecord, RunRecord, TaskRunRecord};
use serde::Deserialize;
use serde_json::{Value, json};

pub async fn runs(server: &str, args: &RunsArgs, json: bool) -> anyhow::Result<u8> {
    #[derive(Deserialize)]
    struct Page {
        runs: Vec<RunRecord>,
    }
    let mut query = vec![format!("limit={}", args.limit.clamp(1, 1000))];
    if let Some(s) = &args.status {
        query.push(format!("status={s}"));
    }
    if let Some(p) = &args.pipeline {
        query.push(format!("pipeline={p}"));
    }
    let page: Page = Client::new(server)?
        .call(
            reqwest::Method::GET,
            &format!("/runs?{}", query.join("&")),
            None,
        )
        .await?;
    inspect::render_runs(&page.runs, json)
}

pub async fn status(server: &str, id: &str, json: bool) -> anyhow::Result<u8> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(BadInput(format!("`{id}` is not a run id")).into());
    }
    let d = run_detail(&Client::new(server)?, id).await?;
    inspect::render_status(&d.run, &d.tasks, &d.children, &d.sub_runs, &d.waiting, json)
}

pub async fn why(server: &str, id: &str, task: Option<&str>, json: bool) -> anyhow::Result<u8> {
    #[derive(Deserialize)]
    struct Answer {
        run: RunRecord,
        why: Vec<WhyLine>,
    }
    #[derive(Deserialize)]
    struct WhyLine {
        task: Option<String>,
        state: String,
        reason: String,
    }
    let client = Client::new(server)?;
    let mut path = format!("/runs/{}/why", super::over_url::segment(id));
    if let Some(t) = task {
        path.push_str(&format!("?task={}", super::over_url::segment(t)));
    }
    let a: Answer = client.call(reqwest::Method::GET, &path, None).await?;
    let lines: Vec<orbit_engine::why::Why> = a
        .why
        .into_iter()
        .map(|w| orbit_engine::why::Why {
            task: w.task,
            state: w.state,
            reason: w.reason,
        })
        .collect();
    inspect::render_why(&a.run, &lines, json)
}

/// A run with all its task runs, read page by page (the API pages them).
pub struct FullDetail {
    pub run: RunRecord,
    pub tasks: Vec<TaskRunRecord>,
    pub children: Vec<orbit_store::ChildCount>,
    pub sub_runs: Vec<RunRecord>,
    pub waiting: Vec<String>,
}

pub async fn run_detail(client: &Client, id: &str) -> anyhow::Result<FullDetail> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Page {
        total: u64,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Detail {
        run: RunRecord,
        tasks: Vec<TaskRunRecord>,
        tasks_page: Page,
        #[serde(default)]
        waiting: Vec<String>,
        #[serde(default)]
        children: Vec<orbit_store::ChildCount>,
        #[serde(default)]
        sub_runs: Vec<RunRecord>,
    }
    const PAGE: usize = 1000;
    let id = super::over_url::segment(id);
    let mut first: Option<FullDetail> = None;
    loop {
        let offset = first.as_ref().map_or(0, |f| f.tasks.len());
        let d: Detail = client
            .call(
                reqwest::Method::GET,
                &format!("/runs/{id}?taskLimit={PAGE}&taskOffset={offset}"),
                None,
            )
            .await?;
        let done = d.tasks.len() < PAGE || (offset + d.tasks.len()) as u64 >= d.tasks_page.total;
        match &mut first {
            None => {
                first = Some(FullDetail {
                    run: d.run,
                    tasks: d.tasks,
                    children: d.children,
                    sub_runs: d.sub_runs,
                    waiting: d.waiting,
                })
            }
            Some(f) => f.tasks.extend(d.tasks),
        }
        if done {
            return first.ok_or_else(|| anyhow::anyhow!("no run detail"));
        }
    }
}

pub async fn trigger(database: &str, args: TriggerArgs, json: bool) -> anyhow::Result<u8> {
    let input = parse_input(args.input.as_deref())?;
    // A file is saved first (a new version only when it changed), then triggered by its name.
    let file = super::is_file_argument(&args.pipeline)
        .then(|| super::load_file(std::path::Path::new(&args.pipeline)))
        .transpose()?;
    let (run, created) = match &args.remote.url {
        Some(server) => {
            #[derive(Deserialize)]
            struct Triggered {
                run: RunRecord,
                created: bool,
            }
            let client = Client::new(server)?;
            let name = match &file {
                Some((pipeline, text)) => {
                    let _: serde_json::Value = client
                        .call(
                            reqwest::Method::POST,
                            "/pipelines",
                            Some(json!({"yaml": text})),
                        )
                        .await?;
                    pipeline.name.clone()
                }
                None => args.pipeline.clone(),
            };
            let t: Triggered = client
                .call(
                    reqwest::Method::POST,
                    &format!("/pipelines/{name}/trigger"),
                    Some(json!({"input": input, "idempotencyKey": args.idempotency_key, "priority": args.priority})),
                )
                .await?;
            (t.run, t.created)
        }
        None => {
            let store = open_store(database).await?;
            let stored = match &file {
                Some((pipeline, text)) => {
                    orbit_engine::subruns::check_cycles(store.as_ref(), pipeline)
                        .await
                        .map_err(BadInput)?;
                    store
                        .save_pipeline(pipeline, Some(text), Utc::now())
                        .await?
                }
                None => saved_pipeline(store.as_ref(), &args.pipeline).await?,
            };
            let c = orbit_engine::runs::create_run(
                store.as_ref(),
                super::storage()?.as_ref(),
                NewRun {
                    id: uuid::Uuid::now_v7(),
                    pipeline: &stored,
                    input,
                    priority: args.priority,
                    idempotency_key: args.idempotency_key.clone(),
                    idempotency_ttl: idempotency_ttl()?,
                    request_hash: None,
                    triggered_by: orbit_store::TriggeredBy::Cli,
                    parent: None,
                    rerun: None,
                    now: Utc::now(),
                },
            )
            .await?;
            (c.run, c.created)
        }
    };
    if json {
        output::json(&json!({"run": run, "created": created}))?;
    } else if created {
        println!(
            "run {} of {} v{} queued",
            run.id, run.pipeline_name, run.pipeline_version
        );
    } else {
        println!(
            "idempotency key already names run {} ({}): returning it",
            run.id, run.state
        );
    }
    Ok(0)
}

pub async fn services(database: &str, server: Option<&str>, json: bool) -> anyhow::Result<u8> {
    #[derive(Deserialize)]
    struct Service {
        #[serde(flatten)]
        node: NodeRecord,
        status: String,
    }
    let services: Vec<(NodeRecord, String)> = match server {
        Some(s) => Client::new(s)?
            .call::<Vec<Service>>(reqwest::Method::GET, "/services", None)
            .await?
            .into_iter()
            .map(|s| (s.node, s.status))
            .collect(),
        None => {
            let now = Utc::now();
            open_store(database)
                .await?
                .nodes(200)
                .await?
                .into_iter()
                .map(|n| {
                    let status = n.status(now).to_owned();
                    (n, status)
                })
                .collect()
        }
    };
    if json {
        let items: Vec<Value> = services
            .iter()
            .map(|(n, s)| {
                let mut v = serde_json::to_value(n).unwrap_or_default();
                v["status"] = json!(s);
                v
            })
            .collect();
        return output::json(&items).map(|()| 0);
    }
    if services.is_empty() {
        println!("no servers or workers have registered yet");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|(n, s)| {
            vec![
                n.info.id.clone(),
                n.info
                    .service
                    .as_ref()
                    .map_or_else(|| n.info.kind.clone(), |s| format!("service {s}")),
                s.clone(),
                n.running.to_string(),
                n.info.concurrency.to_string(),
                if n.info.queues.is_empty() {
                    "all".into()
                } else {
                    n.info.queues.join(",")
                },
                time(n.last_seen_at),
                time(n.started_at),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "KIND",
            "STATUS",
            "RUNNING",
            "SLOTS",
            "QUEUES",
            "LAST SEEN",
            "STARTED",
        ],
        &rows,
    );
    Ok(0)
}

/// `orbit tasks history TASK`: from the server with `--url`, else from the store.
pub async fn task_history(
    database: &str,
    server: Option<&str>,
    task: &str,
    pipeline: Option<String>,
    json: bool,
) -> anyhow::Result<u8> {
    let history: Vec<orbit_server::CodeVersion> = match server {
        Some(s) => {
            let mut path = format!("/tasks/{task}/history");
            if let Some(p) = &pipeline {
                path.push_str(&format!("?pipeline={p}"));
            }
            Client::new(s)?
                .call(reqwest::Method::GET, &path, None)
                .await?
        }
        None => {
            let store = open_store(database).await?;
            orbit_server::code_history(store.as_ref(), task, pipeline).await?
        }
    };
    if json {
        return output::json(&history).map(|()| 0);
    }
    if history.is_empty() {
        return Err(BadInput(format!(
            "no task `{task}` in any pipeline or registered by any service"
        ))
        .into());
    }
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|h| {
            vec![
                format!("v{}", h.code_version),
                match (&h.service, &h.pipeline) {
                    (Some(s), _) => format!("service {s}"),
                    (None, Some(p)) => {
                        format!("pipeline {p} v{}", h.pipeline_version.unwrap_or_default())
                    }
                    (None, None) => String::new(),
                },
                h.code_hash.clone(),
                time(h.changed_at),
            ]
        })
        .collect();
    table(&["VERSION", "FROM", "CODE HASH", "CHANGED"], &rows);
    Ok(0)
}
