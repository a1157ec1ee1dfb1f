//! The supervisor: a small process between the engine and a task's program that ties the task's
//! process group to the engine's life.
//!
//! A guard in the engine kills a task's group when the attempt ends, but a guard cannot run
//! when the engine itself is killed with -9. So each program task starts as
//! `orbit __supervise REGISTRY PROGRAM ARGS…`: the supervisor starts the program as the leader
//! of a new process group and reads its own standard input, a pipe whose only write end the
//! engine holds. When that pipe reaches end-of-file, the engine is gone (however it died: the
//! kernel closes its descriptors) or is done with the attempt, and the supervisor kills the
//! program's whole group, grandchildren included. No polling: a blocked `read` is the wake-up.
//! When the program exits by itself, the supervisor kills what it left in its group and exits
//! with the program's status.
//!
//! The supervisor is not in the program's group (the engine starts it in a group of its own,
//! so a terminal's Ctrl-C does not reach it either): it can kill the group and still report.
//!
//! Why not `PR_SET_PDEATHSIG`: it fires when the *thread* that forked the child exits (tokio's
//! threads come and go), it signals only the direct child (not the grandchildren in its group),
//! and setting it needs `unsafe` code between fork and exec. A pipe's end-of-file has none of
//! these problems.
//!
//! Standard input carries, before the lifeline, the program's own standard input: an 8-byte
//! little-endian length (`u64::MAX` for none) and that many bytes, which the supervisor copies
//! to the program.
//!
//! The registry file (see [`super::registry`]) records the group so that an engine on this host
//! can verify an abandoned attempt's group is gone before it runs the task again.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

/// The hidden subcommand of the `orbit` binary that runs [`main`].
pub const SUBCOMMAND: &str = "__supervise";

/// The exit status a supervisor uses when the program could not be started; its last line on
/// standard error then starts with [`CANNOT_START`].
pub const CANNOT_START_STATUS: i32 = 127;
pub const CANNOT_START: &str = "[orbit] cannot start ";

/// Marks "no standard input for the program" in the length header.
pub const NO_STDIN: u64 = u64::MAX;

/// Runs the supervisor with the arguments after the subcommand: the registry file (`-` for
/// none), the program and its arguments. Returns the program's exit status; a program killed by
/// a signal is reported by the same signal where possible.
pub fn main(args: impl Iterator<Item = OsString>) -> ExitCode {
    let mut args = args;
    let (Some(registry), Some(program)) = (args.next(), args.next()) else {
        eprintln!("{CANNOT_START}a task: the supervisor needs REGISTRY PROGRAM [ARGS…]");
        return ExitCode::from(2);
    };
    let registry = (registry != "-").then(|| PathBuf::from(registry));
    let mut lifeline = std::io::stdin();
    let mut header = [0u8; 8];
    if lifeline.read_exact(&mut header).is_err() {
        // The engine died before it could say anything: start nothing.
        return ExitCode::from(1);
    }
    let stdin_len = u64::from_le_bytes(header);
    let mut cmd = Command::new(&program);
    cmd.args(args)
        .process_group(0)
        .stdin(if stdin_len == NO_STDIN {
            Stdio::null()
        } else {
            Stdio::piped()
        });
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{CANNOT_START}`{}`: {e}", program.to_string_lossy());
            return ExitCode::from(CANNOT_START_STATUS as u8);
        }
    };
    // The program leads its group: the group's id is its pid.
    let pgid = child.id();
    if let Some(path) = &registry {
        super::registry::record(path, pgid);
    }
    let child_stdin = child.stdin.take();
    std::thread::spawn(move || {
        if stdin_len != NO_STDIN {
            let mut payload = (&mut lifeline).take(stdin_len);
            if let Some(mut to) = child_stdin {
                // A program that does not read its input closes the pipe; that is its business,
                // but the rest of the payload must still be read to reach the lifeline.
                let _ = std::io::copy(&mut payload, &mut to).and_then(|_| to.flush());
            }
            let _ = std::io::copy(&mut payload, &mut std::io::sink());
        }
        let mut buf = [0u8; 64];
        // Nothing more is ever written: this read returns only when the engine is gone.
        while matches!(lifeline.read(&mut buf), Ok(n) if n > 0) {}
        kill_group(pgid);
    });
    let status = child.wait();
    // What the program left running in its group goes too.
    kill_group(pgid);
    forget(registry.as_ref(), pgid);
    match status {
        Ok(s) => relay(s),
        Err(e) => {
            eprintln!("[orbit] waiting for the task failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// Ends with the program's status: its exit code, or the signal that killed it.
fn relay(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let signal = status.signal().unwrap_or(0);
    if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
        // Dies of the same signal, so the engine reports what killed the task. A signal this
        // process ignores (SIGPIPE, for Rust programs) falls through to the shell convention.
        let _ = nix::sys::signal::raise(sig);
    }
    ExitCode::from(128u8.wrapping_add(signal as u8))
}

fn forget(registry: Option<&PathBuf>, pgid: u32) {
    if let Some(path) = registry {
        super::registry::forget(path, pgid);
    }
}

/// SIGKILL to every process of the group.
pub fn kill_group(pgid: u32) {
    if let Ok(id) = i32::try_from(pgid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(id),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
