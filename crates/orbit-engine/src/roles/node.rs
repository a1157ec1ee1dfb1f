//! A node's own heartbeat: `orbit services` and the API list it as healthy while it beats.

use super::pause;
use crate::clock::Clock;
use chrono::{DateTime, Utc};
use orbit_store::{NodeInfo, Nodes, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct NodeHeartbeat {
    store: Arc<dyn Nodes>,
    node: NodeInfo,
    every: Duration,
}

impl NodeHeartbeat {
    pub fn new(store: Arc<dyn Nodes>, node: NodeInfo, every: Duration) -> NodeHeartbeat {
        NodeHeartbeat { store, node, every }
    }

    pub async fn tick(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.store.node_heartbeat(&self.node, now).await
    }

    /// Beats until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken, clock: Clock) {
        loop {
            if let Err(e) = self.tick(clock.now()).await {
                tracing::warn!(error = %e, node = %self.node.id, "cannot record this node's heartbeat");
            }
            if !pause(&shutdown, self.every).await {
                break;
            }
        }
    }

    /// Records that the node stopped (once its work is settled).
    pub async fn stopped(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.store.node_stopped(&self.node.id, now).await
    }
}
