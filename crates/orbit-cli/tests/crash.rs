//! Crash safety: `orbit run` is killed with SIGKILL at random instants and resumed until its run
//! succeeds, over at least 50 kill points. Every step appends a line to a side-effect log when it
//! starts, so the log shows each execution, and marks its start and end with the time, so two
//! attempts of one step running at once would show. Every step also leaves a `sleep 30` in its
//! process group; after every kill, no process the killed engine started (grandchildren
//! included) may be alive 2 s later.

mod support;

use assert_cmd::cargo::CommandCargoExt;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const STEPS: usize = 24;
const LANES: usize = 3;
const KILL_POINTS: usize = 50;

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// ORBIT_CRASH_SEED, else one from the clock (printed by each test, to replay it).
fn seed() -> u64 {
    std::env::var("ORBIT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
                | 1
        })
}

fn pipeline() -> String {
    let mut yaml = String::from(
        "name: crash\ndefaults:\n  retry: {max_attempts: 1000, initial: 10ms, max_delay: 50ms}\ntasks:\n",
    );
    for i in 0..STEPS {
        let needs = if i >= LANES {
            format!("    needs: s{:02}\n", i - LANES)
        } else {
            String::new()
        };
        yaml.push_str(&format!(
            "  - name: s{i:02}\n    type: shell\n    shell: true\n{needs}    command: '{}; sleep 30 >/dev/null 2>&1 & echo \"$ORBIT_TASK $ORBIT_ATTEMPT\" >> side.log; sleep 0.0{}; {}; echo \"{{\\\"step\\\": {i}}}\" > \"$ORBIT_OUTPUT\"'\n",
            support::mark("start"),
            1 + i % 5,
            support::mark("end"),
        ));
    }
    yaml
}

fn orbit(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("orbit").expect("orbit binary");
    cmd.current_dir(dir)
        .env_remove("DATABASE_URL")
        .env("ORBIT_DATABASE_URL", "sqlite://orbit.db")
        .env("ORBIT_TEST_MARK", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let out = orbit(dir)
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .output()
        .expect("orbit");
    assert!(out.status.success(), "orbit {args:?} failed");
    serde_json::from_slice(&out.stdout).expect("json")
}

fn task_states(dir: &Path, run: &str) -> HashMap<String, String> {
    json(dir, &["status", run])["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| {
            (
                t["taskName"].as_str().unwrap_or_default().to_owned(),
                t["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn side_effects(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("side.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn sigkill_at_random_instants_loses_nothing_and_repeats_no_completed_step() {
    let seed = seed();
    println!("crash test seed: {seed} (set ORBIT_CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("crash.yaml"), pipeline()).expect("write pipeline");

    let (mut kills, mut resumes, mut runs_done) = (0usize, 0usize, 0usize);
    let mut reexecuted_total = 0usize;
    let mut slowest_cleanup = Duration::ZERO;
    let mark = dir.path().display().to_string();
    while kills < KILL_POINTS {
        // One run, killed and resumed until it succeeds.
        let _ = std::fs::remove_file(dir.path().join("side.log"));
        let _ = std::fs::remove_file(dir.path().join("marks.log"));
        let mut gone_times: Vec<u128> = Vec::new();
        let before_runs = json(
            dir.path(),
            &["runs", "--pipeline", "crash", "--limit", "1000"],
        )
        .as_array()
        .map_or(0, Vec::len);
        let mut run: Option<String> = None;
        let mut succeeded_before: HashSet<String> = HashSet::new();
        let mut running_at_kills: HashSet<String> = HashSet::new();
        let mut seen_lines = 0;
        loop {
            let mut cmd = orbit(dir.path());
            match &run {
                None => cmd.args(["run", "crash.yaml"]),
                Some(id) => {
                    resumes += 1;
                    cmd.args(["resume", id])
                }
            };
            let mut child = cmd.spawn().expect("spawn orbit");
            let delay = 20 + rng.below(350);
            let finished = (0..delay / 5).any(|_| {
                std::thread::sleep(Duration::from_millis(5));
                child.try_wait().ok().flatten().is_some()
            });
            if !finished {
                child.kill().expect("SIGKILL");
                kills += 1;
            }
            child.wait().expect("wait");
            if !finished {
                match support::gone_within(&mark, Duration::from_secs(2)) {
                    Ok(took) => {
                        slowest_cleanup = slowest_cleanup.max(took);
                        // An attempt with no end mark ended by now.
                        gone_times.push(support::epoch_nanos());
                    }
                    Err(alive) => panic!(
                        "seed {seed}: processes of the killed engine still alive 2 s after the kill: {:?}",
                        support::describe(&alive)
                    ),
                }
            }
            if run.is_none() {
                let runs = json(
                    dir.path(),
                    &["runs", "--pipeline", "crash", "--limit", "1000"],
                );
                if runs.as_array().map_or(0, Vec::len) > before_runs {
                    run = runs[0]["id"].as_str().map(str::to_owned);
                }
            }
            let Some(id) = run.clone() else { continue };
            // Whatever ran in this round must not be a step that had already succeeded.
            let lines = side_effects(dir.path());
            for step in &lines[seen_lines.min(lines.len())..] {
                assert!(
                    !succeeded_before.contains(step),
                    "seed {seed}: {step} ran again after the store recorded it succeeded"
                );
            }
            seen_lines = lines.len();
            let states = task_states(dir.path(), &id);
            running_at_kills.extend(
                states
                    .iter()
                    .filter(|(_, s)| *s == "running")
                    .map(|(n, _)| n.clone()),
            );
            succeeded_before = states
                .iter()
                .filter(|(_, s)| *s == "succeeded")
                .map(|(n, _)| n.clone())
                .collect();
            let state = json(dir.path(), &["status", &id])["run"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            // The store is the truth: the final commit may land just before a kill.
            if state == "succeeded" {
                break;
            }
            assert_ne!(state, "failed", "seed {seed}: run failed");
        }
        let id = run.expect("a run");
        // every step's output is there
        let status = json(dir.path(), &["status", &id]);
        for (i, t) in status["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .enumerate()
        {
            assert_eq!(t["state"], "succeeded");
            assert_eq!(
                t["output"]["step"], i,
                "seed {seed}: output of {}",
                t["taskName"]
            );
        }
        // only a step that was running at a kill ran more than once
        let mut counts: HashMap<String, usize> = HashMap::new();
        for step in side_effects(dir.path()) {
            *counts.entry(step).or_default() += 1;
        }
        assert_eq!(counts.len(), STEPS, "seed {seed}: every step ran");
        for (step, n) in &counts {
            if *n > 1 {
                reexecuted_total += 1;
                assert!(
                    running_at_kills.contains(step),
                    "seed {seed}: {step} ran {n} times but was never running at a kill"
                );
            }
        }
        let marks = std::fs::read_to_string(dir.path().join("marks.log")).unwrap_or_default();
        let overlapping = support::overlaps(&marks, &gone_times);
        assert!(
            overlapping.is_empty(),
            "seed {seed}: attempts of one step ran at the same time: {overlapping:?}; marks:\n{marks}"
        );
        runs_done += 1;
    }

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let url = format!("sqlite://{}", dir.path().join("orbit.db").display());
        let store =
            orbit_store_sqlite::SqliteStore::open(&url, orbit_store_sqlite::Durability::Full)
                .await
                .expect("open");
        store
            .integrity_check()
            .await
            .expect("PRAGMA integrity_check");
    });
    println!(
        "crash test: seed {seed}, {kills} kills, {resumes} resumes, {runs_done} runs of {STEPS} steps succeeded, \
         {reexecuted_total} step(s) re-executed (each was running at a kill), integrity_check ok; \
         0 task processes alive after any kill (slowest to go: {slowest_cleanup:?}), 0 overlapping attempts"
    );
}

const ELEMENTS: usize = 200;
const MAP_KILL_POINTS: usize = 20;

/// Attempts of run `run` by task name: how many succeeded.
fn succeeded_attempts(dir: &Path, run: &str) -> HashMap<String, usize> {
    let mut by_task: HashMap<String, usize> = HashMap::new();
    for a in json(dir, &["logs", run]).as_array().expect("attempts") {
        if a["outcome"] == "succeeded" {
            *by_task
                .entry(a["taskName"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    by_task
}

/// A `for_each` over 200 elements, killed with SIGKILL at random instants (before, during and
/// after its expansion, among its children, during its gathering) and resumed until it
/// succeeds: the children are made once, each element's child succeeds exactly once, none runs
/// again once its success is recorded, and the gathered list holds every element in order.
#[test]
fn sigkill_mid_map_makes_each_child_once_and_runs_none_again_after_success() {
    let seed = seed();
    println!("map crash test seed: {seed} (set ORBIT_CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "name: mapcrash\ndefaults:\n  retry: {{max_attempts: 1000, initial: 10ms, max_delay: 50ms}}\ntasks:\n\
         \x20 - name: list\n    type: script\n    interpreter: python3\n    source: |\n      import json\n      print(json.dumps({{\"items\": list(range({ELEMENTS}))}}))\n\
         \x20 - name: each\n    needs: [list]\n    for_each: \"{{{{ tasks.list.output.items }}}}\"\n    type: shell\n    shell: true\n\
         \x20   command: 'echo {{{{ index }}}} >> side.log; sleep 0.0$(( {{{{ item }}}} % 9 )); echo \"{{\\\"n\\\": {{{{ item }}}}}}\" > \"$ORBIT_OUTPUT\"'\n"
    );
    std::fs::write(dir.path().join("map.yaml"), yaml).expect("write pipeline");
    let (mut kills, mut rounds, mut runs) = (0usize, 0usize, 0usize);
    while kills < MAP_KILL_POINTS {
        runs += 1;
        let _ = std::fs::remove_file(dir.path().join("side.log"));
        let before = json(dir.path(), &["runs", "--limit", "1"])[0]["id"].clone();
        let mut run: Option<String> = None;
        let mut succeeded_before: HashMap<String, usize> = HashMap::new();
        let mut seen_lines = 0;
        loop {
            rounds += 1;
            assert!(rounds < 500, "seed {seed}: the run never succeeded");
            let mut cmd = orbit(dir.path());
            match &run {
                None => cmd.args(["run", "map.yaml", "--concurrency", "8"]),
                Some(id) => cmd.args(["resume", id]),
            };
            let mut child = cmd.spawn().expect("spawn orbit");
            let delay = 20 + rng.below(400);
            let finished = (0..delay / 5).any(|_| {
                std::thread::sleep(Duration::from_millis(5));
                child.try_wait().ok().flatten().is_some()
            });
            if !finished {
                child.kill().expect("SIGKILL");
                kills += 1;
            }
            child.wait().expect("wait");
            if run.is_none() {
                let last = json(dir.path(), &["runs", "--limit", "1"])[0]["id"].clone();
                run = (last != before)
                    .then(|| last.as_str().map(str::to_owned))
                    .flatten();
                assert!(
                    run.is_some() || !finished,
                    "seed {seed}: `orbit run` ended without creating a run"
                );
            }
            let Some(id) = run.clone() else { continue };
            // An element whose success the store had recorded never runs again.
            let lines: Vec<String> = std::fs::read_to_string(dir.path().join("side.log"))
                .unwrap_or_default()
                .lines()
                .map(|l| format!("each[{}]", l.trim()))
                .collect();
            for element in &lines[seen_lines.min(lines.len())..] {
                assert!(
                    !succeeded_before.contains_key(element),
                    "seed {seed}: {element} ran again after its success was recorded"
                );
            }
            seen_lines = lines.len();
            succeeded_before = succeeded_attempts(dir.path(), &id);
            let state = json(dir.path(), &["status", &id])["run"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if state == "succeeded" {
                break;
            }
            assert_ne!(state, "failed", "seed {seed}: run failed");
        }
        let id = run.expect("a run");
        let done = succeeded_attempts(dir.path(), &id);
        for i in 0..ELEMENTS {
            assert_eq!(
                done.get(&format!("each[{i}]")),
                Some(&1),
                "seed {seed}: element {i} succeeded once"
            );
        }
        let children = done.keys().filter(|k| k.starts_with("each[")).count();
        assert_eq!(
            children, ELEMENTS,
            "seed {seed}: no child made twice or more"
        );
        let status = json(dir.path(), &["status", &id]);
        let total: u64 = status["children"]
            .as_array()
            .expect("children")
            .iter()
            .map(|c| c["count"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(total, ELEMENTS as u64, "seed {seed}: {status}");
        let each = status["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .find(|t| t["taskName"] == "each")
            .expect("each")
            .clone();
        let gathered: Vec<u64> = each["output"]
            .as_array()
            .expect("the gathered list")
            .iter()
            .map(|o| o["n"].as_u64().expect("n"))
            .collect();
        assert_eq!(gathered, (0..ELEMENTS as u64).collect::<Vec<_>>());
    }
    println!(
        "map crash test: seed {seed}, {kills} kills over {rounds} rounds, {runs} runs of {ELEMENTS} children, each child succeeded once"
    );
}
