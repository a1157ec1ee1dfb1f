//! Throw-away databases for tests and benchmarks. Each test gets its own database, so tests run
//! in parallel; it is dropped with the guard. The databases live on the server
//! `ORBIT_TEST_PG_URL` names, or, when it is not set, on a private cluster this process starts
//! (`initdb` + `pg_ctl` on a free port in a temporary directory) and that is stopped and removed
//! when the process ends, however it ends. No system service is needed, only PostgreSQL's
//! programs.

use sqlx::{Connection, PgConnection};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The admin URL tests create their databases through. Panics with what to install when no
/// server is named and none can be started: a test that needs PostgreSQL must not pass
/// without it.
pub fn server_url() -> String {
    if let Some(url) = std::env::var("ORBIT_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        return url;
    }
    static PRIVATE: OnceLock<Result<String, String>> = OnceLock::new();
    match PRIVATE.get_or_init(private_cluster) {
        Ok(url) => url.clone(),
        Err(e) => panic!(
            "PostgreSQL is needed for this test: {e}. Install PostgreSQL's programs (Debian: `apt-get install postgresql`; `scripts/test` does it) or set ORBIT_TEST_PG_URL to a server"
        ),
    }
}

/// Where PostgreSQL's programs are: `pg_config --bindir`, Debian's versioned directories, or the
/// `PATH`.
fn bin_dir() -> Option<PathBuf> {
    let from_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let debian = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
        let mut versions: Vec<(u32, PathBuf)> = d
            .filter_map(|e| {
                let e = e.ok()?;
                let v = e.file_name().to_str()?.parse().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, p)| p)
    });
    [from_config, debian]
        .into_iter()
        .flatten()
        .find(|d| d.join("initdb").is_file())
        .or_else(|| {
            Command::new("initdb")
                .arg("--version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| PathBuf::new())
        })
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// PostgreSQL refuses to run as root: as root, its programs run as the `postgres` user.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}

/// Starts a cluster for this process; returns its admin URL.
fn private_cluster() -> Result<String, String> {
    let bin = bin_dir().ok_or("no PostgreSQL programs (initdb, pg_ctl) found")?;
    let dir = tempfile::Builder::new()
        .prefix("orbit-test-pg-")
        .tempdir()
        .map_err(|e| format!("cannot make a directory for it: {e}"))?
        .keep();
    if is_root() {
        run(
            Command::new("chown").args(["postgres:postgres"]).arg(&dir),
            "chown postgres",
        )?;
    }
    let data = dir.join("data");
    run(
        as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]),
        "initdb",
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    // Durability is not what these tests measure (benchmarks use a real server).
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400",
        dir.display()
    );
    run(
        as_server_user(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("log"))
            .args(["-w", "-t", "60", "start", "-o", &options]),
        "pg_ctl start",
    )?;
    // The cluster goes with this process: a watcher in a session of its own (so Ctrl-C does not
    // stop it first) reads a pipe only this process writes, and stops and removes the cluster
    // at end-of-file.
    let stop = format!(
        "read _; {} -D '{}' -m immediate stop >/dev/null 2>&1; rm -rf '{}'",
        if is_root() {
            format!("runuser -u postgres -- '{}'", bin.join("pg_ctl").display())
        } else {
            format!("'{}'", bin.join("pg_ctl").display())
        },
        data.display(),
        dir.display()
    );
    let mut watcher = Command::new("sh");
    watcher
        .args(["-c", &stop])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut watcher, 0);
    let mut watcher = watcher
        .spawn()
        .map_err(|e| format!("cannot start the cluster's watcher: {e}"))?;
    static LIFELINE: OnceLock<std::process::ChildStdin> = OnceLock::new();
    if let Some(pipe) = watcher.stdin.take() {
        let _ = LIFELINE.set(pipe);
    }
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

/// A database that exists until this guard is dropped.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    name: String,
    admin: String,
}

impl TestDb {
    /// Creates a fresh, empty database. Panics with the reason when the server cannot be
    /// reached: a test that needs PostgreSQL must not pass without it.
    pub async fn create() -> TestDb {
        let admin = tokio::task::spawn_blocking(server_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Self::create_on(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is needed for this test: {e} (set ORBIT_TEST_PG_URL)")
        })
    }

    /// A fresh database on the server `admin` (a URL of any database there) connects to.
    pub async fn create_on(admin: &str) -> Result<TestDb, String> {
        let name = format!("orbit_t_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(admin)
            .await
            .map_err(|e| format!("cannot reach PostgreSQL: {e}"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("cannot create database {name}: {e}"))?;
        let _ = conn.close().await;
        let (base, query) = admin.split_once('?').map_or((admin, ""), |(b, q)| (b, q));
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        Ok(TestDb {
            url: format!("{base}/{name}{query}"),
            name,
            admin: admin.to_owned(),
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = self.admin.clone();
        // Drop may run inside a runtime, which cannot block on another: use a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        });
        let _ = dropped.join();
    }
}
