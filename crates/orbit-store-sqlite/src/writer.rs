//! Every write transaction runs on a thread of its own that owns the one write connection.
//!
//! Through sqlx every statement is a round trip to its connection's worker thread (a message
//! and a wake-up each way), and a commit of the engine's rounds has a dozen statements. Here a
//! whole transaction is one closure sent to the thread that owns the connection, which runs each
//! statement from a cache of prepared statements: one hand-off per commit. SQLite has one writer
//! at a time anyway, so one thread loses nothing; reads keep their own pool.

use orbit_store::{Result, StoreError};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::oneshot;

use crate::Durability;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

#[derive(Debug)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
}

/// How many prepared statements the writer keeps (each chunk size of a multi-row statement is one).
const STATEMENTS: usize = 128;

impl Writer {
    pub(crate) fn open(path: &Path, durability: Durability) -> Result<Writer> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        let setup = || -> rusqlite::Result<()> {
            conn.busy_timeout(Duration::from_secs(10))?;
            conn.pragma_update(None, "journal_mode", "wal")?;
            conn.pragma_update(
                None,
                "synchronous",
                match durability {
                    Durability::Full => "full",
                    Durability::Normal => "normal",
                },
            )?;
            conn.pragma_update(None, "foreign_keys", "on")?;
            conn.pragma_update(None, "temp_store", "memory")?;
            conn.set_prepared_statement_cache_capacity(STATEMENTS);
            Ok(())
        };
        setup().map_err(sql)?;
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("orbit-sqlite-writer".into())
            .spawn(move || {
                let mut conn = conn;
                // Ends when every sender is gone (the store was dropped).
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer { jobs })
    }

    /// Runs `f` in one `BEGIN IMMEDIATE … COMMIT` on the writer's thread; rolled back when it
    /// fails.
    pub(crate) async fn transaction<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn: &mut Connection| {
            // A panic fails its own caller (the transaction rolls back as it unwinds), not the
            // writes after it.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let t = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(sql)?;
                let value = f(&t)?;
                t.commit().map_err(sql)?;
                Ok(value)
            }))
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "a SQLite write panicked and was rolled back".into(),
                ))
            });
            let _ = tx.send(result);
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Unavailable("the SQLite writer thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the SQLite writer thread has stopped".into()))?
    }
}

/// A SQLite error as the store's.
pub(crate) fn sql(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound("row".into()),
        rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..) => {
            StoreError::Corrupt(e.to_string())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// `INSERT … VALUES (?, …), …` text for `rows` rows of `columns` values: the prefix, then the
/// placeholders, then `suffix`.
pub(crate) fn values_sql(prefix: &str, columns: usize, rows: usize, suffix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + suffix.len() + rows * (columns * 2 + 3));
    s.push_str(prefix);
    s.push_str(" VALUES ");
    for r in 0..rows {
        if r > 0 {
            s.push(',');
        }
        s.push('(');
        for c in 0..columns {
            if c > 0 {
                s.push(',');
            }
            s.push('?');
        }
        s.push(')');
    }
    s.push_str(suffix);
    s
}

#[cfg(test)]
mod tests {
    use super::values_sql;

    #[test]
    fn values_sql_has_a_placeholder_per_value() {
        assert_eq!(
            values_sql("INSERT INTO t (a, b)", 2, 3, " RETURNING a"),
            "INSERT INTO t (a, b) VALUES (?,?),(?,?),(?,?) RETURNING a"
        );
    }
}
