//! Beat's leader lease and last runs on Redis (the contract is on [`BeatStore`]; the keys
//! and scripts are in `keys.rs`), shared by [`RedisBroker`](crate::RedisBroker) and
//! [`RedisBackend`](crate::RedisBackend): both return a [`RedisBeatStore`] from
//! `beat_store()`, named after the URL's `global_keyprefix` the same way, so either handle
//! on one server reaches the same lease.
//!
//! Every step that must be atomic is one Lua script, and lease times are the server's
//! (`PX`, `PEXPIRE`, `PTTL`), so the clocks of the machines running beat never matter.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::beat::{BeatStore, LastRun, LeaseHolder};
use celeriac_core::error::{BrokerError, ErrorKind};
use celeriac_core::time::{from_millis, to_millis};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, FromRedisValue, Pipeline, RedisResult, Script, ScriptInvocation};
use serde_json::{json, Value};

use crate::broker::{is_connection_error, Link};
use crate::keys::{self, BeatKeys};
use crate::url::RedisUrl;

/// The connection the beat store sends on: the one its broker or backend already has, so
/// beat costs no connection of its own.
enum Conn {
    /// The broker's named command connection, with its reconnect backoff and health log.
    Broker(Arc<Link>),
    /// The result backend's self-reconnecting command connection.
    Backend(ConnectionManager),
}

/// One request, kept so it can be sent again as it is.
enum Request<'a> {
    Script(ScriptInvocation<'a>),
    Pipeline(Pipeline),
    Command(Cmd),
}

impl Request<'_> {
    async fn send<T, C>(&self, c: &mut C) -> RedisResult<T>
    where
        T: FromRedisValue,
        C: ConnectionLike + Send,
    {
        match self {
            Request::Script(call) => call.invoke_async(c).await,
            Request::Pipeline(pipe) => pipe.query_async(c).await,
            Request::Command(cmd) => cmd.query_async(c).await,
        }
    }
}

/// One server's beat leases and last runs under one key prefix.
pub(crate) struct RedisBeatStore {
    display: String,
    keys: BeatKeys,
    conn: Conn,
    acquire: Script,
    release: Script,
    record: Script,
}

impl RedisBeatStore {
    fn new(url: &RedisUrl, conn: Conn) -> RedisBeatStore {
        RedisBeatStore {
            display: url.display(),
            keys: BeatKeys::new(&url.global_keyprefix),
            conn,
            acquire: keys::beat_acquire_script(),
            release: keys::beat_release_script(),
            record: keys::beat_record_script(),
        }
    }

    /// The broker's store, on its command connection.
    pub(crate) fn on_broker(url: &RedisUrl, link: Arc<Link>) -> RedisBeatStore {
        RedisBeatStore::new(url, Conn::Broker(link))
    }

    /// The result backend's store, on its command connection.
    pub(crate) fn on_backend(url: &RedisUrl, conn: ConnectionManager) -> RedisBeatStore {
        RedisBeatStore::new(url, Conn::Backend(conn))
    }

    /// Sends `request`, once more when the connection broke: every beat request may safely
    /// run twice (a second acquire by the same holder renews and answers the same token).
    async fn send<T>(&self, what: &str, key: &str, request: Request<'_>) -> Result<T, BrokerError>
    where
        T: FromRedisValue + Send,
    {
        let what = format!("{what} {key}");
        let request = &request;
        match &self.conn {
            Conn::Broker(link) => {
                link.run(
                    &what,
                    true,
                    |mut c| async move { request.send(&mut c).await },
                )
                .await
            }
            Conn::Backend(conn) => {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match request.send(&mut conn.clone()).await {
                        Ok(v) => return Ok(v),
                        Err(e) if is_connection_error(&e) && attempt < 2 => continue,
                        Err(e) => return Err(self.err(&what, e)),
                    }
                }
            }
        }
    }

    fn err(&self, what: &str, e: redis::RedisError) -> BrokerError {
        let kind = if is_connection_error(&e) {
            ErrorKind::Unreachable
        } else {
            ErrorKind::Storage
        };
        BrokerError::with_source(kind, format!("{what} on {}", self.display), e)
    }

    fn protocol(&self, key: &str, why: impl std::fmt::Display) -> BrokerError {
        BrokerError::new(
            ErrorKind::Protocol,
            format!("{key} on {}: {why}", self.display),
        )
    }
}

/// The lease value: `<token>:<holder>`.
fn lease_value(token: u64, holder: &str) -> String {
    format!("{token}:{holder}")
}

fn parse_lease(value: &str) -> Option<(u64, &str)> {
    let (token, holder) = value.split_once(':')?;
    Some((token.parse().ok()?, holder))
}

/// A TTL in whole ms, at least 1 (`PX 0` is an error, and would lapse at once anyway).
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// One entry's value in the runs hash.
fn run_json(run: &LastRun) -> String {
    json!({"schedule": run.schedule, "at": to_millis(run.at), "n": run.total_run_count}).to_string()
}

fn parse_run(entry: String, text: &str) -> Option<LastRun> {
    let v: Value = serde_json::from_str(text).ok()?;
    Some(LastRun {
        schedule: v.get("schedule")?.as_str()?.to_string(),
        at: from_millis(v.get("at")?.as_i64()?),
        total_run_count: v.get("n")?.as_u64()?,
        entry,
    })
}

#[async_trait]
impl BeatStore for RedisBeatStore {
    async fn acquire_lease(
        &self,
        schedule: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, BrokerError> {
        let (lease, counter) = (self.keys.lease(schedule), self.keys.token(schedule));
        let mut call = self.acquire.key(&lease);
        call.key(&counter).arg(holder).arg(ttl_ms(ttl));
        self.send("acquire beat lease", &lease, Request::Script(call))
            .await
    }

    async fn release_lease(
        &self,
        schedule: &str,
        holder: &str,
        token: u64,
    ) -> Result<(), BrokerError> {
        let lease = self.keys.lease(schedule);
        let mut call = self.release.key(&lease);
        call.arg(lease_value(token, holder));
        self.send::<i64>("release beat lease", &lease, Request::Script(call))
            .await
            .map(drop)
    }

    async fn lease_holder(&self, schedule: &str) -> Result<Option<LeaseHolder>, BrokerError> {
        let lease = self.keys.lease(schedule);
        let mut pipe = redis::pipe();
        // One MULTI: the value and its TTL as of the same instant.
        pipe.atomic().cmd("GET").arg(&lease).cmd("PTTL").arg(&lease);
        let (value, pttl): (Option<String>, i64) = self
            .send("read beat lease", &lease, Request::Pipeline(pipe))
            .await?;
        let Some(value) = value else {
            return Ok(None);
        };
        let (token, holder) = parse_lease(&value)
            .ok_or_else(|| self.protocol(&lease, format!("{value:?} is not <token>:<holder>")))?;
        // -1: no TTL (set by hand); such a lease never lapses.
        let remaining = match u64::try_from(pttl) {
            Ok(ms) => Duration::from_millis(ms),
            Err(_) => Duration::MAX,
        };
        Ok(Some(LeaseHolder {
            holder: holder.to_string(),
            token,
            remaining,
        }))
    }

    async fn last_runs(&self, schedule: &str) -> Result<Vec<LastRun>, BrokerError> {
        let runs = self.keys.runs(schedule);
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg(&runs);
        let entries: Vec<(String, String)> = self
            .send("read beat last runs", &runs, Request::Command(hgetall))
            .await?;
        entries
            .into_iter()
            .map(|(entry, text)| {
                let why = format!("entry {entry:?} is not {{schedule, at, n}}: {text}");
                parse_run(entry, &text).ok_or_else(|| self.protocol(&runs, why))
            })
            .collect()
    }

    async fn record_runs(
        &self,
        schedule: &str,
        holder: &str,
        token: u64,
        runs: &[LastRun],
    ) -> Result<bool, BrokerError> {
        let (lease, hash) = (self.keys.lease(schedule), self.keys.runs(schedule));
        let mut call = self.record.key(&lease);
        call.key(&hash).arg(lease_value(token, holder));
        for run in runs {
            call.arg(&run.entry).arg(run_json(run));
        }
        let written: i64 = self
            .send("record beat runs", &hash, Request::Script(call))
            .await?;
        Ok(written == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_values_round_trip() {
        assert_eq!(lease_value(7, "beat@host:1"), "7:beat@host:1");
        assert_eq!(parse_lease("7:beat@host:1"), Some((7, "beat@host:1")));
        assert_eq!(parse_lease("x:beat"), None);
        assert_eq!(ttl_ms(Duration::ZERO), 1);
        let run = LastRun {
            entry: "tick".into(),
            schedule: "<freq: 10.00 seconds>".into(),
            at: from_millis(1_700_000_000_123),
            total_run_count: 3,
        };
        assert_eq!(parse_run("tick".into(), &run_json(&run)), Some(run));
    }
}
