//! `orbit worker --processes N`: keeps N worker processes running, the seeds' PM2 role without
//! PM2. A process that dies is started again after a backoff (logged); SIGTERM or SIGINT is
//! passed on to every process, which stops gracefully, and the supervisor exits once they have.

use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Set in a supervised worker's environment: it runs as one worker, whatever `--processes` says.
pub const SUPERVISED: &str = "ORBIT_SUPERVISED";

/// A process that ran this long before dying starts again at once; one that dies sooner waits
/// longer each time, up to [`MAX_BACKOFF`].
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub async fn keep(processes: usize, shutdown: CancellationToken) -> anyhow::Result<u8> {
    keep_running(
        processes,
        worker_args(std::env::args_os().skip(1)),
        Vec::new(),
        shutdown,
    )
    .await
}

/// Keeps `processes` processes of `orbit ARGS` (with `envs` added to their environment: a
/// database URL stays out of `ps`) running until `shutdown`.
pub async fn keep_running(
    processes: usize,
    args: Vec<std::ffi::OsString>,
    envs: Vec<(String, String)>,
    shutdown: CancellationToken,
) -> anyhow::Result<u8> {
    let exe = super::run::supervisor();
    eprintln!("orbit: keeping {processes} worker processes running");
    let slots: Vec<_> = (0..processes)
        .map(|slot| {
            let (exe, args, envs, stop) =
                (exe.clone(), args.clone(), envs.clone(), shutdown.clone());
            tokio::spawn(async move { run_slot(slot, &exe, &args, &envs, stop).await })
        })
        .collect();
    let mut failed = false;
    for s in slots {
        failed |= !matches!(s.await, Ok(Ok(())));
    }
    eprintln!("orbit worker: every worker process stopped");
    Ok(u8::from(failed))
}

/// In a supervised worker: stops it when its supervisor is gone (its stdin, a pipe the
/// supervisor holds, reaches its end).
pub fn watch_supervisor(stop: CancellationToken) {
    // A thread of its own, not the runtime's blocking pool: a read that never returns must not
    // hold the process open when it exits.
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        if !stop.is_cancelled() {
            eprintln!("orbit worker: its supervisor is gone; stopping");
            stop.cancel();
        }
    });
}

/// This process's arguments without `--processes N`.
fn worker_args(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        match a.to_str() {
            Some("--processes") => skip = true,
            Some(s) if s.starts_with("--processes=") => {}
            _ => out.push(a),
        }
    }
    out
}

/// One slot: a worker process, started again whenever it dies, until the stop.
async fn run_slot(
    slot: usize,
    exe: &std::path::Path,
    args: &[std::ffi::OsString],
    envs: &[(String, String)],
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let mut cmd = Command::new(exe);
        // The worker's stdin is a pipe only this process writes to: when it dies, even by -9,
        // the worker reads its end and stops (see `watch_supervisor`).
        // Its stdout is not ours to share (a server's says where it listens; a reader that has
        // gone would end the worker): the supervisor says what started; stderr is shared.
        cmd.args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env(SUPERVISED, slot.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        let mut child = cmd.spawn()?;
        let _lifeline = child.stdin.take();
        let pid = child.id().unwrap_or_default();
        eprintln!("orbit: worker process {pid} (slot {slot}) started");
        let status = tokio::select! {
            s = child.wait() => s?,
            () = stop.cancelled() => {
                // Pass the stop on; the worker hands its attempts back within its grace.
                if let Ok(p) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                child.wait().await?;
                return Ok(());
            }
        };
        // A stop that reached the worker first (Ctrl-C signals the whole process group).
        if stop.is_cancelled() {
            return Ok(());
        }
        if started.elapsed() >= HEALTHY_AFTER {
            backoff = FIRST_BACKOFF;
        }
        orbit_engine::telemetry::worker_process_restarted();
        tracing::warn!(slot, pid, %status, restart_in_ms = backoff.as_millis() as u64, "worker process exited; starting another");
        eprintln!(
            "orbit worker: process {pid} (slot {slot}) exited ({status}); starting another in {}",
            orbit_core::duration::display(backoff)
        );
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::worker_args;
    use std::ffi::OsString;

    #[test]
    fn the_workers_get_every_argument_but_processes() {
        let given = [
            "worker",
            "--processes",
            "3",
            "--concurrency",
            "4",
            "--processes=2",
            "--queue",
            "gpu",
        ]
        .map(OsString::from);
        let kept: Vec<OsString> = worker_args(given.into_iter());
        assert_eq!(
            kept,
            ["worker", "--concurrency", "4", "--queue", "gpu"].map(OsString::from)
        );
    }
}
