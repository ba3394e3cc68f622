//! Every SQL statement the store runs, each with its contract (house rule 9).
//!
//! Times are integer milliseconds since the Unix epoch (`celeriac_core::time::to_millis`).
//! Messages carry their headers and properties as JSON text (key order preserved), the body
//! as a blob. Writes always run inside `BEGIN IMMEDIATE` on the store's one writer
//! connection, so every statement below that writes sees a stable database while it runs.

/// The schema version written to `PRAGMA user_version`. Bump when the schema changes in a way
/// [`CREATE_SCHEMA`] cannot apply to an existing file by itself (a changed column, not a new
/// table: new tables are created by `CREATE TABLE IF NOT EXISTS` at every open), and add a
/// migration step in `db::migrate`.
pub const SCHEMA_VERSION: i64 = 1;

// ----------------------------------------------------------------------------------------
// Connection setup
// ----------------------------------------------------------------------------------------

/// Switches the file to write-ahead logging (persistent: stored in the file) so readers never
/// block the writer and vice versa. Returns one row with the resulting mode (`wal`).
pub const PRAGMA_WAL: &str = "PRAGMA journal_mode = WAL";

/// Per connection: commit without fsync of the WAL (durable against a process crash, and
/// against power loss up to the last checkpoint). Sets foreign keys off (none are declared).
pub const PRAGMA_CONNECTION: &str = "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;";

/// Reads the schema version (0 for a new file).
pub const GET_USER_VERSION: &str = "PRAGMA user_version";

/// Records the schema version. Formatted with [`SCHEMA_VERSION`] (PRAGMA takes no parameters).
pub fn set_user_version(v: i64) -> String {
    format!("PRAGMA user_version = {v}")
}

/// Changes whenever another connection (this process or another) committed since the last
/// call on the same connection. Cheap: it reads the WAL index in shared memory. The watcher
/// polls it to notice other processes' writes.
pub const DATA_VERSION: &str = "PRAGMA data_version";

// ----------------------------------------------------------------------------------------
// Transactions
// ----------------------------------------------------------------------------------------

/// Takes the write lock at once (waiting per the busy handler), so a transaction never fails
/// half-way with SQLITE_BUSY when it first writes.
pub const BEGIN_IMMEDIATE: &str = "BEGIN IMMEDIATE";
/// A read snapshot: every statement until COMMIT sees the same database.
pub const BEGIN_READ: &str = "BEGIN DEFERRED";
pub const COMMIT: &str = "COMMIT";
pub const ROLLBACK: &str = "ROLLBACK";
/// One write job inside a group commit: its failure is rolled back alone.
pub const SAVEPOINT: &str = "SAVEPOINT job";
pub const RELEASE: &str = "RELEASE job";
pub const ROLLBACK_TO: &str = "ROLLBACK TO job";

// ----------------------------------------------------------------------------------------
// Schema (idempotent: run at every open)
// ----------------------------------------------------------------------------------------

/// Creates every table and index if missing.
///
/// - `queues`: every queue name declared or published to, so stats can list them all.
/// - `messages`: deliverable or leased messages. `id` (the rowid) increases in publish order
///   (FIFO): a new id is larger than every id present. It is not AUTOINCREMENT (that costs a
///   page write per commit), so an id can come back after the newest message is deleted;
///   every statement acting on a delivery tag therefore also checks the lease owner.
///   A message is *ready* when `lease_owner IS NULL`, *leased* (unacked) otherwise, until
///   `lease_until`. `delivered` counts deliveries (> 1 on a lease = redelivered).
/// - `messages_ready`: partial index of ready rows in delivery order, so fetch reads exactly
///   the rows it returns and leased rows cost nothing.
/// - `messages_lease_until`, `messages_owner`: partial indexes of leased rows for reclaiming
///   lapsed leases and for keepalive / close by owner.
/// - `scheduled`: messages whose `not_before` is in the future, apart from `messages` so a
///   fetch never scans them; `scheduled_due` finds the due ones with one index seek.
/// - `dead_letters`: messages a worker could not run, with the reason and when.
/// - `revoked`: durable revokes; `seq` orders them for incremental sync.
/// - `control_requests`: remote-control requests (Celery's pidbox broadcast) as Celery's JSON
///   body with the sender's clock; every worker reads those after its cursor.
/// - `control_replies`: replies to a caller, keyed by its reply routing key (its oid); the
///   caller takes (deletes) them.
/// - `events`: Celery's events (protocol §7) as JSON, in send order; every monitor reads
///   those after its cursor, and rows older than a minute are pruned.
/// - `event_monitors`: the monitors receiving events, each refreshing its row; while none is
///   there, senders write no events (as on Redis, events nobody hears are not kept).
/// - `results`: task meta JSON exactly as Celery writes it, keyed by task id.
/// - `groups`: a group's member task ids as a JSON array.
/// - `chords`: one row per chord being joined: its header size, how many header results
///   are in (`counted`, so completing a chord costs no scan of its parts), and the claim to fire its
///   body (a worker's token until `claimed_until`, then anyone's; `done` once fired).
/// - `chord_parts`: the header results counted so far, one row per `(task id, index)`,
///   so a member stored twice counts once; `idx` is the `group_index` (none sorts last).
/// - `beat_leases`: one row per beat schedule: who holds its leader lease until
///   `expires_at`, and the fencing `token`, which grows each time the lease changes hands.
///   A released or lapsed lease keeps its row (only `expires_at` says it is free), so the
///   next holder's token is still larger than every token handed out before.
/// - `beat_runs`: each schedule entry's last run as the leader recorded it: the schedule
///   text it ran under, when the tick was due (`last_run_at`) and Celery's
///   `total_run_count`.
pub const CREATE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queues (
    name       TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS messages (
    id               INTEGER PRIMARY KEY,
    queue            TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    headers          TEXT    NOT NULL,
    properties       TEXT    NOT NULL,
    content_type     TEXT    NOT NULL,
    content_encoding TEXT    NOT NULL,
    body             BLOB    NOT NULL,
    published_at     INTEGER NOT NULL,
    delivered        INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_until      INTEGER
);
CREATE INDEX IF NOT EXISTS messages_ready
    ON messages (queue, priority DESC, id) WHERE lease_owner IS NULL;
CREATE INDEX IF NOT EXISTS messages_lease_until
    ON messages (lease_until) WHERE lease_owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_owner
    ON messages (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE IF NOT EXISTS scheduled (
    id               INTEGER PRIMARY KEY,
    due              INTEGER NOT NULL,
    queue            TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    headers          TEXT    NOT NULL,
    properties       TEXT    NOT NULL,
    content_type     TEXT    NOT NULL,
    content_encoding TEXT    NOT NULL,
    body             BLOB    NOT NULL,
    published_at     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS scheduled_due ON scheduled (due, id);
CREATE INDEX IF NOT EXISTS scheduled_queue ON scheduled (queue);

CREATE TABLE IF NOT EXISTS dead_letters (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    queue            TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    headers          TEXT    NOT NULL,
    properties       TEXT    NOT NULL,
    content_type     TEXT    NOT NULL,
    content_encoding TEXT    NOT NULL,
    body             BLOB    NOT NULL,
    published_at     INTEGER NOT NULL,
    reason           TEXT    NOT NULL,
    at               INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS revoked (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id   TEXT    NOT NULL UNIQUE,
    terminate INTEGER NOT NULL,
    at        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS revoked_at ON revoked (at);

CREATE TABLE IF NOT EXISTS control_requests (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    body  TEXT    NOT NULL,
    clock INTEGER NOT NULL,
    at    INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS control_replies (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    reply_key TEXT    NOT NULL,
    ticket    TEXT    NOT NULL,
    body      TEXT    NOT NULL,
    at        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS control_replies_key ON control_replies (reply_key);

CREATE TABLE IF NOT EXISTS events (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT    NOT NULL,
    at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_at ON events (at);

CREATE TABLE IF NOT EXISTS event_monitors (
    id      TEXT PRIMARY KEY,
    seen_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS results (
    task_id    TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    meta       TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_expires
    ON results (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS groups (
    group_id   TEXT PRIMARY KEY,
    task_ids   TEXT NOT NULL,
    expires_at INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS groups_expires
    ON groups (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS chords (
    group_id      TEXT PRIMARY KEY,
    size          INTEGER NOT NULL,
    counted       INTEGER NOT NULL DEFAULT 0,
    claim         TEXT,
    claimed_until INTEGER,
    expires_at    INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chords_expires
    ON chords (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS chord_parts (
    group_id TEXT    NOT NULL,
    task_id  TEXT    NOT NULL,
    idx      INTEGER NOT NULL,
    state    TEXT    NOT NULL,
    result   TEXT    NOT NULL,
    PRIMARY KEY (group_id, idx, task_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS beat_leases (
    schedule   TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    token      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS beat_runs (
    schedule        TEXT    NOT NULL,
    entry           TEXT    NOT NULL,
    schedule_text   TEXT    NOT NULL,
    last_run_at     INTEGER NOT NULL,
    total_run_count INTEGER NOT NULL,
    PRIMARY KEY (schedule, entry)
) WITHOUT ROWID;
";

// ----------------------------------------------------------------------------------------
// Queues
// ----------------------------------------------------------------------------------------

/// Records a queue name (?1) at time ?2; no-op when known.
pub const DECLARE_QUEUE: &str = "INSERT OR IGNORE INTO queues (name, created_at) VALUES (?1, ?2)";

/// Every known queue name, sorted.
pub const LIST_QUEUES: &str = "SELECT name FROM queues ORDER BY name";

// ----------------------------------------------------------------------------------------
// Publish
// ----------------------------------------------------------------------------------------

/// Adds a ready message: queue ?1, priority ?2 (0..=9), headers ?3, properties ?4,
/// content type ?5, encoding ?6, body ?7, published at ?8. Deliverable as soon as committed;
/// its new id is larger than every id before it (FIFO within a priority).
pub const INSERT_READY: &str = "INSERT INTO messages
    (queue, priority, headers, properties, content_type, content_encoding, body, published_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// Adds a message not deliverable before ?9 (ms): same parameters as [`INSERT_READY`] plus
/// the due time. It stays out of `messages` until [`PROMOTE_DUE`] moves it.
pub const INSERT_SCHEDULED: &str = "INSERT INTO scheduled
    (queue, priority, headers, properties, content_type, content_encoding, body, published_at, due)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

// ----------------------------------------------------------------------------------------
// Fetch (all in one write transaction)
// ----------------------------------------------------------------------------------------

/// Copies up to ?2 scheduled messages due at or before ?1 (ms) into `messages`, earliest due
/// first, so they become ready with ids in due order. One index seek when nothing is due.
/// Must be followed, in the same transaction, by [`DELETE_PROMOTED`] with the same parameters
/// (the subquery selects the same rows since nothing else writes in between).
pub const PROMOTE_DUE: &str = "INSERT INTO messages
    (queue, priority, headers, properties, content_type, content_encoding, body, published_at)
    SELECT queue, priority, headers, properties, content_type, content_encoding, body, published_at
    FROM scheduled
    WHERE id IN (SELECT id FROM scheduled WHERE due <= ?1 ORDER BY due, id LIMIT ?2)
    ORDER BY due, id";

/// Removes the rows [`PROMOTE_DUE`] just copied.
pub const DELETE_PROMOTED: &str = "DELETE FROM scheduled
    WHERE id IN (SELECT id FROM scheduled WHERE due <= ?1 ORDER BY due, id LIMIT ?2)";

/// Puts every message whose lease lapsed before ?1 (ms) back to ready. Its `delivered` count
/// is kept, so its next delivery is flagged redelivered. Only reads leased rows (index).
pub const RECLAIM_EXPIRED: &str = "UPDATE messages SET lease_owner = NULL, lease_until = NULL
    WHERE lease_owner IS NOT NULL AND lease_until < ?1";

/// Leases up to ?4 ready messages of queue ?3 to owner ?1 until ?2 (ms): highest priority
/// first, then oldest first. Returns the leased rows in no particular order (sort by
/// priority DESC, id). `delivered` as returned includes this delivery (> 1 = redelivered).
pub const LEASE_READY: &str = "UPDATE messages
    SET lease_owner = ?1, lease_until = ?2, delivered = delivered + 1
    WHERE id IN (
        SELECT id FROM messages
        WHERE queue = ?3 AND lease_owner IS NULL
        ORDER BY priority DESC, id
        LIMIT ?4)
    RETURNING id, priority, headers, properties, content_type, content_encoding, body, delivered";

/// The earliest scheduled due time (ms), or NULL. One index seek.
pub const NEXT_DUE: &str = "SELECT min(due) FROM scheduled";

/// The earliest lease expiry (ms), or NULL: when a waiting consumer should look again for
/// messages abandoned by a dead worker. One index seek.
pub const NEXT_LEASE_EXPIRY: &str =
    "SELECT min(lease_until) FROM messages WHERE lease_owner IS NOT NULL";

// ----------------------------------------------------------------------------------------
// Consumer operations
// ----------------------------------------------------------------------------------------

/// Acknowledges message ?1 held by owner ?2: deletes it. A consumer whose lease lapsed no
/// longer owns the message, so its late ack does nothing (the message runs again: leases
/// give at-least-once delivery), and a reused id is never deleted by a stale tag.
pub const ACK: &str = "DELETE FROM messages WHERE id = ?1 AND lease_owner = ?2";

/// Returns message ?1 to ready if owner ?2 still holds it (a message re-leased by another
/// consumer after a lapsed lease is left alone).
pub const REQUEUE: &str = "UPDATE messages SET lease_owner = NULL, lease_until = NULL
    WHERE id = ?1 AND lease_owner = ?2";

/// Returns every message owner ?1 holds to ready (consumer close).
pub const REQUEUE_OWNER: &str = "UPDATE messages SET lease_owner = NULL, lease_until = NULL
    WHERE lease_owner = ?1";

/// Extends to ?2 (ms) the lease of every message owner ?1 holds. One statement (index).
pub const KEEPALIVE: &str = "UPDATE messages SET lease_until = ?2 WHERE lease_owner = ?1";

/// Copies message ?1 (if still held by owner ?2) into `dead_letters` with reason ?3 at ?4.
/// Followed by [`DELETE_DEAD`] with the same id and owner.
pub const INSERT_DEAD: &str = "INSERT INTO dead_letters
    (queue, priority, headers, properties, content_type, content_encoding, body, published_at, reason, at)
    SELECT queue, priority, headers, properties, content_type, content_encoding, body, published_at, ?3, ?4
    FROM messages WHERE id = ?1 AND lease_owner = ?2";

/// Removes message ?1 held by ?2 after [`INSERT_DEAD`] copied it.
pub const DELETE_DEAD: &str = "DELETE FROM messages WHERE id = ?1 AND lease_owner = ?2";

// ----------------------------------------------------------------------------------------
// Purge and stats
// ----------------------------------------------------------------------------------------

/// Deletes the ready messages of queue ?1 (leased ones stay with their worker).
pub const PURGE_READY: &str = "DELETE FROM messages WHERE queue = ?1 AND lease_owner IS NULL";

/// Deletes the scheduled messages of queue ?1.
pub const PURGE_SCHEDULED: &str = "DELETE FROM scheduled WHERE queue = ?1";

/// Ready messages of queue ?1 (counts the partial index).
pub const COUNT_READY: &str =
    "SELECT count(*) FROM messages WHERE queue = ?1 AND lease_owner IS NULL";

/// Scheduled messages of queue ?1.
pub const COUNT_SCHEDULED: &str = "SELECT count(*) FROM scheduled WHERE queue = ?1";

/// Leased (unacked) messages of queue ?1 (reads only leased rows).
pub const COUNT_UNACKED: &str =
    "SELECT count(*) FROM messages WHERE lease_owner IS NOT NULL AND queue = ?1";

// ----------------------------------------------------------------------------------------
// Dead letters
// ----------------------------------------------------------------------------------------

/// The newest ?1 dead letters, newest first.
pub const LIST_DEAD: &str = "SELECT id, queue, reason, at, headers, properties, content_type,
    content_encoding, body FROM dead_letters ORDER BY id DESC LIMIT ?1";

/// Puts dead letter ?1 back on its queue as a new ready message (fresh id, never delivered).
/// Followed by [`DELETE_DEAD_LETTER`].
pub const REQUEUE_DEAD: &str = "INSERT INTO messages
    (queue, priority, headers, properties, content_type, content_encoding, body, published_at)
    SELECT queue, priority, headers, properties, content_type, content_encoding, body, published_at
    FROM dead_letters WHERE id = ?1";

/// Removes dead letter ?1.
pub const DELETE_DEAD_LETTER: &str = "DELETE FROM dead_letters WHERE id = ?1";

/// Puts every dead letter back on its queue, oldest first. Followed by [`DELETE_ALL_DEAD`].
pub const REQUEUE_ALL_DEAD: &str = "INSERT INTO messages
    (queue, priority, headers, properties, content_type, content_encoding, body, published_at)
    SELECT queue, priority, headers, properties, content_type, content_encoding, body, published_at
    FROM dead_letters ORDER BY id";

/// Removes every dead letter.
pub const DELETE_ALL_DEAD: &str = "DELETE FROM dead_letters";

/// Queue names of the dead letters (so requeued queues are listed by stats).
pub const DEAD_QUEUES: &str = "INSERT OR IGNORE INTO queues (name, created_at)
    SELECT DISTINCT queue, ?1 FROM dead_letters";

// ----------------------------------------------------------------------------------------
// Revocations
// ----------------------------------------------------------------------------------------

/// Records a revoke of task ?1 at ?3 (ms). `terminate` ?2 is 0 (do not stop it), or the
/// signal number a terminate sends (1, written by earlier versions, means SIGTERM). A
/// repeated revoke gets a new `seq` (so cursors see it again) and keeps a terminate asked
/// for before, the latest signal winning.
pub const REVOKE: &str = "INSERT OR REPLACE INTO revoked (task_id, terminate, at)
    VALUES (?1, CASE WHEN ?2 != 0 THEN ?2
        ELSE coalesce((SELECT terminate FROM revoked WHERE task_id = ?1), 0) END, ?3)";

/// 1 when task ?1 is revoked.
pub const IS_REVOKED: &str = "SELECT 1 FROM revoked WHERE task_id = ?1";

/// Revokes recorded after cursor ?1, in order.
pub const REVOKED_SINCE: &str =
    "SELECT seq, task_id, terminate, at FROM revoked WHERE seq > ?1 ORDER BY seq";

/// Forgets revokes recorded before ?1 (ms).
pub const PRUNE_REVOKED: &str = "DELETE FROM revoked WHERE at < ?1";

// ----------------------------------------------------------------------------------------
// Results
// ----------------------------------------------------------------------------------------

/// Stores task ?1's meta JSON ?3 with status ?2 at ?4, expiring at ?5 (ms, NULL = never).
/// A stored SUCCESS is never overwritten: a late duplicate (e.g. a redelivered run) loses.
/// An expired row counts as absent (it is invisible to [`GET_RESULT`]) and is replaced.
pub const STORE_RESULT: &str = "INSERT INTO results (task_id, status, meta, updated_at, expires_at)
    VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (task_id) DO UPDATE SET
        status = excluded.status, meta = excluded.meta,
        updated_at = excluded.updated_at, expires_at = excluded.expires_at
    WHERE results.status != 'SUCCESS'
       OR (results.expires_at IS NOT NULL AND results.expires_at <= ?4)";

/// Task ?1's meta JSON unless it expired before ?2 (ms).
pub const GET_RESULT: &str = "SELECT meta FROM results
    WHERE task_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)";

/// Deletes task ?1's result.
pub const FORGET_RESULT: &str = "DELETE FROM results WHERE task_id = ?1";

/// Deletes up to ?2 results expired at ?1 (ms); bounded so one call stays short.
pub const PRUNE_RESULTS: &str = "DELETE FROM results WHERE task_id IN
    (SELECT task_id FROM results WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)";

/// Saves group ?1's member ids ?2 (JSON array), expiring at ?3 (ms, NULL = never); replaces.
pub const SAVE_GROUP: &str =
    "INSERT OR REPLACE INTO groups (group_id, task_ids, expires_at) VALUES (?1, ?2, ?3)";

/// Group ?1's member ids (JSON array) unless expired before ?2 (ms).
pub const GET_GROUP: &str = "SELECT task_ids FROM groups
    WHERE group_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)";

/// Deletes up to ?2 groups expired at ?1 (ms).
pub const PRUNE_GROUPS: &str = "DELETE FROM groups WHERE group_id IN
    (SELECT group_id FROM groups WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)";

// ----------------------------------------------------------------------------------------
// Remote control (docs/sqlite.md, "Remote control")
// ----------------------------------------------------------------------------------------

/// Broadcasts a request: body ?1 (Celery's JSON), sender clock ?2, at ?3 (ms).
pub const INSERT_CONTROL_REQUEST: &str =
    "INSERT INTO control_requests (body, clock, at) VALUES (?1, ?2, ?3)";

/// Where a new listener starts: the newest request's seq (0 when none). Requests sent
/// before a worker listened are not for it, as on a fanout exchange.
pub const LAST_CONTROL_SEQ: &str = "SELECT coalesce(max(seq), 0) FROM control_requests";

/// Requests after cursor ?1, in order: seq, body, clock.
pub const CONTROL_REQUESTS_SINCE: &str =
    "SELECT seq, body, clock FROM control_requests WHERE seq > ?1 ORDER BY seq";

/// Forgets requests sent before ?1 (ms): a listener that has not read them by then was not
/// listening.
pub const PRUNE_CONTROL_REQUESTS: &str = "DELETE FROM control_requests WHERE at < ?1";

/// Sends an event: body ?1 (Celery's JSON event), at ?2 (ms).
pub const INSERT_EVENT: &str = "INSERT INTO events (body, at) VALUES (?1, ?2)";

/// Where a new monitor starts: the newest event's seq (0 when none). Events are not kept
/// for monitors that come later, as on Celery's `celeryev` exchange.
pub const LAST_EVENT_SEQ: &str = "SELECT coalesce(max(seq), 0) FROM events";

/// Events after cursor ?1, in order, at most ?2: seq, body.
pub const EVENTS_SINCE: &str = "SELECT seq, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2";

/// Forgets events sent before ?1 (ms): a monitor that has not read them by then is gone.
pub const PRUNE_EVENTS: &str = "DELETE FROM events WHERE at < ?1";

/// A monitor ?1 says it is receiving, at ?2 (ms).
pub const SEEN_MONITOR: &str =
    "INSERT INTO event_monitors (id, seen_at) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at";

/// Monitor ?1 stopped receiving.
pub const DROP_MONITOR: &str = "DELETE FROM event_monitors WHERE id = ?1";

/// Forgets monitors not seen since ?1 (ms) (their process died).
pub const PRUNE_MONITORS: &str = "DELETE FROM event_monitors WHERE seen_at < ?1";

/// Whether a monitor was seen since ?1 (ms).
pub const ANY_MONITOR: &str = "SELECT EXISTS (SELECT 1 FROM event_monitors WHERE seen_at >= ?1)";

/// A reply for caller ?1 (its reply routing key) to request ticket ?2: body ?3, at ?4.
pub const INSERT_CONTROL_REPLY: &str =
    "INSERT INTO control_replies (reply_key, ticket, body, at) VALUES (?1, ?2, ?3, ?4)";

/// Takes every reply waiting for caller ?1: deletes them and returns ticket, body.
pub const TAKE_CONTROL_REPLIES: &str =
    "DELETE FROM control_replies WHERE reply_key = ?1 RETURNING ticket, body";

/// Forgets replies nobody took before ?1 (ms) (their caller stopped waiting).
pub const PRUNE_CONTROL_REPLIES: &str = "DELETE FROM control_replies WHERE at < ?1";

// ----------------------------------------------------------------------------------------
// Chords
// ----------------------------------------------------------------------------------------

/// Records chord ?1 of ?2 header results, expiring at ?3 (ms, NULL = never); a chord
/// applied again under the same id starts over.
pub const START_CHORD: &str =
    "INSERT OR REPLACE INTO chords (group_id, size, claim, claimed_until, expires_at)
    VALUES (?1, ?2, NULL, NULL, ?3)";

/// Drops the header results of chord ?1 (when it starts over or is done).
pub const DELETE_CHORD_PARTS: &str = "DELETE FROM chord_parts WHERE group_id = ?1";

/// Chord ?1's size, header results counted, claim and claim deadline.
pub const GET_CHORD: &str =
    "SELECT size, counted, claim, claimed_until FROM chords WHERE group_id = ?1";

/// Counts header result (?2 task id, ?3 index) of chord ?1 with state ?4 and result JSON ?5;
/// a result already counted is left as it is.
pub const ADD_CHORD_PART: &str =
    "INSERT OR IGNORE INTO chord_parts (group_id, task_id, idx, state, result)
    VALUES (?1, ?2, ?3, ?4, ?5)";

/// Counts one more header result in chord ?1 (after [`ADD_CHORD_PART`] added a row).
pub const COUNT_CHORD_PART: &str = "UPDATE chords SET counted = counted + 1 WHERE group_id = ?1";

/// Chord ?1's header results in header order: task id, state, result JSON.
pub const CHORD_PARTS: &str =
    "SELECT task_id, state, result FROM chord_parts WHERE group_id = ?1 ORDER BY idx, task_id";

/// Gives chord ?1's claim to token ?2 until ?3 (ms).
pub const CLAIM_CHORD: &str =
    "UPDATE chords SET claim = ?2, claimed_until = ?3 WHERE group_id = ?1";

/// Marks chord ?1 done if token ?2 still holds its claim.
pub const FINISH_CHORD: &str =
    "UPDATE chords SET claim = 'done', claimed_until = NULL WHERE group_id = ?1 AND claim = ?2";

/// Deletes the header results of up to ?2 chords expired at ?1 (ms).
pub const PRUNE_CHORD_PARTS: &str = "DELETE FROM chord_parts WHERE group_id IN
    (SELECT group_id FROM chords WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)";

/// Deletes up to ?2 chords expired at ?1 (ms).
pub const PRUNE_CHORDS: &str = "DELETE FROM chords WHERE group_id IN
    (SELECT group_id FROM chords WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)";

// ----------------------------------------------------------------------------------------
// Beat (leader lease and last runs; `beat.rs`)
// ----------------------------------------------------------------------------------------

/// Takes or renews schedule ?1's lease for holder ?2 until ?4 (ms), at time ?3 (ms), in one
/// statement. It writes when there is no row, when the lease lapsed (`expires_at <= ?3`), or
/// when ?2 holds it; it returns the token then, and no row when another holder's lease is
/// live. The token is kept while a live holder renews and grows by one otherwise: a lapsed
/// lease may have been someone else's meanwhile, even when the same holder takes it back.
/// (In an UPDATE every expression reads the row as it was, so the CASE sees the old holder.)
pub const ACQUIRE_BEAT_LEASE: &str = "INSERT INTO beat_leases (schedule, holder, token, expires_at)
    VALUES (?1, ?2, 1, ?4)
    ON CONFLICT (schedule) DO UPDATE SET
        token = CASE WHEN beat_leases.holder = excluded.holder AND beat_leases.expires_at > ?3
            THEN beat_leases.token ELSE beat_leases.token + 1 END,
        holder = excluded.holder,
        expires_at = excluded.expires_at
    WHERE beat_leases.holder = excluded.holder OR beat_leases.expires_at <= ?3
    RETURNING token";

/// Releases schedule ?1's lease if holder ?2 holds it with token ?3: it lapses at once
/// (`expires_at = 0`). The row stays, keeping the token for the next holder's to exceed.
pub const RELEASE_BEAT_LEASE: &str = "UPDATE beat_leases SET expires_at = 0
    WHERE schedule = ?1 AND holder = ?2 AND token = ?3";

/// Schedule ?1's holder, token and expiry (ms) when its lease is live at ?2 (ms).
pub const GET_BEAT_LEASE: &str = "SELECT holder, token, expires_at FROM beat_leases
    WHERE schedule = ?1 AND expires_at > ?2";

/// 1 when holder ?2 holds schedule ?1's lease with token ?3 and it is live at ?4 (ms). Read
/// inside the write transaction of [`RECORD_BEAT_RUN`], so check and write are one step.
pub const CHECK_BEAT_LEASE: &str = "SELECT 1 FROM beat_leases
    WHERE schedule = ?1 AND holder = ?2 AND token = ?3 AND expires_at > ?4";

/// Records entry ?2 of schedule ?1: run under schedule text ?3, due at ?4 (ms), ?5 runs so
/// far; replaces the entry's earlier state. Only after [`CHECK_BEAT_LEASE`] found the lease.
pub const RECORD_BEAT_RUN: &str = "INSERT INTO beat_runs
    (schedule, entry, schedule_text, last_run_at, total_run_count) VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (schedule, entry) DO UPDATE SET
        schedule_text = excluded.schedule_text,
        last_run_at = excluded.last_run_at,
        total_run_count = excluded.total_run_count";

/// Every entry of schedule ?1: entry, schedule text, last run (ms), run count.
pub const BEAT_RUNS: &str = "SELECT entry, schedule_text, last_run_at, total_run_count
    FROM beat_runs WHERE schedule = ?1";
