//! Task parameters are templates (`{{ input.orderId }}`) over the run context, rendered with
//! minijinja; an undefined name is an error, not an empty string.

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// What a task's templates can see.
#[derive(Clone, Debug, Serialize)]
pub struct Context<'a> {
    /// The run's input.
    pub input: &'a Value,
    /// Outputs of the task's upstream tasks: `tasks.extract.output`.
    pub tasks: BTreeMap<&'a str, TaskOutput<'a>>,
    pub run: RunInfo<'a>,
    pub task: TaskInfo<'a>,
    /// Stable across attempts of this task run: pass it on as an idempotency key.
    pub effect_key: &'a str,
    /// The version of the task's code: for pipeline files, the pipeline version.
    pub code_version: i64,
    /// A `for_each` child's element and its place in the list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TaskOutput<'a> {
    pub output: &'a Value,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunInfo<'a> {
    pub id: &'a str,
    pub pipeline: &'a str,
}

#[derive(Clone, Debug, Serialize)]
pub struct TaskInfo<'a> {
    pub name: &'a str,
    pub attempt: u32,
}

/// Whether a string holds template syntax (and so needs rendering).
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env
    })
}

/// Renders one template string.
pub fn render_str<S: Serialize>(template: &str, ctx: &S) -> Result<String, String> {
    env()
        .render_str(template, minijinja::value::Serde(ctx))
        .map_err(|e| {
            let mut msg = e.to_string();
            if let Some(detail) = e.detail() {
                msg = format!("{msg}: {detail}");
            }
            format!("template `{template}`: {msg}")
        })
}

/// minijinja's global functions: names a template may call without them being in its context.
const GLOBAL_FUNCTIONS: [&str; 4] = ["range", "dict", "namespace", "debug"];

/// The top-level names `template` uses that are not among `allowed` (`input`, `tasks`, ...);
/// an error names them, or the template's syntax error.
pub fn check_names(template: &str, allowed: &[&str]) -> Result<(), String> {
    let parsed = env()
        .template_from_str(template)
        .map_err(|e| format!("template `{template}`: {e}"))?;
    let mut unknown: Vec<String> = parsed
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| {
            !allowed.contains(&name.as_str()) && !GLOBAL_FUNCTIONS.contains(&name.as_str())
        })
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort();
    Err(format!("`{template}` uses {}", unknown.join(", ")))
}

/// Renders every string inside `params`. A string that is exactly one `{{ expr }}` whose result
/// is JSON-like keeps its type, so `body: "{{ tasks.fetch.output }}"` passes an object on.
pub fn render_params<S: Serialize>(
    params: &Map<String, Value>,
    ctx: &S,
) -> Result<Map<String, Value>, String> {
    params
        .iter()
        .map(|(k, v)| Ok((k.clone(), render_value(v, ctx)?)))
        .collect()
}

/// One value rendered: a string that is one expression keeps the value's JSON type.
pub fn render_value<S: Serialize>(v: &Value, ctx: &S) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) if is_template(s) => {
            if let Some(expr) = single_expression(s) {
                let value = env()
                    .compile_expression(expr)
                    .and_then(|e| e.eval(minijinja::value::Serde(ctx)))
                    .map_err(|e| format!("template `{s}`: {e}"))?;
                if value.is_undefined() {
                    return Err(format!("template `{s}`: undefined value"));
                }
                if !matches!(value.kind(), minijinja::value::ValueKind::String) {
                    return serde_json::to_value(&value)
                        .map_err(|e| format!("template `{s}`: {e}"));
                }
            }
            Value::String(render_str(s, ctx)?)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| render_value(i, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(render_params(map, ctx)?),
        other => other.clone(),
    })
}

/// `Some("expr")` when `s` is `{{ expr }}` and nothing else.
fn single_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then(|| inner.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx<'a>(input: &'a Value, out: &'a Value) -> Context<'a> {
        Context {
            input,
            tasks: BTreeMap::from([("fetch-users", TaskOutput { output: out })]),
            run: RunInfo {
                id: "r1",
                pipeline: "p",
            },
            task: TaskInfo {
                name: "t",
                attempt: 2,
            },
            effect_key: "k1",
            code_version: 3,
            item: None,
            index: None,
        }
    }

    #[test]
    fn renders_strings_and_keeps_types_of_whole_expressions() {
        let input = json!({"orderId": 42, "name": "Ada"});
        let out = json!({"users": [1, 2, 3]});
        let params = json!({
            "url": "http://x/{{ input.orderId }}",
            "body": "{{ tasks['fetch-users'].output }}",
            "count": "{{ tasks['fetch-users'].output.users | length }}",
            "list": ["{{ input.name }}", 7],
            "plain": "no template"
        });
        let rendered = render_params(params.as_object().unwrap(), &ctx(&input, &out)).unwrap();
        assert_eq!(rendered["url"], "http://x/42");
        assert_eq!(rendered["body"], json!({"users": [1, 2, 3]}));
        assert_eq!(rendered["count"], 3);
        assert_eq!(rendered["list"], json!(["Ada", 7]));
        assert_eq!(rendered["plain"], "no template");
    }

    #[test]
    fn undefined_names_are_errors() {
        let input = json!({"orderId": 1});
        let out = json!(null);
        let params = json!({"url": "{{ input.orderID }}"});
        let err = render_params(params.as_object().unwrap(), &ctx(&input, &out)).unwrap_err();
        assert!(err.contains("input.orderID"), "{err}");
        let err = render_str("v{{ input.nope }}", &ctx(&input, &out)).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
    }
}

#[cfg(test)]
mod names {
    use super::check_names;

    #[test]
    fn global_functions_are_not_unknown_names() {
        assert!(check_names("{{ range(input.n) | list }}", &["input"]).is_ok());
        assert!(check_names("{{ dict(a=input.x) }}", &["input"]).is_ok());
        let err = check_names("{{ tasks.a.output }}", &["input"]).unwrap_err();
        assert!(err.contains("uses tasks"), "{err}");
    }
}
