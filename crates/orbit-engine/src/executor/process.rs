//! Running a program for a task: in its own process group, stdout and stderr into the log, and
//! the whole group killed when the attempt ends (finished, timed out or abandoned).

use super::Invocation;
use orbit_core::transition::Failure;
use process_wrap::tokio::{ChildWrapper, CommandWrap, ProcessGroup};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

pub struct Spec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub stdin: Option<Vec<u8>>,
}

/// Kills the process group when dropped: a timeout or a cancelled attempt drops the future that
/// owns this, and nothing the task started may outlive it.
struct Group(Box<dyn ChildWrapper>);

impl Drop for Group {
    fn drop(&mut self) {
        // The group may already be gone (ESRCH): nothing left to stop.
        let _ = self.0.start_kill();
    }
}

/// Runs `spec`; returns stdout (also logged) when the program exits 0.
pub async fn run(spec: Spec, inv: &Invocation<'_>) -> Result<String, Failure> {
    let mut cmd = CommandWrap::with_new(&spec.program, |c| {
        c.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(if spec.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &spec.cwd {
            c.current_dir(dir);
        }
    });
    cmd.wrap(ProcessGroup::leader());
    let child = cmd
        .spawn()
        .map_err(|e| Failure::fatal(format!("cannot start `{}`: {e}", spec.program)))?;
    let mut group = Group(child);
    if let (Some(input), Some(mut stdin)) = (spec.stdin, group.0.stdin().take()) {
        // A program that does not read its stdin closes the pipe; that is its business.
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
    }
    let stdout = group.0.stdout().take();
    let stderr = group.0.stderr().take();
    let out_log = inv.log.clone();
    let err_log = inv.log.clone();
    let out_task = tokio::spawn(async move { pump(stdout, &out_log, true).await });
    let err_task = tokio::spawn(async move { pump(stderr, &err_log, false).await.1 });
    let status = group
        .0
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
    let how = match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => {
            use std::os::unix::process::ExitStatusExt;
            format!("killed by signal {}", status.signal().unwrap_or(0))
        }
    };
    let detail = last_err.map(|l| format!(": {l}")).unwrap_or_default();
    Err(Failure::error(format!("`{}` {how}{detail}", spec.program)))
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
    ]
}
