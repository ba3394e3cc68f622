//! Key names, channels and Lua scripts of the result backend, each with its contract.

/// Celery's `BaseKeyValueStoreBackend.task_keyprefix`.
pub const TASK_KEYPREFIX: &str = "celery-task-meta-";
/// Celery's `BaseKeyValueStoreBackend.group_keyprefix`.
pub const GROUP_KEYPREFIX: &str = "celery-taskset-meta-";

/// The result backend's `global_keyprefix` rule (Celery `_add_global_keyprefix`), which
/// differs from the broker's: a non-empty prefix gets `_` appended unless it already ends
/// with one of `:`, `_`, `-`, `.`.
pub fn backend_prefix(global_keyprefix: &str) -> String {
    match global_keyprefix.chars().last() {
        None => String::new(),
        Some(':' | '_' | '-' | '.') => global_keyprefix.to_string(),
        Some(_) => format!("{global_keyprefix}_"),
    }
}

#[derive(Debug, Clone)]
pub struct BackendKeys {
    prefix: String,
}

impl BackendKeys {
    /// `global_keyprefix` as given in the URL; [`backend_prefix`] is applied here.
    pub fn new(global_keyprefix: &str) -> Self {
        BackendKeys {
            prefix: backend_prefix(global_keyprefix),
        }
    }

    /// `[<prefix>]celery-task-meta-<task id>`: string, the task meta JSON. Also the name of
    /// the pub/sub channel every write is PUBLISHed on (Celery publishes on the key name,
    /// prefix included), which a waiting `AsyncResult.get()` SUBSCRIBEs to.
    pub fn task(&self, task_id: &str) -> String {
        format!("{}{TASK_KEYPREFIX}{task_id}", self.prefix)
    }

    /// `[<prefix>]celery-taskset-meta-<group id>`: string, a saved GroupResult
    /// `{"result": [[<group id>, null], [<child tuples>...]]}`; also PUBLISHed on its name
    /// (Celery's `_save_group` goes through the same `set`).
    pub fn group(&self, group_id: &str) -> String {
        format!("{}{GROUP_KEYPREFIX}{group_id}", self.prefix)
    }

    /// The keys of one chord's join, named after its group key (Celery 5.7, §6.4).
    pub fn chord(&self, group_id: &str) -> ChordKeys {
        let group = self.group(group_id);
        ChordKeys {
            joined: format!("{group}.j"),
            extra: format!("{group}.t"),
            size: format!("{group}.s"),
            counted: format!("{group}.d"),
            claim: format!("{group}.c"),
            group,
        }
    }
}

/// One chord's keys.
#[derive(Debug, Clone)]
pub struct ChordKeys {
    /// `<gkey>.j`: sorted set of header results, scored by `group_index`; each member is
    /// the JSON text `[1, "<task id>", "<state>", <result>]`.
    pub joined: String,
    /// `<gkey>.t`: integer, header members added while the chord ran (`add_to_chord`).
    pub extra: String,
    /// `<gkey>.s`: integer, the header's size, written by the client before the last
    /// header message is published.
    pub size: String,
    /// `<gkey>.d`: set of `<task id>:<group_index>`, the results already counted.
    pub counted: String,
    /// `<gkey>.c`: the claim to fire the body: a worker's random token while it fires,
    /// then `done`.
    pub claim: String,
    /// `<gkey>`: a saved GroupResult, when the client saved one.
    pub group: String,
}

/// Claim TTL in seconds: a worker that dies holding it blocks the body this long at most.
pub const CHORD_CLAIM_SECS: u64 = 10;
/// How long `<gkey>.c` keeps `done` after the body fired (Celery: at least 300 s).
pub const CHORD_DONE_SECS: u64 = 300;

/// Counts one header result in its chord and, when it completes the chord, takes the claim
/// to fire the body: Celery 5.7's part-return script (same keys, arguments and replies), so
/// Python workers and this one count into the same chord.
///
/// KEYS = `[.j, .t, .s, .d, <gkey>, .c]` (see [`ChordKeys`])
/// ARGV = `[task id, encoded result, "1" (ordered), group_index or "+inf", chord TTL s,
/// group TTL s, claim TTL s, claim token]`
///
/// Returns `{-1, 0, 0, 0}` when `.c` is `done` (a late copy). Else, unless
/// `<task id>:<index>` is in `.d`, adds the result to `.j` and the member to `.d`; refreshes
/// the TTLs (when the chord TTL is positive); and when the count equals `.s` + `.t`, tries
/// `SET .c token NX EX claim TTL`. Returns `{count, .t, .s, claimed (0|1)}`.
pub const CHORD_PART_RETURN: &str = r#"
local joined, extra, size_key, counted, group, claim = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local task_id, encoded, ordered, index = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local chord_ttl, group_ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local claim_ttl, token = tonumber(ARGV[7]), ARGV[8]
if redis.call('GET', claim) == 'done' then
  return {-1, 0, 0, 0}
end
local member = task_id .. ':' .. index
if redis.call('SISMEMBER', counted, member) == 0 then
  if ordered == '1' then
    redis.call('ZADD', joined, index, encoded)
  else
    redis.call('RPUSH', joined, encoded)
  end
  redis.call('SADD', counted, member)
end
local count
if ordered == '1' then
  count = redis.call('ZCOUNT', joined, '-inf', '+inf')
else
  count = redis.call('LLEN', joined)
end
if chord_ttl > 0 then
  for _, key in ipairs({joined, extra, size_key, counted}) do
    redis.call('EXPIRE', key, chord_ttl)
  end
  if group_ttl > 0 then
    redis.call('EXPIRE', group, group_ttl)
  end
end
local added = redis.call('GET', extra)
local size = redis.call('GET', size_key)
local claimed = 0
if size and count == tonumber(size) + tonumber(added or 0) then
  if redis.call('SET', claim, token, 'NX', 'EX', claim_ttl) then
    claimed = 1
  end
end
return {count, added, size, claimed}
"#;

/// Ends a fired chord: if `.c` still holds the token, deletes `.j .t .s .d` and sets `.c`
/// to `done` for ARGV[2] seconds; returns 1, else 0 (the claim lapsed). Celery 5.7's
/// cleanup script.
///
/// KEYS = `[.c, .j, .t, .s, .d]`, ARGV = `[token, done TTL s]`
pub const CHORD_CLEANUP: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], 'done', 'EX', tonumber(ARGV[2]))
  end
  return 1
end
return 0
"#;

/// Stores one task state change the way a Celery worker does (§5.4), atomically.
///
/// KEYS[1] = the task meta key (`celery-task-meta-<id>`)
/// ARGV[1] = the meta JSON (exactly `TaskMeta::to_json()`)
/// ARGV[2] = TTL in whole seconds; `"0"` writes with plain SET (no expiry)
/// ARGV[3] = the channel to PUBLISH the same JSON on (the key name)
///
/// If the stored value is a meta with `"status": "SUCCESS"` nothing is written or
/// published and the script returns 0 (a late duplicate never overwrites a success).
/// Otherwise `SETEX KEYS[1] ARGV[2] ARGV[1]` (or `SET`), `PUBLISH ARGV[3] ARGV[1]`,
/// return 1. The plain-text search only avoids decoding values that cannot be a
/// success; the decision is made on the decoded `status`.
pub const STORE_RESULT: &str = r#"
local current = redis.call('GET', KEYS[1])
if current and string.find(current, '"SUCCESS"', 1, true) then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
return 0
  end
end
if ARGV[2] ~= '0' then
  redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
"#;
