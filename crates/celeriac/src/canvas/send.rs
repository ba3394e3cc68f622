//! Applying a workflow from a client: core's planner with the app's routes and reply queue;
//! the chords it plans are recorded in the result backend before any header message goes
//! out; then every message is published in one batch, through the same publish hooks and
//! `task-sent` events as a single call.

use celeriac_core::canvas::{Applier, Canvas, Frozen};
use chrono::Utc;
use serde_json::Map;

use crate::app::App;
use crate::error::Error;

pub(crate) async fn apply(app: &App, canvas: &Canvas) -> Result<Frozen, Error> {
    let router = app.router();
    let (plan, frozen) = Applier::new(&router, Utc::now())
        .reply_to(app.oid())
        .apply(canvas, &[], Map::new())
        .map_err(|e| Error::Encode(e.to_string()))?;
    if !plan.chords.is_empty() {
        let backend = app.backend().await?;
        let joins = backend.chords().ok_or_else(|| {
            Error::Config(format!(
                "a chord needs a result backend that joins chords (redis:// or sqlite://); {} does not",
                backend.display_url()
            ))
        })?;
        for chord in &plan.chords {
            joins
                .start_chord(&chord.group_id, chord.size, app.result_expires())
                .await?;
        }
    }
    crate::client::send_all(app, plan.publishes).await?;
    Ok(frozen)
}
