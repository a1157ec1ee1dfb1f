//! A node's own heartbeat: `orbit services` and the API list it as healthy while it beats.

use super::pause;
use chrono::{DateTime, Utc};
use orbit_store::{NodeInfo, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct NodeHeartbeat {
    store: Arc<dyn Store>,
    node: NodeInfo,
    every: Duration,
}

impl NodeHeartbeat {
    pub fn new(store: Arc<dyn Store>, node: NodeInfo, every: Duration) -> NodeHeartbeat {
        NodeHeartbeat { store, node, every }
    }

    pub async fn tick(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.store.node_heartbeat(&self.node, now).await
    }

    /// Beats until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.tick(Utc::now()).await {
                tracing::warn!(error = %e, node = %self.node.id, "cannot record this node's heartbeat");
            }
            if !pause(&shutdown, self.every).await {
                break;
            }
        }
    }

    /// Records that the node stopped (once its work is settled).
    pub async fn stopped(&self) -> Result<(), StoreError> {
        self.store.node_stopped(&self.node.id, Utc::now()).await
    }
}
