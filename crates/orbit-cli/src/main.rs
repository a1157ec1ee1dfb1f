//! `orbit`: loads configuration, parses arguments, runs one command, and turns its result into
//! an exit status (0 ok, 1 the run failed, 2 bad usage or bad input).

/// `println!`, `print!` and `eprintln!` for the whole crate: std's panic when the other end of
/// the pipe is gone (`orbit logs RUN | head`); these end the command quietly instead.
macro_rules! println {
    () => { $crate::output::line(format_args!("")) };
    ($($arg:tt)*) => { $crate::output::line(format_args!($($arg)*)) };
}
macro_rules! print {
    ($($arg:tt)*) => { $crate::output::text(format_args!($($arg)*)) };
}
macro_rules! eprintln {
    () => { $crate::output::error_line(format_args!("")) };
    ($($arg:tt)*) => { $crate::output::error_line(format_args!($($arg)*)) };
}

mod bench;
mod bench_retention;
mod bench_scale;
mod bench_sdk;
mod cli;
mod commands;
mod otel;
mod output;
mod progress;
mod settings;

use std::process::ExitCode;

/// An error in what the user gave us (a file, an id, an input): exit status 2.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

fn main() -> ExitCode {
    // A task's supervisor (see orbit_engine::executor::supervisor): no runtime, no parsing.
    let mut args = std::env::args_os();
    if args
        .nth(1)
        .is_some_and(|a| a == orbit_engine::executor::supervisor::SUBCOMMAND)
    {
        return orbit_engine::executor::supervisor::main(args);
    }
    // Before clap reads `env = …` defaults, and before any thread starts.
    settings::load_dotenv();
    if let Err(e) = settings::load_toml() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error ({info}); please report it");
    }));
    // `--help` ends with every setting and its variable, from the same table as `orbit config`.
    let cli = {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let matches = cli::Cli::command()
            .after_long_help(settings::help())
            .get_matches();
        cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("ORBIT_LOG").unwrap_or_else(|_| "warn".into());
    if std::env::var("ORBIT_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        // One JSON object a line for log pipelines, with the spans (a request's id, an
        // attempt's run, task and attempt) on each.
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colour codes only for a person at a terminal, never in a file or a log pipeline.
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let traces = match runtime.block_on(async { otel::install() }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(exit_code(&e));
        }
    };
    let result = runtime.block_on(commands::dispatch(cli));
    if let Some(traces) = traces {
        runtime.block_on(orbit_engine::traces::drain(std::time::Duration::from_secs(
            2,
        )));
        traces.shutdown();
    }
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    use orbit_engine::EngineError;
    use orbit_store::StoreError;
    // What the caller asked for cannot be done as asked: exit 2, like a malformed file.
    let refused = |s: &StoreError| {
        matches!(
            s,
            StoreError::NotFound(_) | StoreError::Conflict(_) | StoreError::Invalid(_)
        )
    };
    // A context (a server's 4xx answer) is found by anyhow's downcast, not in the chain.
    if e.downcast_ref::<BadInput>().is_some() {
        return 2;
    }
    for cause in e.chain() {
        if cause.is::<BadInput>() || cause.is::<orbit_core::file::FileError>() {
            return 2;
        }
        if cause.downcast_ref::<StoreError>().is_some_and(refused) {
            return 2;
        }
        match cause.downcast_ref::<EngineError>() {
            Some(EngineError::IdempotencyKeyReused { .. }) => return 2,
            Some(EngineError::Store(s)) if refused(s) => return 2,
            _ => {}
        }
    }
    1
}
