//! The result-backend seam: store and read task results in Celery's format.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::BackendError;
use crate::state::TaskMeta;

#[async_trait]
pub trait ResultBackend: Send + Sync + 'static {
    fn display_url(&self) -> String;

    /// Stores a state change. A stored SUCCESS is never overwritten: late duplicates lose.
    /// Ready states expire after `expires` (None: kept until forgotten).
    async fn store(&self, meta: &TaskMeta, expires: Option<Duration>) -> Result<(), BackendError>;

    /// The stored meta, or `None` (PENDING) when nothing is stored.
    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError>;

    /// Waits until the task is ready or `timeout` passes; returns the latest meta either way.
    async fn wait(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskMeta>, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let meta = self.get(task_id).await?;
            if meta.as_ref().is_some_and(|m| m.status.is_ready()) {
                return Ok(meta);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(meta);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError>;

    /// Saves a group's member ids (`GroupResult.save()`).
    async fn save_group(
        &self,
        group_id: &str,
        task_ids: &[String],
        expires: Option<Duration>,
    ) -> Result<(), BackendError>;

    async fn restore_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError>;
}
