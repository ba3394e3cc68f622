//! Every Redis key name and Lua script used by celeriac, each with its contract.
//!
//! Names shared with Python Celery / kombu 5.7 (must match byte for byte):
//!
//! | key | type | contents |
//! | --- | --- | --- |
//! | `<queue>`, `<queue>\x06\x163`, `\x06\x166`, `\x06\x169` | list | kombu envelopes; LPUSH in, RPOP out |
//! | `_kombu.binding.<exchange>` | set | `routing_key\x06\x16pattern\x06\x16queue` |
//! | `_kombu.binding_permanent.<exchange>` | set | same members, queues without `x-expires` |
//! | `unacked` | hash | delivery_tag → JSON `[envelope, exchange, routing_key]` |
//! | `unacked_index` | zset | delivery_tag scored by delivery time (unix seconds, float) |
//! | `unacked_mutex` | string | restore-sweep lock token (`SET NX PX 300000`) |
//! | channel `/<db>.celery.pidbox` | pub/sub | remote-control requests (revoke, inspect, control) |
//! | `<oid>.reply.celery.pidbox` | list | remote-control replies to the caller `oid` |
//!
//! celeriac's own keys (Python ignores them):
//!
//! | key | type | contents |
//! | --- | --- | --- |
//! | `celeriac.delayed.<queue>` | zset | parked ETA envelopes (member = envelope exactly as popped), score = due ms |
//! | `celeriac.dead_letters` | list | JSON `{id, queue, reason, at, envelope}` (LPUSH: newest first) |
//! | `celeriac.revoked` | stream | one entry per revoked id: `task_id`, `terminate` (0/1), `at` (ms) |
//! | `celeriac.revoked_ids` | zset | revoked task id scored by revoke time (ms), newest 100 000 kept |
//! | `celeriac.beat.<schedule>.lease` | string | `<token>:<holder>`, beat's leader lease, `PX` = its TTL |
//! | `celeriac.beat.<schedule>.token` | string | integer, the last fencing token handed out (INCR) |
//! | `celeriac.beat.<schedule>.runs` | hash | entry → JSON `{"schedule", "at" (ms), "n"}`, its last run |
//!
//! Every key and channel carries kombu's `global_keyprefix`, prepended exactly as given. The
//! beat keys do so from the broker and from the result backend alike (not the backend's
//! `_`-appending rule), so both handles on one server reach the same lease.

use redis::Script;

/// kombu's separator between a queue name and its priority step, and inside binding members.
pub const SEP: &str = "\x06\x16";
/// kombu's default `priority_steps`.
pub const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];
/// Bound on `celeriac.revoked` (XADD MAXLEN ~) and `celeriac.revoked_ids`.
pub const REVOKED_MAX: usize = 100_000;
/// kombu's unacked_mutex expiry.
pub const MUTEX_PX: u64 = 300_000;

/// Key names for one `global_keyprefix` and database.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    db: i64,
}

impl Keys {
    pub fn new(prefix: &str, db: i64) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            db,
        }
    }

    fn p(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// The priority step (0, 3, 6, 9) a wire priority lands on (kombu `_get_message_priority`
    /// + `priority()`): clamp to 0..9, then the largest step not above it.
    pub fn step_for(wire_priority: u8) -> u8 {
        let p = wire_priority.min(9);
        *PRIORITY_STEPS.iter().rev().find(|s| **s <= p).unwrap_or(&0)
    }

    /// Unprefixed list name of `queue` at `step` (kombu `_q_for_pri`).
    pub fn list_name(queue: &str, step: u8) -> String {
        if step == 0 {
            queue.to_string()
        } else {
            format!("{queue}{SEP}{step}")
        }
    }

    /// The list key (prefixed) of `queue` at `step`.
    pub fn list(&self, queue: &str, step: u8) -> String {
        self.p(&Self::list_name(queue, step))
    }

    /// All four list keys of `queue`, step 0 first.
    pub fn lists(&self, queue: &str) -> Vec<String> {
        PRIORITY_STEPS
            .iter()
            .map(|s| self.list(queue, *s))
            .collect()
    }

    /// kombu's BRPOP key order: step first, then queue.
    pub fn pop_order(&self, queues: &[String]) -> Vec<String> {
        PRIORITY_STEPS
            .iter()
            .flat_map(|s| queues.iter().map(move |q| self.list(q, *s)))
            .collect()
    }

    /// The queue a (prefixed) list key belongs to: prefix and `\x06\x16<step>` removed.
    pub fn queue_of_list<'a>(&self, key: &'a str) -> &'a str {
        let k = key.strip_prefix(self.prefix.as_str()).unwrap_or(key);
        match k.rsplit_once(SEP) {
            Some((q, "3" | "6" | "9")) => q,
            _ => k,
        }
    }

    /// `_kombu.binding.<exchange>`.
    pub fn binding(&self, exchange: &str) -> String {
        self.p(&format!("_kombu.binding.{exchange}"))
    }

    /// `_kombu.binding_permanent.<exchange>`.
    pub fn binding_permanent(&self, exchange: &str) -> String {
        self.p(&format!("_kombu.binding_permanent.{exchange}"))
    }

    /// Glob matching every `_kombu.binding.<exchange>` set (prefix glob-escaped).
    pub fn binding_glob(&self) -> String {
        let mut out = String::new();
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push_str("_kombu.binding.*");
        out
    }

    /// The exchange of a `_kombu.binding.<exchange>` key.
    pub fn exchange_of_binding<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.prefix.as_str())?
            .strip_prefix("_kombu.binding.")
    }

    /// Binding member `routing_key\x06\x16\x06\x16queue` (direct binding, empty pattern).
    pub fn binding_member(routing_key: &str, queue: &str) -> String {
        format!("{routing_key}{SEP}{SEP}{queue}")
    }

    /// `(routing_key, pattern, queue)` of a binding member.
    pub fn parse_binding_member(member: &str) -> Option<(&str, &str, &str)> {
        let mut it = member.splitn(3, SEP);
        Some((it.next()?, it.next()?, it.next()?))
    }

    pub fn unacked(&self) -> String {
        self.p("unacked")
    }
    pub fn unacked_index(&self) -> String {
        self.p("unacked_index")
    }
    pub fn unacked_mutex(&self) -> String {
        self.p("unacked_mutex")
    }

    /// celeriac's parked ETA messages of `queue`.
    pub fn delayed(&self, queue: &str) -> String {
        self.p(&format!("celeriac.delayed.{queue}"))
    }
    pub fn dead_letters(&self) -> String {
        self.p("celeriac.dead_letters")
    }
    pub fn revoked_stream(&self) -> String {
        self.p("celeriac.revoked")
    }
    pub fn revoked_ids(&self) -> String {
        self.p("celeriac.revoked_ids")
    }

    /// The fanout channel of the remote-control exchange: `<prefix>/<db>.celery.pidbox`.
    pub fn pidbox_channel(&self) -> String {
        self.p(&format!("/{}.celery.pidbox", self.db))
    }

    /// The channel an event with `routing_key` is PUBLISHed to (Celery switches `celeryev`
    /// to fanout on Redis): `<prefix>/<db>.celeryev/<routing_key>`.
    pub fn event_channel(&self, routing_key: &str) -> String {
        self.p(&format!("/{}.celeryev/{routing_key}", self.db))
    }

    /// The pattern a monitor PSUBSCRIBEs to receive every event: `<prefix>/<db>.celeryev/*`.
    pub fn event_pattern(&self) -> String {
        self.p(&format!("/{}.celeryev/*", self.db))
    }

    /// The list a remote-control caller with routing key `oid` reads its replies from
    /// (BRPOP): `<prefix><oid>.reply.celery.pidbox`. Workers LPUSH replies to it.
    pub fn reply_list(&self, oid: &str) -> String {
        self.p(&reply_queue(oid))
    }

    /// The member a caller adds to `binding("reply.celery.pidbox")` so that Python workers
    /// (kombu's direct-exchange lookup) find its reply list: `<oid>\x06\x16\x06\x16<queue>`.
    pub fn reply_binding_member(oid: &str) -> String {
        format!("{oid}{SEP}{SEP}{}", reply_queue(oid))
    }
}

/// The reply queue of caller `oid`, unprefixed (as binding members name queues).
fn reply_queue(oid: &str) -> String {
    format!("{oid}.reply.celery.pidbox")
}

/// Shared Lua helpers (prepended to scripts that need them).
///
/// `step_of(env)`: the priority step (0, 3, 6, 9) of an envelope string (kombu's rule: the
/// `properties.priority` clamped to 0..9, missing/invalid → 0, then the largest step ≤ p), as
/// a 0-based step index 0..3.
const LUA_STEP: &str = r#"
local function step_index(env)
  local ok, m = pcall(cjson.decode, env)
  local p = 0
  if ok and type(m) == 'table' and type(m.properties) == 'table' then
    p = tonumber(m.properties.priority) or 0
  end
  if p >= 9 then return 3 elseif p >= 6 then return 2 elseif p >= 3 then return 1 end
  return 0
end
"#;

/// FETCH: promote due parked ETA messages, then pop up to `max` messages in kombu's order and
/// record each in the ack bookkeeping, atomically.
///
/// KEYS[1] = unacked, KEYS[2] = unacked_index, KEYS[3] = celeriac.dead_letters,
/// KEYS[4 .. 3+4n] = the consumer's list keys in pop order (step-major: all queues' step 0,
/// then step 3, ...; n = number of queues), KEYS[4+4n .. 3+5n] = celeriac.delayed.<queue> for
/// queue 1..n (same queue order).
/// ARGV[1] = max messages, ARGV[2] = now as unix seconds (float string, the unacked_index
/// score kombu writes), ARGV[3] = now in ms (promotion cut-off, dead-letter time), ARGV[4] = n,
/// ARGV[5 .. 4+n] = queue names (unprefixed).
///
/// Promotion: every member of a delayed key with score ≤ now-ms is ZREMed and RPUSHed onto
/// its queue's priority list (RPUSH: it is the next message popped). Pop: RPOP with count per
/// list key in order until `max`. Recording (kombu's delivery bookkeeping): the envelope is
/// decoded; `properties.delivery_tag` is the tag; `properties.delivery_info` gives exchange
/// and routing key (defaults: "" and the queue); then `ZADD unacked_index now tag` and
/// `HSET unacked tag "[<envelope>, <exchange json>, <routing_key json>]"` (the envelope
/// string embedded verbatim). An envelope without a string delivery tag (undecodable) is not
/// recorded but LPUSHed to celeriac.dead_letters as
/// `{"id": "invalid-<sha1>", "queue", "reason", "at": ms, "envelope": "<raw string>"}`.
///
/// Returns `{next_due_ms or -1, tag1, queue_index1 (0-based), envelope1, tag2, ...}`;
/// next_due_ms is the earliest score left in the delayed keys.
pub fn fetch_script() -> Script {
    Script::new(&format!(
        r#"{LUA_STEP}
local max = tonumber(ARGV[1])
local now = ARGV[2]
local now_ms = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local out = {{-1}}
for j = 1, n do
  local dk = KEYS[3 + 4 * n + j]
  local due = redis.call('ZRANGEBYSCORE', dk, '-inf', now_ms, 'LIMIT', 0, 1000)
  for _, env in ipairs(due) do
    if redis.call('ZREM', dk, env) == 1 then
      redis.call('RPUSH', KEYS[3 + step_index(env) * n + j], env)
    end
  end
end
local got = 0
for k = 1, 4 * n do
  if got >= max then break end
  local items = redis.call('RPOP', KEYS[3 + k], max - got)
  if items then
    local qi = (k - 1) % n
    local qname = ARGV[5 + qi]
    for _, env in ipairs(items) do
      got = got + 1
      local ok, m = pcall(cjson.decode, env)
      local tag, ex, rk
      if ok and type(m) == 'table' and type(m.properties) == 'table' then
        tag = m.properties.delivery_tag
        local di = m.properties.delivery_info
        if type(di) == 'table' then ex = di.exchange; rk = di.routing_key end
      end
      if type(tag) == 'string' then
        if type(ex) ~= 'string' then ex = '' end
        if type(rk) ~= 'string' then rk = qname end
        redis.call('ZADD', KEYS[2], now, tag)
        redis.call('HSET', KEYS[1], tag,
          '[' .. env .. ', ' .. cjson.encode(ex) .. ', ' .. cjson.encode(rk) .. ']')
        table.insert(out, tag)
        table.insert(out, qi)
        table.insert(out, env)
      else
        redis.call('LPUSH', KEYS[3], cjson.encode({{
          id = 'invalid-' .. redis.sha1hex(env), queue = qname,
          reason = 'undecodable envelope (no properties.delivery_tag)',
          at = now_ms, envelope = env }}))
      end
    end
  end
end
for j = 1, n do
  local first = redis.call('ZRANGE', KEYS[3 + 4 * n + j], 0, 0, 'WITHSCORES')
  if first[2] then
    local s = tonumber(first[2])
    if out[1] == -1 or s < out[1] then out[1] = s end
  end
end
if out[1] ~= -1 then out[1] = math.floor(out[1]) end
return out
"#
    ))
}

/// RECORD: kombu's delivery bookkeeping for one envelope that BRPOP returned.
///
/// KEYS[1] = unacked, KEYS[2] = unacked_index, KEYS[3] = celeriac.dead_letters.
/// ARGV[1] = envelope, ARGV[2] = now (unix seconds float string), ARGV[3] = now ms,
/// ARGV[4] = queue name (unprefixed; default routing key).
/// Same recording rules as FETCH. Returns the tag, or false when dead-lettered.
pub fn record_script() -> Script {
    Script::new(
        r#"
local env = ARGV[1]
local ok, m = pcall(cjson.decode, env)
local tag, ex, rk
if ok and type(m) == 'table' and type(m.properties) == 'table' then
  tag = m.properties.delivery_tag
  local di = m.properties.delivery_info
  if type(di) == 'table' then ex = di.exchange; rk = di.routing_key end
end
if type(tag) ~= 'string' then
  redis.call('LPUSH', KEYS[3], cjson.encode({
    id = 'invalid-' .. redis.sha1hex(env), queue = ARGV[4],
    reason = 'undecodable envelope (no properties.delivery_tag)',
    at = tonumber(ARGV[3]), envelope = env }))
  return false
end
if type(ex) ~= 'string' then ex = '' end
if type(rk) ~= 'string' then rk = ARGV[4] end
redis.call('ZADD', KEYS[2], ARGV[2], tag)
redis.call('HSET', KEYS[1], tag, '[' .. env .. ', ' .. cjson.encode(ex) .. ', ' .. cjson.encode(rk) .. ']')
return tag
"#,
    )
}

/// PARK: move a just-recorded ETA message from the ack bookkeeping to its delayed set.
///
/// KEYS[1] = unacked, KEYS[2] = unacked_index, KEYS[3] = celeriac.delayed.<queue>.
/// ARGV[1] = delivery tag, ARGV[2] = due time ms, ARGV[3] = envelope (as popped).
/// Only when `HDEL unacked tag` removed the entry (this consumer still owns it): ZREM the
/// index, `ZADD delayed due envelope`. Returns 1 when parked, 0 when the tag was gone.
pub fn park_script() -> Script {
    Script::new(
        r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return 1
"#,
    )
}

/// TAKE: compare-and-move entries out of the ack bookkeeping (restore, requeue,
/// dead-letter), the WATCH/MULTI of kombu's `restore_by_tag` as one script.
///
/// KEYS[1] = unacked, KEYS[2] = unacked_index, KEYS[3..] = destination lists.
/// ARGV[1] = count of entries; then per entry: tag, expected unacked value, push direction
/// (`R` = RPUSH, the restore side: next to be popped; `L` = LPUSH: back of the queue /
/// dead-letter list), payload, number of destinations d, then d indexes into KEYS.
/// For each entry whose `HGET unacked tag` equals the expected value: HDEL, ZREM, push the
/// payload to each destination. An entry whose value is gone is only ZREMed (kombu does the
/// same); one whose value changed is left alone. Returns the number of entries moved.
pub fn take_script() -> Script {
    Script::new(
        r#"
local count = tonumber(ARGV[1])
local i = 2
local moved = 0
for _ = 1, count do
  local tag, expected, dir, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local d = tonumber(ARGV[i + 4])
  local cur = redis.call('HGET', KEYS[1], tag)
  if not cur then
    redis.call('ZREM', KEYS[2], tag)
  elseif cur == expected then
    redis.call('HDEL', KEYS[1], tag)
    redis.call('ZREM', KEYS[2], tag)
    for k = 1, d do
      local key = KEYS[tonumber(ARGV[i + 4 + k])]
      if dir == 'R' then redis.call('RPUSH', key, payload) else redis.call('LPUSH', key, payload) end
    end
    moved = moved + 1
  end
  i = i + 5 + d
end
return moved
"#,
    )
}

/// UNLOCK: kombu's compare-and-delete release of `unacked_mutex`.
///
/// KEYS[1] = unacked_mutex, ARGV[1] = the token this sweeper set. Returns 1 when deleted.
pub fn unlock_script() -> Script {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
}

/// REQUEUE_DEAD: put one dead letter back on its queue.
///
/// KEYS[1] = celeriac.dead_letters, KEYS[2] = destination list.
/// ARGV[1] = the exact record string, ARGV[2] = envelope to push.
/// `LREM dead_letters 1 record`; only when it removed one, `LPUSH list envelope`.
/// Returns 1 when requeued.
pub fn requeue_dead_script() -> Script {
    Script::new(
        r#"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
"#,
    )
}

// ----------------------------------------------------------------------------------------
// Beat: leader lease and last runs (`beat.rs`)
// ----------------------------------------------------------------------------------------

/// The keys of one beat schedule, for one `global_keyprefix` (see the table above).
#[derive(Debug, Clone)]
pub struct BeatKeys {
    prefix: String,
}

impl BeatKeys {
    /// `global_keyprefix` exactly as given in the URL.
    pub fn new(global_keyprefix: &str) -> BeatKeys {
        BeatKeys {
            prefix: global_keyprefix.to_string(),
        }
    }

    fn beat(&self, schedule: &str, what: &str) -> String {
        format!("{}celeriac.beat.{schedule}.{what}", self.prefix)
    }

    /// `celeriac.beat.<schedule>.lease`: `<token>:<holder>` while held, gone once it lapsed
    /// (PX) or was released. The token is the digits before the first `:`, so a holder name
    /// may contain `:`.
    pub fn lease(&self, schedule: &str) -> String {
        self.beat(schedule, "lease")
    }

    /// `celeriac.beat.<schedule>.token`: the last token handed out. It never expires, so
    /// tokens keep growing across lapses and releases.
    pub fn token(&self, schedule: &str) -> String {
        self.beat(schedule, "token")
    }

    /// `celeriac.beat.<schedule>.runs`: entry name → `{"schedule": text, "at": due ms,
    /// "n": total_run_count}`.
    pub fn runs(&self, schedule: &str) -> String {
        self.beat(schedule, "runs")
    }
}

/// BEAT_ACQUIRE: take or renew a schedule's lease, on the server's clock.
///
/// KEYS[1] = lease, KEYS[2] = token counter. ARGV[1] = holder, ARGV[2] = TTL ms (≥ 1).
/// No lease (never taken, lapsed, released): `INCR` the counter, `SET lease
/// "<token>:<holder>" PX ttl`, return the token. The lease is the caller's: `PEXPIRE` it and
/// return its token unchanged. Someone else's: return false (nil), nothing written.
pub fn beat_acquire_script() -> Script {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if not cur then
  local token = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
  return token
end
local sep = string.find(cur, ':', 1, true)
if sep and string.sub(cur, sep + 1) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(string.sub(cur, 1, sep - 1))
end
return false
"#,
    )
}

/// BEAT_RELEASE: compare-and-delete a schedule's lease.
///
/// KEYS[1] = lease. ARGV[1] = `"<token>:<holder>"`. Deletes the lease only when it is that
/// value (the caller still holds it with that token); the counter stays. Returns 1 when
/// deleted, else 0.
pub fn beat_release_script() -> Script {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
}

/// BEAT_RECORD: write entries' last runs only while the caller's lease is the live one.
///
/// KEYS[1] = lease, KEYS[2] = runs hash. ARGV[1] = `"<token>:<holder>"`, then pairs of entry
/// name and run JSON. When the lease is exactly ARGV[1] (a lapsed lease is gone, PX removed
/// it; a newer holder's has another token), HSETs every pair (one HSET each: no `unpack`,
/// whose stack limit a long schedule could pass) and returns 1; otherwise writes nothing and
/// returns 0.
pub fn beat_record_script() -> Script {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #ARGV - 1, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
"#,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let k = Keys::new("p:", 5);
        assert_eq!(k.list("celery", 3), "p:celery\x06\x163");
        assert_eq!(k.list("celery", 0), "p:celery");
        assert_eq!(k.queue_of_list("p:celery\x06\x169"), "celery");
        assert_eq!(k.queue_of_list("p:celery"), "celery");
        assert_eq!(k.pidbox_channel(), "p:/5.celery.pidbox");
        assert_eq!(
            k.pop_order(&["a".into(), "b".into()]),
            [
                "p:a",
                "p:b",
                "p:a\x06\x163",
                "p:b\x06\x163",
                "p:a\x06\x166",
                "p:b\x06\x166",
                "p:a\x06\x169",
                "p:b\x06\x169"
            ]
        );
        assert_eq!(
            [0, 2, 3, 5, 7, 9, 12].map(Keys::step_for),
            [0, 0, 3, 3, 6, 9, 9]
        );
        assert_eq!(Keys::new("a*b", 0).binding_glob(), "a\\*b_kombu.binding.*");
        assert_eq!(
            Keys::parse_binding_member("celery\x06\x16\x06\x16celery"),
            Some(("celery", "", "celery"))
        );
        let b = BeatKeys::new("p:");
        assert_eq!(b.lease("default"), "p:celeriac.beat.default.lease");
        assert_eq!(b.token("default"), "p:celeriac.beat.default.token");
        assert_eq!(b.runs("default"), "p:celeriac.beat.default.runs");
    }
}
