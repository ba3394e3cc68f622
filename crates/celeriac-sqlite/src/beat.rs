//! Beat's leader lease and last runs in the embedded store (tables `beat_leases`,
//! `beat_runs`; the contract is on [`BeatStore`]).
//!
//! Every write goes through the store's one writer, inside its `BEGIN IMMEDIATE`
//! transaction, which also holds the file's write lock against other processes: taking the
//! lease is one upsert, and recording runs checks the lease and writes in that same
//! transaction. Times are the machine's clock in ms, read inside the transaction (a write
//! may wait behind others in the group commit), the same clock every process sharing the
//! file reads.

use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::beat::{BeatStore, LastRun, LeaseHolder};
use celeriac_core::error::BrokerError;
use celeriac_core::time::{from_millis, to_millis};
use rusqlite::{params, OptionalExtension};

use crate::db::{DbError, Wake};
use crate::{duration_ms, now_ms, sql, SqliteStore};

/// A count or token as SQLite stores it (signed 64-bit); values past `i64::MAX` saturate.
fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored token or count; a negative one (edited by hand) reads as 0.
fn from_sql(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A lease shorter than 1 ms would lapse before anyone could use it; 1 ms is the least.
fn ttl_ms(ttl: Duration) -> i64 {
    duration_ms(ttl).max(1)
}

#[async_trait]
impl BeatStore for SqliteStore {
    async fn acquire_lease(
        &self,
        schedule: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, BrokerError> {
        let (schedule, holder, ttl) = (schedule.to_string(), holder.to_string(), ttl_ms(ttl));
        self.db()
            .write(Wake::Nothing, move |c| {
                let now = now_ms();
                c.prepare_cached(sql::ACQUIRE_BEAT_LEASE)?
                    .query_row(
                        params![schedule, holder, now, now.saturating_add(ttl)],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional()
            })
            .await
            .map(|token| token.map(from_sql))
            .map_err(|e| self.broker_err("acquire beat lease", e))
    }

    async fn release_lease(
        &self,
        schedule: &str,
        holder: &str,
        token: u64,
    ) -> Result<(), BrokerError> {
        let (schedule, holder, token) = (schedule.to_string(), holder.to_string(), to_sql(token));
        self.db()
            .write(Wake::Nothing, move |c| {
                c.prepare_cached(sql::RELEASE_BEAT_LEASE)?
                    .execute(params![schedule, holder, token])?;
                Ok(())
            })
            .await
            .map_err(|e| self.broker_err("release beat lease", e))
    }

    async fn lease_holder(&self, schedule: &str) -> Result<Option<LeaseHolder>, BrokerError> {
        let schedule = schedule.to_string();
        self.db()
            .read(move |c| {
                let now = now_ms();
                let row = c
                    .prepare_cached(sql::GET_BEAT_LEASE)?
                    .query_row(params![schedule, now], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    })
                    .optional()?;
                Ok(row.map(|(holder, token, expires_at)| LeaseHolder {
                    holder,
                    token: from_sql(token),
                    remaining: Duration::from_millis(from_sql(expires_at - now)),
                }))
            })
            .await
            .map_err(|e| self.broker_err("read beat lease", e))
    }

    async fn last_runs(&self, schedule: &str) -> Result<Vec<LastRun>, BrokerError> {
        let schedule = schedule.to_string();
        self.db()
            .read(move |c| {
                let mut stmt = c.prepare_cached(sql::BEAT_RUNS)?;
                let rows = stmt.query_map(params![schedule], |r| {
                    Ok(LastRun {
                        entry: r.get(0)?,
                        schedule: r.get(1)?,
                        at: from_millis(r.get(2)?),
                        total_run_count: from_sql(r.get(3)?),
                    })
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(DbError::from)
            })
            .await
            .map_err(|e| self.broker_err("read beat last runs", e))
    }

    async fn record_runs(
        &self,
        schedule: &str,
        holder: &str,
        token: u64,
        runs: &[LastRun],
    ) -> Result<bool, BrokerError> {
        let (schedule, holder, token) = (schedule.to_string(), holder.to_string(), to_sql(token));
        let runs = runs.to_vec();
        self.db()
            .write(Wake::Nothing, move |c| {
                let held = c.prepare_cached(sql::CHECK_BEAT_LEASE)?.exists(params![
                    schedule,
                    holder,
                    token,
                    now_ms()
                ])?;
                if !held {
                    return Ok(false);
                }
                let mut record = c.prepare_cached(sql::RECORD_BEAT_RUN)?;
                for run in &runs {
                    record.execute(params![
                        schedule,
                        run.entry,
                        run.schedule,
                        to_millis(run.at),
                        to_sql(run.total_run_count)
                    ])?;
                }
                Ok(true)
            })
            .await
            .map_err(|e| self.broker_err("record beat runs", e))
    }
}
