//! Pipelines, services and task code history.

use crate::*;

#[async_trait]
impl orbit_store::Registry for SqliteStore {
    async fn save_pipeline(
        &self,
        pipeline: &Pipeline,
        source: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<StoredPipeline> {
        write::save_pipeline(&self.writer, pipeline, source, now).await
    }

    async fn pipeline(&self, name: &str) -> Result<StoredPipeline> {
        sqlx::query("SELECT * FROM pipelines WHERE name = ?1 AND deleted_at IS NULL ORDER BY version DESC LIMIT 1")
            .bind(name)
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?
            .map(|r| pipeline_from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("pipeline `{}`", orbit_core::echo::echo(name))))
    }

    async fn pipeline_version(&self, id: Uuid) -> Result<StoredPipeline> {
        sqlx::query("SELECT * FROM pipelines WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?
            .map(|r| pipeline_from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("pipeline version {id}")))
    }

    async fn pipeline_versions(&self, name: &str) -> Result<Vec<StoredPipeline>> {
        sqlx::query("SELECT * FROM pipelines WHERE name = ?1 ORDER BY version")
            .bind(name)
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(pipeline_from_row)
            .collect()
    }

    async fn list_pipelines(&self) -> Result<Vec<StoredPipeline>> {
        self.latest_pipelines(false).await
    }

    async fn scheduled_pipelines(&self) -> Result<Vec<StoredPipeline>> {
        self.latest_pipelines(true).await
    }

    async fn delete_pipeline(&self, name: &str, now: DateTime<Utc>) -> Result<u64> {
        write::delete_pipeline(&self.writer, name, now).await
    }

    async fn register_service(
        &self,
        registration: &orbit_core::protocol::Registration,
        now: DateTime<Utc>,
    ) -> Result<Vec<ServiceTask>> {
        write::register_service(&self.writer, registration, now).await
    }

    async fn services(&self) -> Result<Vec<ServiceRecord>> {
        sqlx::query(
            "SELECT s.id, s.version, s.url, s.registered_at, \
             COALESCE((SELECT MAX(n.last_seen_at) FROM nodes n WHERE n.service = s.id AND n.last_seen_at > s.last_seen_at), \
             s.last_seen_at) AS last_seen_at FROM services s ORDER BY last_seen_at DESC",
        )
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(rows::service_from_row)
            .collect()
    }

    async fn service_tasks(&self, service: Option<&str>) -> Result<Vec<ServiceTask>> {
        sqlx::query(
            "SELECT * FROM service_tasks WHERE ?1 IS NULL OR service_id = ?1 ORDER BY service_id, name",
        )
        .bind(service)
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?
        .iter()
        .map(rows::service_task_from_row)
        .collect()
    }

    async fn service_task(&self, name: &str) -> Result<ServiceTask> {
        let row = sqlx::query("SELECT * FROM service_tasks WHERE name = ?1")
            .bind(name)
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "registered task `{}`",
                    orbit_core::echo::echo(name)
                ))
            })?;
        rows::service_task_from_row(&row)
    }

    async fn task_history(&self, name: &str) -> Result<Vec<orbit_store::CodeChange>> {
        sqlx::query("SELECT * FROM task_code_history WHERE task_name = ?1 ORDER BY code_version")
            .bind(name)
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(rows::code_change_from_row)
            .collect()
    }
}

impl SqliteStore {
    /// The latest version of every pipeline not deleted (only those with a schedule when
    /// `scheduled`).
    async fn latest_pipelines(&self, scheduled: bool) -> Result<Vec<StoredPipeline>> {
        sqlx::query(
            "SELECT p.* FROM pipelines p \
             WHERE p.deleted_at IS NULL AND (NOT ?1 OR p.schedule IS NOT NULL) \
             AND p.version = (SELECT MAX(version) FROM pipelines q WHERE q.name = p.name) ORDER BY p.name",
        )
        .bind(scheduled)
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?
        .iter()
        .map(pipeline_from_row)
        .collect()
    }
}
