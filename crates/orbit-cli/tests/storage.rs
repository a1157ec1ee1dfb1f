//! Object storage with real servers: large inputs and outputs through an SDK worker on an
//! S3-compatible server (`s3s-fs`, started here) and on the local default; pre-signed URLs and
//! storage tokens that reach exactly one object for a short time; two backends at once;
//! deleting runs and dead-letter retention removing objects; bad configurations refused.

mod support;

use jsonwebtoken::{EncodingKey, Header};
use orbit_sdk::{Context, TaskError, Worker};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{S3, S3_ACCESS_KEY, S3_SECRET_KEY, Server, orbit_bin, s3, server};
use tokio_util::sync::CancellationToken;

const KEY: &str = "storage-test-secret-0123456789";

struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Api {
    fn new(s: &Server) -> Api {
        Api {
            base: s.base.clone(),
            http: reqwest::Client::new(),
            token: None,
        }
    }

    /// `url` relative to the server unless absolute; `bearer` overrides the API token.
    async fn raw(
        &self,
        method: &str,
        url: &str,
        bearer: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let url = if url.starts_with("http") {
            url.to_owned()
        } else {
            format!("{}{url}", self.base)
        };
        let mut req = self.http.request(method, url);
        if let Some(t) = bearer.or(self.token.as_deref()) {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    async fn call(
        &self,
        method: &str,
        url: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string().into_bytes());
        let (status, text) = self.raw(method, url, bearer, body).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn ok(&self, method: &str, url: &str, body: Option<Value>) -> Value {
        let (status, body) = self.call(method, url, None, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {url}: {status} {body}"
        );
        body
    }

    async fn pipeline(&self, yaml: &str) {
        self.ok("POST", "/api/v1/pipelines", Some(json!({ "yaml": yaml })))
            .await;
    }

    async fn trigger(&self, pipeline: &str, input: Value) -> String {
        let body = self
            .ok(
                "POST",
                &format!("/api/v1/pipelines/{pipeline}/trigger"),
                Some(json!({ "input": input })),
            )
            .await;
        body["run"]["id"]
            .as_str()
            .or(body["id"].as_str())
            .expect("run id")
            .to_owned()
    }

    async fn settled(&self, run: &str) -> Value {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let detail = self.ok("GET", &format!("/api/v1/runs/{run}"), None).await;
            if ["succeeded", "failed", "cancelled"]
                .contains(&detail["run"]["state"].as_str().unwrap_or(""))
            {
                return detail;
            }
            assert!(Instant::now() < end, "run {run} did not settle: {detail:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn task<'a>(detail: &'a Value, name: &str) -> &'a Value {
    detail["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["taskName"] == name))
        .unwrap_or_else(|| panic!("no task {name} in {detail:#}"))
}

/// The `$orbit_object` reference a stored value was replaced by.
fn reference(v: &Value) -> &Value {
    let r = &v["$orbit_object"];
    assert!(r.is_object(), "not an object reference: {v}");
    r
}

fn s3_env(s3: &S3, bucket: &str) -> Vec<(String, String)> {
    s3.bucket(bucket);
    vec![
        ("STORAGE_PROVIDER".into(), "minio".into()),
        ("S3_ENDPOINT".into(), s3.endpoint.clone()),
        ("S3_BUCKET".into(), bucket.into()),
        ("S3_ACCESS_KEY".into(), S3_ACCESS_KEY.into()),
        ("S3_SECRET_KEY".into(), S3_SECRET_KEY.into()),
    ]
}

fn start(dir: &Path, env: &[(String, String)]) -> Server {
    let mut all: Vec<(&str, &str)> = vec![("ORBIT_SECRET_KEY", KEY)];
    all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    server(dir, "sqlite://orbit.db", &["--workers", "2"], &all)
}

/// Reads the large run input and returns an output far over the 64 KiB default threshold.
#[orbit_sdk::task]
async fn big(ctx: Context) -> Result<Value, TaskError> {
    let payload = ctx.input["payload"].as_str().unwrap_or("").len();
    Ok(json!({ "blob": "y".repeat(200_000), "payloadLen": payload }))
}

/// Reads the large output of `make`.
#[orbit_sdk::task]
async fn measure(ctx: Context) -> Result<Value, TaskError> {
    let len = ctx
        .upstream("make")
        .and_then(|m| m["blob"].as_str())
        .map_or(0, str::len);
    Ok(json!({ "blobLen": len }))
}

const LARGE: &str = r#"
name: large
tasks:
  - name: make
    type: worker
    task: big
  - name: measure
    type: worker
    needs: make
  - name: check
    type: script
    needs: make
    source: |
      import json, sys
      ctx = json.load(sys.stdin)
      print(json.dumps({"blob": len(ctx["tasks"]["make"]["output"]["blob"]),
                        "payload": len(ctx["input"]["payload"])}))
"#;

/// The large pipeline through an SDK worker; `file` says where a key of the default backend
/// lives on disk. Returns the run detail after checking what every task saw.
async fn round_trip(s: &Server, backend: &str, file: impl Fn(&str) -> PathBuf) {
    let api = Api::new(s);
    api.pipeline(LARGE).await;
    let mut worker = Worker::builder()
        .orchestrator_url(&s.base)
        .service_id("bulk")
        .secret_key(KEY)
        .build()
        .expect("worker");
    worker.register("big", big).register("measure", measure);
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));

    let run = api
        .trigger("large", json!({ "payload": "p".repeat(100_000) }))
        .await;
    let detail = api.settled(&run).await;
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");

    // The input and the large output are references; the objects are where the backend keeps them.
    let input = reference(&detail["run"]["input"]);
    assert_eq!(input["backend"], backend);
    assert_eq!(input["key"], format!("runs/{run}/input.json"));
    let make = task(&detail, "make");
    let output = reference(&make["output"]);
    assert_eq!(output["backend"], backend);
    let key = output["key"].as_str().expect("key").to_owned();
    assert_eq!(key, format!("runs/{run}/make/attempt-1.json"));
    assert!(output["size"].as_u64().expect("size") > 200_000, "{output}");
    for k in [input["key"].as_str().expect("key"), key.as_str()] {
        assert!(
            file(k).is_file(),
            "{k} is not stored at {}",
            file(k).display()
        );
    }

    // Every task saw the content: the worker's handlers through granted URLs, the script
    // through the engine. Small outputs stay inline.
    assert_eq!(
        make["output"]["payloadLen"],
        Value::Null,
        "the reference, not the content"
    );
    assert_eq!(
        task(&detail, "measure")["output"],
        json!({ "blobLen": 200_000 })
    );
    assert_eq!(
        task(&detail, "check")["output"],
        json!({ "blob": 200_000, "payload": 100_000 })
    );

    // The worker wrote the output itself; the callback carried the reference only.
    let attempts = api
        .ok(
            "GET",
            &format!("/api/v1/task-runs/{}", make["id"].as_str().expect("id")),
            None,
        )
        .await;
    let log = attempts["attempts"][0]["log"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        log.contains("written by the worker to object"),
        "{attempts:#}"
    );

    // API callers read it through the orchestrator.
    let (status, text) = api
        .raw(
            "GET",
            &format!("/api/v1/storage/{backend}/{key}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let content: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        (
            content["blob"].as_str().map(str::len),
            content["payloadLen"].as_u64()
        ),
        (Some(200_000), Some(100_000))
    );

    // Deleting the run removes its objects.
    let deleted = api.ok("DELETE", &format!("/api/v1/runs/{run}"), None).await;
    assert_eq!(deleted["objects"], 2, "{deleted}");
    assert!(!file(&key).exists() && !file(&format!("runs/{run}/input.json")).exists());
    let (status, _) = api
        .call("GET", &format!("/api/v1/runs/{run}"), None, None)
        .await;
    assert_eq!(status, 404);

    stop.cancel();
    running.await.expect("join").expect("worker ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_data_round_trips_through_a_worker_on_s3() {
    let s3 = s3();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path(), &s3_env(&s3, "round-trip"));
    round_trip(&s, "default", |k| s3.file("round-trip", k)).await;

    // Credentials never reach logs or API answers.
    let health = Api::new(&s).ok("GET", "/api/v1/health", None).await;
    assert_eq!(
        health["storage"]["backends"][0]["provider"], "minio",
        "{health}"
    );
    let log = std::fs::read_to_string(&s.stderr).unwrap_or_default();
    for text in [health.to_string(), log] {
        assert!(!text.contains(S3_SECRET_KEY), "the secret leaked: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_data_round_trips_through_a_worker_on_the_local_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path(), &[]);
    let objects = dir.path().join(".orbit/objects");
    round_trip(&s, "local", |k| objects.join(k)).await;
}

fn service_token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = json!({"sub": "plain", "aud": "orbit-service", "exp": now + 120, "iat": now});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(KEY.as_bytes()),
    )
    .expect("sign")
}

/// Registers a plain-HTTP service with task `eat`, starts two runs of it with inputs over the
/// threshold and polls both assignments.
async fn two_assignments(api: &Api) -> (Value, Value) {
    api.pipeline("name: eat\ntasks:\n  - name: eat\n    type: worker\n")
        .await;
    let token = service_token();
    let reg = json!({"serviceId": "plain", "workerId": "plain@test:1", "tasks": [{"name": "eat", "codeHash": "e1"}]});
    let (status, body) = api
        .call("POST", "/api/v1/services/register", Some(&token), Some(reg))
        .await;
    assert_eq!(status, 200, "{body}");
    for n in 0..2 {
        api.trigger("eat", json!({ "n": n, "pad": "q".repeat(4000) }))
            .await;
    }
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while got.len() < 2 {
        assert!(Instant::now() < end, "no assignments");
        let poll = json!({"workerId": "plain@test:1", "max": 2, "waitMs": 2000});
        let (status, body) = api
            .call("POST", "/api/v1/worker/poll", Some(&token), Some(poll))
            .await;
        assert_eq!(status, 200, "{body}");
        got.extend(body["tasks"].as_array().cloned().unwrap_or_default());
    }
    let mut got = got.into_iter();
    (got.next().expect("one"), got.next().expect("two"))
}

/// The granted URL of the assignment's input object.
fn input_url(a: &Value) -> String {
    let r = reference(&a["input"]);
    let id = format!(
        "{}/{}",
        r["backend"].as_str().expect("backend"),
        r["key"].as_str().expect("key")
    );
    a["objects"][&id]
        .as_str()
        .unwrap_or_else(|| panic!("no grant for {id}: {a:#}"))
        .to_owned()
}

fn key_of(a: &Value) -> String {
    reference(&a["input"])["key"]
        .as_str()
        .expect("key")
        .to_owned()
}

/// Writes `output` through an output grant and calls back with the reference; the status of
/// the callback.
async fn write_and_call_back(api: &Api, a: &Value, output: &Value) -> (u16, Value) {
    let token = a["token"].as_str().expect("task token");
    let grant = api
        .call(
            "POST",
            "/api/v1/grant",
            Some(token),
            Some(json!({ "taskRunId": a["taskRunId"] })),
        )
        .await;
    assert_eq!(grant.0, 200, "{}", grant.1);
    let url = grant.1["url"].as_str().expect("url").to_owned();
    let (status, text) = api
        .raw("PUT", &url, Some(""), Some(output.to_string().into_bytes()))
        .await;
    assert!(status == 200 || status == 201, "PUT {url}: {status} {text}");
    let cb = json!({"taskRunId": a["taskRunId"], "status": "succeeded",
                    "output": {"$orbit_object": grant.1["reference"]}});
    api.call(
        "POST",
        &format!("/api/v1/callback/{}", a["runId"].as_str().expect("run")),
        Some(token),
        Some(cb),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_reach_one_object_until_they_expire() {
    let s3 = s3();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = s3_env(&s3, "presigned");
    env.push(("ORBIT_STORAGE_THRESHOLD".into(), "1KiB".into()));
    env.push(("ORBIT_STORAGE_GRANT_TTL".into(), "3s".into()));
    let s = start(dir.path(), &env);
    let api = Api::new(&s);
    let (a, b) = two_assignments(&api).await;
    let granted_at = Instant::now();

    // A pre-signed URL on the bucket itself: the orchestrator carries no data.
    let url = input_url(&a);
    assert!(
        url.starts_with(&s3.endpoint) && url.contains("X-Amz-Signature"),
        "{url}"
    );
    let (status, text) = api.raw("GET", &url, Some(""), None).await;
    assert_eq!(status, 200, "{text}");
    let input: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(input["pad"].as_str().map(str::len), Some(4000));

    // The same signature for the other task's object is refused by the bucket.
    let other = url.replace(&key_of(&a), &key_of(&b));
    assert_ne!(other, url);
    let (status, text) = api.raw("GET", &other, Some(""), None).await;
    assert_eq!(status, 403, "another task's object: {text}");

    // A callback may refer only to the attempt's own object, and only once it is written.
    let token_b = b["token"].as_str().expect("token");
    let foreign = json!({"taskRunId": b["taskRunId"], "status": "succeeded", "output": a["input"]});
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/v1/callback/{}", b["runId"].as_str().expect("run")),
            Some(token_b),
            Some(foreign),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let unwritten = json!({"taskRunId": b["taskRunId"], "status": "succeeded", "output": {"$orbit_object": {
        "backend": "default", "key": format!("runs/{}/eat/attempt-1.json", b["runId"].as_str().expect("run"))}}});
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/v1/callback/{}", b["runId"].as_str().expect("run")),
            Some(token_b),
            Some(unwritten),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("was not written"), "{body}");

    // The right way: PUT through the output grant, call back with the reference.
    let output = json!({"eaten": "r".repeat(5000)});
    let (status, body) = write_and_call_back(&api, &a, &output).await;
    assert_eq!(status, 200, "{body}");
    let detail = api.settled(a["runId"].as_str().expect("run")).await;
    let stored = reference(&task(&detail, "eat")["output"]).clone();
    assert_eq!(stored["size"], output.to_string().len());
    let on_disk =
        std::fs::read(s3.file("presigned", stored["key"].as_str().expect("key"))).expect("stored");
    assert_eq!(
        serde_json::from_slice::<Value>(&on_disk).expect("json"),
        output
    );

    // After the grant's lifetime the bucket refuses the same URL.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(granted_at.elapsed())).await;
    let (status, text) = api.raw("GET", &url, Some(""), None).await;
    assert_eq!(status, 403, "expired: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_storage_tokens_reach_one_object_until_they_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = vec![
        ("ORBIT_STORAGE_THRESHOLD".to_owned(), "1024".to_owned()),
        ("ORBIT_STORAGE_GRANT_TTL".to_owned(), "3s".to_owned()),
        ("ORBIT_API_TOKEN".to_owned(), "api-token".to_owned()),
    ];
    let s = start(dir.path(), &env);
    let mut api = Api::new(&s);
    api.token = Some("api-token".into());
    let (a, b) = two_assignments(&api).await;
    let granted_at = Instant::now();

    // The local backend cannot pre-sign: the grant is this server's route with a token.
    let url = input_url(&a);
    assert!(
        url.starts_with("/api/v1/storage/local/runs/") && url.contains("?token="),
        "{url}"
    );
    let (status, text) = api.raw("GET", &url, Some(""), None).await;
    assert_eq!(status, 200, "{text}");
    let other = url.replace(&key_of(&a), &key_of(&b));
    let (status, text) = api.raw("GET", &other, Some(""), None).await;
    assert_eq!(status, 401, "another task's object: {text}");
    // A read token does not write, and nothing writes without a token.
    let (status, _) = api.raw("PUT", &url, Some(""), Some(b"{}".to_vec())).await;
    assert_eq!(status, 401);
    let plain = url.split('?').next().expect("path").to_owned();
    let (status, _) = api.raw("PUT", &plain, None, Some(b"{}".to_vec())).await;
    assert_eq!(status, 401);
    // API callers read with the API token; without it they are refused.
    let (status, _) = api.raw("GET", &plain, None, None).await;
    assert_eq!(status, 200);
    let (status, _) = api.raw("GET", &plain, Some("wrong"), None).await;
    assert_eq!(status, 401);

    // An output grant takes JSON only, then the callback's reference is kept.
    let token = a["token"].as_str().expect("token");
    let grant = api
        .call(
            "POST",
            "/api/v1/grant",
            Some(token),
            Some(json!({"taskRunId": a["taskRunId"]})),
        )
        .await
        .1;
    let put = grant["url"].as_str().expect("url").to_owned();
    assert!(
        put.contains(&format!(
            "runs/{}/eat/attempt-1.json?token=",
            a["runId"].as_str().expect("run")
        )),
        "{put}"
    );
    let (status, text) = api
        .raw("PUT", &put, Some(""), Some(b"not json".to_vec()))
        .await;
    assert_eq!(status, 400, "{text}");
    let (status, body) = write_and_call_back(&api, &a, &json!({"big": "s".repeat(3000)})).await;
    assert_eq!(status, 200, "{body}");
    let detail = api.settled(a["runId"].as_str().expect("run")).await;
    let key = reference(&task(&detail, "eat")["output"])["key"]
        .as_str()
        .expect("key")
        .to_owned();
    assert!(dir.path().join(".orbit/objects").join(&key).is_file());

    tokio::time::sleep(Duration::from_secs(4).saturating_sub(granted_at.elapsed())).await;
    let (status, text) = api.raw("GET", &url, Some(""), None).await;
    assert_eq!(status, 401, "expired: {text}");
}

const SPLIT: &str = r#"
name: split
tasks:
  - name: produce
    type: script
    source: |
      import json
      print(json.dumps({"x": "z" * 5000}))
  - name: consume
    type: script
    needs: produce
    source: |
      import json, sys
      print(json.dumps({"len": len(json.load(sys.stdin)["tasks"]["produce"]["output"]["x"])}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backends_at_once() {
    let s3 = s3();
    s3.bucket("two");
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk-objects");
    let backends = json!([
        {"id": "disk", "provider": "local", "path": disk},
        {"id": "s3", "provider": "minio", "endpoint": s3.endpoint, "bucket": "two", "region": "us-east-1",
         "credentials": {"accessKeyId": S3_ACCESS_KEY, "secretAccessKey": S3_SECRET_KEY}, "isDefault": true}
    ])
    .to_string();
    let env = |default: &str| {
        vec![
            ("STORAGE_BACKENDS".to_owned(), backends.clone()),
            ("DEFAULT_STORAGE_BACKEND_ID".to_owned(), default.to_owned()),
            ("ORBIT_STORAGE_THRESHOLD".to_owned(), "1KiB".to_owned()),
        ]
    };
    let run_once = |s: &Server| {
        let api = Api::new(s);
        async move {
            api.pipeline(SPLIT).await;
            let run = api.trigger("split", json!({})).await;
            let detail = api.settled(&run).await;
            assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
            assert_eq!(task(&detail, "consume")["output"], json!({"len": 5000}));
            (run, reference(&task(&detail, "produce")["output"]).clone())
        }
    };

    let mut first = start(dir.path(), &env("s3"));
    let (run1, r1) = run_once(&first).await;
    assert_eq!(r1["backend"], "s3");
    let in_s3 = s3.file("two", r1["key"].as_str().expect("key"));
    assert!(in_s3.is_file());
    first.proc.signal("TERM");
    first
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("server stopped");

    // Same database, the other backend as default: new objects go to disk, old ones still read.
    let second = start(dir.path(), &env("disk"));
    let (run2, r2) = run_once(&second).await;
    assert_eq!(r2["backend"], "disk");
    let on_disk = disk.join(r2["key"].as_str().expect("key"));
    assert!(on_disk.is_file());
    let api = Api::new(&second);
    for r in [&r1, &r2] {
        let path = format!(
            "/api/v1/storage/{}/{}",
            r["backend"].as_str().expect("b"),
            r["key"].as_str().expect("k")
        );
        let (status, text) = api.raw("GET", &path, None, None).await;
        assert_eq!(status, 200, "{path}: {text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).expect("json")["x"]
                .as_str()
                .map(str::len),
            Some(5000)
        );
    }
    api.ok("DELETE", &format!("/api/v1/runs/{run1}"), None)
        .await;
    assert!(!in_s3.exists(), "run 1's object left S3");
    api.ok("DELETE", &format!("/api/v1/runs/{run2}"), None)
        .await;
    assert!(!on_disk.exists(), "run 2's object left the disk");
}

fn orbit(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(orbit_bin());
    cmd.current_dir(dir)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("ORBIT_DATABASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run orbit")
}

#[test]
fn the_cli_on_the_local_default_and_dead_letter_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(
        d.join("input.json"),
        json!({"rows": "r".repeat(70_000)}).to_string(),
    )
    .expect("input");
    std::fs::write(
        d.join("wide.yaml"),
        "name: wide\ntasks:\n  - name: widen\n    type: script\n    source: |\n      import json, sys\n      ctx = json.load(sys.stdin)\n      print(json.dumps({\"rows\": ctx[\"input\"][\"rows\"] * 2}))\n  - name: count\n    type: script\n    needs: widen\n    source: |\n      import json, sys\n      print(json.dumps({\"n\": len(json.load(sys.stdin)[\"tasks\"][\"widen\"][\"output\"][\"rows\"])}))\n",
    )
    .expect("pipeline");
    let out = orbit(d, &["--json", "run", "wide.yaml", "-i", "@input.json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let run = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| {
            v["run"]
                .as_str()
                .filter(|_| v["event"] == "run_created")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no run_created line in {stdout}"));
    let objects = d.join(".orbit/objects/runs").join(&run);
    assert!(
        objects.join("input.json").is_file(),
        "the 70 KB input went to .orbit/objects"
    );
    assert!(
        objects.join("widen/attempt-1.json").is_file(),
        "the 140 KB output too"
    );
    let status = orbit(d, &["--json", "status", &run], &[]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(r#""n":140000"#) || status.contains(r#""n": 140000"#),
        "count read the hydrated output: {status}"
    );

    // The 140 KB line was the output: the log notes it instead of keeping a second copy.
    let logs = orbit(d, &["logs", &run, "widen"], &[]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains("bytes (not kept in the log)")
            && logs.contains("stored as object")
            && logs.len() < 10_000,
        "{}",
        &logs[..logs.len().min(2000)]
    );

    // `orbit delete` refuses nothing settled and removes the objects with the run.
    std::fs::write(
        d.join("keep.yaml"),
        "name: keep\ntasks:\n  - name: hold\n    type: sleep\n    duration: 0s\n",
    )
    .expect("pipeline");
    let kept = orbit(d, &["--json", "run", "keep.yaml", "-i", "@input.json"], &[]);
    let kept = String::from_utf8_lossy(&kept.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| {
            v["run"]
                .as_str()
                .filter(|_| v["event"] == "run_created")
                .map(str::to_owned)
        })
        .expect("run id");
    let kept_input = d.join(".orbit/objects/runs").join(&kept).join("input.json");
    assert!(kept_input.is_file());
    let deleted = orbit(d, &["--json", "delete", &kept[..13]], &[]);
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    let deleted: Value = serde_json::from_slice(&deleted.stdout).expect("json");
    assert_eq!(deleted, json!({"run": kept, "deleted": true, "objects": 1}));
    assert!(!kept_input.exists());

    // A failed run with a large input: retention removes its dead letter, the run and its objects.
    std::fs::write(d.join("fail.yaml"), "name: fail\ntasks:\n  - name: boom\n    type: shell\n    command: exit 3\n    retry: { max_attempts: 1 }\n").expect("pipeline");
    let out = orbit(d, &["--json", "run", "fail.yaml", "-i", "@input.json"], &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| {
            v["run"]
                .as_str()
                .filter(|_| v["event"] == "run_created")
                .map(str::to_owned)
        })
        .expect("failed run id");
    let failed_objects = d.join(".orbit/objects/runs").join(&failed);
    assert!(failed_objects.join("input.json").is_file());
    let listed = orbit(d, &["--json", "dlq", "list"], &[]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&failed),
        "in the DLQ"
    );
    let purged = orbit(d, &["--json", "dlq", "purge", "--older-than", "0s"], &[]);
    let purged: Value = serde_json::from_slice(&purged.stdout).expect("json");
    assert_eq!(
        purged,
        json!({"purged": 1, "runsDeleted": 1, "objectsDeleted": 1})
    );
    assert!(
        !failed_objects.join("input.json").exists(),
        "the failed run's objects are gone"
    );
    assert!(
        objects.join("input.json").is_file(),
        "the succeeded run keeps its objects"
    );
    let gone = orbit(d, &["status", &failed], &[]);
    assert!(!gone.status.success(), "the failed run is deleted");
}

#[test]
fn a_bad_storage_configuration_fails_at_start_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "hunter2-do-not-print";
    let backends = json!([{"id": "a", "provider": "minio", "bucket": "b", "endpoint": "http://127.0.0.1:1",
                           "credentials": {"accessKeyId": "AKIA", "secretAccessKey": secret}, "isDefault": true},
                          {"id": "a", "provider": "local"}])
    .to_string();
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("STORAGE_BACKENDS", &backends)],
            "STORAGE_BACKENDS[1].id: `a` is used by another backend",
        ),
        (
            &[
                ("STORAGE_PROVIDER", "minio"),
                ("S3_BUCKET", "b"),
                ("S3_SECRET_KEY", secret),
            ],
            "S3_ENDPOINT is required for provider `minio`",
        ),
        (
            &[(
                "STORAGE_BACKENDS",
                "[{\"id\": \"x\", \"provider\": \"dropbox\"}]",
            )],
            "STORAGE_BACKENDS[0].provider `dropbox` is not one of",
        ),
    ];
    for (env, expected) in cases {
        for args in [&["server", "--bind", "127.0.0.1:0"][..], &["worker"][..]] {
            let out = orbit(dir.path(), args, env);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
            assert!(
                stderr.contains(expected),
                "{args:?}: `{stderr}` should name `{expected}`"
            );
            assert!(!stderr.contains(secret), "the secret leaked: {stderr}");
        }
    }
}
