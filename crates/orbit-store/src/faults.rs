//! A [`Store`] wrapper that fails or stalls chosen verbs, for testing what callers do when the
//! store misbehaves (the engine's "store unavailable: retry the batch" and "cannot renew the
//! lease for half of it: stop the attempt" paths). Feature `testkit`.
//!
//! It also serves tests under tokio's paused clock: [`Faulty::on_runtime`] runs every verb on
//! another (real-time) runtime while the caller's waits, so the paused clock cannot jump ahead
//! while the database works (tokio advances a paused clock whenever its runtime is idle, and a
//! runtime waiting for a socket or a database thread is idle).
//!
//! ```ignore
//! let store = Faulty::new(real);
//! store.set("extend_leases", Fault::Fail);                    // every call fails
//! store.set("finish_and_claim", Fault::FailTimes(3));          // the next 3 calls fail
//! store.set("run", Fault::Stall(Duration::from_secs(2)));     // each call waits first
//! ```

use crate::*;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orbit_core::Pipeline;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a verb does instead of (or before) its work.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Every call fails with [`StoreError::Unavailable`].
    Fail,
    /// The next `n` calls fail; then the verb works again.
    FailTimes(u32),
    /// Each call waits this long, then works.
    Stall(Duration),
}

/// Wraps a store; verbs without a fault pass straight through.
pub struct Faulty {
    inner: Arc<dyn Store>,
    /// Where verbs run, when not on the caller's runtime.
    runtime: Option<tokio::runtime::Handle>,
    faults: Mutex<HashMap<&'static str, Fault>>,
    /// How many calls each verb has had, faulty or not.
    calls: Mutex<HashMap<&'static str, u64>>,
}

impl Faulty {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner,
            runtime: None,
            faults: Mutex::default(),
            calls: Mutex::default(),
        })
    }

    /// Runs every verb on `runtime` (where `inner` was opened), blocking the caller's thread
    /// until it is done.
    pub fn on_runtime(inner: Arc<dyn Store>, runtime: tokio::runtime::Handle) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner,
            runtime: Some(runtime),
            faults: Mutex::default(),
            calls: Mutex::default(),
        })
    }

    /// Runs `call` where verbs run: awaited here, or on the other runtime from a scoped thread
    /// (a runtime cannot be blocked on from inside another).
    async fn call<T: Send>(
        &self,
        call: std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + '_>>,
    ) -> Result<T> {
        match &self.runtime {
            None => call.await,
            Some(rt) => std::thread::scope(|s| s.spawn(|| rt.block_on(call)).join())
                .unwrap_or_else(|_| Err(StoreError::Unavailable("a store call panicked".into()))),
        }
    }

    pub fn set(&self, verb: &'static str, fault: Fault) {
        self.faults
            .lock()
            .expect("fault table poisoned")
            .insert(verb, fault);
    }

    pub fn clear(&self, verb: &'static str) {
        self.faults
            .lock()
            .expect("fault table poisoned")
            .remove(verb);
    }

    /// Calls of `verb` so far.
    pub fn calls(&self, verb: &'static str) -> u64 {
        self.calls
            .lock()
            .expect("call table poisoned")
            .get(verb)
            .copied()
            .unwrap_or(0)
    }

    async fn enter(&self, verb: &'static str) -> Result<()> {
        *self
            .calls
            .lock()
            .expect("call table poisoned")
            .entry(verb)
            .or_default() += 1;
        let fault = {
            let mut faults = self.faults.lock().expect("fault table poisoned");
            let fault = faults.get(verb).copied();
            if let Some(Fault::FailTimes(n)) = fault {
                if n <= 1 {
                    faults.remove(verb);
                } else {
                    faults.insert(verb, Fault::FailTimes(n - 1));
                }
            }
            fault
        };
        match fault {
            None => Ok(()),
            Some(Fault::Stall(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Some(Fault::Fail | Fault::FailTimes(_)) => Err(StoreError::Unavailable(format!(
                "injected fault in `{verb}`"
            ))),
        }
    }
}

/// The role impls: each verb counts its call, applies its fault, then delegates; signals pass
/// straight through. (Each impl is generated whole, so `async_trait` sees the expanded methods.)
macro_rules! delegate {
    ($role:ident { $( $verb:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty; )* } $( fn $signal:ident; )*) => {
        #[async_trait]
        impl $role for Faulty {
            $(
                async fn $verb(&self, $($arg: $ty),*) -> $ret {
                    self.enter(stringify!($verb)).await?;
                    self.call(self.inner.$verb($($arg),*)).await
                }
            )*
            $(
                fn $signal(&self) -> tokio::sync::watch::Receiver<u64> {
                    self.inner.$signal()
                }
            )*
        }
    };
}

delegate! {
    Registry {
        save_pipeline(pipeline: &Pipeline, source: Option<&str>, now: DateTime<Utc>) -> Result<StoredPipeline>;
        pipeline(name: &str) -> Result<StoredPipeline>;
        pipeline_version(id: Uuid) -> Result<StoredPipeline>;
        pipeline_versions(name: &str) -> Result<Vec<StoredPipeline>>;
        list_pipelines() -> Result<Vec<StoredPipeline>>;
        scheduled_pipelines() -> Result<Vec<StoredPipeline>>;
        delete_pipeline(name: &str, now: DateTime<Utc>) -> Result<u64>;
        register_service(registration: &orbit_core::protocol::Registration, now: DateTime<Utc>) -> Result<Vec<ServiceTask>>;
        services() -> Result<Vec<ServiceRecord>>;
        service_tasks(service: Option<&str>) -> Result<Vec<ServiceTask>>;
        service_task(name: &str) -> Result<ServiceTask>;
        task_history(name: &str) -> Result<Vec<CodeChange>>;
    }
}

delegate! {
    Runs {
        create_run(new: NewRun<'_>) -> Result<CreatedRun>;
        run(id: Uuid) -> Result<RunRecord>;
        find_run(id_or_prefix: &str) -> Result<RunRecord>;
        list_runs(filter: &RunFilter) -> Result<Vec<RunRecord>>;
        task_runs(run: Uuid) -> Result<Vec<TaskRunRecord>>;
        task_runs_page(run: Uuid, page: &TaskRunPage) -> Result<Vec<TaskRunRecord>>;
        task_run_counts(run: Uuid) -> Result<Vec<(orbit_core::TaskState, u64)>>;
        children(run: Uuid, parent: &str) -> Result<Vec<ChildResult>>;
        child_runs(run: Uuid) -> Result<Vec<RunRecord>>;
        child_counts(run: Uuid) -> Result<Vec<ChildCount>>;
        attempts(run: Uuid, task: Option<&str>) -> Result<Vec<AttemptRecord>>;
        outputs(run: Uuid, tasks: &[String]) -> Result<Vec<(String, Value)>>;
        cancel_run(run: Uuid, now: DateTime<Utc>) -> Result<RunRecord>;
        requeue(run: Uuid, tasks: &[String], by: TriggeredBy, now: DateTime<Utc>) -> Result<Requeued>;
        signal(name: &str, payload: &Value, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<SignalOutcome>;
        decide(run: Uuid, task: &str, decision: &Decision, now: DateTime<Utc>) -> Result<()>;
        keyed_output(key: &str, since: DateTime<Utc>) -> Result<Option<(Uuid, Value)>>;
        task_run(id_or_prefix: &str) -> Result<TaskRunRecord>;
    }
}

delegate! {
    Claims {
        finish_and_claim(finished: &[FinishedAttempt], claim: Option<&ClaimRequest>, now: DateTime<Utc>) -> Result<BatchOutcome>;
        extend_leases(leases: &[(Uuid, i64)], now: DateTime<Utc>) -> Result<Vec<Uuid>>;
        leased(filter: &LeaseFilter) -> Result<Vec<LeasedTask>>;
        set_progress(id: Uuid, epoch: i64, progress: f64, message: Option<&str>, now: DateTime<Utc>) -> Result<bool>;
    }
    fn work_signal;
    fn control_signal;
}

delegate! {
    Queues {
        queue_stats() -> Result<QueueStats>;
        queue_depths() -> Result<Vec<(String, orbit_core::TaskState, i64)>>;
        queue_items(filter: &QueueFilter) -> Result<Vec<TaskRunRecord>>;
        attempt_cells(since: DateTime<Utc>) -> Result<Vec<(CellKey, Cell)>>;
        key_usage(keys: &[String]) -> Result<Vec<KeyUsage>>;
        set_key_limit(key: &str, limit: Option<u32>, now: DateTime<Utc>) -> Result<bool>;
        key_limits() -> Result<Vec<KeyUsage>>;
        rate_buckets(keys: &[String]) -> Result<Vec<RateBucket>>;
    }
}

delegate! {
    Events {
        events(after: i64, run: Option<Uuid>, limit: u32) -> Result<Vec<EventRecord>>;
        latest_event_id() -> Result<i64>;
    }
    fn change_signal;
}

delegate! {
    Nodes {
        node_heartbeat(node: &NodeInfo, now: DateTime<Utc>) -> Result<()>;
        node_stopped(id: &str, now: DateTime<Utc>) -> Result<()>;
        nodes(limit: u32) -> Result<Vec<NodeRecord>>;
    }
}

delegate! {
    Retention {
        dead_letters(limit: u32) -> Result<Vec<DeadLetter>>;
        dead_letter(id_or_prefix: &str) -> Result<DeadLetter>;
        purge_dead_letters(before: DateTime<Utc>) -> Result<PurgedLetters>;
        delete_run_slice(id: Uuid) -> Result<bool>;
        settled_before(before: DateTime<Utc>, limit: u32) -> Result<Vec<Uuid>>;
        forget_attempt_cells(before: DateTime<Utc>) -> Result<u64>;
    }
}
