//! The host's registry of task process groups: one small file per task run that has a program
//! running on this machine, holding its process group id, the machine's boot id and the pid of
//! the supervisor that started it.
//!
//! Before an attempt starts a program, the engine looks up its task run here. A group left by an
//! earlier attempt (its engine was killed, and its supervisor had not yet killed the group) is
//! killed and waited for, so two attempts of one task never run at the same time on one host.
//! Only this host can act on a process group id, so the record lives on the host, not in the
//! database; the boot id tells a record from before a reboot (whose processes are all gone).
//!
//! The directory is `$XDG_RUNTIME_DIR/orbit-groups`, else `$TMPDIR/orbit-<uid>/groups`; it must
//! belong to this user and be closed to others, or it is not used.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The registry directory, when a safe one is available.
pub fn dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let uid = std::fs::metadata("/proc/self").ok()?.uid();
        let (dir, owned) = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            Some(run) => {
                let run = PathBuf::from(run);
                (run.join("orbit-groups"), vec![run])
            }
            None => {
                let mine = std::env::temp_dir().join(format!("orbit-{uid}"));
                (mine.join("groups"), vec![mine])
            }
        };
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "no process-group registry");
            return None;
        }
        // Another user's directory could make this process kill groups it did not start.
        let safe = |p: &Path| {
            std::fs::symlink_metadata(p)
                .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o022 == 0)
        };
        if !safe(&dir) || !owned.iter().all(|p| safe(p)) {
            tracing::warn!(dir = %dir.display(), "process-group registry not used: not this user's, or writable by others");
            return None;
        }
        Some(dir)
    })
    .as_deref()
}

/// The registry file of a task run.
pub fn path(task_run: &str) -> Option<PathBuf> {
    // Task run ids are UUIDs; anything else must not become a path.
    if task_run.is_empty() || !task_run.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return None;
    }
    dir().map(|d| d.join(task_run))
}

/// This machine's boot id: process group ids from another boot mean nothing now.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Records that group `pgid`, started by this process (a supervisor), runs the task run of
/// `path`.
pub fn record(path: &Path, pgid: u32) {
    let _ = std::fs::write(
        path,
        format!("{pgid} {} {}\n", boot_id(), std::process::id()),
    );
}

/// Removes the record, if it still names `pgid` (a later attempt may have replaced it).
pub fn forget(path: &Path, pgid: u32) {
    if recorded(path).is_some_and(|r| r.pgid == pgid) {
        let _ = std::fs::remove_file(path);
    }
}

/// Kills the group the supervisor `supervisor` recorded for `path`, if the record is still its
/// own (a later attempt's group is not this caller's to kill), and removes the record.
pub fn kill_recorded(path: &Path, supervisor: u32) {
    if let Some(r) = recorded(path).filter(|r| r.supervisor == supervisor) {
        super::supervisor::kill_group(r.pgid);
        let _ = std::fs::remove_file(path);
    }
}

struct Record {
    pgid: u32,
    boot: String,
    supervisor: u32,
}

fn recorded(path: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut fields = text.split_whitespace();
    Some(Record {
        pgid: fields.next()?.parse().ok()?,
        boot: fields.next()?.to_owned(),
        supervisor: fields.next()?.parse().ok()?,
    })
}

/// The live (not zombie) processes of group `pgid`.
pub fn members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // After the command name in parentheses: state, ppid, pgrp.
                let Some((_, rest)) = stat.rsplit_once(')') else {
                    return false;
                };
                let mut fields = rest.split_whitespace();
                let state = fields.next();
                let pgrp = fields.nth(1).and_then(|g| g.parse::<u32>().ok());
                pgrp == Some(pgid) && !matches!(state, Some("Z" | "X"))
            })
        })
        .collect()
}

/// Makes sure no process of an earlier attempt of this task run is alive: a group recorded
/// during this boot is killed and waited for, up to `patience`. Returns the killed group's id, or
/// an error naming the processes that would not die.
pub async fn ensure_gone(path: &Path, patience: Duration) -> Result<Option<u32>, String> {
    let Some(Record { pgid, boot, .. }) = recorded(path) else {
        return Ok(None);
    };
    if boot != boot_id() || members(pgid).is_empty() {
        let _ = std::fs::remove_file(path);
        return Ok(None);
    }
    super::supervisor::kill_group(pgid);
    let until = Instant::now() + patience;
    loop {
        let alive = members(pgid);
        if alive.is_empty() {
            let _ = std::fs::remove_file(path);
            return Ok(Some(pgid));
        }
        if Instant::now() >= until {
            return Err(format!(
                "process group {pgid} of an earlier attempt is still alive (pids {alive:?}) after SIGKILL"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
