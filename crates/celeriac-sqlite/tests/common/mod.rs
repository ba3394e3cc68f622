#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::broker::{Broker, Consumer, ConsumerSpec, Publish, RawMessage};
use celeriac_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{json, Map};

pub struct Db {
    pub dir: tempfile::TempDir,
    pub store: Arc<SqliteStore>,
}

impl Db {
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("celeriac.db")
    }

    /// Another store on the same file: what another process would open.
    pub fn reopen(&self) -> Arc<SqliteStore> {
        SqliteStore::open(self.path(), self.store.options().clone()).unwrap()
    }
}

pub fn db() -> Db {
    db_with(SqliteOptions::default())
}

pub fn db_with(options: SqliteOptions) -> Db {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("celeriac.db"), options).unwrap();
    Db { dir, store }
}

pub fn short_lease(ms: u64) -> SqliteOptions {
    SqliteOptions {
        visibility_timeout: Duration::from_millis(ms),
        ..SqliteOptions::default()
    }
}

pub fn msg(id: &str) -> RawMessage {
    let mut headers = Map::new();
    headers.insert("id".into(), json!(id));
    headers.insert("task".into(), json!("tests.add"));
    RawMessage {
        headers,
        properties: Map::new(),
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        body: format!("[[\"{id}\"], {{}}, {{}}]").into_bytes(),
    }
}

pub fn publish(queue: &str, id: &str, priority: u8) -> Publish {
    Publish {
        queue: queue.into(),
        priority: Some(priority),
        not_before: None,
        message: msg(id),
    }
}

pub async fn consumer(store: &SqliteStore, queues: &[&str]) -> Box<dyn Consumer> {
    store
        .consumer(ConsumerSpec {
            queues: queues.iter().map(|q| q.to_string()).collect(),
            name: "test@host".into(),
            prefetch: 0,
        })
        .await
        .unwrap()
}

pub fn ids(deliveries: &[celeriac_core::broker::Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| d.message.task_id().unwrap().to_string())
        .collect()
}
