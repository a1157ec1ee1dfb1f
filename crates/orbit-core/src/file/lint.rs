//! Warnings about valid files: shell syntax in a command that runs without a shell, and run
//! data spliced into shell code.

use super::{Checker, Diagnostic, Located};
use serde_json::Value;

impl Checker {
    /// Warns about a command string that looks like shell code but runs without a shell, and
    /// about run input or upstream output spliced into shell code (a value holding `;` or
    /// `$(…)` would run as code).
    pub(super) fn lint_shell(
        &mut self,
        task: &str,
        command: Option<&Located>,
        shell: Option<&Located>,
    ) {
        let Some(command) = command else { return };
        let in_shell = shell.is_some_and(|s| s.value == Value::Bool(true));
        let warn = |c: &mut Checker, message: String| {
            c.warnings.push(Diagnostic {
                line: command.referenced.line(),
                column: command.referenced.column(),
                message,
            })
        };
        let unshelled = match (&command.value, in_shell) {
            (Value::String(line), false) => shell_syntax(&outside_templates(line)),
            _ => None,
        };
        if let Some(syntax) = unshelled {
            warn(
                self,
                format!(
                    "task `{task}`: the command holds shell syntax (`{syntax}`) but runs without a shell, so it is passed to the program as a plain argument; did you mean `shell: true`?"
                ),
            );
        }
        let code = match &command.value {
            Value::String(line) if in_shell => line.clone(),
            Value::Array(argv) if in_shell => argv
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            _ => return,
        };
        if let Some(what) = spliced_data(&code) {
            warn(
                self,
                format!(
                    "task `{task}`: `{what}` is spliced into shell code, where a value holding `;` or `$(…)` runs as a command; pass it through `env` instead (e.g. `env: {{VALUE: \"{{{{ {what} }}}}\"}}` and \"$VALUE\" in the command)"
                ),
            );
        }
    }
}

/// `text` with its `{{ … }}` and `{% … %}` template parts blanked out (a filter's `|` is not a
/// pipe).
fn outside_templates(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest
        .find('{')
        .filter(|&i| rest[i..].starts_with("{{") || rest[i..].starts_with("{%"))
    {
        out.push_str(&rest[..start]);
        let close = if rest[start..].starts_with("{{") {
            "}}"
        } else {
            "%}"
        };
        match rest[start + 2..].find(close) {
            Some(end) => rest = &rest[start + 2 + end + 2..],
            None => return out,
        }
        out.push(' ');
    }
    out.push_str(rest);
    out
}

/// The first shell-only construct in `text`, if any.
fn shell_syntax(text: &str) -> Option<&'static str> {
    for token in ["&&", "||", "$(", "`", ";", "|", ">", "<"] {
        if text.contains(token) {
            return Some(token);
        }
    }
    text.as_bytes()
        .windows(2)
        .any(|w| w[0] == b'$' && (w[1].is_ascii_alphabetic() || w[1] == b'_' || w[1] == b'{'))
        .then_some("$VAR")
}

/// The first run input or upstream output a template splices into `code`: `input…` or
/// `tasks…`.
fn spliced_data(code: &str) -> Option<String> {
    let mut rest = code;
    while let Some(start) = rest.find("{{") {
        let inner = &rest[start + 2..];
        let end = inner.find("}}").unwrap_or(inner.len());
        let head: String = inner[..end]
            .trim()
            .chars()
            .take_while(|c| {
                c.is_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '\'' | '"' | '-')
            })
            .collect();
        if head.starts_with("input") || head.starts_with("tasks") {
            return Some(head);
        }
        rest = &inner[end..];
    }
    None
}
