//! The engine's fenced commit, leases, progress and wake-up signals.

use crate::*;

#[async_trait]
impl orbit_store::Claims for PgStore {
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
        let (out, each) = write::finish_and_claim(&self.pool, finished, claims, now).await?;
        // A `for_each` expansion creates task runs like a new run does: the table's statistics
        // must follow them (see `created`).
        let children: usize = finished
            .iter()
            .filter(|f| !out.lease_lost.contains(&f.task.id))
            .map(|f| match &f.transition {
                orbit_core::transition::Transition::Expand { items } => items.len(),
                _ => 0,
            })
            .sum();
        if children > 0 {
            self.created(children as u64);
        }
        if let Some(at) = out.wake_at {
            self.alarm.set(at, now, self.work.clone());
        }
        Ok((out, each))
    }

    async fn extend_leases(&self, leases: &[(Uuid, i64)], now: DateTime<Utc>) -> Result<Vec<Uuid>> {
        write::extend_leases(&self.pool, leases, now).await
    }

    async fn leased(&self, filter: &LeaseFilter) -> Result<Vec<LeasedTask>> {
        sqlx::query(
            "SELECT * FROM task_runs WHERE state = 'running' AND ($1::uuid IS NULL OR run_id = $1) \
             AND ($2::timestamptz IS NULL OR lease_expires_at < $2) ORDER BY lease_expires_at LIMIT $3",
        )
        .bind(filter.run)
        .bind(filter.expired_before)
        .bind(i64::from(filter.limit.max(1)))
        .fetch_all(&self.pool)
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
        let kept = write::set_progress(&self.pool, id, epoch, progress, message, now).await?;
        if kept {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
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
