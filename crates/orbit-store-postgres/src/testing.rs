//! Throw-away databases for tests and benchmarks, on the server `ORBIT_TEST_PG_URL` names
//! (default: the local server at 127.0.0.1:5432). Each test gets its own database, so tests
//! run in parallel; it is dropped with the guard.

use sqlx::{Connection, PgConnection};

/// The admin URL tests create their databases through.
pub fn server_url() -> String {
    std::env::var("ORBIT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
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
        let admin = server_url();
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
