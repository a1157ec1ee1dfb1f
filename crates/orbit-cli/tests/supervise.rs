//! `orbit worker --processes N`: N worker processes kept running, a killed one replaced and its
//! attempt retried, a stop passed on to all, none left behind a supervisor killed with -9.

mod support;

use std::collections::HashSet;
use std::time::Duration;
use support::{CliEnv, eventually, worker};

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> HashSet<u32> {
    let mut out = HashSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // After the command's parenthesised name: state, then the parent's pid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.insert(child);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_killed_worker_process_is_replaced_and_its_attempt_retried() {
    let env = CliEnv::new();
    env.ok(&["db", "migrate"]);
    let mut sup = worker(
        env.dir.path(),
        &env.db(),
        &["--processes", "2", "--concurrency", "2"],
    );
    let first = eventually(Duration::from_secs(10), "two worker processes", || {
        let c = children_of(sup.pid());
        (c.len() == 2).then_some(c)
    });
    env.file(
        "slow.yaml",
        "name: slow\ntasks:\n  - {name: work, type: shell, command: [sleep, '2'], heartbeat_interval: 1s}\n",
    );
    env.ok(&["apply", "slow.yaml"]);
    env.ok(&["trigger", "slow"]);
    let run = env.json(&["runs"])[0]["id"]
        .as_str()
        .expect("run")
        .to_owned();
    // The worker process holding the attempt (its lease owner is host:pid).
    let holder = eventually(Duration::from_secs(10), "the attempt to start", || {
        let s = env.json(&["status", &run]);
        let owner = s["tasks"][0]["leaseOwner"].as_str()?.to_owned();
        owner.rsplit_once(':')?.1.parse::<u32>().ok()
    });
    assert!(first.contains(&holder), "{holder} is one of {first:?}");
    let killed = std::time::Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &holder.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let replaced = eventually(Duration::from_secs(2), "a new worker process", || {
        let c = children_of(sup.pid());
        (c.len() == 2 && !c.contains(&holder)).then_some(c)
    });
    println!(
        "replaced in {:?}: {first:?} -> {replaced:?}",
        killed.elapsed()
    );
    eventually(Duration::from_secs(30), "the run to succeed", || {
        (env.json(&["status", &run])["run"]["state"] == "succeeded").then_some(())
    });
    let status = env.json(&["status", &run]);
    assert_eq!(
        status["tasks"][0]["attempt"], 2,
        "the lost attempt was run again: {status}"
    );
    // A stop reaches every process; the supervisor exits once they have.
    sup.signal("TERM");
    let exit = sup
        .wait_exit(Duration::from_secs(15))
        .expect("the supervisor stops");
    assert!(exit.success(), "{exit}");
    assert!(
        replaced.iter().all(|p| !alive(*p)),
        "no worker process is left"
    );

    // A supervisor killed with -9 takes its workers with it (their stdin pipe closes).
    let mut sup = worker(env.dir.path(), &env.db(), &["--processes", "2"]);
    let workers = eventually(Duration::from_secs(10), "two worker processes", || {
        let c = children_of(sup.pid());
        (c.len() == 2).then_some(c)
    });
    sup.signal("KILL");
    sup.wait_exit(Duration::from_secs(5));
    eventually(Duration::from_secs(10), "the workers to stop", || {
        workers.iter().all(|p| !alive(*p)).then_some(())
    });
}

/// `orbit server --workers-processes 2`: the server keeps two worker processes beside it, which
/// execute the runs it is given, and stops them when it stops.
#[test]
fn a_server_keeps_worker_processes_beside_it() {
    let env = CliEnv::new();
    let mut s = support::server(
        env.dir.path(),
        &env.db(),
        &["--workers", "0", "--workers-processes", "2"],
        &[],
    );
    let workers = eventually(Duration::from_secs(10), "two worker processes", || {
        let c = children_of(s.proc.pid());
        if c.len() != 2 {
            eprintln!("{}", std::fs::read_to_string(&s.stderr).unwrap_or_default());
        }
        (c.len() == 2).then_some(c)
    });
    env.file(
        "one.yaml",
        "name: one\ntasks:\n  - {name: hello, type: shell, command: [echo, hi]}\n",
    );
    env.ok(&["apply", "one.yaml"]);
    env.ok(&["trigger", "one"]);
    let run = env.json(&["runs"])[0]["id"]
        .as_str()
        .expect("run")
        .to_owned();
    eventually(
        Duration::from_secs(20),
        "a worker process to run it",
        || (env.json(&["status", &run])["run"]["state"] == "succeeded").then_some(()),
    );
    // One killed: replaced, and counted on the server's /metrics.
    let victim = *workers.iter().next().expect("a worker");
    let _ = std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status();
    let restarts = || {
        let out = std::process::Command::new("curl")
            .args(["-s", &format!("{}/metrics", s.base)])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("orbit_worker_process_restarts_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let workers = eventually(Duration::from_secs(10), "a replacement", || {
        let c = children_of(s.proc.pid());
        (c.len() == 2 && !c.contains(&victim)).then_some(c)
    });
    assert_eq!(restarts(), Some(1.0));
    s.proc.signal("TERM");
    assert!(
        s.proc
            .wait_exit(Duration::from_secs(15))
            .is_some_and(|st| st.success())
    );
    eventually(Duration::from_secs(10), "the workers to stop", || {
        workers.iter().all(|p| !alive(*p)).then_some(())
    });
}
