//! The background work of a node, as named roles: each does one round in `tick(now)` (so a test
//! drives it with the time it chooses) and loops in `run(shutdown, clock)`. `orbit server` and `orbit
//! worker` only choose which roles to start; the claimer/committer is the [`crate::Engine`].

mod node;
mod push;
mod reaper;
mod retention;
mod run_retention;
mod scheduler;

pub use node::NodeHeartbeat;
pub use push::PushDispatch;
pub use reaper::Reaper;
pub use retention::Retention;
pub use run_retention::RunRetention;
pub use scheduler::Scheduler;

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sleeps `wait`, or less if `shutdown` comes first; whether to go on.
async fn pause(shutdown: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}
