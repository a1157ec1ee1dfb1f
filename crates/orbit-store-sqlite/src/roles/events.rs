//! The event log.

use crate::*;

#[async_trait]
impl orbit_store::Events for SqliteStore {
    async fn events(&self, after: i64, run: Option<Uuid>, limit: u32) -> Result<Vec<EventRecord>> {
        let limit = i64::from(limit.max(1));
        let query = match run {
            Some(run) => sqlx::query(
                "SELECT * FROM events WHERE run_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )
            .bind(run.to_string()),
            None => sqlx::query("SELECT * FROM events WHERE id > ?1 ORDER BY id LIMIT ?2"),
        };
        query
            .bind(after)
            .bind(limit)
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(rows::event_from_row)
            .collect()
    }

    async fn latest_event_id(&self) -> Result<i64> {
        let id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM events")
            .fetch_one(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(id.unwrap_or(0))
    }

    fn change_signal(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
