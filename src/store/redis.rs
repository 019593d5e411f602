//! Redis store: production backend shared by every replica (standalone, Sentinel or
//! Cluster).
//!
//! # Key layout
//! `<p>` is `store.redis.key_prefix` (default `patgate:`). Every multi-key operation
//! touches keys of one hash slot (hash tags `{…}`); everything else is single-key, so
//! the layout works unchanged on Redis Cluster.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<p>tok:<sha256 hex>` | string | `{"record": TokenRecord}` for the current secret, or `{"aliasOf": "<new hex>", "graceUntil": RFC 3339}` with `PEXPIRE` for a rotated-out secret in its grace period |
//! | `<p>id:{<id>}` | string | `{"hash": "<current hex>", "graced": [{"hash", "until"}]}` |
//! | `<p>usage:{<id>}` | hash | `count`, `last` (ms): usage added by the flushers, merged into `usageCount`/`lastUsedAt` by `get`/`list` |
//! | `<p>ips:{<id>}` | hash | the token's client-IP prefixes: field = prefix (`203.0.113.0/24`), value = `<count> <first ms> <last ms>`; at most `max_per_token` fields, pruned by the usage script, `EXPIRE` = the retention after the last write |
//! | `<p>hourly:{<id>}:<day>` | hash | requests per hour of one UTC day (`day` = hour / 24), field = hours since the epoch; written by the usage script, `EXPIRE` 8 days (left to expire on delete) |
//! | `<p>ids` | zset | every id, score 0: ids are ULIDs, so `ZRANGEBYLEX` pages in creation order |
//! | `<p>owners:disabled` | set | ids of disabled owners (small; every replica keeps a copy in memory) |
//! | `<p>crl:{<owner>}:<window start secs>` | string | creation counter of one fixed window (expires with it) |
//! | `<p>rl:{<id>}` | string | global rate-limit bucket (`rate_limit.mode: redis`): the GCRA TAT in µs of Redis time; `PX` = time until the bucket is full again |
//! | `<p>audit` | stream | field `e` = event JSON; `MAXLEN ~ audit_max_events` |
//! | `<p>invalidate` | pub/sub channel | [`Invalidation::encode`] messages |
//!
//! Costs: `lookup` is one `GET` (a second one only when following an alias); the usage
//! counters stay off the record JSON so the hot flush path never rewrites records.
//! `lookup` therefore returns `usageCount`/`lastUsedAt` as last written into the record
//! (by `create`), without the flushed usage; `get`, `list`, `update` and `delete` merge it.
//!
//! # Writes
//! - `update`: compare-and-set of the `tok` key (Lua: `if GET == old then SET new`),
//!   retried on conflict. A rejected mutation writes nothing.
//! - `create`: `SET id NX`, then `SET tok NX` (rolling back the id key on conflict), then
//!   `ZADD`. A crash in between leaves at worst an id key without a record (`get` → `None`).
//! - `rotate`: new `tok` key first, then the id entry, then the old `tok` key becomes an
//!   alias (compare-and-set; `DEL` when the grace is zero). A crash midway leaves the old
//!   secret working, never neither. Older aliases are re-pointed at the new hash.
//! - `delete`: `tok` keys (current and graced) first, then id, usage and client-IP
//!   keys, then `ZREM`.
//!
//! # Availability
//! `connect` never fails because Redis is down: standalone uses a lazy
//! [`ConnectionManager`] that connects (and reconnects) by itself; the cluster
//! connection is made by a background task. With Sentinel a background task asks the
//! sentinels for the master every [`SENTINEL_POLL_EVERY`] (redis-rs
//! `Sentinel::async_master_for`: `SENTINEL MASTERS`, then `ROLE` on the named master)
//! and, when it has moved, swaps in a connection manager for the new master — a
//! `ConnectionManager` alone would reconnect to the old address, now a read-only
//! replica. Until the swap, writes fail with `READONLY` (→ `Unavailable`) and reads
//! are still answered by the demoted node. Every call is bounded by
//! `command_timeout` and maps timeouts and I/O errors to [`StoreError::Unavailable`].
//! One background task owns a dedicated pub/sub connection, pings it every
//! [`PUBSUB_PING_EVERY`] (a dead connection is noticed within about 1.5 s), reconnects
//! with backoff forever, and sends [`Invalidation::All`] to subscribers after every
//! re-established subscription. With Sentinel the subscription sits on the master the
//! follower task last found, and moves (with `All`, as after a loss) when it moves —
//! the demoted node may not hear the new master's publications for a while.

mod outbox;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;

use super::entry::{Graced, IdEntry, TokEntry, after, corrupt, hash_of, to_json};
use futures_util::StreamExt;
use futures_util::future::try_join_all;
use jiff::Timestamp;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{
    Client, Cmd, ErrorKind, FromRedisValue, RedisConnectionInfo, RedisError, RedisFuture, Script,
    Value,
};
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;

use super::{
    AuditEvent, AuditQuery, Changed, ClientIpSeen, HOURLY_RETENTION_HOURS, Invalidation,
    InvalidationRx, IpRetention, ListQuery, Lookup, Mutation, NewIpSeen, Page, StoreError,
    TokenRecord, TokenStore, UsageDelta, hour_of, retention_cutoff, sort_client_ips,
};
use crate::config::{RedisSettings, SentinelSettings};
use crate::ratelimit::gcra::GCRA_LUA;
use crate::ratelimit::{GcraBackend, GcraOutcome, GcraParams};
use crate::token::TokenHash;

/// Capacity of the local invalidation fan-out; a lagging receiver clears its cache.
const INVALIDATION_CAPACITY: usize = 1024;
/// Compare-and-set attempts before giving up with `Conflict`.
const CAS_ATTEMPTS: usize = 8;
/// How often the pub/sub connection is pinged to notice a dead peer.
pub const PUBSUB_PING_EVERY: Duration = Duration::from_millis(500);
/// How long a pub/sub ping may take before the connection is declared dead.
const PUBSUB_PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the sentinels are asked where the master is.
pub const SENTINEL_POLL_EVERY: Duration = Duration::from_millis(500);
/// Clock slack between replicas and Redis when mapping audit ids/times to stream ids.
const AUDIT_SLACK_MS: i64 = 300_000;

/// `KEYS[1]` = key, `ARGV[1]` = expected value, `ARGV[2]` = new value,
/// `ARGV[3]` = `keep` (plain SET), `del`, or a PX in ms. Returns 1 when applied.
const CAS_LUA: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then return 0 end
if ARGV[3] == 'del' then
  redis.call('DEL', KEYS[1])
elseif ARGV[3] == 'keep' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
";

/// `KEYS[1]` = id key, `KEYS[2]` = usage key, `KEYS[3]` = the day's hourly key,
/// `KEYS[4]` = the client-IP hash (one slot: same hash tag). `ARGV` = count, last ms,
/// hour number, hourly key TTL secs, then for client IPs: cutoff ms (drop what was
/// last seen before), max prefixes kept, key TTL secs, and per prefix 4 values:
/// prefix, count, first ms, last ms.
///
/// Returns `{exists, distinct, {i, ...}}`: whether the token exists, how many
/// prefixes it has now, and the (1-based) positions of the prefixes it had not had.
/// A stored value that doesn't parse counts as absent (and is overwritten).
const USAGE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, {}} end
redis.call('HINCRBY', KEYS[2], 'count', ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[4])
local last = tonumber(redis.call('HGET', KEYS[2], 'last'))
if (not last) or last < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], 'last', ARGV[2])
end
local n = math.floor((#ARGV - 7) / 4)
if n < 1 then return {1, 0, {}} end
local cutoff = tonumber(ARGV[5])
local max = tonumber(ARGV[6])
local function parse(v)
  if not v then return nil end
  local c, f, l = string.match(v, '^(%d+) (-?%d+) (-?%d+)$')
  if not c then return nil end
  return tonumber(c), tonumber(f), tonumber(l)
end
local function fmt(c, f, l)
  return string.format('%.0f %.0f %.0f', c, f, l)
end
local new = {}
for i = 0, n - 1 do
  local b = 8 + i * 4
  local p = ARGV[b]
  local c, f, l = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local oc, of, ol = parse(redis.call('HGET', KEYS[4], p))
  if oc and ol >= cutoff then
    redis.call('HSET', KEYS[4], p, fmt(oc + c, math.min(of, f), math.max(ol, l)))
  else
    redis.call('HSET', KEYS[4], p, fmt(c, f, l))
    new[#new + 1] = i + 1
  end
end
local all = redis.call('HGETALL', KEYS[4])
local keep = {}
for i = 1, #all, 2 do
  local _, _, l = parse(all[i + 1])
  if (not l) or l < cutoff then
    redis.call('HDEL', KEYS[4], all[i])
  else
    keep[#keep + 1] = {all[i], l}
  end
end
if #keep > max then
  table.sort(keep, function(a, b)
    if a[2] ~= b[2] then return a[2] > b[2] end
    return a[1] < b[1]
  end)
  for i = max + 1, #keep do redis.call('HDEL', KEYS[4], keep[i][1]) end
end
redis.call('EXPIRE', KEYS[4], ARGV[7])
return {1, math.min(#keep, max), new}
";

/// `KEYS[1]` = window counter, `ARGV[1]` = TTL secs. Returns the new count.
/// Quota: charge ARGV[1] unless the total would pass ARGV[2]; the key lives until
/// ARGV[3] (Unix seconds, the period's end plus a day). Returns {charged, used}.
const QUOTA_LUA: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local cost = tonumber(ARGV[1])
if used + cost > tonumber(ARGV[2]) then return {0, used} end
used = redis.call('INCRBY', KEYS[1], cost)
if used == cost then redis.call('EXPIREAT', KEYS[1], ARGV[3]) end
return {1, used}
";

const COUNT_LUA: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
";

/// One connection kind; both multiplex and reconnect by themselves.
#[derive(Clone)]
enum Conn {
    /// Standalone server.
    Single(ConnectionManager),
    /// Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis token store. Dropping it stops its background tasks.
pub struct RedisStore {
    /// The command connection; empty until the cluster connection is first made.
    conn: Arc<ArcSwapOption<Conn>>,
    /// Key prefix.
    prefix: String,
    /// Bound on every call.
    command_timeout: Duration,
    /// Audit stream cap.
    audit_max_events: u64,
    /// Fan-out of invalidations received on the pub/sub connection.
    invalidations: broadcast::Sender<Invalidation>,
    /// Whether the pub/sub subscription is currently established.
    subscribed: watch::Receiver<bool>,
    /// Background tasks, aborted on drop.
    tasks: Vec<AbortHandle>,
    scripts: Scripts,
}

/// Lua scripts (loaded once per server, then called by SHA).
struct Scripts {
    cas: Script,
    usage: Script,
    count: Script,
    gcra: Script,
    quota: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn redis_err(e: RedisError) -> StoreError {
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(format!("redis: {e}")),
    }
}

/// Milliseconds from `now` until `t` (at least 1, so a PX is always valid; the clamp
/// makes the cast lossless).
fn ms_until(now: Timestamp, t: Timestamp) -> i64 {
    t.duration_since(now)
        .as_millis()
        .clamp(1, i128::from(i64::MAX)) as i64
}

/// Current hash plus graced hashes still valid at `now`.
fn live_hashes(entry: &IdEntry, now: Timestamp) -> Result<Vec<TokenHash>, StoreError> {
    let mut out = vec![hash_of(&entry.hash)?];
    for g in entry.graced.iter().filter(|g| g.until > now) {
        out.push(hash_of(&g.hash)?);
    }
    Ok(out)
}

/// Adds flushed usage to a record.
fn merge_usage(mut r: TokenRecord, usage: (Option<u64>, Option<i64>)) -> TokenRecord {
    if let Some(n) = usage.0 {
        r.usage_count = r.usage_count.saturating_add(n);
    }
    if let Some(ms) = usage.1
        && let Ok(t) = Timestamp::from_millisecond(ms)
        && r.last_used_at.is_none_or(|l| l < t)
    {
        r.last_used_at = Some(t);
    }
    r
}

impl RedisStore {
    /// Connects to Redis (standalone, or Cluster when `settings.cluster`).
    ///
    /// Never fails because Redis is unreachable: calls return
    /// [`StoreError::Unavailable`] until it answers, and the store recovers by itself.
    /// Fails only on unusable settings (no URL, malformed URL). Waits at most
    /// `connect_timeout` for the first connection and subscription.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, StoreError> {
        let bad = |e: RedisError| StoreError::Unavailable(format!("invalid redis settings: {e}"));
        let conn: Arc<ArcSwapOption<Conn>> = Arc::new(ArcSwapOption::empty());
        let mut tasks = Vec::new();
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(MAX_BACKOFF);

        // Sentinel: a follower task owns the master connection. Otherwise: the cluster
        // connection or a standalone connection manager.
        let pubsub_nodes = if let Some(sn) = &settings.sentinel {
            let mut finder = MasterFinder::new(sn, settings.connect_timeout).map_err(bad)?;
            let master = finder.master().await;
            match &master {
                Some(client) => {
                    let manager = ConnectionManager::new_lazy_with_config(
                        client.clone(),
                        manager_config.clone(),
                    )
                    .map_err(bad)?;
                    conn.store(Some(Arc::new(Conn::Single(manager))));
                }
                None => tracing::warn!(
                    redis.master = %sn.master_name,
                    "no Redis master from the sentinels at start; retrying in background"
                ),
            }
            let (master_tx, master_rx) = watch::channel(master);
            let task = tokio::spawn(follow_master(
                finder,
                conn.clone(),
                manager_config.clone(),
                master_tx,
            ));
            tasks.push(task.abort_handle());
            PubSubNodes::Sentinel(master_rx)
        } else {
            let mut clients = Vec::new();
            for url in &settings.urls {
                clients.push(Client::open(url.as_str()).map_err(bad)?);
            }
            let Some(first) = clients.first().cloned() else {
                return Err(StoreError::Unavailable("no redis url configured".into()));
            };
            if settings.cluster {
                let client = ClusterClientBuilder::new(settings.urls.clone())
                    .connection_timeout(settings.connect_timeout)
                    .response_timeout(settings.command_timeout)
                    .build()
                    .map_err(bad)?;
                let connect_timeout = settings.connect_timeout;
                // One attempt inline so a healthy cluster is usable when we return; if it
                // fails, a background task keeps trying while calls answer `Unavailable`.
                match tokio::time::timeout(connect_timeout, client.get_async_connection()).await {
                    Ok(Ok(c)) => conn.store(Some(Arc::new(Conn::Cluster(c)))),
                    _ => {
                        tracing::warn!(
                            "redis cluster unreachable at start; retrying in background"
                        );
                        let slot = conn.clone();
                        let task = tokio::spawn(async move {
                            let mut backoff = Duration::from_millis(100);
                            loop {
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(MAX_BACKOFF);
                                if let Ok(Ok(c)) = tokio::time::timeout(
                                    connect_timeout,
                                    client.get_async_connection(),
                                )
                                .await
                                {
                                    slot.store(Some(Arc::new(Conn::Cluster(c))));
                                    return;
                                }
                            }
                        });
                        tasks.push(task.abort_handle());
                    }
                }
            } else {
                let manager =
                    ConnectionManager::new_lazy_with_config(first, manager_config).map_err(bad)?;
                conn.store(Some(Arc::new(Conn::Single(manager))));
            }
            PubSubNodes::Fixed { clients, next: 0 }
        };

        let (invalidations, _) = broadcast::channel(INVALIDATION_CAPACITY);
        let (ready_tx, ready_rx) = watch::channel(false);
        let channel = format!("{}invalidate", settings.key_prefix);
        let task = tokio::spawn(pubsub_loop(
            pubsub_nodes,
            channel,
            invalidations.clone(),
            ready_tx,
            settings.connect_timeout,
        ));
        tasks.push(task.abort_handle());

        let store = RedisStore {
            conn,
            prefix: settings.key_prefix.clone(),
            command_timeout: settings.command_timeout,
            audit_max_events: settings.audit_max_events.max(1),
            invalidations,
            subscribed: ready_rx,
            tasks,
            scripts: Scripts {
                cas: Script::new(CAS_LUA),
                usage: Script::new(USAGE_LUA),
                count: Script::new(COUNT_LUA),
                gcra: Script::new(GCRA_LUA),
                quota: Script::new(QUOTA_LUA),
            },
        };
        // Give a healthy Redis the chance to be fully ready when we return; a down one
        // only delays start-up by `connect_timeout`.
        let mut ready = store.subscribed.clone();
        let _ = tokio::time::timeout(settings.connect_timeout, async {
            let _ = store.ping().await;
            let _ = ready.wait_for(|s| *s).await;
        })
        .await;
        Ok(store)
    }

    /// Whether the invalidation subscription is currently established.
    pub fn is_subscribed(&self) -> bool {
        *self.subscribed.borrow()
    }

    fn conn(&self) -> Result<Conn, StoreError> {
        self.conn
            .load_full()
            .map(|c| (*c).clone())
            .ok_or_else(|| StoreError::Unavailable("redis: not connected yet".into()))
    }

    /// Runs one command, bounded by the command timeout.
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut c = self.conn()?;
        tokio::time::timeout(self.command_timeout, cmd.query_async(&mut c))
            .await
            .map_err(|_| StoreError::Unavailable("redis: command timed out".into()))?
            .map_err(redis_err)
    }

    /// Runs a script, bounded by the command timeout.
    async fn script<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[String],
    ) -> Result<T, StoreError> {
        let mut c = self.conn()?;
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(a.as_str());
        }
        tokio::time::timeout(self.command_timeout, inv.invoke_async(&mut c))
            .await
            .map_err(|_| StoreError::Unavailable("redis: command timed out".into()))?
            .map_err(redis_err)
    }

    /// Compare-and-set of one key; `mode` is `keep`, `del` or a PX in ms.
    async fn cas(&self, key: &str, old: &str, new: &str, mode: String) -> Result<bool, StoreError> {
        let n: i64 = self
            .script(
                &self.scripts.cas,
                &[key],
                &[old.to_string(), new.to_string(), mode],
            )
            .await?;
        Ok(n == 1)
    }

    fn k_tok(&self, hex: &str) -> String {
        format!("{}tok:{hex}", self.prefix)
    }
    fn k_id(&self, id: &str) -> String {
        format!("{}id:{{{id}}}", self.prefix)
    }
    fn k_usage(&self, id: &str) -> String {
        format!("{}usage:{{{id}}}", self.prefix)
    }
    fn k_ips(&self, id: &str) -> String {
        format!("{}ips:{{{id}}}", self.prefix)
    }
    /// One HASH per token per UTC day (`day` = hour number / 24), field = hour number;
    /// it expires with the retention, so no pruning is needed.
    fn k_hourly(&self, id: &str, day: i64) -> String {
        format!("{}hourly:{{{id}}}:{day}", self.prefix)
    }
    fn k_ids(&self) -> String {
        format!("{}ids", self.prefix)
    }
    fn k_owners(&self) -> String {
        format!("{}owners:disabled", self.prefix)
    }
    fn k_crl(&self, owner: &str, start: u64) -> String {
        format!("{}crl:{{{owner}}}:{start}", self.prefix)
    }
    fn k_quota(&self, subject: &str, start: u64) -> String {
        format!("{}quota:{{{subject}}}:{start}", self.prefix)
    }
    fn k_rl(&self, id: &str) -> String {
        format!("{}rl:{{{id}}}", self.prefix)
    }
    fn k_audit(&self) -> String {
        format!("{}audit", self.prefix)
    }
    fn channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    async fn get_string(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    async fn id_entry(&self, id: &str) -> Result<Option<IdEntry>, StoreError> {
        match self.get_string(&self.k_id(id)).await? {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s).map(Some).map_err(corrupt),
        }
    }

    /// The raw JSON and record under a hash, if it is a current record.
    async fn current(&self, hex: &str) -> Result<Option<(String, TokenRecord)>, StoreError> {
        let Some(raw) = self.get_string(&self.k_tok(hex)).await? else {
            return Ok(None);
        };
        match serde_json::from_str::<TokEntry>(&raw).map_err(corrupt)? {
            TokEntry::Current { record } => Ok(Some((raw, record))),
            TokEntry::Alias { .. } => Ok(None),
        }
    }

    async fn usage(&self, id: &str) -> Result<(Option<u64>, Option<i64>), StoreError> {
        self.query(
            redis::cmd("HMGET")
                .arg(self.k_usage(id))
                .arg("count")
                .arg("last"),
        )
        .await
    }
}

/// Where the pub/sub connection goes: the configured nodes in turn, or the master
/// the sentinels currently name.
enum PubSubNodes {
    /// Standalone URL or cluster seed nodes, tried round-robin (a PUBLISH on any
    /// cluster node reaches subscribers on every node).
    Fixed {
        /// One client per URL.
        clients: Vec<Client>,
        /// Index of the next one to try.
        next: usize,
    },
    /// The current master, as [`follow_master`] last found it.
    Sentinel(watch::Receiver<Option<Client>>),
}

impl PubSubNodes {
    /// The node to subscribe on next (`None`: no master known yet).
    fn next(&mut self) -> Option<Client> {
        match self {
            PubSubNodes::Fixed { clients, next } => {
                let c = clients.get(*next % clients.len().max(1)).cloned();
                *next = next.wrapping_add(1);
                c
            }
            PubSubNodes::Sentinel(master) => master.borrow_and_update().clone(),
        }
    }

    /// Resolves when the node last returned by `next` stopped being the right one:
    /// the master moved. Never for fixed nodes.
    async fn moved(&mut self) {
        match self {
            PubSubNodes::Fixed { .. } => std::future::pending().await,
            PubSubNodes::Sentinel(master) => {
                if master.changed().await.is_err() {
                    // The follower is gone (the store is being dropped).
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// Asks the sentinels which node is the master.
struct MasterFinder {
    /// redis-rs's sentinel client (keeps a connection per sentinel).
    sentinel: Sentinel,
    /// The monitored master's name.
    name: String,
    /// Credentials and db for the master.
    node: SentinelNodeConnectionInfo,
    /// Bound on one lookup (`connect_timeout`).
    timeout: Duration,
}

impl MasterFinder {
    fn new(settings: &SentinelSettings, timeout: Duration) -> Result<Self, RedisError> {
        let mut info = RedisConnectionInfo::default().set_db(i64::from(settings.db));
        if let Some(u) = &settings.master_username {
            info = info.set_username(u);
        }
        if let Some(p) = &settings.master_password {
            info = info.set_password(p);
        }
        let urls: Vec<&str> = settings.urls.iter().map(String::as_str).collect();
        Ok(MasterFinder {
            sentinel: Sentinel::build(urls)?,
            name: settings.master_name.clone(),
            node: SentinelNodeConnectionInfo::default().set_redis_connection_info(info),
            timeout,
        })
    }

    /// A client for the master the sentinels name (it has confirmed its role), or
    /// `None` when no sentinel answered in time.
    async fn master(&mut self) -> Option<Client> {
        let find = self.sentinel.async_master_for(&self.name, Some(&self.node));
        match tokio::time::timeout(self.timeout, find).await {
            Ok(Ok(client)) => Some(client),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "sentinel master lookup failed");
                None
            }
            Err(_) => None,
        }
    }
}

/// Polls the sentinels and, whenever the master moves, swaps in a connection to it
/// and tells the pub/sub task (`master`) to resubscribe there.
async fn follow_master(
    mut finder: MasterFinder,
    slot: Arc<ArcSwapOption<Conn>>,
    config: ConnectionManagerConfig,
    master: watch::Sender<Option<Client>>,
) {
    let addr_of = |c: &Client| c.get_connection_info().addr().to_string();
    let mut current = master.borrow().as_ref().map(addr_of);
    let mut tick = tokio::time::interval(SENTINEL_POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(client) = finder.master().await else {
            continue;
        };
        let addr = addr_of(&client);
        if current.as_deref() == Some(addr.as_str()) {
            continue;
        }
        match ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
            Ok(manager) => {
                tracing::info!(redis.master = %addr, "following the Redis master named by the sentinels");
                slot.store(Some(Arc::new(Conn::Single(manager))));
                master.send_replace(Some(client));
                current = Some(addr);
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to the new Redis master"),
        }
    }
}

/// Subscribes once: returns the split connection after the subscription is confirmed.
async fn subscribe_once(
    client: &Client,
    channel: &str,
    connect_timeout: Duration,
) -> Option<(redis::aio::PubSubSink, redis::aio::PubSubStream)> {
    let attempt = async {
        let mut ps = client.get_async_pubsub().await?;
        ps.subscribe(channel).await?;
        Ok::<_, RedisError>(ps.split())
    };
    tokio::time::timeout(connect_timeout, attempt)
        .await
        .ok()?
        .ok()
}

/// Owns the pub/sub connection for the store's life: subscribes, forwards messages,
/// pings to notice a dead peer, reconnects with backoff, and sends `All` after every
/// subscription that follows a lost (or never made) one.
async fn pubsub_loop(
    mut nodes: PubSubNodes,
    channel: String,
    tx: broadcast::Sender<Invalidation>,
    ready: watch::Sender<bool>,
    connect_timeout: Duration,
) {
    let mut lost = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let subscribed = match nodes.next() {
            Some(client) => subscribe_once(&client, &channel, connect_timeout).await,
            None => None,
        };
        let Some((mut sink, mut stream)) = subscribed else {
            lost = true;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        backoff = Duration::from_millis(100);
        ready.send_replace(true);
        if lost {
            tracing::info!("invalidation subscription re-established; clearing caches");
            crate::metrics::metrics().pubsub_reconnects.inc();
            let _ = tx.send(Invalidation::All);
        }
        let mut ping = tokio::time::interval(PUBSUB_PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    if let Some(inv) = std::str::from_utf8(msg.get_payload_bytes())
                        .ok()
                        .and_then(Invalidation::decode)
                    {
                        let _ = tx.send(inv);
                    }
                }
                _ = nodes.moved() => {
                    tracing::info!("Redis master moved; moving the invalidation subscription");
                    break;
                }
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(PUBSUB_PING_TIMEOUT, sink.ping::<Value>())
                        .await
                        .is_ok_and(|r| r.is_ok());
                    if !alive {
                        break;
                    }
                }
            }
        }
        tracing::warn!("invalidation subscription lost; reconnecting");
        ready.send_replace(false);
        lost = true;
    }
}

#[async_trait]
impl TokenStore for RedisStore {
    async fn lookup(&self, hash: &TokenHash) -> Result<Option<Lookup>, StoreError> {
        let Some(raw) = self.get_string(&self.k_tok(&hash.to_hex())).await? else {
            return Ok(None);
        };
        match serde_json::from_str::<TokEntry>(&raw).map_err(corrupt)? {
            TokEntry::Current { record } => Ok(Some(Lookup {
                record,
                grace_until: None,
            })),
            TokEntry::Alias {
                alias_of,
                grace_until,
            } => {
                if grace_until <= Timestamp::now() {
                    return Ok(None);
                }
                Ok(self.current(&alias_of).await?.map(|(_, record)| Lookup {
                    record,
                    grace_until: Some(grace_until),
                }))
            }
        }
    }

    async fn owner_disabled(&self, owner_id: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .query(redis::cmd("SISMEMBER").arg(self.k_owners()).arg(owner_id))
            .await?;
        Ok(n > 0)
    }

    async fn disabled_owners(&self) -> Result<Vec<String>, StoreError> {
        self.query(redis::cmd("SMEMBERS").arg(self.k_owners()))
            .await
    }

    async fn set_owner_disabled(&self, owner_id: &str, disabled: bool) -> Result<(), StoreError> {
        let cmd = if disabled { "SADD" } else { "SREM" };
        self.query::<Value>(redis::cmd(cmd).arg(self.k_owners()).arg(owner_id))
            .await?;
        Ok(())
    }

    async fn create(&self, hash: &TokenHash, record: &TokenRecord) -> Result<(), StoreError> {
        let hex = hash.to_hex();
        let id_key = self.k_id(&record.id);
        let entry = to_json(&IdEntry {
            hash: hex.clone(),
            graced: Vec::new(),
        })?;
        let tok = to_json(&TokEntry::Current {
            record: record.clone(),
        })?;
        let set: Option<String> = self
            .query(redis::cmd("SET").arg(&id_key).arg(entry).arg("NX"))
            .await?;
        if set.is_none() {
            return Err(StoreError::Conflict("token id already exists".into()));
        }
        let set: Option<String> = match self
            .query(redis::cmd("SET").arg(self.k_tok(&hex)).arg(tok).arg("NX"))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let _ = self.query::<Value>(redis::cmd("DEL").arg(&id_key)).await;
                return Err(e);
            }
        };
        if set.is_none() {
            self.query::<Value>(redis::cmd("DEL").arg(&id_key)).await?;
            return Err(StoreError::Conflict("token hash already exists".into()));
        }
        self.query::<Value>(redis::cmd("ZADD").arg(self.k_ids()).arg(0).arg(&record.id))
            .await?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let Some(entry) = self.id_entry(id).await? else {
            return Ok(None);
        };
        let (current, usage) = tokio::try_join!(self.current(&entry.hash), self.usage(id))?;
        Ok(current.map(|(_, r)| merge_usage(r, usage)))
    }

    async fn update(&self, id: &str, change: Mutation<'_>) -> Result<Option<Changed>, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(entry) = self.id_entry(id).await? else {
                return Ok(None);
            };
            let Some((raw, mut record)) = self.current(&entry.hash).await? else {
                // Rotated or deleted meanwhile (retry), or an orphaned id key.
                if self
                    .id_entry(id)
                    .await?
                    .is_some_and(|e| e.hash == entry.hash)
                {
                    return Ok(None);
                }
                continue;
            };
            change(&mut record).map_err(StoreError::Rejected)?;
            let new = to_json(&TokEntry::Current {
                record: record.clone(),
            })?;
            if self
                .cas(&self.k_tok(&entry.hash), &raw, &new, "keep".into())
                .await?
            {
                let usage = self.usage(id).await?;
                return Ok(Some(Changed {
                    record: merge_usage(record, usage),
                    hashes: live_hashes(&entry, Timestamp::now())?,
                }));
            }
        }
        Err(StoreError::Conflict(
            "record changed concurrently too often; try again".into(),
        ))
    }

    async fn rotate(
        &self,
        id: &str,
        new_hash: &TokenHash,
        new_prefix: &str,
        grace: Duration,
    ) -> Result<Option<Changed>, StoreError> {
        let Some(entry) = self.id_entry(id).await? else {
            return Ok(None);
        };
        let Some((mut raw, record)) = self.current(&entry.hash).await? else {
            return Ok(None);
        };
        // The new key holds the record with its new display prefix; `raw` stays the
        // old key's exact value for the compare-and-set below.
        let with_prefix = |mut r: TokenRecord| {
            r.prefix = new_prefix.to_string();
            to_json(&TokEntry::Current { record: r })
        };
        let new_raw = with_prefix(record.clone())?;
        let new_hex = new_hash.to_hex();
        let old = hash_of(&entry.hash)?;
        let now = Timestamp::now();

        // 1. The new secret works before anything else changes.
        let set: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(self.k_tok(&new_hex))
                    .arg(&new_raw)
                    .arg("NX"),
            )
            .await?;
        if set.is_none() {
            return Err(StoreError::Conflict("token hash already exists".into()));
        }

        // 2. The id points at it; still-valid older aliases stay listed.
        let mut hashes = vec![old, *new_hash];
        let mut graced = Vec::new();
        for g in entry.graced {
            hashes.push(hash_of(&g.hash)?);
            if g.until > now {
                graced.push(g);
            }
        }
        let until = after(now, grace);
        if !grace.is_zero() {
            graced.push(Graced {
                hash: entry.hash.clone(),
                until,
            });
        }
        let id_entry = to_json(&IdEntry {
            hash: new_hex.clone(),
            graced: graced.clone(),
        })?;
        self.query::<Value>(redis::cmd("SET").arg(self.k_id(id)).arg(id_entry))
            .await?;

        // 3. The old secret becomes an alias (or goes), unless an update slipped in, in
        //    which case that newer record is carried over to the new key first.
        let mode = if grace.is_zero() {
            "del".to_string()
        } else {
            ms_until(now, until).to_string()
        };
        let alias = to_json(&TokEntry::Alias {
            alias_of: new_hex.clone(),
            grace_until: until,
        })?;
        let old_key = self.k_tok(&entry.hash);
        let mut done = false;
        for _ in 0..CAS_ATTEMPTS {
            if self.cas(&old_key, &raw, &alias, mode.clone()).await? {
                done = true;
                break;
            }
            match self.current(&entry.hash).await? {
                Some((fresh, fresh_record)) => {
                    self.query::<Value>(
                        redis::cmd("SET")
                            .arg(self.k_tok(&new_hex))
                            .arg(with_prefix(fresh_record)?)
                            .arg("XX"),
                    )
                    .await?;
                    raw = fresh;
                }
                // Someone else rotated or deleted it meanwhile: nothing left to alias.
                None => break,
            }
        }
        if !done {
            tracing::warn!(token.id = %id, "rotate: old secret changed concurrently");
        }

        // Older aliases follow to the new hash, keeping their own expiry.
        for g in graced.iter().filter(|g| g.hash != entry.hash) {
            let alias = to_json(&TokEntry::Alias {
                alias_of: new_hex.clone(),
                grace_until: g.until,
            })?;
            self.query::<Value>(
                redis::cmd("SET")
                    .arg(self.k_tok(&g.hash))
                    .arg(alias)
                    .arg("PX")
                    .arg(ms_until(now, g.until))
                    .arg("XX"),
            )
            .await?;
        }

        let record = match self.current(&new_hex).await? {
            Some((_, r)) => r,
            None => record,
        };
        let usage = self.usage(id).await?;
        Ok(Some(Changed {
            record: merge_usage(record, usage),
            hashes,
        }))
    }

    async fn delete(&self, id: &str) -> Result<Option<Changed>, StoreError> {
        let Some(entry) = self.id_entry(id).await? else {
            return Ok(None);
        };
        let current = self.current(&entry.hash).await?;
        let usage = self.usage(id).await?;
        let mut hashes = vec![hash_of(&entry.hash)?];
        for g in &entry.graced {
            hashes.push(hash_of(&g.hash)?);
        }
        // Token keys first: once they are gone the token is unusable whatever happens next.
        let mut del = redis::cmd("DEL");
        for h in &hashes {
            del.arg(self.k_tok(&h.to_hex()));
        }
        if self.conn()?.is_cluster() {
            for h in &hashes {
                self.query::<Value>(redis::cmd("DEL").arg(self.k_tok(&h.to_hex())))
                    .await?;
            }
        } else {
            self.query::<Value>(&del).await?;
        }
        // Same hash tag: one slot.
        self.query::<Value>(
            redis::cmd("DEL")
                .arg(self.k_id(id))
                .arg(self.k_usage(id))
                .arg(self.k_ips(id)),
        )
        .await?;
        self.query::<Value>(redis::cmd("ZREM").arg(self.k_ids()).arg(id))
            .await?;
        Ok(current.map(|(_, r)| Changed {
            record: merge_usage(r, usage),
            hashes,
        }))
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let now = Timestamp::now();
        let limit = query.limit.clamp(1, 1000);
        let chunk = limit.clamp(50, 500);
        let mut from = match &query.cursor {
            Some(c) => format!("({c}"),
            None => "-".to_string(),
        };
        let mut items = Vec::new();
        loop {
            let ids: Vec<String> = self
                .query(
                    redis::cmd("ZRANGEBYLEX")
                        .arg(self.k_ids())
                        .arg(&from)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(chunk),
                )
                .await?;
            if ids.is_empty() {
                return Ok(Page {
                    items,
                    next_cursor: None,
                });
            }
            // Concurrent requests on one multiplexed connection: effectively a pipeline.
            let records = try_join_all(ids.iter().map(|id| self.get(id))).await?;
            for record in records.into_iter().flatten() {
                if items.len() >= limit {
                    // Another id exists after the last one returned.
                    let next_cursor = items.last().map(|r: &TokenRecord| r.id.clone());
                    return Ok(Page { items, next_cursor });
                }
                if query.matches(&record, now) {
                    items.push(record);
                }
            }
            if ids.len() < chunk {
                return Ok(Page {
                    items,
                    next_cursor: None,
                });
            }
            if let Some(last) = ids.last() {
                from = format!("({last}");
            }
        }
    }

    async fn record_usage(
        &self,
        batch: &[UsageDelta],
        retention: IpRetention,
    ) -> Result<Vec<NewIpSeen>, StoreError> {
        // Counts are kept below 2^53 so Lua's doubles hold them exactly.
        const LUA_MAX: u64 = 1 << 53;
        let per_token = try_join_all(batch.iter().map(|d| async move {
            let count = d.count.min(LUA_MAX);
            let ms = d.last_used_at.as_millisecond();
            let hour = hour_of(d.last_used_at);
            let ttl = HOURLY_RETENTION_HOURS * 3600;
            let cutoff = retention_cutoff(d.last_used_at, retention).as_millisecond();
            let ips_ttl = retention.retention.as_secs().max(1);
            let mut args = Vec::with_capacity(7 + 4 * d.ips.len());
            args.extend([
                count.to_string(),
                ms.to_string(),
                hour.to_string(),
                ttl.to_string(),
                cutoff.to_string(),
                retention.max_per_token.max(1).to_string(),
                ips_ttl.to_string(),
            ]);
            for ip in &d.ips {
                args.extend([
                    ip.prefix.to_string(),
                    ip.count.min(LUA_MAX).to_string(),
                    ip.first_seen_at.as_millisecond().to_string(),
                    ip.last_seen_at.as_millisecond().to_string(),
                ]);
            }
            let (_exists, distinct, new): (i64, i64, Vec<usize>) = self
                .script(
                    &self.scripts.usage,
                    &[
                        &self.k_id(&d.id),
                        &self.k_usage(&d.id),
                        &self.k_hourly(&d.id, hour.div_euclid(24)),
                        &self.k_ips(&d.id),
                    ],
                    &args,
                )
                .await?;
            let distinct = usize::try_from(distinct).unwrap_or(0);
            Ok::<_, StoreError>(
                new.into_iter()
                    .filter_map(|i| d.ips.get(i.checked_sub(1)?))
                    .map(|s| NewIpSeen {
                        token_id: d.id.clone(),
                        prefix: s.prefix,
                        first_seen_at: s.first_seen_at,
                        count: s.count,
                        distinct,
                    })
                    .collect::<Vec<_>>(),
            )
        }))
        .await?;
        Ok(per_token.into_iter().flatten().collect())
    }

    async fn client_ips(
        &self,
        id: &str,
        since: Timestamp,
    ) -> Result<Vec<ClientIpSeen>, StoreError> {
        let all: Vec<(String, String)> = self
            .query(redis::cmd("HGETALL").arg(self.k_ips(id)))
            .await?;
        let since_ms = since.as_millisecond();
        let mut out = Vec::with_capacity(all.len());
        for (field, value) in all {
            // Entries that don't parse are skipped here and replaced by the next write.
            let Ok(prefix) = field.parse::<ipnet::IpNet>() else {
                continue;
            };
            let mut parts = value.split(' ').map(str::parse::<i64>);
            let (Some(Ok(count)), Some(Ok(first)), Some(Ok(last))) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if last < since_ms {
                continue;
            }
            let (Ok(first_seen_at), Ok(last_seen_at)) = (
                Timestamp::from_millisecond(first),
                Timestamp::from_millisecond(last),
            ) else {
                continue;
            };
            out.push(ClientIpSeen {
                prefix,
                first_seen_at,
                last_seen_at,
                count: u64::try_from(count).unwrap_or(0),
            });
        }
        sort_client_ips(&mut out);
        Ok(out)
    }

    async fn hourly_usage(
        &self,
        id: &str,
        from_hour: i64,
        hours: usize,
    ) -> Result<Vec<u64>, StoreError> {
        if hours == 0 {
            return Ok(Vec::new());
        }
        let n = i64::try_from(hours).unwrap_or(i64::MAX);
        let end = from_hour.saturating_add(n);
        // One HMGET per day key the window touches (8 for the console's 7 days).
        let days: Vec<i64> = (from_hour.div_euclid(24)..=(end - 1).div_euclid(24)).collect();
        let per_day = try_join_all(days.iter().map(|&day| async move {
            let fields: Vec<i64> = (day * 24..day * 24 + 24)
                .filter(|h| (from_hour..end).contains(h))
                .collect();
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.k_hourly(id, day));
            for h in &fields {
                cmd.arg(*h);
            }
            let counts: Vec<Option<u64>> = self.query(&cmd).await?;
            Ok::<_, StoreError>(fields.into_iter().zip(counts).collect::<Vec<_>>())
        }))
        .await?;
        let mut out = vec![0u64; hours];
        for (h, c) in per_day.into_iter().flatten() {
            if let (Some(c), Some(slot)) = (
                c,
                usize::try_from(h - from_hour)
                    .ok()
                    .and_then(|i| out.get_mut(i)),
            ) {
                *slot = c;
            }
        }
        Ok(out)
    }

    async fn count_creation(
        &self,
        owner_id: &str,
        window: Duration,
    ) -> Result<(u64, Duration), StoreError> {
        let window_secs = window.as_secs().max(1);
        let now_ms = u64::try_from(Timestamp::now().as_millisecond()).unwrap_or(0);
        let start = (now_ms / 1000) / window_secs * window_secs;
        let n: i64 = self
            .script(
                &self.scripts.count,
                &[&self.k_crl(owner_id, start)],
                &[(window_secs + 1).to_string()],
            )
            .await?;
        let end_ms = (start + window_secs) * 1000;
        Ok((
            u64::try_from(n).unwrap_or(0),
            Duration::from_millis(end_ms.saturating_sub(now_ms)),
        ))
    }

    async fn charge_quota(
        &self,
        subject: &str,
        period_start: u64,
        period_end: u64,
        cost: u64,
        limit: u64,
    ) -> Result<(bool, u64), StoreError> {
        let (charged, used): (i64, i64) = self
            .script(
                &self.scripts.quota,
                &[&self.k_quota(subject, period_start)],
                &[
                    cost.to_string(),
                    limit.to_string(),
                    (period_end + 86_400).to_string(),
                ],
            )
            .await?;
        Ok((charged == 1, u64::try_from(used).unwrap_or(0)))
    }

    async fn quota_used(&self, subject: &str, period_start: u64) -> Result<u64, StoreError> {
        let used: Option<u64> = self
            .query(redis::cmd("GET").arg(self.k_quota(subject, period_start)))
            .await?;
        Ok(used.unwrap_or(0))
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let json = to_json(event)?;
        self.query::<Value>(
            redis::cmd("XADD")
                .arg(self.k_audit())
                .arg("MAXLEN")
                .arg("~")
                .arg(self.audit_max_events)
                .arg("*")
                .arg("e")
                .arg(json),
        )
        .await?;
        Ok(())
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let limit = query.limit.max(1);
        let chunk = limit.clamp(50, 1000);
        // Stream ids are Redis's clock at append time; event ids and times are the
        // replicas'. Start a little after the cursor's time and filter exactly.
        let mut end = query
            .cursor
            .as_deref()
            .and_then(|c| ulid::Ulid::from_string(c).ok())
            .map(|u| {
                // ULID timestamps are 48-bit: the cast cannot wrap.
                (u.timestamp_ms() as i64)
                    .saturating_add(AUDIT_SLACK_MS)
                    .to_string()
            })
            .unwrap_or_else(|| "+".to_string());
        let start = query
            .since
            .map(|s| (s.as_millisecond() - AUDIT_SLACK_MS).max(0).to_string())
            .unwrap_or_else(|| "-".to_string());
        let mut out = Vec::new();
        loop {
            let entries: Vec<(String, Vec<String>)> = self
                .query(
                    redis::cmd("XREVRANGE")
                        .arg(self.k_audit())
                        .arg(&end)
                        .arg(&start)
                        .arg("COUNT")
                        .arg(chunk),
                )
                .await?;
            for (_, fields) in &entries {
                let Some(json) = fields
                    .chunks(2)
                    .find(|kv| kv.first().is_some_and(|k| k == "e"))
                    .and_then(|kv| kv.get(1))
                else {
                    continue;
                };
                let ev: AuditEvent = serde_json::from_str(json).map_err(corrupt)?;
                if query
                    .cursor
                    .as_ref()
                    .is_some_and(|c| ev.id.as_str() >= c.as_str())
                    || query.since.is_some_and(|s| ev.time < s)
                    || query
                        .token_id
                        .as_ref()
                        .is_some_and(|t| ev.token_id.as_ref() != Some(t))
                    || query.actor.as_ref().is_some_and(|a| &ev.actor != a)
                {
                    continue;
                }
                out.push(ev);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            match entries.last() {
                Some((sid, _)) if entries.len() >= chunk => end = format!("({sid}"),
                _ => return Ok(out),
            }
        }
    }

    async fn publish(&self, invalidation: &Invalidation) -> Result<(), StoreError> {
        self.query::<Value>(
            redis::cmd("PUBLISH")
                .arg(self.channel())
                .arg(invalidation.encode()),
        )
        .await?;
        Ok(())
    }

    fn subscribe(&self) -> InvalidationRx {
        self.invalidations.subscribe()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.query::<Value>(&redis::cmd("PING")).await?;
        Ok(())
    }
}

#[async_trait]
impl GcraBackend for RedisStore {
    /// One `EVALSHA` (the script is loaded once per server; `NOSCRIPT` falls back to
    /// `EVAL`), bounded by the command timeout.
    async fn gcra(&self, token_id: &str, params: GcraParams) -> Result<GcraOutcome, StoreError> {
        let reply: Vec<i64> = self
            .script(
                &self.scripts.gcra,
                &[&self.k_rl(token_id)],
                &[params.interval_us.to_string(), params.burst.to_string()],
            )
            .await?;
        let &[allowed, remaining, reset_us, retry_us] = reply.as_slice() else {
            return Err(StoreError::Corrupt(format!(
                "gcra script returned {} values",
                reply.len()
            )));
        };
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(GcraOutcome {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).unwrap_or(0),
            reset: us(reset_us),
            retry_after: us(retry_us),
        })
    }
}

impl Conn {
    fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}
