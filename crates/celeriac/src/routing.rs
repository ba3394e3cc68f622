//! Where a task goes when its call names no queue: `task_routes`, then the task's own queue
//! (as the app registered it, else its attributes), then `task_default_queue`. Clients use it
//! for every call; workers for the follow-ups they send (chain steps, callbacks, chord
//! bodies), so a step goes where the app's routes say wherever it is sent from.

use std::sync::Arc;

use celeriac_core::canvas::Router;
use celeriac_core::task::TaskOptions;
use celeriac_worker::Registry;

use crate::config::Config;

/// The queue of task `name`; `attributes` are its own options when a typed call knows them.
pub(crate) fn queue_for(
    config: &Config,
    registry: &Registry,
    name: &str,
    attributes: Option<&TaskOptions>,
) -> String {
    let task = registry.get(name).map(|t| t.options()).or(attributes);
    config
        .route(name)
        .map(str::to_string)
        .or_else(|| task.and_then(|t| t.queue.clone()))
        .unwrap_or_else(|| config.task_default_queue.clone())
}

/// An app's routing as core's [`Router`].
pub(crate) struct AppRouter {
    pub config: Config,
    pub registry: Arc<Registry>,
}

impl Router for AppRouter {
    fn queue_for(&self, task: &str) -> String {
        queue_for(&self.config, &self.registry, task, None)
    }
}
