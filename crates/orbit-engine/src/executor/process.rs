//! Running a program for a task: in its own process group, stdout and stderr into the log, and
//! the whole group killed when the attempt ends (finished, timed out or abandoned).

use super::{Invocation, registry, supervisor};
use orbit_core::transition::Failure;
use process_wrap::tokio::{ChildWrapper, CommandWrap, ProcessGroup};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

pub struct Spec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub stdin: Option<Vec<u8>>,
}

/// Kills the task's process group when dropped: a timeout or a cancelled attempt drops the
/// future that owns this, and nothing the task started may outlive it.
struct Group {
    child: Box<dyn ChildWrapper>,
    /// The write end of a supervisor's lifeline: released, it makes the supervisor kill the
    /// task's group and exit. `None` when the program runs without a supervisor.
    lifeline: Option<oneshot::Sender<()>>,
    registry: Option<PathBuf>,
}

impl Drop for Group {
    fn drop(&mut self) {
        match self.lifeline.take() {
            Some(lifeline) => {
                drop(lifeline);
                // Not waiting for the supervisor: the group it recorded is killed here and now.
                if let (Some(path), Some(supervisor)) = (&self.registry, self.child.id()) {
                    registry::kill_recorded(path, supervisor);
                }
            }
            // The group may already be gone (ESRCH): nothing left to stop.
            None => {
                let _ = self.child.start_kill();
            }
        }
    }
}

/// How long an earlier attempt's group may take to die before this attempt gives up (and is
/// retried).
const OLD_GROUP_PATIENCE: Duration = Duration::from_secs(2);

/// Runs `spec`; returns stdout (also logged) when the program exits 0.
///
/// With a supervisor (the `orbit` binary), the program runs under it (see [`super::supervisor`]),
/// so its group dies with this process even on SIGKILL, and an earlier attempt's group on this
/// host is verified gone first.
pub async fn run(spec: Spec, inv: &Invocation<'_>) -> Result<String, Failure> {
    let registry = inv.supervisor.and_then(|_| registry::path(inv.task_run_id));
    if let Some(path) = &registry {
        match registry::ensure_gone(path, OLD_GROUP_PATIENCE).await {
            Ok(Some(pgid)) => inv.log.line(&format!(
                "[orbit] killed process group {pgid}, left running by an earlier attempt"
            )),
            Ok(None) => {}
            Err(e) => return Err(Failure::error(e)),
        }
    }
    let mut cmd = command(&spec, inv.supervisor, registry.as_deref());
    cmd.wrap(ProcessGroup::leader());
    let child = cmd
        .spawn()
        .map_err(|e| Failure::fatal(format!("cannot start `{}`: {e}", spec.program)))?;
    let mut group = Group {
        child,
        registry,
        lifeline: None,
    };
    if let Some(stdin) = group.child.stdin().take() {
        let framed = inv.supervisor.is_some();
        let (release, released) = oneshot::channel::<()>();
        if framed {
            group.lifeline = Some(release);
        }
        tokio::spawn(feed(stdin, spec.stdin, framed.then_some(released)));
    }
    let stdout = group.child.stdout().take();
    let stderr = group.child.stderr().take();
    let out_log = inv.log.clone();
    let err_log = inv.log.clone();
    let out_task = tokio::spawn(async move { pump(stdout, &out_log, true).await });
    let err_task = tokio::spawn(async move { pump(stderr, &err_log, false).await.1 });
    let status = group
        .child
        .wait()
        .await
        .map_err(|e| Failure::error(format!("waiting for `{}` failed: {e}", spec.program)))?;
    // Whatever it left running in its group goes too, so the pipes close.
    drop(group);
    let (stdout, _) = out_task.await.unwrap_or_default();
    let last_err = err_task.await.unwrap_or_default();
    if status.success() {
        return Ok(stdout);
    }
    Err(failed(
        &spec.program,
        status,
        last_err,
        inv.supervisor.is_some(),
    ))
}

/// The program, run by the supervisor when there is one (it takes the program's stdin framed,
/// then holds the pipe as its lifeline).
fn command(spec: &Spec, supervisor: Option<&Path>, registry: Option<&Path>) -> CommandWrap {
    let setup = |c: &mut tokio::process::Command| {
        c.envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &spec.cwd {
            c.current_dir(dir);
        }
    };
    match supervisor {
        Some(supervisor) => CommandWrap::with_new(supervisor, |c| {
            c.arg0("orbit")
                .arg(supervisor::SUBCOMMAND)
                .arg(registry.unwrap_or(Path::new("-")))
                .arg(&spec.program)
                .args(&spec.args)
                .stdin(Stdio::piped());
            setup(c);
        }),
        None => CommandWrap::with_new(&spec.program, |c| {
            c.args(&spec.args).stdin(if spec.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
            setup(c);
        }),
    }
}

/// Writes the program's stdin; under a supervisor, framed by its length first, and the pipe
/// then held open (the supervisor's lifeline) until `released`.
async fn feed<W: AsyncWriteExt + Unpin>(
    mut stdin: W,
    input: Option<Vec<u8>>,
    released: Option<oneshot::Receiver<()>>,
) {
    if released.is_some() {
        let len = input
            .as_ref()
            .map_or(supervisor::NO_STDIN, |i| i.len() as u64);
        let _ = stdin.write_all(&len.to_le_bytes()).await;
    }
    // A program that does not read its stdin closes the pipe; that is its business.
    if let Some(input) = input {
        let _ = stdin.write_all(&input).await;
    }
    if let Some(released) = released {
        let _ = stdin.flush().await;
        let _ = released.await;
    }
}

/// Why a program that ran did not succeed.
fn failed(
    program: &str,
    status: std::process::ExitStatus,
    last_err: Option<String>,
    supervised: bool,
) -> Failure {
    // The supervisor could not start the program: as fatal as a failed spawn here.
    let cannot_start = last_err
        .as_deref()
        .and_then(|l| l.strip_prefix("[orbit] "))
        .filter(|why| why.starts_with(supervisor::CANNOT_START.trim_start_matches("[orbit] ")));
    if let (true, Some(supervisor::CANNOT_START_STATUS), Some(why)) =
        (supervised, status.code(), cannot_start)
    {
        return Failure::fatal(why.to_owned());
    }
    let how = match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => {
            use std::os::unix::process::ExitStatusExt;
            format!("killed by signal {}", status.signal().unwrap_or(0))
        }
    };
    let detail = last_err.map(|l| format!(": {l}")).unwrap_or_default();
    Failure::error(format!("`{program}` {how}{detail}"))
}

/// Longest line copied into the log.
const LONG_LINE: usize = 64 * 1024;
/// Most standard output captured as a task's output.
const OUTPUT_CAP: usize = 256 * 1024 * 1024;

/// Copies lines into the log; returns the captured text (when asked) and the last non-empty line.
async fn pump<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    log: &crate::log::LogBuffer,
    capture: bool,
) -> (String, Option<String>) {
    let Some(pipe) = pipe else {
        return (String::new(), None);
    };
    let mut reader = BufReader::new(pipe);
    let mut captured = String::new();
    let mut last = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                // A huge line is usually the task's output, which object storage keeps: the
                // log (stored in the database) notes it instead of holding a second copy.
                if line.len() > LONG_LINE {
                    log.line(&format!(
                        "[orbit] a line of {} bytes (not kept in the log)",
                        line.len()
                    ));
                } else {
                    log.line(&line);
                }
                if capture && captured.len() < OUTPUT_CAP {
                    captured.push_str(&line);
                }
                let trimmed = line.trim();
                if !trimmed.is_empty() {
                    last = Some(trimmed.chars().take(500).collect());
                }
            }
        }
    }
    (captured, last)
}

/// The variables every program task gets.
pub fn orbit_env(inv: &Invocation<'_>) -> Vec<(String, String)> {
    vec![
        ("ORBIT_RUN_ID".into(), inv.run_id.into()),
        ("ORBIT_TASK".into(), inv.task_name.into()),
        ("ORBIT_ATTEMPT".into(), inv.attempt.to_string()),
        ("ORBIT_EFFECT_KEY".into(), inv.effect_key.into()),
        ("TRACEPARENT".into(), inv.traceparent.into()),
    ]
}
