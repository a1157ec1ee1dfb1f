//! The seeds' pipeline dialects, rewritten into Orbit's own keys before checking, so a file in
//! either form is checked (and its problems located) by the same code:
//!
//! - Orbit-Py's JSON DAG: tasks with `action_type` (`http_request`, `python_script`,
//!   `shell_command`, `sleep`), `action_payload`, `dependencies`, `retry_count`, `timeout`
//!   (seconds) and ids; a workflow `name` such as `Data Pipeline` becomes `data-pipeline`.
//! - Orbit-Py's task type names in Orbit's own files: `type: shell_command` is a shell task run
//!   by a shell (`shell: true`), `python_script` a script task whose `script` is its `file`,
//!   `http_request` an http task.
//!
//! Every rewritten key and value keeps the location of what it came from.

use super::{Fields, Located, RawFile};
use serde_json::{Value, json};
use serde_saphyr::Spanned;

/// Rewrites `raw` in place; returns whether it was written in Orbit-Py's dialect.
pub(super) fn translate(raw: &mut RawFile) -> bool {
    let Some(tasks) = raw.tasks.as_mut() else {
        return false;
    };
    let orbit_py = tasks
        .value
        .iter()
        .any(|t| t.value.0.iter().any(|(k, _)| k.value == "action_type"));
    for task in &mut tasks.value {
        translate_task(&mut task.value, orbit_py);
    }
    let name = raw.name.as_mut().filter(|_| orbit_py);
    if let Some(name) = name {
        let slugged = name.value.as_str().map(slug);
        if let Some(s) = slugged {
            name.value = Value::String(s);
        }
    }
    orbit_py
}

/// `Data Pipeline` → `data-pipeline`: an Orbit name (letters, digits, `-_.`).
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '.') {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').chars().take(128).collect()
}

fn translate_task(fields: &mut Fields, orbit_py: bool) {
    let mut out: Vec<(Spanned<String>, Located)> = Vec::with_capacity(fields.0.len() + 2);
    let mut payload: Option<(Spanned<String>, Located)> = None;
    let mut kind: Option<String> = None;
    for (mut key, mut value) in std::mem::take(&mut fields.0) {
        match key.value.as_str() {
            "action_type" | "type" => {
                key.value = "type".into();
                if let Value::String(t) = &value.value {
                    kind = Some(t.clone());
                    value.value = Value::String(builtin(t).to_owned());
                }
                out.push((key, value));
            }
            "dependencies" => {
                key.value = "needs".into();
                out.push((key, value));
            }
            "retry_count" => {
                key.value = "retry".into();
                if let Some(n) = value.value.as_u64() {
                    value.value = json!({"max_attempts": n + 1});
                }
                out.push((key, value));
            }
            "action_payload" => payload = Some((key, value)),
            // Orbit-Py's own bookkeeping: ids, a per-task description, a status.
            "id" | "description" | "status" | "workflow_id" if orbit_py => {}
            _ => out.push((key, value)),
        }
    }
    let has =
        |out: &[(Spanned<String>, Located)], k: &str| out.iter().any(|(key, _)| key.value == k);
    if let Some((key, value)) = payload {
        match value.value.clone() {
            Value::Object(m) => {
                for (k, v) in m {
                    let k = match (kind.as_deref(), k.as_str()) {
                        (Some("python_script"), "script") => "file".to_owned(),
                        (Some("python_script"), "code") => "source".to_owned(),
                        (Some("http_request"), "json" | "data") => "body".to_owned(),
                        (Some("sleep"), "seconds") => "duration".to_owned(),
                        _ => k,
                    };
                    out.push((renamed(&key, &k), with_value(&value, v)));
                }
            }
            // Not a mapping: left for the checker to refuse, where it stands.
            _ => out.push((key, value)),
        }
    } else if kind.as_deref() == Some("python_script") {
        for (key, _) in out.iter_mut() {
            if key.value == "script" {
                key.value = "file".into();
            }
        }
    }
    let type_entry = out
        .iter()
        .find(|(k, _)| k.value == "type")
        .filter(|_| kind.as_deref() == Some("shell_command") && !has(&out, "shell"))
        .cloned();
    if let Some((key, value)) = type_entry {
        out.push((
            renamed(&key, "shell"),
            with_value(&value, Value::Bool(true)),
        ));
    }
    fields.0 = out;
}

/// The built-in type an Orbit-Py action type is.
fn builtin(action: &str) -> &str {
    match action {
        "http_request" => "http",
        "python_script" => "script",
        "shell_command" => "shell",
        other => other,
    }
}

fn renamed(key: &Spanned<String>, to: &str) -> Spanned<String> {
    Spanned::new(to.to_owned(), key.referenced, key.defined)
}

fn with_value(at: &Located, value: Value) -> Located {
    Spanned::new(value, at.referenced, at.defined)
}
