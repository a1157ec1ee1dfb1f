//! `type: shell`. The task's JSON output is what it writes to the file `$ORBIT_OUTPUT`; without
//! that, its trimmed stdout as a string. `$ORBIT_CONTEXT` names a file holding the task context.

use super::Invocation;
use super::process::{self, Spec};
use orbit_core::params::{Command, ShellParams};
use orbit_core::transition::Failure;
use serde_json::Value;
use std::io::Write;

pub async fn run(p: ShellParams, inv: &Invocation<'_>) -> Result<Value, Failure> {
    let (program, args) = match (p.command, p.shell) {
        (Command::Line(line), true) => ("sh".to_owned(), vec!["-c".to_owned(), line]),
        (Command::Line(line), false) => {
            let mut words = shlex::split(&line)
                .filter(|w| !w.is_empty())
                .ok_or_else(|| {
                    Failure::fatal(format!(
                        "cannot split command `{line}` into words (unbalanced quotes?)"
                    ))
                })?;
            let program = words.remove(0);
            (program, words)
        }
        (Command::Argv(mut argv), _) if !argv.is_empty() => {
            let program = argv.remove(0);
            (program, argv)
        }
        (Command::Argv(_), _) => return Err(Failure::fatal("`command` is empty")),
    };
    let dir = tempfile::Builder::new()
        .prefix("orbit-task-")
        .tempdir()
        .map_err(|e| Failure::error(format!("cannot create a temporary directory: {e}")))?;
    let output_path = dir.path().join("output.json");
    let context_path = dir.path().join("context.json");
    write_file(&context_path, inv.context)?;
    let mut env = process::orbit_env(inv);
    env.push(("ORBIT_OUTPUT".into(), output_path.display().to_string()));
    env.push(("ORBIT_CONTEXT".into(), context_path.display().to_string()));
    env.extend(p.env.iter().map(|(k, v)| (k.clone(), v.to_text())));
    let stdout = process::run(
        Spec {
            program,
            args,
            env,
            cwd: p.cwd,
            stdin: None,
        },
        inv,
    )
    .await?;
    match std::fs::read_to_string(&output_path) {
        Ok(text) if !text.trim().is_empty() => serde_json::from_str(&text)
            .map_err(|e| Failure::fatal(format!("$ORBIT_OUTPUT does not hold JSON: {e}"))),
        _ => Ok(Value::String(stdout.trim().to_owned())),
    }
}

fn write_file(path: &std::path::Path, value: &impl serde::Serialize) -> Result<(), Failure> {
    let f = std::fs::File::create(path)
        .map_err(|e| Failure::error(format!("cannot write {}: {e}", path.display())))?;
    // serde_json writes token by token: buffer them into few system calls.
    let mut f = std::io::BufWriter::new(f);
    serde_json::to_writer(&mut f, value)
        .map_err(|e| Failure::error(e.to_string()))
        .and_then(|()| f.flush().map_err(|e| Failure::error(e.to_string())))
}
