//! The files in deploy/: the systemd units (checked by `systemd-analyze verify` where it is
//! installed, and their commands by this binary's own argument parser) and the container recipe
//! (linted here; built only where a container builder runs and ORBIT_TEST_CONTAINER_BUILD=1,
//! since a build compiles Orbit from nothing).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::orbit_bin;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// The `orbit` arguments of a command line, checked by asking for `--help` after them: an
/// unknown subcommand or flag fails before the help is printed.
fn parses(args: &[&str]) {
    let out = Command::new(orbit_bin())
        .args(args)
        .arg("--help")
        .output()
        .expect("orbit");
    assert!(
        out.status.success(),
        "`orbit {}` does not parse: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_systemd_units_are_valid_and_hardened() {
    for unit in ["orbit-server.service", "orbit-worker.service"] {
        let text = std::fs::read_to_string(deploy().join(unit)).expect("unit");
        let mut section = String::new();
        let mut keys = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_owned();
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{unit}: not `key=value`: {line}"));
            keys.push((section.clone(), k.to_owned(), v.to_owned()));
        }
        let get = |s: &str, k: &str| {
            keys.iter()
                .find(|(sec, key, _)| sec == s && key == k)
                .map(|(_, _, v)| v.as_str())
        };
        for (k, want) in [
            ("Restart", "on-failure"),
            ("NoNewPrivileges", "true"),
            ("ProtectSystem", "strict"),
            ("KillSignal", "SIGTERM"),
        ] {
            assert_eq!(get("Service", k), Some(want), "{unit}: {k}");
        }
        assert_eq!(
            get("Service", "User"),
            Some("orbit"),
            "{unit} runs unprivileged"
        );
        let exec = get("Service", "ExecStart").expect("ExecStart");
        let mut words = exec.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/orbit"));
        parses(&words.collect::<Vec<_>>());
        // systemd's own check, where it is installed (against this build's binary).
        if Path::new("/usr/bin/systemd-analyze").exists() {
            let dir = tempfile::tempdir().expect("tempdir");
            let copy = dir.path().join(unit);
            std::fs::write(
                &copy,
                text.replace("/usr/local/bin/orbit", &orbit_bin().display().to_string()),
            )
            .expect("write");
            let out = Command::new("/usr/bin/systemd-analyze")
                .arg("verify")
                .arg(&copy)
                .output()
                .expect("systemd-analyze");
            assert!(
                out.status.success(),
                "{unit}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn the_container_recipe_builds_orbit_and_runs_it_unprivileged() {
    let text = std::fs::read_to_string(deploy().join("Containerfile")).expect("Containerfile");
    // Instructions, continuation lines joined.
    let joined = text.replace("\\\n", " ");
    let instructions: Vec<(&str, &str)> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_once(' ').unwrap_or((l, "")))
        .collect();
    const KNOWN: [&str; 12] = [
        "FROM",
        "WORKDIR",
        "COPY",
        "RUN",
        "USER",
        "ENV",
        "EXPOSE",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "ENTRYPOINT",
        "CMD",
        "ARG",
    ];
    let mut stages = Vec::new();
    for (op, rest) in &instructions {
        assert!(KNOWN.contains(op), "unknown instruction {op}");
        if *op == "FROM" {
            stages.push(rest.rsplit(' ').next().unwrap_or_default().to_owned());
        }
        if let Some(from) = rest.strip_prefix("--from=") {
            let stage = from.split(' ').next().unwrap_or_default();
            assert!(
                stages.iter().any(|s| s == stage),
                "COPY from unknown stage {stage}"
            );
        }
    }
    let last = |op: &str| {
        instructions
            .iter()
            .rev()
            .find(|(o, _)| *o == op)
            .map(|(_, r)| *r)
            .unwrap_or_else(|| panic!("no {op}"))
    };
    assert_eq!(last("USER"), "orbit", "the image runs unprivileged");
    assert!(last("RUN").contains("useradd") || joined.contains("useradd --system"));
    assert!(joined.contains("cargo build --release --locked -p orbit-cli"));
    let entry: Vec<String> = serde_json::from_str(last("ENTRYPOINT")).expect("exec form");
    let cmd: Vec<String> = serde_json::from_str(last("CMD")).expect("exec form");
    assert_eq!(entry, ["orbit"]);
    parses(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
    let health: Vec<String> =
        serde_json::from_str(last("HEALTHCHECK").split_once("CMD ").expect("CMD").1)
            .expect("exec form");
    assert_eq!(health[0], "orbit");
    parses(&health[1..].iter().map(String::as_str).collect::<Vec<_>>());
    // The build itself, where a builder runs and it was asked for.
    let builder = ["podman", "docker"].into_iter().find(|b| {
        Command::new(b)
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    match (builder, std::env::var_os("ORBIT_TEST_CONTAINER_BUILD")) {
        (Some(b), Some(_)) => {
            let root = deploy().join("..");
            let status = Command::new(b)
                .args([
                    "build",
                    "-f",
                    "deploy/Containerfile",
                    "-t",
                    "orbit-test",
                    ".",
                ])
                .current_dir(root)
                .status()
                .expect("container build");
            assert!(status.success(), "{b} build");
        }
        (b, _) => println!(
            "container build skipped ({}); the recipe was linted",
            if b.is_some() {
                "set ORBIT_TEST_CONTAINER_BUILD=1"
            } else {
                "no podman or docker daemon here"
            }
        ),
    }
}
