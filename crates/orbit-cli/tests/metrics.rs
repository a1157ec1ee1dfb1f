//! `/metrics` after a known workload: exact counts, and Prometheus's conventions for every
//! metric (HELP and TYPE, `_total` counters, base units in the name, bounded labels).

mod support;

use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use support::{eventually, server};

/// One sample: its labels and value.
type Sample = (BTreeMap<String, String>, f64);

/// The samples of an exposition by name, and each family's HELP and TYPE.
struct Exposition {
    samples: HashMap<String, Vec<Sample>>,
    help: HashMap<String, String>,
    kind: HashMap<String, String>,
}

fn parse(text: &str) -> Exposition {
    let mut e = Exposition {
        samples: HashMap::new(),
        help: HashMap::new(),
        kind: HashMap::new(),
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            e.help.insert(name.to_owned(), help.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            e.kind.insert(name.to_owned(), kind.to_owned());
        } else {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                .collect();
            e.samples
                .entry(name.to_owned())
                .or_default()
                .push((labels, value.parse().expect("a number")));
        }
    }
    e
}

impl Exposition {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(name)?.iter().find_map(|(l, v)| {
            labels
                .iter()
                .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want))
                .then_some(*v)
        })
    }

    /// The family a sample belongs to (a histogram's `_bucket`, `_sum`, `_count`).
    fn family<'a>(&self, sample: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix)
                && self
                    .kind
                    .get(base)
                    .is_some_and(|k| k == "histogram" || k == "summary")
            {
                return base;
            }
        }
        sample
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload_by_the_conventions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let s = server(dir.path(), &db, &["--workers", "4"], &[]);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let (http, url) = (http.clone(), format!("{}{path}", s.base));
        async move {
            let r = http.post(url).json(&body).send().await.expect("post");
            assert!(
                r.status().is_success(),
                "{}",
                r.text().await.unwrap_or_default()
            );
            r.json::<Value>().await.expect("json")
        }
    };
    post(
        "/api/v1/pipelines",
        json!({"name": "m", "tasks": [
            {"name": "ok", "type": "shell", "command": ["true"]},
            {"name": "each", "type": "shell", "command": ["true"], "for_each": "{{ input.items }}"},
            {"name": "bad", "type": "shell", "command": ["false"], "retry": {"max_attempts": 2, "initial": "10ms", "jitter": false}}
        ]}),
    )
    .await;
    let run = post(
        "/api/v1/pipelines/m/trigger",
        json!({"input": {"items": [1, 2, 3]}}),
    )
    .await;
    let run = run["run"]["id"].as_str().expect("id").to_owned();
    let polls = std::cell::Cell::new(0.0);
    eventually(Duration::from_secs(30), "the run to fail", || {
        polls.set(polls.get() + 1.0);
        let state = std::process::Command::new("curl")
            .args(["-s", &format!("{}/api/v1/runs/{run}", s.base)])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
            .and_then(|v| v["run"]["state"].as_str().map(str::to_owned));
        (state.as_deref() == Some("failed")).then_some(())
    });
    let _ = http
        .get(format!("{}/api/v1/runs/{run}", s.base))
        .send()
        .await
        .expect("get");
    let text = http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let e = parse(&text);
    let attempts = |task: &str, outcome: &str| {
        e.value(
            "orbit_attempts_total",
            &[("pipeline", "m"), ("task", task), ("outcome", outcome)],
        )
    };
    assert_eq!(attempts("ok", "succeeded"), Some(1.0), "{text}");
    assert_eq!(attempts("each", "expanded"), Some(1.0));
    // The three children count as `each`: their index is not a label.
    assert_eq!(
        attempts("each", "succeeded"),
        Some(4.0),
        "3 children and the gathering"
    );
    assert_eq!(attempts("bad", "error"), Some(2.0), "tried twice");
    assert_eq!(
        e.value(
            "orbit_attempt_duration_seconds_count",
            &[("pipeline", "m"), ("task", "bad")]
        ),
        Some(2.0)
    );
    assert_eq!(
        e.value("orbit_queue_wait_seconds_count", &[]),
        Some(8.0),
        "every claim's wait: ok, the expansion, 3 children, the gathering, bad twice"
    );
    assert_eq!(
        e.value("orbit_task_runs", &[("state", "failed")]),
        Some(1.0)
    );
    assert_eq!(e.value("orbit_dlq_entries", &[]), Some(1.0));
    assert_eq!(
        e.value(
            "orbit_queue_task_runs",
            &[("queue", "default"), ("state", "ready")]
        ),
        Some(0.0),
        "the queue has drained"
    );
    assert_eq!(e.value("orbit_runs_triggered_total", &[]), Some(1.0));
    assert!(
        e.value("orbit_commits_total", &[])
            .is_some_and(|n| n >= 3.0)
    );
    assert_eq!(
        e.value(
            "orbit_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/api/v1/runs/{id}"),
                ("status", "200")
            ]
        ),
        Some(polls.get() + 1.0),
        "a run's page is one series whatever its id"
    );
    // The conventions, for every family exposed.
    for (sample, series) in &e.samples {
        let family = e.family(sample);
        assert!(e.help.contains_key(family), "`{family}` has no HELP");
        let kind = e
            .kind
            .get(family)
            .unwrap_or_else(|| panic!("`{family}` has no TYPE"));
        if kind == "counter" {
            assert!(
                family.ends_with("_total"),
                "counter `{family}` must end in _total"
            );
        }
        for unitless in ["duration", "latency", "age", "wait"] {
            if family.contains(unitless) {
                assert!(
                    family.ends_with("_seconds"),
                    "`{family}` must be in seconds"
                );
            }
        }
        for (labels, _) in series {
            for key in ["run", "run_id", "task_run", "id"] {
                assert!(
                    !labels.contains_key(key),
                    "`{family}` is labelled by `{key}`"
                );
            }
        }
    }
}

/// The Grafana dashboard in deploy/ queries only metrics the README's reference table lists.
#[test]
fn the_grafana_dashboard_uses_documented_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let mut used = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("orbit_").map(|_| word) {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(name);
                    assert!(
                        readme.contains(&format!("`{base}`")),
                        "the dashboard queries `{base}`, which the README does not list"
                    );
                    used += 1;
                }
            }
        }
    }
    assert!(used >= 12, "{used} metric references");
}
