//! Every setting Orbit reads from its environment, with its default, the seeds' names for it,
//! and whether it is a secret: what `orbit config` shows, what `.env.example` lists (a test
//! keeps the two the same). Layers, each over the one before: defaults < `orbit.toml` (or the
//! file `ORBIT_CONFIG` names) < `.env` < the environment < command-line flags.

use std::collections::HashSet;
use std::sync::OnceLock;

pub struct Setting {
    pub name: &'static str,
    /// The seeds' names for the same setting, read when `name` is not set.
    pub aliases: &'static [&'static str],
    /// What applies when it is not set ("" when nothing does).
    pub default: &'static str,
    /// Never shown: `orbit config` prints `****`.
    pub secret: bool,
    pub about: &'static str,
}

const fn s(
    name: &'static str,
    aliases: &'static [&'static str],
    default: &'static str,
    secret: bool,
    about: &'static str,
) -> Setting {
    Setting {
        name,
        aliases,
        default,
        secret,
        about,
    }
}

pub const SETTINGS: &[Setting] = &[
    s(
        "ORBIT_DATABASE_URL",
        &["DATABASE_URL"],
        "sqlite://.orbit/orbit.db",
        false,
        "where state is kept: sqlite://path, a file path, or postgres://… (the nearest .orbit upwards when unset)",
    ),
    s(
        "ORBIT_SQLITE_SYNCHRONOUS",
        &[],
        "full",
        false,
        "full (a commit survives power loss) or normal",
    ),
    s(
        "ORBIT_PG_POOL_SIZE",
        &[],
        "16",
        false,
        "PostgreSQL connections per process",
    ),
    s(
        "ORBIT_URL",
        &["PIPEWEAVE_ORCHESTRATOR_URL"],
        "",
        false,
        "the server the CLI's --url commands talk to",
    ),
    s(
        "ORBIT_API_TOKEN",
        &[],
        "",
        true,
        "bearer token every API call must carry (server and clients)",
    ),
    s(
        "ORBIT_SECRET_KEY",
        &["PIPEWEAVE_SECRET_KEY"],
        "",
        true,
        "the key the server and its worker services sign worker-protocol tokens with",
    ),
    s(
        "ORBIT_BIND",
        &[],
        "127.0.0.1:3000",
        false,
        "the server's listen address",
    ),
    s(
        "ORBIT_WORKERS",
        &[],
        "10 on SQLite, 0 on PostgreSQL",
        false,
        "embedded worker slots of orbit server",
    ),
    s(
        "ORBIT_ALLOWED_HOSTS",
        &[],
        "",
        false,
        "more Host names a server without a token serves",
    ),
    s(
        "ORBIT_CORS_ORIGINS",
        &[],
        "",
        false,
        "origins whose web pages may call the API",
    ),
    s("MODE", &[], "standalone", false, "standalone or serverless"),
    s(
        "MAX_CONCURRENCY",
        &[],
        "10",
        false,
        "tasks a process runs at once",
    ),
    s(
        "POLL_INTERVAL_MS",
        &[],
        "1000",
        false,
        "how often servers and workers look for work nobody announced",
    ),
    s(
        "MAX_RETRY_DELAY_MS",
        &[],
        "86400000",
        false,
        "the longest any retry waits (a task's max_delay can only be shorter)",
    ),
    s(
        "IDEMPOTENCY_TTL_SECONDS",
        &[],
        "86400",
        false,
        "how long run and task idempotency keys hold",
    ),
    s(
        "DLQ_RETENTION_DAYS",
        &[],
        "30",
        false,
        "how long dead-letter entries are kept",
    ),
    s(
        "ORBIT_RUN_RETENTION",
        &[],
        "off",
        false,
        "how long settled runs are kept after they finish (e.g. 30d); off keeps them",
    ),
    s(
        "INTERRUPTED_RUN_THRESHOLD_MINUTES",
        &[],
        "0.5",
        false,
        "how long a run nobody executes must be idle to count as interrupted (orbit check-interrupted --idle)",
    ),
    s(
        "STORAGE_BACKENDS",
        &[],
        "",
        true,
        "object storage backends, a JSON array (holds credentials)",
    ),
    s(
        "DEFAULT_STORAGE_BACKEND_ID",
        &[],
        "",
        false,
        "the backend new objects go to",
    ),
    s(
        "STORAGE_PROVIDER",
        &[],
        "local",
        false,
        "one backend: local, minio, aws-s3 or gcs",
    ),
    s(
        "STORAGE_PATH",
        &[],
        ".orbit/objects",
        false,
        "the directory of the local backend",
    ),
    s("S3_ENDPOINT", &[], "", false, "S3/MinIO endpoint"),
    s("S3_BUCKET", &[], "", false, "S3/MinIO/GCS bucket"),
    s("S3_REGION", &[], "us-east-1", false, "S3 region"),
    s("S3_ACCESS_KEY", &[], "", true, "S3/MinIO access key"),
    s("S3_SECRET_KEY", &[], "", true, "S3/MinIO secret key"),
    s(
        "ORBIT_STORAGE_THRESHOLD",
        &[],
        "64KiB",
        false,
        "values larger than this go to object storage",
    ),
    s(
        "ORBIT_STORAGE_GRANT_TTL",
        &[],
        "10m",
        false,
        "how long a worker's URL to an object stays valid",
    ),
    s(
        "ORBIT_LOG",
        &[],
        "warn",
        false,
        "log filter for diagnostics on stderr",
    ),
    s(
        "ORBIT_LOG_FORMAT",
        &[],
        "text",
        false,
        "`json`: one JSON object a log line, with its spans (request id; run, task, attempt)",
    ),
    s("NO_COLOR", &[], "", false, "set: no colour in log lines"),
    s(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        &[],
        "",
        false,
        "OpenTelemetry collector (OTLP/HTTP, e.g. http://localhost:4318): runs' traces are exported when set",
    ),
    s(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        &[],
        "",
        false,
        "the full URL for traces, over OTEL_EXPORTER_OTLP_ENDPOINT (…/v1/traces)",
    ),
    s(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        &[],
        "http/protobuf",
        false,
        "only http/protobuf (no gRPC)",
    ),
    s(
        "OTEL_EXPORTER_OTLP_HEADERS",
        &[],
        "",
        true,
        "headers for the collector: key1=value1,key2=value2 (a vendor's API key)",
    ),
    s(
        "OTEL_SERVICE_NAME",
        &[],
        "orbit",
        false,
        "the service name on exported spans",
    ),
    s(
        "OTEL_TRACES_EXPORTER",
        &[],
        "otlp",
        false,
        "`none`: export no traces even with an endpoint set",
    ),
];

/// The names a `.env` file set (those not already in the environment).
static FROM_DOTENV: OnceLock<HashSet<String>> = OnceLock::new();

/// Loads `.env` from the working directory, if there is one; the real environment wins. Must run
/// before any thread starts (it sets environment variables). A malformed file is reported and
/// the command goes on without it.
pub fn load_dotenv() {
    let before: HashSet<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    let loaded = match dotenvy::dotenv() {
        Ok(_) => std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| !before.contains(k))
            .collect(),
        Err(e) if e.not_found() => HashSet::new(),
        Err(e) => {
            crate::output::error_line(format_args!("warning: .env not read: {e}"));
            HashSet::new()
        }
    };
    let _ = FROM_DOTENV.set(loaded);
}

/// The names `orbit.toml` set (those neither in the environment nor in `.env`).
static FROM_TOML: OnceLock<HashSet<String>> = OnceLock::new();

/// Loads `orbit.toml` (or `$ORBIT_CONFIG`) from the working directory, under `.env` and the
/// environment: each key is a setting, by its name (`ORBIT_SQLITE_SYNCHRONOUS`) or in lower
/// case without `ORBIT_` (`sqlite_synchronous`). Must run after [`load_dotenv`] and before any
/// thread starts. A malformed file or an unknown key is bad input (exit 2), naming the file and
/// the line.
pub fn load_toml() -> Result<(), crate::BadInput> {
    let named = std::env::var_os("ORBIT_CONFIG");
    let path = named.clone().map_or_else(
        || std::path::PathBuf::from("orbit.toml"),
        std::path::PathBuf::from,
    );
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && named.is_none() => {
            let _ = FROM_TOML.set(HashSet::new());
            return Ok(());
        }
        Err(e) => {
            return Err(crate::BadInput(format!("{}: {e}", path.display())));
        }
    };
    let doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        crate::BadInput(format!("{}: {}", path.display(), e.to_string().trim_end()))
    })?;
    let mut lines = String::new();
    let mut loaded = HashSet::new();
    for (key, item) in doc.iter() {
        // The key's own line (top-level keys only: tables are refused below).
        let line = text
            .lines()
            .position(|l| {
                l.trim_start()
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
            .map_or(1, |i| i + 1);
        let Some(setting) = SETTINGS.iter().find(|s| {
            s.name == key
                || s.name.eq_ignore_ascii_case(key)
                || s.name
                    .strip_prefix("ORBIT_")
                    .is_some_and(|n| n.eq_ignore_ascii_case(key))
        }) else {
            return Err(crate::BadInput(format!(
                "{}:{line}: `{key}` is not a setting (`orbit config` lists them)",
                path.display()
            )));
        };
        let value = match item.as_value() {
            Some(toml_edit::Value::String(s)) => s.value().clone(),
            Some(toml_edit::Value::Integer(i)) => i.value().to_string(),
            Some(toml_edit::Value::Float(f)) => f.value().to_string(),
            Some(toml_edit::Value::Boolean(b)) => b.value().to_string(),
            _ => {
                return Err(crate::BadInput(format!(
                    "{}:{line}: `{key}` must be a string, a number or a boolean",
                    path.display()
                )));
            }
        };
        if std::env::var_os(setting.name).is_some() {
            continue;
        }
        // dotenvy's single quotes keep the value as it is; a quote inside cannot be written so.
        if value.contains('\'') || value.contains('\n') {
            return Err(crate::BadInput(format!(
                "{}:{line}: `{key}` holds a quote or a line break, which settings cannot",
                path.display()
            )));
        }
        lines.push_str(&format!("{}='{value}'\n", setting.name));
        loaded.insert(setting.name.to_owned());
    }
    dotenvy::from_read(lines.as_bytes())
        .map_err(|e| crate::BadInput(format!("{}: {e}", path.display())))?;
    let _ = FROM_TOML.set(loaded);
    Ok(())
}

/// Where a setting's value comes from: `environment`, `.env`, `orbit.toml`, or `default`.
pub fn source(name: &str) -> &'static str {
    match lookup(name) {
        None => "default",
        Some((_, from)) if FROM_TOML.get().is_some_and(|t| t.contains(from)) => "orbit.toml",
        Some((_, from)) if FROM_DOTENV.get().is_some_and(|d| d.contains(from)) => ".env",
        Some(_) => "environment",
    }
}

/// A setting whose value cannot be used: bad input naming the setting, its value and where it
/// came from.
pub fn invalid(name: &str, value: &str, problem: &str) -> crate::BadInput {
    crate::BadInput(format!(
        "{name} `{value}` (from {}): {problem}",
        source(name)
    ))
}

/// A setting's value: its own variable, else the first of its seed aliases that is set.
pub fn var(name: &str) -> Option<String> {
    lookup(name).map(|(v, _)| v)
}

/// A setting's value and the variable it came from.
fn lookup(name: &str) -> Option<(String, &'static str)> {
    let setting = SETTINGS.iter().find(|s| s.name == name);
    let names = std::iter::once(setting.map_or("", |s| s.name))
        .chain(setting.map_or(&[][..], |s| s.aliases).iter().copied())
        .filter(|n| !n.is_empty());
    for n in names {
        if let Some(v) = std::env::var(n).ok().filter(|v| !v.is_empty()) {
            return Some((v, n));
        }
    }
    if setting.is_none() {
        return std::env::var(name).ok().map(|v| (v, ""));
    }
    None
}

/// The settings as `--help` lists them.
pub fn help() -> String {
    let mut out = String::from(
        "Settings (defaults < orbit.toml < .env < environment < flags; `orbit config` shows each value and its source):\n",
    );
    for s in SETTINGS {
        let aliases = if s.aliases.is_empty() {
            String::new()
        } else {
            format!(" (or {})", s.aliases.join(", "))
        };
        let default = if s.default.is_empty() {
            String::new()
        } else {
            format!(" [default: {}]", s.default)
        };
        out.push_str(&format!(
            "  {}{aliases}\n          {}{default}\n",
            s.name, s.about
        ));
    }
    out
}

/// `orbit config`: every setting, its effective value (secrets masked) and where it came from.
pub fn show(json: bool) -> anyhow::Result<u8> {
    let dotenv = FROM_DOTENV.get();
    let rows: Vec<(String, String, String, &str)> = SETTINGS
        .iter()
        .map(|s| {
            let (value, source) = match lookup(s.name) {
                Some((v, from)) => {
                    let place = if FROM_TOML.get().is_some_and(|t| t.contains(from)) {
                        "orbit.toml"
                    } else if dotenv.is_some_and(|d| d.contains(from)) {
                        ".env"
                    } else {
                        "environment"
                    };
                    let source = if from == s.name {
                        place.to_owned()
                    } else {
                        format!("{place} ({from})")
                    };
                    (shown(s, &v), source)
                }
                None => (s.default.to_owned(), "default".to_owned()),
            };
            (s.name.to_owned(), value, source, s.about)
        })
        .collect();
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(n, v, src, about)| {
                serde_json::json!({"name": n, "value": v, "source": src, "about": about})
            })
            .collect();
        crate::output::json(&list)?;
    } else {
        let table: Vec<Vec<String>> = rows
            .into_iter()
            .map(|(n, v, src, _)| vec![n, if v.is_empty() { "-".into() } else { v }, src])
            .collect();
        crate::output::table(&["SETTING", "VALUE", "SOURCE"], &table);
    }
    Ok(0)
}

fn shown(s: &Setting, value: &str) -> String {
    if s.secret {
        return "****".into();
    }
    if s.name == "ORBIT_DATABASE_URL" {
        return crate::commands::redact(value);
    }
    value.to_owned()
}

#[cfg(test)]
mod tests {
    use super::SETTINGS;

    #[test]
    fn env_example_lists_every_setting_with_its_default() {
        let example = include_str!("../../../.env.example");
        for s in SETTINGS {
            let line = example
                .lines()
                .find(|l| {
                    l.trim_start_matches("# ")
                        .starts_with(&format!("{}=", s.name))
                })
                .unwrap_or_else(|| panic!(".env.example has no line for {}", s.name));
            assert!(
                line.ends_with(&format!("={}", s.default)) || s.default.contains(' '),
                "{line}: the default is {}",
                s.default
            );
        }
    }
}
