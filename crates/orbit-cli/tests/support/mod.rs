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
    let child = Command::new(orbit_bin())
        .current_dir(dir)
        .arg("worker")
        .args(args)
        .env_remove("DATABASE_URL")
        .env("ORBIT_DATABASE_URL", database)
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
