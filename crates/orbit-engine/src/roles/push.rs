//! Push mode: hands ready worker tasks to push-mode services as work appears.

use crate::EngineError;
use crate::dispatch::Dispatcher;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct PushDispatch {
    dispatcher: Arc<Dispatcher>,
    http: reqwest::Client,
}

impl PushDispatch {
    pub fn new(dispatcher: Arc<Dispatcher>) -> Result<PushDispatch, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(PushDispatch { dispatcher, http })
    }

    /// One push round: how many attempts went out (`None`: no push-mode service at all).
    pub async fn tick(&self) -> Result<Option<usize>, EngineError> {
        self.dispatcher.push_round(&self.http).await
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut work = self.dispatcher.store().work_signal();
        loop {
            work.borrow_and_update();
            let round = match self.tick().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "push dispatch round failed");
                    Some(0)
                }
            };
            if round.is_some_and(|handed| handed > 0) {
                continue;
            }
            // Callbacks free slots and retries come due without a signal: look again each
            // second. With no push-mode service registered, commits are no reason to look:
            // only the second.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = work.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
