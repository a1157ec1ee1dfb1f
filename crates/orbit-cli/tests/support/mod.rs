//! Starting real `orbit server` and `orbit worker` processes for tests.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn orbit_bin() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("orbit")
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// Waits for the process to exit; its status, or `None` on timeout.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

pub struct Server {
    pub proc: Proc,
    pub base: String,
    pub stderr: std::path::PathBuf,
}

/// Starts `orbit server --bind 127.0.0.1:0` with `database` and extra args/env, and waits for
/// the line that says where it listens.
pub fn server(
    dir: &std::path::Path,
    database: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Server {
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stderr = dir.join(format!("server-{n}.log"));
    let mut cmd = Command::new(orbit_bin());
    cmd.current_dir(dir)
        .arg("server")
        .args(if args.contains(&"--bind") {
            &[][..]
        } else {
            &["--bind", "127.0.0.1:0"][..]
        })
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("ORBIT_API_TOKEN")
        .env_remove("MODE")
        .env("ORBIT_DATABASE_URL", database)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).expect("log file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start orbit server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("server prints where it listens");
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| {
            panic!(
                "no address in {line:?}; stderr: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            )
        })
        .to_owned();
    Server {
        proc: Proc { child },
        base,
        stderr,
    }
}

pub fn worker(dir: &std::path::Path, database: &str, args: &[&str]) -> Proc {
    worker_with_env(dir, database, args, &[])
}

pub fn worker_with_env(
    dir: &std::path::Path,
    database: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let child = Command::new(orbit_bin())
        .current_dir(dir)
        .arg("worker")
        .args(args)
        .env_remove("DATABASE_URL")
        .env("ORBIT_DATABASE_URL", database)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start orbit worker");
    Proc { child }
}

/// Polls `f` until it returns `Some`, or panics after `within`.
pub fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An S3-compatible server (`s3s-fs`, which checks SigV4 signatures and pre-signed URL
/// expiry) on a free port of 127.0.0.1, storing under a temporary directory: a bucket is a
/// sub-directory, so a test can look at what was stored.
pub struct S3 {
    pub proc: Proc,
    pub endpoint: String,
    pub root: tempfile::TempDir,
}

pub const S3_ACCESS_KEY: &str = "orbit-test";
pub const S3_SECRET_KEY: &str = "orbit-test-secret-key";

impl S3 {
    /// Creates a bucket of its own for one test.
    pub fn bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.path().join(name)).expect("bucket");
    }

    /// Where the object `key` of `bucket` is kept on disk.
    pub fn file(&self, bucket: &str, key: &str) -> std::path::PathBuf {
        self.root.path().join(bucket).join(key)
    }
}

/// Starts the S3 server: `ORBIT_TEST_S3_SERVER` names its binary, else `s3s-fs` where
/// `scripts/test` installs it (`~/.cache/orbit-s3fs/bin`) or on the PATH. Without one the test
/// fails, saying so: a test that did not run is not a pass.
pub fn s3() -> S3 {
    let home = std::env::var("HOME").unwrap_or_default();
    let candidates = [
        std::env::var("ORBIT_TEST_S3_SERVER").ok(),
        Some(format!("{home}/.cache/orbit-s3fs/bin/s3s-fs")),
    ];
    let binary = candidates
        .into_iter()
        .flatten()
        .find(|p| std::path::Path::new(p).is_file())
        .or_else(|| {
            Command::new("s3s-fs")
                .arg("--version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| "s3s-fs".to_owned())
        });
    let binary = binary.unwrap_or_else(|| {
        panic!(
            "not run: no S3 server. `scripts/test` installs s3s-fs (`cargo install s3s-fs --version 0.14.1 --features binary --locked --root ~/.cache/orbit-s3fs`), or set ORBIT_TEST_S3_SERVER to its binary"
        )
    });
    let root = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(&binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {binary}: {e}"));
    let proc = Proc { child };
    eventually(Duration::from_secs(10), "the S3 server to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    S3 {
        proc,
        endpoint: format!("http://127.0.0.1:{port}"),
        root,
    }
}

/// Live (not zombie) processes whose environment holds `ORBIT_TEST_MARK=<mark>`: the tests set
/// it on the `orbit` processes they start, so every task process those start inherits it.
pub fn marked_processes(mark: &str) -> Vec<u32> {
    let needle = format!("ORBIT_TEST_MARK={mark}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
                })
                .unwrap_or(true);
            !zombie
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

/// Each process as `pid: stat line (command, state, ppid, pgrp…)`, for failure messages.
pub fn describe(pids: &[u32]) -> Vec<String> {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            format!(
                "{pid}: {cmd} [{}]",
                stat.split_whitespace()
                    .take(8)
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
        .collect()
}

/// Waits until no process of `mark` is alive; how long that took, or the pids still alive after
/// `within`.
pub fn gone_within(mark: &str, within: Duration) -> Result<Duration, Vec<u32>> {
    let start = Instant::now();
    loop {
        let alive = marked_processes(mark);
        if alive.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= within {
            return Err(alive);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A shell snippet that appends `start|end TASK ATTEMPT NANOS` to `marks.log` in the working
/// directory, for [`overlaps`].
pub fn mark(what: &str) -> String {
    format!("echo \"{what} $ORBIT_TASK $ORBIT_ATTEMPT $(date +%s%N)\" >> marks.log")
}

/// Pairs of attempts of one task that ran at the same time, from `marks.log`. An attempt with no
/// end mark was killed: it ends at the first of `gone` (nanoseconds since the epoch: instants
/// when no process of a killed engine was left) after its start.
pub fn overlaps(marks: &str, gone: &[u128]) -> Vec<String> {
    use std::collections::BTreeMap;
    let mut spans: BTreeMap<(String, u32), (u128, Option<u128>)> = BTreeMap::new();
    for line in marks.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [what, task, attempt, at] = f[..] else {
            continue;
        };
        let (Ok(attempt), Ok(at)) = (attempt.parse::<u32>(), at.parse::<u128>()) else {
            continue;
        };
        let span = spans
            .entry((task.to_owned(), attempt))
            .or_insert((at, None));
        match what {
            "start" => span.0 = at,
            _ => span.1 = Some(at),
        }
    }
    let mut by_task: BTreeMap<String, Vec<(u32, u128, u128)>> = BTreeMap::new();
    for ((task, attempt), (start, end)) in spans {
        let end = end.unwrap_or_else(|| {
            gone.iter()
                .copied()
                .filter(|k| *k >= start)
                .min()
                .unwrap_or(u128::MAX)
        });
        by_task.entry(task).or_default().push((attempt, start, end));
    }
    let mut found = Vec::new();
    for (task, mut spans) in by_task {
        spans.sort_by_key(|s| s.1);
        for pair in spans.windows(2) {
            let ((a, _, a_end), (b, b_start, _)) = (pair[0], pair[1]);
            if a_end > b_start {
                found.push(format!(
                    "{task}: attempt {a} ended {} µs after attempt {b} started",
                    (a_end - b_start) / 1000
                ));
            }
        }
    }
    found
}

/// Now, in nanoseconds since the Unix epoch (as `date +%s%N` prints).
pub fn epoch_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A working directory with its own SQLite database, and the `orbit` binary run in it.
pub struct CliEnv {
    pub dir: tempfile::TempDir,
}

impl CliEnv {
    pub fn new() -> CliEnv {
        CliEnv {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn db(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("orbit.db").display())
    }

    pub fn orbit(&self) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::cargo_bin("orbit").expect("orbit binary");
        cmd.current_dir(self.dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("ORBIT_URL")
            .env("ORBIT_DATABASE_URL", self.db());
        cmd
    }

    pub fn file(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).expect("write fixture");
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.orbit().args(args).output().expect("run orbit");
        assert!(
            out.status.success(),
            "orbit {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).expect("json output")
    }

    pub fn spawn(&self, args: &[&str]) -> Proc {
        let child = std::process::Command::new(orbit_bin())
            .current_dir(self.dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("ORBIT_URL")
            .env("ORBIT_DATABASE_URL", self.db())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("orbit");
        Proc { child }
    }

    pub fn state_of(&self, run: &str, task: &str) -> String {
        let s = self.json(&["status", run]);
        s["tasks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["taskName"] == task))
            .and_then(|t| t["state"].as_str())
            .unwrap_or_default()
            .to_owned()
    }
}
