//! The engine's fenced commit, leases, progress and wake-up signals.

use crate::*;

#[async_trait]
impl orbit_store::Claims for SqliteStore {
    async fn finish_and_claim(
        &self,
        finished: &[FinishedAttempt],
        claim: Option<&ClaimRequest>,
        now: DateTime<Utc>,
    ) -> Result<BatchOutcome> {
        let claims = claim.map_or(&[][..], std::slice::from_ref);
        let (mut out, mut each) = self.finish_and_claim_many(finished, claims, now).await?;
        out.claimed = each.pop().unwrap_or_default();
        Ok(out)
    }

    async fn finish_and_claim_many(
        &self,
        finished: &[FinishedAttempt],
        claims: &[ClaimRequest],
        now: DateTime<Utc>,
    ) -> Result<(BatchOutcome, Vec<Vec<ClaimedTask>>)> {
        let (out, each) = write::finish_and_claim(&self.writer, finished, claims, now).await?;
        if out.left_work {
            self.wake_claimers();
        }
        if let Some(at) = out.wake_at {
            self.alarm.set(at, now, self.work.clone());
        }
        if !finished.is_empty() || each.iter().any(|c| !c.is_empty()) {
            self.changed();
        }
        Ok((out, each))
    }

    async fn extend_leases(&self, leases: &[(Uuid, i64)], now: DateTime<Utc>) -> Result<Vec<Uuid>> {
        write::extend_leases(&self.writer, leases, now).await
    }

    async fn leased(&self, filter: &LeaseFilter) -> Result<Vec<LeasedTask>> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT id, run_id, pipeline_id, task_name, attempt, attempt_base, lease_epoch, lease_expires_at, \
             COALESCE(claimed_at, started_at, updated_at) AS claimed_at, lease_owner FROM task_runs WHERE state = 'running'",
        );
        if let Some(run) = filter.run {
            q.push(" AND run_id = ").push_bind(run.to_string());
        }
        if let Some(before) = filter.expired_before {
            q.push(" AND lease_expires_at < ").push_bind(us(before));
        }
        q.push(" ORDER BY lease_expires_at LIMIT ")
            .push_bind(i64::from(filter.limit.max(1)));
        q.build()
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(rows::leased_from_row)
            .collect()
    }

    async fn set_progress(
        &self,
        id: Uuid,
        epoch: i64,
        progress: f64,
        message: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let kept = write::set_progress(&self.writer, id, epoch, progress, message, now).await?;
        if kept {
            self.changed();
        }
        Ok(kept)
    }

    fn work_signal(&self) -> watch::Receiver<u64> {
        self.work.subscribe()
    }

    fn control_signal(&self) -> watch::Receiver<u64> {
        self.control.subscribe()
    }
}
