//! One module per command; each parses, calls the store or engine, and renders.

mod client;
mod control;
mod dlq;
mod graph;
mod inspect;
mod limits;
mod over_url;
mod recover;
mod remote;
mod replay;
mod rerun;
pub mod run;
mod serve;
mod supervise;
mod validate;
mod waits;

pub use serve::redact;

use crate::BadInput;
use crate::cli::{Cli, Command, LimitsAction};
use anyhow::Context as _;
use clap::CommandFactory as _;
use orbit_core::Pipeline;
use orbit_core::file::parse_pipeline;
use orbit_engine::storage::Storage;
use orbit_store::Store;
use orbit_store_postgres::PgStore;
use orbit_store_sqlite::{Durability, SqliteStore};
use std::path::Path;
use std::sync::Arc;

/// Where Orbit keeps its state when nothing is configured: the nearest `.orbit` directory that
/// holds a database, in the working directory or above it (as git finds `.git`), else
/// `.orbit` in the working directory. Set once, before any command runs.
static HOME: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// The `.orbit` directory in use (see [`HOME`]).
pub fn home() -> &'static Path {
    HOME.get_or_init(|| Path::new(".orbit").to_path_buf())
}

fn discover_home() -> std::path::PathBuf {
    let here = std::env::current_dir().unwrap_or_default();
    here.ancestors()
        .map(|d| d.join(".orbit"))
        .find(|o| o.join("orbit.db").is_file())
        .unwrap_or_else(|| here.join(".orbit"))
}

pub async fn dispatch(mut cli: Cli) -> anyhow::Result<u8> {
    // The server a command talks to: --url / ORBIT_URL (clap), else the seed's
    // PIPEWEAVE_ORCHESTRATOR_URL.
    if let Some(remote) = cli.command.remote_mut().filter(|r| r.url.is_none()) {
        remote.url = crate::settings::var("ORBIT_URL");
    }
    let url = database_url(cli.database_url.take());
    let json = cli.json;
    if cli.auto_recover
        && !matches!(
            cli.command,
            Command::Validate { .. }
                | Command::Bench(_)
                | Command::Completions { .. }
                | Command::Man
        )
    {
        let code = recover::recover(&open_store(&url).await?, true, idle_for(None)?, json).await?;
        if code != 0 {
            eprintln!("warning: some interrupted runs could not be recovered; going on");
        }
    }
    match cli.command {
        Command::Validate { file } => validate::validate(&file, json),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "orbit", &mut out);
            print!("{}", String::from_utf8_lossy(&out));
            Ok(0)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            print!("{}", String::from_utf8_lossy(&out));
            Ok(0)
        }
        Command::Run(args) => run::run(&open_store(&url).await?, args, json).await,
        Command::List { remote } => match &remote.url {
            Some(server) => over_url::list(server, json).await,
            None => inspect::list(open_store(&url).await?.as_ref(), json).await,
        },
        Command::Apply { files, remote } => {
            over_url::apply(remote.url.as_deref(), &url, &files, json).await
        }
        Command::Runs(args) => match &args.remote.url {
            Some(server) => remote::runs(server, &args, json).await,
            None => {
                let store = open_store(&url).await?;
                show_store(&url, json);
                inspect::runs(store.as_ref(), &args, json).await
            }
        },
        Command::Status { run, remote } => match &remote.url {
            Some(server) => remote::status(server, &run, json).await,
            None => {
                let store = open_store(&url).await?;
                show_store(&url, json);
                inspect::status(store.as_ref(), &run, json).await
            }
        },
        Command::Why { run, task, remote } => match &remote.url {
            Some(server) => remote::why(server, &run, task.as_deref(), json).await,
            None => {
                let store = open_store(&url).await?;
                show_store(&url, json);
                inspect::why(store.as_ref(), &run, task.as_deref(), json).await
            }
        },
        Command::Trigger(args) => remote::trigger(&url, args, json).await,
        Command::Services { remote } => remote::services(&url, remote.url.as_deref(), json).await,
        Command::Tasks {
            action:
                crate::cli::TasksAction::History {
                    task,
                    pipeline,
                    remote,
                },
        } => remote::task_history(&url, remote.url.as_deref(), &task, pipeline, json).await,
        Command::Server(args) => serve::server(&url, args).await,
        Command::Worker(args) => serve::worker(&url, args).await,
        Command::Db { action } => serve::db(&url, action).await,
        Command::Context { task_run, attempt } => {
            let store = open_store(&url).await?;
            replay::context(&store, &task_run, attempt, json).await
        }
        Command::Replay { task_run, attempt } => {
            let store = open_store(&url).await?;
            replay::replay(&store, &task_run, attempt, json).await
        }
        Command::Logs { run, task, remote } => match &remote.url {
            Some(server) => over_url::logs(server, &run, task.as_deref(), json).await,
            None => {
                let store = open_store(&url).await?;
                inspect::logs(store.as_ref(), &run, task.as_deref(), json).await
            }
        },
        Command::Graph { pipeline, remote } => match &remote.url {
            Some(server) => over_url::graph(server, &pipeline, json).await,
            None => graph::graph(&url, &pipeline, json).await,
        },
        Command::Signal {
            name,
            data,
            ttl,
            remote,
        } => {
            let payload = match data.as_deref() {
                Some(d) => run::parse_input(Some(d))?,
                None => serde_json::Value::Null,
            };
            match &remote.url {
                Some(server) => waits::signal_over(server, &name, &payload, &ttl, json).await,
                None => {
                    waits::signal(
                        open_store(&url).await?.as_ref(),
                        &name,
                        &payload,
                        &ttl,
                        json,
                    )
                    .await
                }
            }
        }
        Command::Approve {
            run,
            task,
            reject,
            message,
            by,
            remote,
        } => {
            let decision = waits::decision(!reject, message, by);
            match &remote.url {
                Some(server) => waits::decide_over(server, &run, &task, &decision, json).await,
                None => {
                    waits::decide(
                        open_store(&url).await?.as_ref(),
                        &run,
                        &task,
                        &decision,
                        json,
                    )
                    .await
                }
            }
        }
        Command::Cancel { run, remote } => match &remote.url {
            Some(server) => over_url::cancel(server, &run, json).await,
            None => control::cancel(open_store(&url).await?.as_ref(), &run, json).await,
        },
        Command::Delete { run, remote } => match &remote.url {
            Some(server) => over_url::delete(server, &run, json).await,
            None => control::delete(open_store(&url).await?.as_ref(), &run, json).await,
        },
        Command::Retry {
            run,
            no_wait,
            remote,
        } => match &remote.url {
            Some(server) => over_url::retry(server, &run, json).await,
            None => control::retry(&open_store(&url).await?, &run, no_wait, json).await,
        },
        Command::Rerun {
            run,
            from,
            input,
            edit,
            no_wait,
            remote,
        } => {
            let ask = rerun::Ask {
                run,
                from,
                input: input
                    .as_deref()
                    .map(|i| run::parse_input(Some(i)))
                    .transpose()?,
                edit,
            };
            match &remote.url {
                Some(server) => rerun::over_url(server, ask, json).await,
                None => rerun::local(&open_store(&url).await?, ask, no_wait, json).await,
            }
        }
        Command::CheckInterrupted { idle } => {
            recover::check_interrupted(open_store(&url).await?.as_ref(), idle_for(idle)?, json)
                .await
        }
        Command::Resume { run, remote } => match &remote.url {
            Some(server) => over_url::resume(server, &run, json).await,
            None => recover::resume(&open_store(&url).await?, &run, json).await,
        },
        Command::Recover { auto_resume, idle } => {
            recover::recover(&open_store(&url).await?, auto_resume, idle_for(idle)?, json).await
        }
        Command::Limits { action, remote } => {
            let action = action.unwrap_or(LimitsAction::List);
            match &remote.url {
                Some(server) => over_url::limits(server, action, json).await,
                None => limits::limits(open_store(&url).await?.as_ref(), action, json).await,
            }
        }
        Command::Dlq { action, remote } => match &remote.url {
            Some(server) => over_url::dlq(server, action, json).await,
            None => dlq::dlq(&open_store(&url).await?, action, json).await,
        },
        Command::Bench(args) => crate::bench::bench(args, json).await,
        Command::Config => crate::settings::show(json),
        Command::BenchWorker {
            url,
            concurrency,
            push,
        } => crate::bench_sdk::worker(url, concurrency, push).await,
    }
}

/// `--idle`, else INTERRUPTED_RUN_THRESHOLD_MINUTES (the seed's setting), else 30 s.
fn idle_for(flag: Option<std::time::Duration>) -> anyhow::Result<std::time::Duration> {
    if let Some(d) = flag {
        return Ok(d);
    }
    match crate::settings::var("INTERRUPTED_RUN_THRESHOLD_MINUTES") {
        None => Ok(std::time::Duration::from_secs(30)),
        Some(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|m| m.is_finite() && *m >= 0.0)
            .map(|m| std::time::Duration::from_secs_f64(m * 60.0))
            .ok_or_else(|| {
                crate::settings::invalid(
                    "INTERRUPTED_RUN_THRESHOLD_MINUTES",
                    &v,
                    "not a number of minutes",
                )
                .into()
            }),
    }
}

/// `--database-url`, then `ORBIT_DATABASE_URL` (both via clap), then the seeds' `DATABASE_URL`;
/// without any, the database of the nearest `.orbit` (see [`HOME`]), whose `objects` directory
/// then holds the local object storage too.
fn database_url(flag: Option<String>) -> String {
    match flag.or_else(|| std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty())) {
        Some(url) => url,
        None => {
            let home = HOME.get_or_init(discover_home);
            format!("sqlite://{}", home.join("orbit.db").display())
        }
    }
}

/// Object storage as the environment configures it (`STORAGE_BACKENDS`, `STORAGE_PROVIDER`, …),
/// else the local directory `objects` of the `.orbit` in use. A bad configuration is bad input
/// (exit 2) and its message names the field.
pub fn storage() -> anyhow::Result<Arc<Storage>> {
    let storage = Storage::from_env(&|k| std::env::var(k).ok(), &home().join("objects"))
        .map_err(|e| BadInput(e.to_string()))?;
    Ok(Arc::new(storage))
}

/// Says which store a listing comes from (people, not `--json` readers, need it: an `orbit`
/// started in another folder finds another `.orbit`).
fn show_store(url: &str, json: bool) {
    if let Some(line) = store_line(url).filter(|_| !json) {
        println!("{line}");
    }
}

/// Where a SQLite database is, for the header of listings: `store: PATH`.
pub fn store_line(url: &str) -> Option<String> {
    match database(url).ok()? {
        Database::Sqlite(u) => {
            let path = u
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let path = Path::new(path.split('?').next().unwrap_or(path));
            let shown = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
            Some(format!("store: {}", shown.display()))
        }
        Database::Postgres(u) => Some(format!("store: {}", serve::redact(&u))),
    }
}

/// SQLite durability: `ORBIT_SQLITE_SYNCHRONOUS=normal` opts out of `FULL`.
pub fn durability() -> anyhow::Result<Durability> {
    match std::env::var("ORBIT_SQLITE_SYNCHRONOUS") {
        Ok(v) => v.parse().map_err(|e: String| {
            crate::settings::invalid("ORBIT_SQLITE_SYNCHRONOUS", &v, &e).into()
        }),
        Err(_) => Ok(Durability::Full),
    }
}

/// The store behind `url`, ready for use: SQLite files are created and migrated; PostgreSQL is
/// only checked (see `orbit db migrate`).
pub async fn open_store(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    Ok(connect(url, false).await?.store)
}

pub struct Connected {
    pub store: Arc<dyn Store>,
    /// `sqlite` or `postgres`.
    pub kind: &'static str,
}

/// What `connect(…, migrate: true)` did to a PostgreSQL schema: migrations applied, version now.
pub static MIGRATED: std::sync::OnceLock<(usize, i64)> = std::sync::OnceLock::new();

/// A database URL, understood: which store, and the URL that store takes.
#[derive(Debug, PartialEq)]
pub enum Database {
    Sqlite(String),
    Postgres(String),
}

/// Reads a database URL as users of Orbit and of its predecessors write them: `sqlite:` URLs
/// (also SQLAlchemy's `sqlite+aiosqlite:///relative.db`), a plain file path (SQLite),
/// `postgres:`/`postgresql:` (also with a driver suffix such as `postgresql+asyncpg:`).
/// Anything else is refused, naming its scheme, rather than becoming a file named after it.
pub fn database(url: &str) -> Result<Database, BadInput> {
    let url = url.trim();
    let scheme = url.split_once(':').map(|(s, _)| s).filter(|s| {
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    let Some(scheme) = scheme else {
        if url.is_empty() {
            return Err(BadInput("the database URL is empty".into()));
        }
        return Ok(Database::Sqlite(format!("sqlite://{url}")));
    };
    let (base, driver) = scheme.split_once('+').unwrap_or((scheme, ""));
    let rest = &url[scheme.len()..];
    match base.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" => Ok(Database::Postgres(format!("postgres{rest}"))),
        // SQLAlchemy's form: three slashes before a relative path, four before an absolute one.
        "sqlite" if !driver.is_empty() => Ok(Database::Sqlite(format!(
            "sqlite://{}",
            rest.strip_prefix(":///")
                .unwrap_or(rest.trim_start_matches(':'))
        ))),
        "sqlite" => Ok(Database::Sqlite(url.to_owned())),
        _ => Err(BadInput(format!(
            "database URL `{}`: unknown scheme `{}` (expected sqlite:, postgres: or postgresql:, or the path of a SQLite file)",
            serve::redact(url),
            orbit_core::echo::echo(scheme)
        ))),
    }
}

/// Opens the store behind `url`; with `migrate`, PostgreSQL migrations are applied first
/// (SQLite always migrates: its file belongs to this process).
pub async fn connect(url: &str, migrate: bool) -> anyhow::Result<Connected> {
    let url = match database(url)? {
        Database::Postgres(url) => url,
        Database::Sqlite(url) => return connect_sqlite(&url).await,
    };
    {
        let url = url.as_str();
        let pool: u32 = std::env::var("ORBIT_PG_POOL_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(16);
        let store = PgStore::connect(url, pool)
            .await
            .with_context(|| format!("opening {}", serve::redact(url)))?;
        if migrate {
            let (applied, version) = store.migrate().await?;
            MIGRATED.get_or_init(|| (applied, version));
        } else {
            store.check_schema().await?;
        }
        Ok(Connected {
            store: Arc::new(store),
            kind: "postgres",
        })
    }
}

async fn connect_sqlite(url: &str) -> anyhow::Result<Connected> {
    let store = SqliteStore::open(url, durability()?)
        .await
        .with_context(|| format!("opening {url}"))?;
    Ok(Connected {
        store: Arc::new(store),
        kind: "sqlite",
    })
}

/// Reads and validates a pipeline file; every problem becomes one line of the error.
pub fn load_file(path: &Path) -> anyhow::Result<(Pipeline, String)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BadInput(format!("cannot read {}: {e}", path.display())))?;
    let pipeline = parse_pipeline(&path.display().to_string(), &text)?;
    Ok((pipeline, text))
}

/// A pipeline named on the command line: an existing file, or a saved pipeline's name.
pub fn is_file_argument(arg: &str) -> bool {
    let p = Path::new(arg);
    p.is_file() || arg.ends_with(".yaml") || arg.ends_with(".yml") || arg.contains('/')
}

pub async fn saved_pipeline(
    store: &dyn Store,
    name: &str,
) -> anyhow::Result<orbit_store::StoredPipeline> {
    store.pipeline(name).await.map_err(|e| match e {
        orbit_store::StoreError::NotFound(_) => BadInput(format!(
            "no pipeline named `{name}` (see `orbit list`, or give the path of a pipeline file)"
        ))
        .into(),
        other => anyhow::Error::from(other),
    })
}

#[cfg(test)]
mod tests {
    use super::{Database, database};

    #[test]
    fn database_urls_in_every_dialect_and_nothing_else() {
        let sqlite = |s: &str| Ok(Database::Sqlite(s.to_owned()));
        let pg = |s: &str| Ok(Database::Postgres(s.to_owned()));
        assert_eq!(
            database("sqlite://.orbit/orbit.db"),
            sqlite("sqlite://.orbit/orbit.db")
        );
        assert_eq!(database("sqlite:orbit.db"), sqlite("sqlite:orbit.db"));
        assert_eq!(database("data/orbit.db"), sqlite("sqlite://data/orbit.db"));
        assert_eq!(
            database("/var/lib/orbit.db"),
            sqlite("sqlite:///var/lib/orbit.db")
        );
        assert_eq!(
            database("sqlite+aiosqlite:///./orbit.db"),
            sqlite("sqlite://./orbit.db")
        );
        assert_eq!(
            database("sqlite+aiosqlite:////tmp/o.db"),
            sqlite("sqlite:///tmp/o.db")
        );
        assert_eq!(database("postgres://u@h/db"), pg("postgres://u@h/db"));
        assert_eq!(
            database("postgresql://u:pw@h/db"),
            pg("postgres://u:pw@h/db")
        );
        assert_eq!(
            database("postgresql+asyncpg://u:pw@h/db"),
            pg("postgres://u:pw@h/db")
        );
        assert_eq!(
            database("postgresql+psycopg://u@h:5433/db"),
            pg("postgres://u@h:5433/db")
        );
        for bad in [
            "mysql://u:secret@h/db",
            "postgre://u:secret@h/db",
            "http://x",
            "redis://h",
        ] {
            let e = database(bad).expect_err(bad).0;
            assert!(e.contains("unknown scheme"), "{e}");
            assert!(!e.contains("secret"), "the password is masked: {e}");
        }
    }
}
