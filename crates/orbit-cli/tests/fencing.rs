//! Fencing: a worker frozen (SIGSTOP) past its lease loses the task to another worker; when it
//! wakes, its completion is refused and the task keeps the one result the rescuer recorded.

use assert_cmd::cargo::CommandCargoExt;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn orbit(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("orbit").expect("orbit binary");
    cmd.current_dir(dir)
        .env_remove("DATABASE_URL")
        .env("ORBIT_DATABASE_URL", "sqlite://orbit.db");
    cmd
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let out = orbit(dir).args(args).arg("--json").output().expect("orbit");
    assert!(
        out.status.success(),
        "orbit {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn signal(pid: u32, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
}

#[test]
fn a_zombie_workers_completion_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("slow.yaml"),
        "name: slow\ntasks:\n  - name: work\n    type: shell\n    shell: true\n    heartbeat_interval: 200ms\n    \
         command: 'echo \"$ORBIT_ATTEMPT\" >> ran.log; sleep 1; echo \"{\\\"by_attempt\\\": $ORBIT_ATTEMPT}\" > \"$ORBIT_OUTPUT\"'\n",
    )
    .expect("write");
    let a = orbit(dir.path())
        .args(["run", "slow.yaml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn A");
    let ran = dir.path().join("ran.log");
    let started = Instant::now();
    while !ran.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "A never started the task"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(a.id(), "-STOP");
    // Past A's lease (400 ms), B takes the task over and finishes it.
    std::thread::sleep(Duration::from_millis(600));
    let run = json(dir.path(), &["runs", "--limit", "1"])[0]["id"]
        .as_str()
        .expect("run id")
        .to_owned();
    let b = orbit(dir.path())
        .args(["resume", &run])
        .output()
        .expect("B");
    assert!(
        b.status.success(),
        "B: {}",
        String::from_utf8_lossy(&b.stdout)
    );
    signal(a.id(), "-CONT");
    let a_out = a.wait_with_output().expect("A");
    let a_text = String::from_utf8_lossy(&a_out.stdout);
    assert!(
        a_text.contains("lease lost, result discarded"),
        "A: {a_text}"
    );

    let status = json(dir.path(), &["status", &run]);
    assert_eq!(status["run"]["state"], "succeeded");
    assert_eq!(
        status["tasks"][0]["output"]["by_attempt"], 2,
        "the rescuer's result is the one kept"
    );
    let attempts = json(dir.path(), &["logs", &run]);
    let outcomes: Vec<&str> = attempts
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        outcomes,
        vec!["worker_lost", "succeeded"],
        "one recorded result"
    );
    let ran = std::fs::read_to_string(&ran).expect("ran.log");
    assert_eq!(
        ran.lines().collect::<Vec<_>>(),
        vec!["1", "2"],
        "A's attempt ran (it was frozen, not dead) and B's"
    );
}
