//! Nothing outlives its attempt: a task's processes (grandchildren included) die with the engine
//! that started them, even when it is killed with -9, and an earlier attempt's processes are
//! verified gone before a task runs again on the same host.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{gone_within, marked_processes, orbit_bin};

/// A task that leaves a grandchild behind and appends its attempt to `out.log` after 7 s: the
/// issue's reproduction.
const SLOW: &str = r#"
name: slow
tasks:
  - name: s
    type: shell
    shell: true
    command: 'sleep 60 >/dev/null 2>&1 & sleep 7; echo done-$ORBIT_ATTEMPT >> out.log'
"#;

fn orbit(dir: &Path, mark: &str) -> Command {
    let mut cmd = Command::new(orbit_bin());
    cmd.current_dir(dir)
        .env_remove("DATABASE_URL")
        .env("ORBIT_DATABASE_URL", "sqlite://orbit.db")
        .env("ORBIT_TEST_MARK", mark)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn only_run(dir: &Path) -> String {
    let out = orbit(dir, "-")
        .args(["runs", "--json"])
        .stdout(Stdio::piped())
        .output()
        .expect("orbit runs");
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    runs[0]["id"].as_str().expect("a run").to_owned()
}

/// Starts `orbit run` and waits until the task's processes run.
fn start_slow(dir: &Path, mark: &str) -> std::process::Child {
    std::fs::write(dir.join("slow.yaml"), SLOW).expect("write pipeline");
    let child = orbit(dir, mark)
        .args(["run", "slow.yaml"])
        .spawn()
        .expect("orbit run");
    support::eventually(Duration::from_secs(10), "the task to start", || {
        // The supervisor, sh, the grandchild sleep 60 and sleep 7.
        (marked_processes(mark).len() >= 4).then_some(())
    });
    child
}

#[test]
fn a_killed_engine_takes_every_process_of_its_attempts_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mark = format!("{}#run", dir.path().display());
    let mut child = start_slow(dir.path(), &mark);
    std::thread::sleep(Duration::from_millis(500));
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    let took = gone_within(&mark, Duration::from_secs(1)).unwrap_or_else(|alive| {
        panic!(
            "alive 1 s after the engine was killed: {:?}",
            support::describe(&alive)
        )
    });
    println!("every task process gone {took:?} after the kill");

    let run = only_run(dir.path());
    let status = orbit(dir.path(), &format!("{}#resume", dir.path().display()))
        .args(["resume", &run])
        .status()
        .expect("orbit resume");
    assert!(status.success());
    let out = std::fs::read_to_string(dir.path().join("out.log")).unwrap_or_default();
    assert_eq!(
        out, "done-2\n",
        "only the resumed attempt finished its side effect"
    );
}

#[test]
fn an_abandoned_group_is_killed_before_its_task_runs_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mark = format!("{}#run", dir.path().display());
    let mut child = start_slow(dir.path(), &mark);
    // Kill the engine and the supervisor at once, as a crash of both would: the task's own
    // processes are left running, and only the registry knows their group.
    let supervisor: Vec<u32> = marked_processes(&mark)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(11).any(|w| w == b"__supervise"))
        })
        .collect();
    assert_eq!(supervisor.len(), 1, "one supervisor");
    // The engine is stopped first: if it outlived the supervisor by a moment, it would see the
    // supervisor's pipe close and kill the group itself, which is what this test rules out.
    for (signal, pid) in [
        ("-STOP", child.id()),
        ("-9", supervisor[0]),
        ("-9", child.id()),
    ] {
        let sent = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
    }
    child.wait().expect("wait");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        marked_processes(&mark).len() >= 2,
        "the task's processes outlived both (as the test intends)"
    );

    let run = only_run(dir.path());
    let started = Instant::now();
    let status = orbit(dir.path(), &format!("{}#resume", dir.path().display()))
        .args(["resume", &run])
        .status()
        .expect("orbit resume");
    assert!(status.success());
    assert!(
        marked_processes(&mark).is_empty(),
        "the old attempt's group was killed"
    );
    let out = std::fs::read_to_string(dir.path().join("out.log")).unwrap_or_default();
    assert_eq!(out, "done-2\n", "the old attempt never finished");
    let logs = orbit(dir.path(), "-")
        .args(["logs", &run, "s"])
        .stdout(Stdio::piped())
        .output()
        .expect("orbit logs");
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains("left running by an earlier attempt"),
        "the new attempt says it killed the old group: {logs}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn a_timed_out_attempt_loses_its_grandchildren_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mark = format!("{}#run", dir.path().display());
    std::fs::write(
        dir.path().join("t.yaml"),
        "name: t\ntasks:\n  - name: s\n    type: shell\n    shell: true\n    timeout: 300ms\n    retry: {max_attempts: 1}\n    command: 'sleep 60 >/dev/null 2>&1 & sleep 60'\n",
    )
    .expect("write pipeline");
    let status = orbit(dir.path(), &mark)
        .args(["run", "t.yaml"])
        .status()
        .expect("orbit run");
    assert_eq!(status.code(), Some(1), "the run failed by timeout");
    gone_within(&mark, Duration::from_secs(1))
        .unwrap_or_else(|alive| panic!("alive after the timeout: {:?}", support::describe(&alive)));
}
