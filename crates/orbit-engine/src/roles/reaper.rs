//! A node without embedded workers still takes back expired leases, so no run waits for a dead
//! worker. (With workers, the engine's own rounds reap.)

use super::pause;
use crate::{Engine, EngineError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Reaper {
    engine: Arc<Engine>,
    every: Duration,
}

impl Reaper {
    pub fn new(engine: Arc<Engine>, every: Duration) -> Reaper {
        Reaper { engine, every }
    }

    pub async fn tick(&self) -> Result<(), EngineError> {
        self.engine.process(0).await.map(|_| ())
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "reaping failed");
            }
            if !pause(&shutdown, self.every).await {
                break;
            }
        }
    }
}
