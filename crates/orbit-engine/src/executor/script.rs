//! `type: script`: a program for an interpreter. It reads the task context as JSON on stdin and
//! prints its JSON output on stdout (the whole of stdout, or its last non-empty line, so that
//! earlier lines can be progress messages).

use super::Invocation;
use super::process::{self, Spec};
use orbit_core::params::ScriptParams;
use orbit_core::transition::Failure;
use serde_json::Value;

pub async fn run(p: ScriptParams, inv: &Invocation<'_>) -> Result<Value, Failure> {
    // Inline source goes to a file: every interpreter can run a file, not all take `-c`.
    let mut _source_file = None;
    let program_file = match (&p.source, &p.file) {
        (Some(source), _) => {
            let f = tempfile::Builder::new()
                .prefix("orbit-script-")
                .tempfile()
                .map_err(|e| Failure::error(format!("cannot create a temporary file: {e}")))?;
            std::fs::write(f.path(), source)
                .map_err(|e| Failure::error(format!("cannot write the script: {e}")))?;
            let path = f.path().display().to_string();
            _source_file = Some(f);
            path
        }
        (None, Some(file)) => file.clone(),
        (None, None) => {
            return Err(Failure::fatal(
                "missing required parameter `source` or `file`",
            ));
        }
    };
    let mut args = vec![program_file];
    args.extend(p.args);
    let mut env = process::orbit_env(inv);
    env.extend(p.env.iter().map(|(k, v)| (k.clone(), v.to_text())));
    let stdin = serde_json::to_vec(inv.context).map_err(|e| Failure::error(e.to_string()))?;
    let stdout = process::run(
        Spec {
            program: p.interpreter,
            args,
            env,
            cwd: p.cwd,
            stdin: Some(stdin),
        },
        inv,
    )
    .await?;
    parse_output(&stdout)
}

fn parse_output(stdout: &str) -> Result<Value, Failure> {
    let trimmed = stdout.trim();
    if trimmed.is_empty() {
        return Ok(Value::Null);
    }
    if let Ok(v) = serde_json::from_str(trimmed) {
        return Ok(v);
    }
    let last = trimmed
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    serde_json::from_str(last).map_err(|_| {
        let shown: String = last.chars().take(200).collect();
        Failure::fatal(format!(
            "script printed no JSON on stdout (last line: {shown})"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn output_is_the_json_or_its_last_line() {
        assert_eq!(parse_output("{\"a\": 1}\n").unwrap(), json!({"a": 1}));
        assert_eq!(
            parse_output("working...\n50%\n[1, 2]\n").unwrap(),
            json!([1, 2])
        );
        assert_eq!(parse_output("  \n").unwrap(), Value::Null);
        assert!(
            parse_output("hello\nworld")
                .unwrap_err()
                .message
                .contains("last line: world")
        );
    }
}
