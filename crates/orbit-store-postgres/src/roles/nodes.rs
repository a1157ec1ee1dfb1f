//! The processes sharing the store.

use crate::*;

#[async_trait]
impl orbit_store::Nodes for PgStore {
    async fn node_heartbeat(&self, node: &NodeInfo, now: DateTime<Utc>) -> Result<()> {
        write::node_heartbeat(&self.pool, node, now).await
    }

    async fn node_stopped(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        write::node_stopped(&self.pool, id, now).await
    }

    async fn nodes(&self, limit: u32) -> Result<Vec<NodeRecord>> {
        sqlx::query(
            "SELECT n.*, (SELECT COUNT(*) FROM task_runs t WHERE t.state = 'running' AND t.lease_owner = n.id) AS running \
             FROM nodes n ORDER BY last_seen_at DESC LIMIT $1",
        )
        .bind(i64::from(limit.max(1)))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(rows::node_from_row)
        .collect()
    }
}
