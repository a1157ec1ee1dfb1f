//! Every example in README.md and docs/migrating.md, executed as a user would: each command line of its `bash` blocks
//! runs through `sh` against a real `orbit server` and the same embedded store, with the README's
//! placeholders (`localhost:3000`, a run's short id `3efacf2b72df`, a dead letter's
//! `5d0e61b90a2c`) replaced by real ones, each made to be in the state the example expects.
//! Its YAML and JSON blocks are checked too. A line that cannot run here (a cloud bucket, a
//! long-running service) is listed below with the reason.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{Server, orbit_bin, server};

/// Lines that are not run, by a fragment of the line, with why.
const NOT_RUN: &[(&str, &str)] = &[
    ("scripts/test", "the test command itself"),
    (
        "STORAGE_BACKENDS=",
        "needs S3 and GCS accounts; tests/storage.rs runs each backend kind",
    ),
    (
        "orbit server --database-url postgres",
        "a long-running server on PostgreSQL; tests/api.rs runs one",
    ),
    (
        "orbit worker --database-url",
        "a long-running worker; tests/workers.rs runs them",
    ),
    (
        "orbit server &",
        "starts the services of the worker example; tests/sdk.rs runs them",
    ),
    (
        "orbit server",
        "a long-running server: these commands run against one started the same way",
    ),
    (
        "orbit-example-worker",
        "the example worker service; tests/sdk.rs runs it in pull and push mode",
    ),
    (
        "export ORBIT_SECRET_KEY",
        "part of the worker example (tests/sdk.rs)",
    ),
    (
        "orbit trigger checkout",
        "needs the example worker service (tests/sdk.rs)",
    ),
    (
        "orbit services --url",
        "part of the worker example (tests/sdk.rs)",
    ),
    (
        "orbit tasks history payment",
        "needs the example worker service (tests/sdk.rs)",
    ),
    (
        "orbit bench",
        "benchmarks run in release builds; `orbit bench --help` is checked instead",
    ),
];

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
        .expect("README.md")
}

/// `(language, text)` of every fenced block.
fn blocks(markdown: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.starts_with("```"))
                .collect();
            out.push((lang.trim().to_owned(), body.join("\n")));
        }
    }
    out
}

/// The commands of a bash block: continuation lines and quoted line breaks joined, comments
/// and blanks dropped.
fn commands(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for line in block.lines() {
        if current.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
            continue;
        }
        let (code, still_quoted) = without_comment(line, quoted);
        quoted = still_quoted;
        let code = code.trim_end();
        match code.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None if quoted => {
                current.push_str(code);
                current.push('\n');
            }
            None => {
                current.push_str(code);
                out.push(std::mem::take(&mut current).trim().to_owned());
            }
        }
    }
    out
}

/// `line` without a trailing `# comment` (outside quotes), and whether a single quote is still
/// open at its end; `quoted` says whether one was open at its start.
fn without_comment(line: &str, quoted: bool) -> (String, bool) {
    let (mut single, mut double) = (quoted, false);
    let mut out = String::new();
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && (i == 0 || line[..i].ends_with(' ')) => break,
            _ => {}
        }
        out.push(c);
    }
    (out, single)
}

/// `[optional]` arguments are dropped and spaces squeezed.
fn runnable(command: &str) -> String {
    let out = command.to_owned();
    let mut kept = String::new();
    let mut depth = 0;
    for c in out.trim().chars() {
        match c {
            '[' if depth == 0 && !kept.ends_with('=') && kept.ends_with(' ') => depth = 1,
            '[' if depth > 0 => depth += 1,
            ']' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            _ => kept.push(c),
        }
    }
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

struct Env {
    dir: tempfile::TempDir,
    server: Server,
    addr: String,
    bin: PathBuf,
}

impl Env {
    fn start() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        copy_dir(&examples, &dir.path().join("examples"));
        std::fs::copy(
            examples.join("../.env.example"),
            dir.path().join(".env.example"),
        )
        .expect(".env.example");
        let url = format!("sqlite://{}", dir.path().join(".orbit/orbit.db").display());
        std::fs::create_dir_all(dir.path().join(".orbit")).expect(".orbit");
        let server = server(dir.path(), &url, &["--workers", "4"], &[]);
        let addr = server.base.trim_start_matches("http://").to_owned();
        let bin = orbit_bin().parent().expect("bin dir").to_path_buf();
        Env {
            dir,
            server,
            addr,
            bin,
        }
    }

    /// Runs `line` through `sh` in the working directory, with `orbit` on the PATH and no
    /// database configured (the README's commands use the default `.orbit`).
    fn sh(&self, line: &str) -> std::process::Output {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("sh")
            .args(["-c", line])
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env_remove("DATABASE_URL")
            .env_remove("ORBIT_DATABASE_URL")
            .env_remove("ORBIT_URL")
            .stdin(Stdio::null())
            .output()
            .expect("sh")
    }

    fn orbit_json(&self, args: &str) -> Value {
        let out = self.sh(&format!("orbit {args} --json"));
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn save(&self, name: &str, yaml: &str) {
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).expect("pipeline file");
        let out = self.sh(&format!(
            "orbit trigger {} --url http://{}",
            path.display(),
            self.addr
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The short id of the newest run of `pipeline` once it is in `state`.
    fn run_in(&self, pipeline: &str, state: &str) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let runs = self.orbit_json(&format!("runs --pipeline {pipeline}"));
            if let Some(id) = runs[0]["id"].as_str().filter(|_| runs[0]["state"] == state) {
                return id[id.len() - 12..].to_owned();
            }
            assert!(
                Instant::now() < end,
                "no {state} run of {pipeline}: {runs} {}",
                std::fs::read_to_string(self.dir.path().join("nap.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A run in the state the README's command about runs expects.
    fn run_for(&self, command: &str) -> String {
        let verb = command.split_whitespace().nth(1).unwrap_or_default();
        match verb {
            "cancel" => {
                self.save(
                    "slow",
                    "name: slow\ntasks:\n  - {name: s, type: sleep, duration: 30s}\n",
                );
                self.run_in("slow", "running")
            }
            "retry" => {
                self.save("flaky", FLAKY);
                self.run_in("flaky", "failed")
            }
            "resume" => {
                // An `orbit run` that was killed while its task ran: interrupted.
                std::fs::write(self.dir.path().join("nap.yaml"), NAP).expect("file");
                let mut child = Command::new(orbit_bin())
                    .current_dir(self.dir.path())
                    .env_remove("DATABASE_URL")
                    .env_remove("ORBIT_DATABASE_URL")
                    .args(["run", "nap.yaml"])
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(self.dir.path().join("nap.log")).expect("log"))
                    .spawn()
                    .expect("orbit run");
                let id = self.run_in("nap", "running");
                let _ = child.kill();
                let _ = child.wait();
                id
            }
            _ => self.run_in("etl", "succeeded"),
        }
    }

    /// A dead letter's short id.
    fn dead_letter(&self) -> String {
        self.save("flaky", FLAKY);
        self.run_in("flaky", "failed");
        let list = self.orbit_json("dlq list");
        let id = list[0]["id"].as_str().expect("a dead letter").to_owned();
        id[id.len() - 12..].to_owned()
    }
}

/// Each run's first attempt fails and goes dead; a retried one succeeds.
const FLAKY: &str = "name: flaky\ntasks:\n  - name: f\n    type: shell\n    shell: true\n    retry: {max_attempts: 1}\n    command: 'test \"$ORBIT_ATTEMPT\" -gt 1'\n";
const NAP: &str = "name: nap\ntasks:\n  - {name: n, type: sleep, duration: 2s}\n";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            if e.file_name() != "target" {
                copy_dir(&e.path(), &target);
            }
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

#[test]
fn every_command_in_the_readme_works_as_written() {
    let ran = run_every_command("README.md", &readme());
    assert!(ran >= 25, "only {ran} commands ran");
}

#[test]
fn every_command_in_the_migration_guide_works_as_written() {
    let guide = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/migrating.md"),
    )
    .expect("docs/migrating.md");
    let ran = run_every_command("docs/migrating.md", &guide);
    assert!(ran >= 12, "only {ran} commands ran");
}

/// Runs each command of `doc`'s bash blocks against a server of its own; returns how many ran.
fn run_every_command(doc: &str, text: &str) -> usize {
    let env = Env::start();
    let mut ran = 0;
    let mut not_run = Vec::new();
    for (lang, block) in blocks(text) {
        if lang != "bash" {
            continue;
        }
        for command in commands(&block) {
            if let Some((_, why)) = NOT_RUN.iter().find(|(frag, _)| command.contains(frag)) {
                not_run.push(format!("{command}  ({why})"));
                if command.starts_with("orbit bench") {
                    let out = env.sh("orbit bench --help");
                    assert!(out.status.success());
                }
                continue;
            }
            let mut line = runnable(&command)
                .replace("cargo run --release -p orbit-cli --", "orbit")
                .replace("localhost:3000", &env.addr)
                .replace("127.0.0.1:3000", &env.addr)
                .replace("postgres://user:pw@db/orbit", &pg_url());
            if line.contains("3efacf2b72df") {
                line = line.replace("3efacf2b72df", &env.run_for(&line));
            }
            if line.contains("5d0e61b90a2c") {
                line = line.replace("5d0e61b90a2c", &env.dead_letter());
            }
            if line.contains("@input.json") {
                std::fs::write(env.dir.path().join("input.json"), r#"{"users": 2}"#)
                    .expect("input");
            }
            // A stream never ends by itself: a second of it is the example.
            let streams = line.starts_with("curl -N");
            if streams {
                line = line.replacen("curl -N", "curl -N --max-time 1", 1);
            }
            println!("{doc} $ {line}");
            let out = env.sh(&line);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let ok = out.status.success() || (streams && out.status.code() == Some(28));
            assert!(
                ok,
                "{doc}: `{command}`\nran as `{line}`: {:?}\n{stdout}\n{stderr}",
                out.status
            );
            if line.starts_with("curl") && !streams {
                // Every API error is `{"error": {…}}`; `"error": null` is a field of a result.
                let answer: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
                assert!(
                    !answer["error"].is_object(),
                    "{doc}: `{command}` answered an error: {stdout}"
                );
            }
            // A stream that resumes after an event id the store has not reached yet is quiet,
            // and right to be.
            if streams && !line.contains("Last-Event-ID") {
                assert!(
                    stdout.contains("data:"),
                    "{doc}: `{command}` streamed nothing: {stdout}"
                );
            }
            ran += 1;
        }
    }
    println!("{doc}: {ran} commands ran; not run here:");
    for n in &not_run {
        println!("  {n}");
    }
    drop(env.server);
    ran
}

fn pg_url() -> String {
    // The README's `orbit db migrate` example, on a database of its own.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = rt.block_on(orbit_store_postgres::testing::TestDb::create());
    let url = db.url.clone();
    // Kept until the process ends: the command runs after this returns.
    std::mem::forget(db);
    url
}

#[test]
fn every_pipeline_and_json_example_in_the_readme_parses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut checked = 0;
    for (lang, block) in blocks(&readme()) {
        match lang.as_str() {
            "yaml" if block.contains("tasks:") => {
                let file = dir.path().join("example.yaml");
                std::fs::write(&file, &block).expect("write");
                let out = Command::new(orbit_bin())
                    .args(["validate"])
                    .arg(&file)
                    .output()
                    .expect("orbit validate");
                assert!(
                    out.status.success(),
                    "README pipeline does not validate:\n{block}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                checked += 1;
            }
            "yaml" => {
                // A task shown on its own: it must be a valid task of a pipeline.
                let wrapped = format!(
                    "name: fragment\ntasks:\n{}\n  - {{name: express, type: sleep, duration: 0s, needs: pick}}\n  - {{name: standard, type: sleep, duration: 0s, needs: pick}}\n",
                    block
                );
                let file = dir.path().join("fragment.yaml");
                std::fs::write(&file, &wrapped).expect("write");
                let out = Command::new(orbit_bin())
                    .arg("validate")
                    .arg(&file)
                    .output()
                    .expect("orbit validate");
                assert!(
                    out.status.success(),
                    "README task does not validate:\n{block}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                checked += 1;
            }
            "json" => {
                serde_json::from_str::<Value>(&block)
                    .unwrap_or_else(|e| panic!("README JSON does not parse: {e}\n{block}"));
                checked += 1;
            }
            _ => {}
        }
    }
    assert!(checked >= 3, "{checked} blocks checked");
}

#[test]
fn every_json_example_in_the_docs_parses() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&docs).expect("docs").flatten() {
        let text = std::fs::read_to_string(entry.path()).expect("doc");
        for (lang, block) in blocks(&text) {
            if lang == "json" {
                serde_json::from_str::<Value>(&block).unwrap_or_else(|e| {
                    panic!(
                        "{}: JSON does not parse: {e}\n{block}",
                        entry.path().display()
                    )
                });
                checked += 1;
            }
        }
    }
    assert!(checked >= 5, "{checked} blocks checked");
}
