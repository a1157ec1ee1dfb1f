//! The `orbit` binary end to end: real files, a real SQLite database, real processes.

use assert_cmd::Command;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct TestEnv {
    dir: tempfile::TempDir,
}

/// A temporary working directory with `examples/` linked in and its own database.
fn setup() -> TestEnv {
    let dir = tempfile::tempdir().expect("tempdir");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    std::os::unix::fs::symlink(
        examples.canonicalize().expect("examples dir"),
        dir.path().join("examples"),
    )
    .expect("symlink");
    TestEnv { dir }
}

impl TestEnv {
    fn orbit(&self) -> Command {
        let mut cmd = Command::cargo_bin("orbit").expect("orbit binary");
        cmd.current_dir(self.dir.path())
            .env_remove("DATABASE_URL")
            .env(
                "ORBIT_DATABASE_URL",
                format!("sqlite://{}", self.dir.path().join("orbit.db").display()),
            );
        cmd
    }

    /// `orbit ARGS` in the background; its output piped (else dropped).
    fn spawn(&self, args: &[&str], piped: bool) -> std::process::Child {
        let pipe = || {
            if piped {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            }
        };
        std::process::Command::new(assert_cmd::cargo::cargo_bin("orbit"))
            .current_dir(self.dir.path())
            .env_remove("DATABASE_URL")
            .env(
                "ORBIT_DATABASE_URL",
                format!("sqlite://{}", self.dir.path().join("orbit.db").display()),
            )
            .args(args)
            .stdout(pipe())
            .stderr(pipe())
            .spawn()
            .expect("orbit")
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write fixture");
        p
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self
            .orbit()
            .args(args)
            .arg("--json")
            .output()
            .expect("run orbit");
        assert!(
            out.status.success(),
            "orbit {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json output")
    }

    fn last_run(&self) -> Value {
        self.json(&["runs", "--limit", "1"])[0].clone()
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn etl_example_runs_its_parallel_branches_and_loads_a_report() {
    let env = setup();
    let out = env
        .orbit()
        .args(["run", "examples/etl.yaml", "-i", r#"{"users": 9}"#])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("succeeded"), "{}", stdout(&out));
    let run = env.last_run();
    let id = run["id"].as_str().unwrap();
    let status = env.json(&["status", id]);
    assert_eq!(status["run"]["state"], "succeeded");
    let tasks = status["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 5);
    assert!(tasks.iter().all(|t| t["state"] == "succeeded"), "{tasks:?}");
    let join = tasks.iter().find(|t| t["taskName"] == "join").unwrap();
    assert_eq!(
        join["output"]["total_revenue"], 1251,
        "9 users, 18 orders of 10 + 7i"
    );
    let report = env
        .dir
        .path()
        .join(format!(".orbit/warehouse/etl-{id}.json"));
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    assert_eq!(saved, join["output"]);
    // the two transforms ran side by side
    let attempts = env.json(&["logs", id]);
    let span = |name: &str| {
        let a = attempts
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["taskName"] == name)
            .unwrap();
        (
            a["startedAt"].as_str().unwrap().to_owned(),
            a["finishedAt"].as_str().unwrap().to_owned(),
        )
    };
    let (a_start, a_end) = span("users-by-country");
    let (b_start, b_end) = span("revenue-by-country");
    assert!(
        a_start < b_end && b_start < a_end,
        "transforms overlap in time"
    );
}

#[test]
fn retry_example_fails_twice_then_succeeds() {
    let env = setup();
    let out = env
        .orbit()
        .args(["run", "examples/retry.yaml"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        stdout(&out).matches("↻ flaky-call").count(),
        2,
        "{}",
        stdout(&out)
    );
    let id = env.last_run()["id"].as_str().unwrap().to_owned();
    let attempts = env.json(&["logs", &id, "flaky-call"]);
    let outcomes: Vec<&str> = attempts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, vec!["error", "error", "succeeded"]);
    assert!(
        attempts[0]["log"]
            .as_str()
            .unwrap()
            .contains("attempt 1: upstream not ready yet")
    );
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .contains("exited with status 1")
    );
    let report = env.json(&["status", &id])["tasks"][1]["output"].clone();
    assert_eq!(report, "flaky-call succeeded on attempt 3");
    let text = env
        .orbit()
        .args(["logs", &id[id.len() - 12..], "flaky-call"])
        .output()
        .unwrap();
    assert!(
        stdout(&text).contains("flaky-call · attempt 2 · error"),
        "{}",
        stdout(&text)
    );
}

#[test]
fn http_example_talks_to_its_own_server() {
    let env = setup();
    let out = env
        .orbit()
        .args(["run", "examples/http.yaml", "-i", r#"{"name": "Ada"}"#])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let id = env.last_run()["id"].as_str().unwrap().to_owned();
    let tasks = env.json(&["status", &id])["tasks"].clone();
    let output = |n: &str| {
        tasks
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["taskName"] == n)
            .unwrap()["output"]
            .clone()
    };
    assert_eq!(output("greet")["message"], "hello, Ada");
    assert_eq!(output("place-order")["quantity"], 3);
    assert_eq!(output("place-order")["greeting"], "hello, Ada");
    assert!(
        output("report")
            .as_str()
            .unwrap()
            .starts_with("hello, Ada; order ")
    );
}

#[test]
fn a_dead_task_fails_the_run_and_cancels_what_needs_it() {
    let env = setup();
    let file = env.file(
        "broken.yaml",
        "name: broken\ntasks:\n  - name: ok\n    type: shell\n    command: [echo, fine]\n  - name: bad\n    type: shell\n    command: [sh, -c, 'echo nope >&2; exit 3']\n    retry: {max_attempts: 2, initial: 10ms}\n  - name: after\n    type: shell\n    command: [echo, never]\n    needs: [bad, ok]\n",
    );
    let out = env.orbit().arg("run").arg(&file).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("✗ bad  dead after attempt 2"),
        "{}",
        stdout(&out)
    );
    let id = env.last_run()["id"].as_str().unwrap().to_owned();
    let status = env.json(&["status", &id]);
    assert_eq!(status["run"]["state"], "failed");
    let states: Vec<(&str, &str)> = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["taskName"].as_str().unwrap(),
                t["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![("ok", "succeeded"), ("bad", "dead"), ("after", "cancelled")]
    );
    let attempts = env.json(&["logs", &id, "bad"]);
    assert_eq!(
        attempts.as_array().unwrap().len(),
        2,
        "every attempt is recorded"
    );
    assert!(attempts[1]["log"].as_str().unwrap().contains("nope"));
    assert!(
        attempts[1]["error"]
            .as_str()
            .unwrap()
            .contains("exited with status 3: nope")
    );
}

#[test]
fn a_timeout_kills_the_whole_process_group() {
    let env = setup();
    let pid_file = env.dir.path().join("child.pid");
    let file = env.file(
        "slow.yaml",
        &format!(
            "name: slow\ntasks:\n  - name: hang\n    type: shell\n    shell: true\n    timeout: 500ms\n    retry: {{max_attempts: 1}}\n    command: 'sleep 60 & echo $! > {}; wait'\n",
            pid_file.display()
        ),
    );
    let started = Instant::now();
    let out = env.orbit().arg("run").arg(&file).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        stdout(&out).contains("timed out after 500ms"),
        "{}",
        stdout(&out)
    );
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
    let deadline = Instant::now() + Duration::from_secs(5);
    // A killed child that nobody reaped yet is a zombie; either way it no longer runs.
    while proc_dir.exists()
        && !std::fs::read_to_string(proc_dir.join("stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            Instant::now() < deadline,
            "background child {} survived the timeout",
            pid.trim()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = env.last_run()["id"].as_str().unwrap().to_owned();
    assert_eq!(env.json(&["logs", &id])[0]["outcome"], "timeout");
}

#[test]
fn concurrency_limit_is_respected() {
    let env = setup();
    let tasks: String = (0..6)
        .map(|i| format!("  - name: t{i}\n    type: sleep\n    duration: 200ms\n"))
        .collect();
    let file = env.file("wide.yaml", &format!("name: wide\ntasks:\n{tasks}"));
    let out = env
        .orbit()
        .arg("run")
        .arg(&file)
        .args(["--concurrency", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = env.last_run()["id"].as_str().unwrap().to_owned();
    let attempts = env.json(&["logs", &id]);
    let spans: Vec<(String, String)> = attempts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["startedAt"].as_str().unwrap().into(),
                a["finishedAt"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (s, _) in &spans {
        let running = spans.iter().filter(|(s2, e2)| s2 <= s && s < e2).count();
        assert!(running <= 2, "{running} attempts ran at once");
    }
}

#[test]
fn invalid_files_exit_2_with_file_line_and_message() {
    let env = setup();
    let file = env.file(
        "cycle.yaml",
        "name: cyc\ntasks:\n  - name: a\n    type: sleep\n    duration: 1s\n    needs: [b]\n  - name: b\n    type: sleep\n    duration: 1s\n    needs: [a]\n  - name: c\n    type: nope\n",
    );
    for cmd in ["validate", "run"] {
        let out = env.orbit().arg(cmd).arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("cycle.yaml:3:"), "{err}");
        assert!(err.contains("tasks form a cycle: a -> b -> a"), "{err}");
        assert!(err.contains("cycle.yaml:12:"), "{err}");
        assert!(err.contains("unknown type `nope`"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let json = env
        .orbit()
        .args(["validate", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"][0]["line"], 3);
}

#[test]
fn validate_prints_task_count_and_layers() {
    let env = setup();
    let out = env
        .orbit()
        .args(["validate", "examples/etl.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.starts_with("ok: pipeline `etl`: 5 tasks in 4 layers"),
        "{text}"
    );
    assert!(
        text.contains("2: users-by-country, revenue-by-country"),
        "{text}"
    );
}

#[test]
fn bad_arguments_are_one_clear_line_and_exit_2() {
    let env = setup();
    let cases: [(&[&str], &str); 5] = [
        (
            &["run", "examples/retry.yaml", "-i", "{not json"],
            "--input is not valid JSON",
        ),
        (
            &["run", "no-such-pipeline"],
            "no pipeline named `no-such-pipeline`",
        ),
        (&["status", "0123abcd"], "run `0123abcd` not found"),
        (&["runs", "--status", "done"], "unknown state `done`"),
        (
            &["run", "missing/file.yaml"],
            "cannot read missing/file.yaml",
        ),
    ];
    for (args, expected) in cases {
        let out = env.orbit().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.starts_with("error: ") && err.contains(expected),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn saved_pipelines_are_listed_graphed_and_run_by_name() {
    let env = setup();
    assert_eq!(
        env.orbit()
            .args(["run", "examples/retry.yaml"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(0)
    );
    let list = env.json(&["list"]);
    assert_eq!(list[0]["name"], "retry");
    assert_eq!(list[0]["version"], 1);
    let by_name = env.orbit().args(["run", "retry"]).output().unwrap();
    assert_eq!(by_name.status.code(), Some(0), "{}", stderr(&by_name));
    assert_eq!(env.json(&["runs"]).as_array().unwrap().len(), 2);
    assert_eq!(
        env.json(&["runs", "--status", "failed"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let graph = env.orbit().args(["graph", "retry"]).output().unwrap();
    let text = stdout(&graph);
    assert!(
        text.contains("flaky-call [shell]") && text.contains("report [shell]  ◀ flaky-call"),
        "{text}"
    );
}

#[test]
fn retry_requeues_dead_tasks_and_keeps_succeeded_ones() {
    let env = setup();
    let file = env.file(
        "fixme.yaml",
        "name: fixme\ntasks:\n  - name: first\n    type: shell\n    shell: true\n    command: 'echo first >> ran.log'\n  - name: needs-fix\n    type: shell\n    shell: true\n    needs: first\n    retry: {max_attempts: 1}\n    command: 'echo fix >> ran.log; test -f fixed'\n  - name: last\n    type: shell\n    command: [echo, done]\n    needs: needs-fix\n",
    );
    assert_eq!(
        env.orbit()
            .arg("run")
            .arg(&file)
            .output()
            .unwrap()
            .status
            .code(),
        Some(1)
    );
    let id = env.last_run()["id"].as_str().unwrap().to_owned();
    let resume = env.orbit().args(["resume", &id]).output().unwrap();
    assert_eq!(resume.status.code(), Some(1));
    assert!(
        stderr(&resume).contains("Run has 1 failed step(s), cannot auto-resume"),
        "{}",
        stderr(&resume)
    );
    std::fs::write(env.dir.path().join("fixed"), "").unwrap();
    let out = env.orbit().args(["retry", &id[..13]]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("re-queued 2 task(s)"),
        "{}",
        stdout(&out)
    );
    let status = env.json(&["status", &id]);
    assert_eq!(status["run"]["state"], "succeeded");
    let ran = std::fs::read_to_string(env.dir.path().join("ran.log")).unwrap();
    assert_eq!(
        ran.lines().collect::<Vec<_>>(),
        vec!["first", "fix", "fix"],
        "the succeeded task did not run again"
    );
    let again = env.orbit().args(["retry", &id]).output().unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "a succeeded run cannot be retried"
    );
}

#[test]
fn cancel_stops_a_running_run_and_kills_its_processes() {
    let env = setup();
    let pid_file = env.dir.path().join("sleeper.pid");
    let file = env.file(
        "long.yaml",
        &format!(
            "name: long\ntasks:\n  - name: sleeper\n    type: shell\n    shell: true\n    command: 'echo $$ > {}; sleep 60'\n  - name: after\n    type: shell\n    command: [echo, never]\n    needs: sleeper\n",
            pid_file.display()
        ),
    );
    let child = {
        use assert_cmd::cargo::CommandCargoExt;
        let mut cmd = std::process::Command::cargo_bin("orbit").unwrap();
        cmd.current_dir(env.dir.path())
            .env_remove("DATABASE_URL")
            .env(
                "ORBIT_DATABASE_URL",
                format!("sqlite://{}", env.dir.path().join("orbit.db").display()),
            )
            .arg("run")
            .arg(&file)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let started = Instant::now();
    while !pid_file.exists()
        || std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .is_empty()
    {
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let id = env.last_run()["id"].as_str().unwrap().to_owned();
    let out = env.orbit().args(["cancel", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = child.wait_with_output().unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the run stopped well before its task would have"
    );
    let status = env.json(&["status", &id]);
    assert_eq!(status["run"]["state"], "cancelled");
    assert!(
        status["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] == "cancelled")
    );
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let stat = PathBuf::from(format!("/proc/{}/stat", pid.trim()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat.exists()
        && !std::fs::read_to_string(&stat)
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            Instant::now() < deadline,
            "the cancelled task's process survived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dead_tasks_land_in_the_dlq_and_a_dlq_retry_lets_the_run_go_on() {
    let env = setup();
    let file = env.file(
        "dlq.yaml",
        "name: dlq\ntasks:\n  - name: charge\n    type: shell\n    shell: true\n    retry: {max_attempts: 2, initial: 10ms}\n    command: 'test -f fixed || { echo \"card declined for {{ input.order }}\" >&2; exit 1; }'\n  - name: ship\n    type: shell\n    command: [echo, shipped]\n    needs: charge\n",
    );
    let out = env
        .orbit()
        .arg("run")
        .arg(&file)
        .args(["-i", r#"{"order": 42}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let entries = env.json(&["dlq", "list"]);
    assert_eq!(entries.as_array().unwrap().len(), 1);
    assert_eq!(entries[0]["taskName"], "charge");
    assert_eq!(entries[0]["attempts"], 2);
    let id = entries[0]["id"].as_str().unwrap().to_owned();
    let shown = env.json(&["dlq", "show", &id[..20]]);
    assert_eq!(shown["input"]["input"]["order"], 42);
    assert_eq!(shown["codeVersion"]["pipelineVersion"], 1);
    let errors: Vec<&str> = shown["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["error"].as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), 2);
    assert!(
        errors.iter().all(|e| e.contains("card declined for 42")),
        "{errors:?}"
    );

    std::fs::write(env.dir.path().join("fixed"), "").unwrap();
    let retried = env.orbit().args(["dlq", "retry", &id]).output().unwrap();
    assert_eq!(
        retried.status.code(),
        Some(0),
        "{}{}",
        stdout(&retried),
        stderr(&retried)
    );
    let status = env.json(&["status", shown["entry"]["runId"].as_str().unwrap()]);
    assert_eq!(status["run"]["state"], "succeeded");
    assert_eq!(
        status["tasks"][1]["output"], "shipped",
        "the run went on past the retried task"
    );
    assert_eq!(env.json(&["dlq", "list"]).as_array().unwrap().len(), 0);

    std::fs::remove_file(env.dir.path().join("fixed")).unwrap();
    assert_eq!(
        env.orbit()
            .arg("run")
            .arg(&file)
            .output()
            .unwrap()
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        env.json(&["dlq", "purge", "--older-than", "1h"])["purged"],
        0
    );
    assert_eq!(
        env.json(&["dlq", "purge", "--older-than", "0s"])["purged"],
        1
    );
    assert_eq!(env.json(&["dlq", "list"]).as_array().unwrap().len(), 0);
}

#[test]
fn idempotency_keys_reuse_runs_and_task_outputs() {
    let env = setup();
    let file = env.file(
        "pay.yaml",
        "name: pay\ntasks:\n  - name: charge\n    type: shell\n    shell: true\n    idempotency_key: 'v{{ code_version }}-{{ input.orderId }}'\n    command: 'echo \"charged {{ input.orderId }}\" >> charges.log; echo \"{\\\"charge\\\": \\\"ch-{{ input.orderId }}\\\"}\" > $ORBIT_OUTPUT'\n  - name: receipt\n    type: shell\n    needs: charge\n    command: [echo, \"receipt for {{ tasks.charge.output.charge }}\"]\n",
    );
    for _ in 0..2 {
        let out = env
            .orbit()
            .arg("run")
            .arg(&file)
            .args(["-i", r#"{"orderId": 7}"#])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let charges = std::fs::read_to_string(env.dir.path().join("charges.log")).unwrap();
    assert_eq!(
        charges.lines().count(),
        1,
        "the second run reused the charge: {charges}"
    );
    let second = env.last_run()["id"].as_str().unwrap().to_owned();
    let attempts = env.json(&["logs", &second, "charge"]);
    assert_eq!(attempts[0]["outcome"], "reused");
    assert!(
        attempts[0]["log"]
            .as_str()
            .unwrap()
            .contains("idempotency key `v1-7`")
    );
    assert_eq!(
        env.json(&["status", &second])["tasks"][1]["output"],
        "receipt for ch-7"
    );
    let other = env
        .orbit()
        .arg("run")
        .arg(&file)
        .args(["-i", r#"{"orderId": 8}"#])
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(env.dir.path().join("charges.log"))
            .unwrap()
            .lines()
            .count(),
        2
    );

    // a trigger's idempotency key returns the existing run instead of making a second one
    let runs_before = env.json(&["runs"]).as_array().unwrap().len();
    let first = env
        .orbit()
        .arg("run")
        .arg(&file)
        .args(["-i", r#"{"orderId": 9}"#, "--idempotency-key", "order-9"])
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(0));
    let again = env
        .orbit()
        .arg("run")
        .arg(&file)
        .args(["-i", r#"{"orderId": 9}"#, "--idempotency-key", "order-9"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("idempotency key `order-9` already names run"),
        "{}",
        stdout(&again)
    );
    assert_eq!(
        env.json(&["runs"]).as_array().unwrap().len(),
        runs_before + 1
    );
    let expired = env
        .orbit()
        .env("IDEMPOTENCY_TTL_SECONDS", "0")
        .arg("run")
        .arg(&file)
        .args(["-i", r#"{"orderId": 9}"#, "--idempotency-key", "order-9"])
        .output()
        .unwrap();
    assert_eq!(expired.status.code(), Some(0));
    assert_eq!(
        env.json(&["runs"]).as_array().unwrap().len(),
        runs_before + 2,
        "past the TTL the key makes a new run"
    );
}

#[test]
fn a_reconstructed_context_is_the_one_the_engine_gave_the_task() {
    let env = setup();
    let file = env.file(
        "ctx.yaml",
        "name: ctx\ntasks:\n  - name: up\n    type: shell\n    shell: true\n    command: 'echo \"{\\\"rows\\\": 3}\" > $ORBIT_OUTPUT'\n  - name: down\n    type: shell\n    shell: true\n    needs: up\n    retry: {max_attempts: 1}\n    command: 'cp \"$ORBIT_CONTEXT\" seen.json; exit 1'\n",
    );
    assert_eq!(
        env.orbit()
            .arg("run")
            .arg(&file)
            .args(["-i", r#"{"day": "mon"}"#])
            .output()
            .unwrap()
            .status
            .code(),
        Some(1)
    );
    let seen: Value =
        serde_json::from_str(&std::fs::read_to_string(env.dir.path().join("seen.json")).unwrap())
            .unwrap();
    let id = env.json(&["dlq", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rebuilt = env.json(&["dlq", "show", &id])["input"].clone();
    assert_eq!(
        rebuilt["task"]["attempt"], 1,
        "the context of the attempt that went dead"
    );
    assert_eq!(rebuilt, seen);
    assert_eq!(seen["tasks"]["up"]["output"]["rows"], 3);
    assert_eq!(seen["code_version"], 1);
}

#[test]
fn a_script_routes_with_run_next_and_a_stray_choice_fails_clearly() {
    let env = setup();
    let pipeline = |choice: &str| {
        format!(
            "name: routed\ntasks:\n  - name: pick\n    type: script\n    source: |\n      import json\n      print(json.dumps({{\"run_next\": {choice}}}))\n    allowed_next: [left, right]\n  - {{name: left, type: shell, command: [echo, left], needs: pick}}\n  - {{name: right, type: shell, command: [echo, right], needs: pick}}\n  - {{name: after_left, type: shell, command: [echo, after], needs: left}}\n  - {{name: join, type: shell, command: [echo, join], needs: [after_left, right]}}\n"
        )
    };
    let file = env.file("routed.yaml", &pipeline("[\"right\"]"));
    let out = env.orbit().arg("run").arg(&file).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let id = env.last_run()["id"].as_str().unwrap().to_owned();
    let status = env.json(&["status", &id]);
    let states: Vec<(&str, &str)> = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["taskName"].as_str().unwrap(),
                t["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("pick", "succeeded"),
            ("left", "skipped"),
            ("right", "succeeded"),
            ("after_left", "skipped"),
            ("join", "succeeded"),
        ]
    );

    let file = env.file("routed.yaml", &pipeline("[\"middle\"]"));
    let out = env.orbit().arg("run").arg(&file).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let id = env.last_run()["id"].as_str().unwrap().to_owned();
    let attempts = env.json(&["logs", &id, "pick"]);
    let error = attempts[0]["error"].as_str().unwrap();
    assert!(
        error.contains("run_next names `middle`, not in allowed_next [left, right]"),
        "{error}"
    );
    assert_eq!(
        attempts.as_array().unwrap().len(),
        1,
        "a stray choice is not retried"
    );
}

#[test]
fn an_idempotency_key_reused_for_another_request_is_refused() {
    let env = setup();
    env.file(
        "k.yaml",
        "name: k\ntasks:\n  - {name: a, type: sleep, duration: 0s}\n",
    );
    env.orbit()
        .args([
            "run",
            "k.yaml",
            "--idempotency-key",
            "order-9",
            "-i",
            r#"{"amount": 1}"#,
        ])
        .assert()
        .success();
    // The same request: the existing run, nothing new.
    let same = env
        .orbit()
        .args([
            "run",
            "k.yaml",
            "--idempotency-key",
            "order-9",
            "-i",
            r#"{"amount": 1}"#,
        ])
        .output()
        .expect("orbit");
    assert!(same.status.success());
    assert!(String::from_utf8_lossy(&same.stdout).contains("already names run"));
    // Another input under the same key: refused, naming the run.
    let first = env.last_run()["id"].as_str().expect("run").to_owned();
    let other = env
        .orbit()
        .args([
            "run",
            "k.yaml",
            "--idempotency-key",
            "order-9",
            "-i",
            r#"{"amount": 2}"#,
        ])
        .output()
        .expect("orbit");
    assert_eq!(other.status.code(), Some(2));
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        err.contains(&format!(
            "idempotency key `order-9` already names run {first}"
        )),
        "{err}"
    );
    assert_eq!(env.json(&["runs"]).as_array().map(Vec::len), Some(1));
}

#[test]
fn database_urls_of_unknown_schemes_are_refused_with_the_password_masked() {
    let env = setup();
    for url in ["mysql://u:s3cret@db/orbit", "postgre://u:s3cret@db/orbit"] {
        let out = env
            .orbit()
            .env("ORBIT_DATABASE_URL", url)
            .arg("list")
            .output()
            .expect("orbit");
        assert_eq!(out.status.code(), Some(2), "{url}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unknown scheme"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
    let made: Vec<_> = std::fs::read_dir(env.dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "examples")
        .collect();
    assert!(made.is_empty(), "nothing was created: {made:?}");
    // A plain path is a SQLite file.
    env.orbit()
        .env("ORBIT_DATABASE_URL", "data/plain.db")
        .arg("list")
        .assert()
        .success();
    assert!(env.dir.path().join("data/plain.db").exists());
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let env = setup();
    env.file(
        "loud.yaml",
        "name: loud\ntasks:\n  - {name: a, type: shell, command: [seq, '1', '200000']}\n",
    );
    env.orbit().args(["run", "loud.yaml"]).assert().success();
    let run = env.last_run()["id"].as_str().expect("run").to_owned();
    // `orbit logs RUN | head -1`: the reader goes away after one line.
    let mut child = env.spawn(&["logs", &run], true);
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("a first line");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    assert_eq!(
        out.status.code(),
        Some(141),
        "the status of a closed pipe: {err}"
    );
}

#[test]
fn an_interrupted_run_with_a_dead_step_is_taken_by_retry() {
    let env = setup();
    env.file(
        "half.yaml",
        "name: half\ntasks:\n  - name: flaky\n    type: shell\n    shell: true\n    retry: {max_attempts: 1}\n    command: 'test -f marker || { touch marker; exit 1; }'\n  - {name: slow, type: shell, command: [sleep, '30']}\n",
    );
    let mut child = env.spawn(&["run", "half.yaml"], false);
    // Wait until `flaky` is dead while `slow` still runs, then kill the engine.
    let end = Instant::now() + Duration::from_secs(20);
    let run = loop {
        let out = env.orbit().args(["runs", "--json"]).output().expect("runs");
        let runs: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(id) = runs[0]["id"].as_str() {
            let s = env.json(&["status", id]);
            let state = |n: &str| {
                s["tasks"]
                    .as_array()
                    .and_then(|t| t.iter().find(|t| t["taskName"] == n))
                    .map(|t| t["state"].clone())
            };
            if state("flaky") == Some("dead".into()) && state("slow") == Some("running".into()) {
                break id.to_owned();
            }
        }
        assert!(
            Instant::now() < end,
            "never reached a dead step beside a running one: {runs}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().expect("kill");
    child.wait().expect("wait");
    // The seed's rule: resume refuses a run with a failed step...
    let resumed = env.orbit().args(["resume", &run]).output().expect("resume");
    assert!(!resumed.status.success());
    assert!(
        String::from_utf8_lossy(&resumed.stdout).contains("orbit retry")
            || String::from_utf8_lossy(&resumed.stderr).contains("orbit retry")
    );
    // ...so retry takes it: the dead step goes back in the queue.
    let retried = env
        .orbit()
        .args(["retry", &run, "--no-wait"])
        .output()
        .expect("retry");
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    let s = env.json(&["status", &run]);
    let flaky = s["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["taskName"] == "flaky"))
        .expect("flaky")
        .clone();
    assert_eq!(flaky["state"], "ready", "{s}");
}

#[test]
fn every_example_runs_from_the_repository_root_and_from_its_own_folder() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let inputs = [
        ("etl.yaml", r#"{"users": 12}"#),
        ("retry.yaml", "{}"),
        ("http.yaml", r#"{"name": "Ada & Bob"}"#),
    ];
    for (file, input) in inputs {
        // A fresh copy, as a clone would have it: the examples may write beside themselves.
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("examples")).expect("dir");
        std::fs::copy(source.join(file), root.path().join("examples").join(file)).expect("copy");
        for (cwd, arg) in [
            (root.path().to_path_buf(), format!("examples/{file}")),
            (root.path().join("examples"), file.to_owned()),
        ] {
            let out = Command::cargo_bin("orbit")
                .expect("orbit")
                .current_dir(&cwd)
                .env_remove("DATABASE_URL")
                .env_remove("ORBIT_DATABASE_URL")
                .args(["run", &arg, "-i", input])
                .output()
                .expect("orbit run");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{arg} from {}: {text}{}",
                cwd.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.contains("result"),
                "the last lines say what it produced: {text}"
            );
        }
    }
}

#[test]
fn ctrl_c_says_what_happens_and_a_second_one_stops_at_once() {
    let env = setup();
    env.file(
        "nap.yaml",
        "name: nap\ntasks:\n  - {name: a, type: shell, command: [sleep, '30']}\n  - {name: b, type: sleep, duration: 0s, needs: a}\n",
    );
    let mut child = env.spawn(&["run", "nap.yaml"], true);
    let end = Instant::now() + Duration::from_secs(20);
    let run = loop {
        let runs = env.json(&["runs"]);
        if runs[0]["state"] == "running" {
            break runs[0]["id"].as_str().expect("id").to_owned();
        }
        assert!(Instant::now() < end, "the run never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id().to_string();
    let int = || {
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill -INT")
    };
    int();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the first Ctrl-C waits"
    );
    let second = Instant::now();
    int();
    let out = child.wait_with_output().expect("wait");
    assert!(
        second.elapsed() < Duration::from_secs(3),
        "the second Ctrl-C stops at once"
    );
    assert_eq!(out.status.code(), Some(130));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stopping: no new task starts; waiting up to 10s for 1 running task; Ctrl-C again to stop now"),
        "{err}"
    );
    let short = &run[run.len() - 12..];
    assert!(err.contains(&format!("orbit resume {short}")), "{err}");
    // Its process is gone: interrupted at once, not after the idle time.
    let found = env.json(&["check-interrupted"]);
    assert_eq!(found[0]["run"]["id"], run.as_str(), "{found}");
}

#[test]
fn a_pipeline_with_worker_tasks_is_refused_by_orbit_run_at_once() {
    let env = setup();
    env.file(
        "w.yaml",
        "name: w\ntasks:\n  - {name: payment, type: worker}\n",
    );
    let out = env
        .orbit()
        .args(["run", "w.yaml"])
        .timeout(Duration::from_secs(10))
        .output()
        .expect("orbit run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("worker tasks (payment)") && err.contains("orbit server"),
        "{err}"
    );
}

#[test]
fn status_says_when_nobody_claims_a_queue() {
    let env = setup();
    env.file(
        "q.yaml",
        "name: q\ntasks:\n  - {name: a, type: sleep, duration: 0s, queue: gpu}\n",
    );
    env.orbit().args(["trigger", "q.yaml"]).assert().success();
    let run = env.last_run()["id"].as_str().expect("run").to_owned();
    let s = env.json(&["status", &run]);
    assert_eq!(s["waiting"][0], "no worker is claiming queue `gpu`", "{s}");
    let text = env.orbit().args(["status", &run]).output().expect("status");
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .contains("waiting: no worker is claiming queue `gpu`")
    );
}

#[test]
fn a_concurrency_key_runs_its_tasks_one_at_a_time() {
    let env = setup();
    env.file(
        "k.yaml",
        "name: k\ntasks:\n\
         \x20 - {name: a, type: sleep, duration: 300ms, concurrency: {key: \"acct-{{ input.acct }}\", limit: 1}}\n\
         \x20 - {name: b, type: sleep, duration: 300ms, concurrency: {key: \"acct-{{ input.acct }}\", limit: 1}}\n\
         \x20 - {name: c, type: sleep, duration: 300ms, concurrency: {key: \"acct-{{ input.acct }}\", limit: 1}}\n\
         \x20 - {name: free, type: sleep, duration: 300ms}\n",
    );
    env.orbit()
        .args([
            "run",
            "k.yaml",
            "--concurrency",
            "4",
            "-i",
            r#"{"acct": 9}"#,
        ])
        .timeout(Duration::from_secs(30))
        .assert()
        .success();
    let run = env.last_run()["id"].as_str().expect("run").to_owned();
    let s = env.json(&["status", &run]);
    let span = |name: &str| {
        let t = s["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .find(|t| t["taskName"] == name)
            .expect("task")
            .clone();
        assert_eq!(t["state"], "succeeded", "{t}");
        let at = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(t[k].as_str().expect("time")).expect("rfc3339")
        };
        (
            at("startedAt"),
            at("finishedAt"),
            t["concurrencyKey"].clone(),
        )
    };
    let mut keyed: Vec<_> = ["a", "b", "c"].iter().map(|n| span(n)).collect();
    assert!(keyed.iter().all(|k| k.2 == "acct-9"), "{s}");
    keyed.sort_by_key(|k| k.0);
    for pair in keyed.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "two attempts of key acct-9 overlapped: {s}"
        );
    }
    // The task without a key did not wait for them.
    assert!(span("free").0 < keyed[1].0, "{s}");
    // A run whose input cannot render the key is refused, naming the task.
    let out = env
        .orbit()
        .args(["trigger", "k.yaml", "-i", "{}"])
        .output()
        .expect("trigger");
    assert_eq!(out.status.code(), Some(2), "bad input");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("task `a`") && err.contains("acct"), "{err}");
}

#[test]
fn named_limits_are_set_listed_and_deleted() {
    let env = setup();
    assert_eq!(
        env.json(&["limits", "set", "openai", "10"]),
        json!([{"key": "openai", "running": 0, "runsRunning": 0, "limit": 10}])
    );
    env.orbit()
        .args(["limits", "set", "acct-9", "1"])
        .assert()
        .success();
    let listed = env.json(&["limits"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert_eq!(listed[0]["key"], "acct-9");
    let text = env.orbit().args(["limits", "list"]).output().expect("list");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("KEY") && text.contains("openai"), "{text}");
    env.orbit()
        .args(["limits", "delete", "openai"])
        .assert()
        .success();
    for args in [
        &["limits", "delete", "openai"][..],
        &["limits", "set", "x", "0"][..],
    ] {
        let out = env.orbit().args(args).output().expect("orbit limits");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

/// A server that answers `429` with `Retry-After: 1` to its first `busy` requests, then `200`.
fn busy_server(busy: usize) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let reply = if n < busy {
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy"
            } else {
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}"
            };
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    port
}

#[test]
fn a_429_with_retry_after_waits_without_spending_retries() {
    let env = setup();
    let port = busy_server(2);
    let file = env.file(
        "busy.yaml",
        &format!(
            "name: busy\ntasks:\n  - name: call\n    type: http\n    url: http://127.0.0.1:{port}/\n    retry: {{max_attempts: 1}}\n"
        ),
    );
    let started = std::time::Instant::now();
    let out = env.orbit().arg("run").arg(&file).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "waited as told: {:?}",
        started.elapsed()
    );
    let id = env.last_run()["id"].as_str().unwrap().to_owned();
    let attempts = env.json(&["logs", &id, "call"]);
    let outcomes: Vec<&str> = attempts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["throttled", "throttled", "succeeded"]);
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .contains("returned 429"),
        "{attempts}"
    );
}

#[test]
fn a_rate_limit_spaces_the_starts_and_wakes_on_time() {
    let env = setup();
    // Five tasks at one per 300 ms: the first at once, the last about 1.2 s later. A claimer
    // that polled for tokens instead of waking at the next one would take seconds.
    let tasks: String = (0..5)
        .map(|i| format!("  - name: t{i}\n    type: sleep\n    duration: 0s\n    rate_limit: {{ key: \"api-{{{{ input.org }}}}\", per: 300ms, limit: 1 }}\n"))
        .collect();
    let file = env.file("rated.yaml", &format!("name: rated\ntasks:\n{tasks}"));
    let out = env
        .orbit()
        .arg("run")
        .arg(&file)
        .args(["-i", r#"{"org": "acme"}"#])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let id = env.last_run()["id"].as_str().unwrap().to_owned();
    let status = env.json(&["status", &id]);
    let mut starts: Vec<chrono::DateTime<chrono::Utc>> = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["rateKey"], "api-acme", "{t}");
            t["startedAt"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    starts.sort();
    for pair in starts.windows(2) {
        let gap = (pair[1] - pair[0]).num_milliseconds();
        assert!(gap >= 299, "starts {gap} ms apart: {starts:?}");
    }
    let span = (starts[4] - starts[0]).num_milliseconds();
    assert!(
        span < 2_000,
        "woken at each token, not by a poll: {span} ms"
    );
}

const RESIZE: &str = "name: resize\noutput: { width: \"{{ tasks.measure.output.w }}\", name: \"{{ input.file }}\" }\ntasks:\n  - name: measure\n    type: shell\n    retry: {max_attempts: 1}\n    command: [sh, -c, 'test ! -e broken && echo \"{\\\"w\\\": 640}\" > \"$ORBIT_OUTPUT\"']\n  - name: wait\n    needs: [measure]\n    type: sleep\n    duration: \"{{ input.nap | default('0s') }}\"\n";

const GALLERY: &str = "name: gallery\ntasks:\n  - name: thumb\n    type: pipeline\n    pipeline: resize\n    retry: {max_attempts: 1}\n    input: { file: \"{{ input.file }}\", nap: \"{{ input.nap | default('0s') }}\" }\n  - name: report\n    needs: [thumb]\n    type: shell\n    command: [echo, \"width {{ tasks.thumb.output.width }} for {{ tasks.thumb.output.name }}\"]\n";

fn runs_of(env: &TestEnv, pipeline: &str) -> Vec<Value> {
    env.json(&["runs", "--pipeline", pipeline])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_sub_pipeline_runs_as_a_child_run_and_gives_its_output() {
    let env = setup();
    let child = env.file("resize.yaml", RESIZE);
    assert!(
        env.orbit()
            .arg("run")
            .arg(&child)
            .output()
            .unwrap()
            .status
            .success()
    );
    let parent = env.file("gallery.yaml", GALLERY);
    let out = env
        .orbit()
        .arg("run")
        .arg(&parent)
        .args(["-i", r#"{"file": "cat.png"}"#])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains(r#"result: "width 640 for cat.png""#),
        "{}",
        stdout(&out)
    );
    let gallery = &runs_of(&env, "gallery")[0];
    let sub = &runs_of(&env, "resize")[0];
    assert_eq!(sub["parentRunId"], gallery["id"], "{sub}");
    assert_eq!(sub["parentTask"], "thumb");
    assert_eq!(sub["triggeredBy"], "pipeline");
    let status = env.json(&["status", gallery["id"].as_str().unwrap()]);
    assert_eq!(status["subRuns"][0]["id"], sub["id"], "{status}");
}

/// A parent task waits for its sub-run parked, holding no worker slot: one slot runs three
/// sub-pipelines side by side (a parent holding its slot would leave none for its child).
#[test]
fn sub_pipelines_wait_without_holding_a_slot() {
    let env = setup();
    let child = env.file("resize.yaml", RESIZE);
    assert!(
        env.orbit()
            .arg("apply")
            .arg(&child)
            .output()
            .unwrap()
            .status
            .success()
    );
    let parent = env.file(
        "album.yaml",
        "name: album\ntasks:\n  - name: thumbs\n    type: pipeline\n    pipeline: resize\n    for_each: \"{{ input.files }}\"\n    input: { file: \"{{ item }}\", nap: 2s }\n",
    );
    let mut running = env.spawn(
        &[
            "run",
            parent.to_str().unwrap(),
            "--concurrency",
            "1",
            "-i",
            r#"{"files": ["a.png", "b.png", "c.png"]}"#,
        ],
        false,
    );
    // While the children sleep, each parent task is parked on its child.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let album = loop {
        if let Some(id) = runs_of(&env, "album")
            .first()
            .and_then(|r| r["id"].as_str().map(str::to_owned))
        {
            let out = env.orbit().args(["status", &id]).output().unwrap();
            if stdout(&out).contains("3 parked") {
                break id;
            }
        }
        assert!(
            std::time::Instant::now() < end,
            "the parent tasks never all parked"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = running.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > end {
            let _ = running.kill();
            panic!("the run never finished: its parents held the only slot");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0), "one slot ran them all");
    let out = env.json(&["status", &album]);
    assert_eq!(out["run"]["state"], "succeeded");
    assert_eq!(out["subRuns"].as_array().map(Vec::len), Some(3));
    // Side by side: every child started before any finished its 2 s nap.
    let subs = runs_of(&env, "resize");
    let last_start = subs.iter().filter_map(|r| r["createdAt"].as_str()).max();
    let first_end = subs.iter().filter_map(|r| r["finishedAt"].as_str()).min();
    assert!(last_start < first_end, "{subs:?}");
}

#[test]
fn pipelines_that_run_each_other_are_refused_when_saved() {
    let env = setup();
    let me = env.file(
        "me.yaml",
        "name: me\ntasks:\n  - { name: again, type: pipeline, pipeline: me }\n",
    );
    let out = env.orbit().arg("validate").arg(&me).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("me.yaml:3:5: task `again`: pipeline `me` cannot run itself"),
        "{}",
        stderr(&out)
    );
    let a = env.file(
        "a.yaml",
        "name: a\ntasks:\n  - { name: call-b, type: pipeline, pipeline: b }\n",
    );
    let b = env.file(
        "b.yaml",
        "name: b\ntasks:\n  - { name: call-a, type: pipeline, pipeline: a }\n",
    );
    let _ = env.orbit().arg("run").arg(&a).output().unwrap();
    let out = env.orbit().arg("run").arg(&b).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pipelines would run each other in a cycle: b → a → b"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn cancelling_a_parent_cancels_its_sub_runs() {
    let env = setup();
    let child = env.file("resize.yaml", RESIZE);
    assert!(
        env.orbit()
            .arg("run")
            .arg(&child)
            .output()
            .unwrap()
            .status
            .success()
    );
    env.file("gallery.yaml", GALLERY);
    let mut running = env.spawn(
        &[
            "run",
            "gallery.yaml",
            "-i",
            r#"{"file": "cat.png", "nap": "60s"}"#,
        ],
        false,
    );
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let sub = loop {
        let subs: Vec<Value> = runs_of(&env, "resize")
            .into_iter()
            .filter(|r| !r["parentRunId"].is_null())
            .collect();
        if let Some(s) = subs.first().filter(|s| s["state"] == "running") {
            break s.clone();
        }
        assert!(std::time::Instant::now() < end, "the sub-run never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let parent_id = sub["parentRunId"].as_str().unwrap().to_owned();
    let out = env.orbit().args(["cancel", &parent_id]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let state = |id: &str| env.json(&["status", id])["run"]["state"].clone();
    assert_eq!(state(&parent_id), "cancelled");
    assert_eq!(
        state(sub["id"].as_str().unwrap()),
        "cancelled",
        "the cancel cascaded"
    );
    let waited = std::time::Instant::now();
    running.wait().unwrap();
    assert!(waited.elapsed() < std::time::Duration::from_secs(15));
}

#[test]
fn retrying_a_parent_retries_its_failed_sub_run() {
    let env = setup();
    let child = env.file("resize.yaml", RESIZE);
    assert!(
        env.orbit()
            .arg("run")
            .arg(&child)
            .output()
            .unwrap()
            .status
            .success()
    );
    std::fs::write(env.dir.path().join("broken"), "").unwrap();
    let parent = env.file("gallery.yaml", GALLERY);
    let out = env
        .orbit()
        .arg("run")
        .arg(&parent)
        .args(["-i", r#"{"file": "cat.png"}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let gallery = runs_of(&env, "gallery")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::remove_file(env.dir.path().join("broken")).unwrap();
    let out = env.orbit().args(["retry", &gallery]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let subs: Vec<Value> = runs_of(&env, "resize")
        .into_iter()
        .filter(|r| r["parentRunId"] == gallery.as_str())
        .collect();
    assert_eq!(subs.len(), 1, "the same sub-run, retried: {subs:?}");
    assert_eq!(subs[0]["state"], "succeeded");
    assert_eq!(env.json(&["status", &gallery])["run"]["state"], "succeeded");
}

#[test]
fn why_says_what_each_waiting_task_waits_for() {
    let env = setup();
    env.file(
        "why.yaml",
        "name: why\ntasks:\n  - { name: slow, type: shell, command: [sleep, '30'] }\n  - { name: after, type: sleep, duration: 0s, needs: [slow] }\n  - name: flaky\n    type: shell\n    command: [sh, -c, 'exit 1']\n    retry: { max_attempts: 3, initial: 60s, jitter: false }\n",
    );
    let mut running = env.spawn(&["run", "why.yaml"], false);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let id = loop {
        let runs = env.json(&["runs"]);
        if let Some(id) = runs[0]["id"].as_str() {
            let why = env.json(&["why", id]);
            if why.as_array().is_some_and(|w| w.len() == 2) {
                break id.to_owned();
            }
        }
        assert!(std::time::Instant::now() < end, "the run never got going");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let out = env.orbit().args(["why", &id]).output().unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("after  waiting: waiting on `slow` (running on "),
        "{text}"
    );
    assert!(
        text.contains("flaky  ready: backing off until ")
            && text.contains("after attempt 1 failed: `sh` exited with status 1"),
        "{text}"
    );
    let one = env.orbit().args(["why", &id, "after"]).output().unwrap();
    let lines: Vec<String> = stdout(&one)
        .lines()
        .filter(|l| !l.starts_with("store: "))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let none = env.orbit().args(["why", &id, "nope"]).output().unwrap();
    assert_eq!(none.status.code(), Some(2));
    assert!(
        stderr(&none).contains("has no task `nope`"),
        "{}",
        stderr(&none)
    );
    env.orbit().args(["cancel", &id]).output().unwrap();
    running.wait().unwrap();
}

#[test]
fn context_and_replay_rebuild_an_attempt_and_diff_it() {
    let env = setup();
    std::fs::write(env.dir.path().join("marker"), "one").unwrap();
    let file = env.file(
        "replay.yaml",
        "name: replay\ntasks:\n  - { name: greet, type: shell, command: [echo, \"hello {{ input.name }}\"] }\n  - name: mark\n    needs: [greet]\n    type: shell\n    shell: true\n    command: 'echo \"{{ tasks.greet.output }} $(cat marker)\"'\n",
    );
    let out = env
        .orbit()
        .arg("run")
        .arg(&file)
        .args(["-i", r#"{"name": "ada"}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = env.last_run()["id"].as_str().unwrap().to_owned();
    let mark = env.json(&["status", &id])["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["taskName"] == "mark")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ctx = env.json(&["context", &mark]);
    assert_eq!(
        ctx["context"]["tasks"]["greet"]["output"], "hello ada",
        "{ctx}"
    );
    assert_eq!(ctx["context"]["input"]["name"], "ada");
    assert_eq!(ctx["attempt"], 1);
    assert_eq!(
        ctx["params"]["command"], "echo \"hello ada $(cat marker)\"",
        "{ctx}"
    );
    let same = env.orbit().args(["replay", &mark]).output().unwrap();
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}{}",
        stdout(&same),
        stderr(&same)
    );
    assert!(
        stdout(&same).contains("output: the same as recorded"),
        "{}",
        stdout(&same)
    );
    std::fs::write(env.dir.path().join("marker"), "two").unwrap();
    let changed = env.orbit().args(["replay", &mark]).output().unwrap();
    assert_eq!(changed.status.code(), Some(1), "{}", stdout(&changed));
    let text = stdout(&changed);
    assert!(
        text.contains("- \"hello ada one\"") && text.contains("+ \"hello ada two\""),
        "{text}"
    );
    assert_eq!(
        env.json(&["status", &id])["tasks"][1]["output"],
        "hello ada one",
        "the run is untouched"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_commands() {
    let env = setup();
    for (shell, marker) in [
        ("bash", "_orbit()"),
        ("zsh", "#compdef orbit"),
        ("fish", "complete -c orbit"),
    ] {
        let out = env.orbit().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains(marker), "{shell}: {text}");
        for command in ["rerun", "signal", "approve", "why"] {
            assert!(text.contains(command), "{shell} completes `{command}`");
        }
    }
    let man = env.orbit().arg("man").output().unwrap();
    assert!(man.status.success());
    let page = stdout(&man);
    assert!(
        page.starts_with(".ie") || page.contains(".TH orbit"),
        "{page}"
    );
    assert!(page.contains("rerun"), "{page}");
    let bad = env
        .orbit()
        .args(["completions", "cmd.exe"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// ORBIT_LOG_FORMAT=json: every line is a JSON object, and an attempt's lines carry its run,
/// task and attempt.
#[test]
fn json_logs_carry_the_attempts_ids() {
    let env = setup();
    env.file(
        "one.yaml",
        "name: one\ntasks:\n  - {name: hello, type: shell, command: 'echo hi'}\n",
    );
    let out = env
        .orbit()
        .args(["run", "one.yaml"])
        .env("ORBIT_LOG", "orbit_engine=debug")
        .env("ORBIT_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let run = env.last_run()["id"].as_str().unwrap().to_owned();
    let lines: Vec<Value> = stderr(&out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let finished = lines
        .iter()
        .find(|l| l["fields"]["message"] == "attempt finished")
        .unwrap_or_else(|| panic!("no attempt line in {lines:?}"));
    assert_eq!(finished["fields"]["outcome"], "succeeded");
    assert_eq!(finished["span"]["name"], "attempt");
    assert_eq!(finished["span"]["run"], run.as_str());
    assert_eq!(finished["span"]["task"], "hello");
    assert_eq!(finished["span"]["attempt"], 1);
}

/// Each layer over the one before: defaults < orbit.toml < .env < the environment; `orbit
/// config` names where each value came from; a bad value or file is exit 2 naming the setting
/// (or the line) and where it came from.
#[test]
fn configuration_comes_in_layers_and_says_where_from() {
    let env = setup();
    env.file(
        "orbit.toml",
        "# settings\nsqlite_synchronous = \"normal\"\nMAX_RETRY_DELAY_MS = 5000\nDLQ_RETENTION_DAYS = 7\n",
    );
    env.file(".env", "MAX_RETRY_DELAY_MS=6000\n");
    let config = |extra: &[(&str, &str)]| -> Vec<Value> {
        let mut cmd = env.orbit();
        cmd.args(["config", "--json"]);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let of = |rows: &[Value], name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .map(|r| (r["value"].clone(), r["source"].clone()))
            .unwrap()
    };
    let rows = config(&[]);
    assert_eq!(
        of(&rows, "ORBIT_SQLITE_SYNCHRONOUS"),
        (json!("normal"), json!("orbit.toml"))
    );
    assert_eq!(
        of(&rows, "DLQ_RETENTION_DAYS"),
        (json!("7"), json!("orbit.toml"))
    );
    assert_eq!(
        of(&rows, "MAX_RETRY_DELAY_MS"),
        (json!("6000"), json!(".env"))
    );
    assert_eq!(
        of(&rows, "POLL_INTERVAL_MS"),
        (json!("1000"), json!("default"))
    );
    let rows = config(&[("MAX_RETRY_DELAY_MS", "7000")]);
    assert_eq!(
        of(&rows, "MAX_RETRY_DELAY_MS"),
        (json!("7000"), json!("environment"))
    );
    // A bad value names the setting and its source.
    env.file("orbit.toml", "sqlite_synchronous = \"sometimes\"\n");
    let out = env.orbit().args(["runs"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("ORBIT_SQLITE_SYNCHRONOUS `sometimes` (from orbit.toml)"),
        "{}",
        stderr(&out)
    );
    // A malformed file, and an unknown key, name the file and the line.
    env.file("orbit.toml", "# ok\nbind = [\n");
    let out = env.orbit().args(["config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("orbit.toml"), "{}", stderr(&out));
    env.file("orbit.toml", "# ok\n\nno_such_setting = 1\n");
    let out = env.orbit().args(["config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("orbit.toml:3: `no_such_setting` is not a setting"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_lists_every_setting_and_modes_are_checked() {
    let env = setup();
    let out = env.orbit().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = stdout(&out);
    for name in [
        "ORBIT_DATABASE_URL",
        "ORBIT_SQLITE_SYNCHRONOUS",
        "ORBIT_LOG_FORMAT",
        "MAX_RETRY_DELAY_MS",
    ] {
        assert!(text.contains(name), "--help names {name}: {text}");
    }
    let bad = env
        .orbit()
        .args(["server", "--bind", "127.0.0.1:0"])
        .env("MODE", "sometimes")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("standalone"), "{}", stderr(&bad));
}

/// A program task gets the run's trace context: one trace per run, a span per attempt.
#[test]
fn a_program_gets_the_runs_traceparent() {
    let env = setup();
    env.file(
        "tp.yaml",
        "name: tp\ntasks:\n  - {name: show, type: shell, command: [sh, -c, 'echo $TRACEPARENT']}\n",
    );
    let out = env.orbit().args(["run", "tp.yaml"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = env.last_run()["id"].as_str().unwrap().to_owned();
    let run = id.replace('-', "");
    let status = env.json(&["status", &id]);
    let tp = status["tasks"][0]["output"].as_str().unwrap().to_owned();
    assert!(tp.starts_with(&format!("00-{run}-")), "{tp}");
    assert!(tp.ends_with("-01") && tp.len() == 55, "{tp}");
}
