//! The webhook outbox and one-shot markers in Redis.
//!
//! Every outbox key carries the hash tag `{wh}`, so the scripts below touch one slot
//! (Redis Cluster):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<p>{wh}:d` | hash | delivery id → JSON [`Delivery`] |
//! | `<p>{wh}:due` | zset | pending delivery ids, score = due Unix ms (a claim moves it to the lease's end) |
//! | `<p>{wh}:all` | zset | every kept delivery id, score 0: ids are ULIDs, so `ZREVRANGEBYLEX` lists newest first |
//! | `<p>once:{<key>}` | string | one-shot marker, `SET NX PX` |

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use redis::Script;

use super::RedisStore;
use crate::store::entry::{corrupt, to_json};
use crate::store::outbox::lease_end_ms;
use crate::store::{Delivery, DeliveryQuery, Outbox, StoreError};

/// KEYS: d, due, all. ARGV: keep, then (id, due ms, json) per delivery. Adds them,
/// then drops the oldest final deliveries beyond `keep`.
static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 2, #ARGV, 3 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  if ARGV[i + 1] ~= '' then redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[i]) end
  redis.call('ZADD', KEYS[3], 0, ARGV[i])
end
local keep = tonumber(ARGV[1])
local n = redis.call('ZCARD', KEYS[3])
if n > keep then
  local old = redis.call('ZRANGE', KEYS[3], 0, n - keep - 1)
  for _, id in ipairs(old) do
    if not redis.call('ZSCORE', KEYS[2], id) then
      redis.call('ZREM', KEYS[3], id)
      redis.call('HDEL', KEYS[1], id)
    end
  end
end
return 1
",
    )
});

/// KEYS: d, due. ARGV: now ms, lease end ms, limit. Returns the JSON of the claimed
/// deliveries; their due score becomes the lease's end.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[1], id)
  if body then
    redis.call('ZADD', KEYS[2], ARGV[2], id)
    out[#out + 1] = body
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return out
",
    )
});

/// KEYS: d, due. ARGV: id, json, due ms ('' = final).
static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return 1
",
    )
});

fn due_arg(d: &Delivery) -> String {
    d.due_ms().map(|m| m.to_string()).unwrap_or_default()
}

impl RedisStore {
    fn k_wh(&self, part: &str) -> String {
        format!("{}{{wh}}:{part}", self.prefix)
    }
}

#[async_trait]
impl Outbox for RedisStore {
    async fn enqueue_deliveries(
        &self,
        deliveries: &[Delivery],
        keep: u64,
    ) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut args = vec![keep.to_string()];
        for d in deliveries {
            args.push(d.id.clone());
            args.push(due_arg(d));
            args.push(to_json(d)?);
        }
        let (d, due, all) = (self.k_wh("d"), self.k_wh("due"), self.k_wh("all"));
        self.script::<i64>(&ENQUEUE, &[&d, &due, &all], &args)
            .await?;
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let now_ms = now.as_millisecond();
        let until = lease_end_ms(now, lease);
        let (d, due) = (self.k_wh("d"), self.k_wh("due"));
        let bodies: Vec<String> = self
            .script(
                &CLAIM,
                &[&d, &due],
                &[
                    now_ms.to_string(),
                    until.to_string(),
                    limit.max(1).to_string(),
                ],
            )
            .await?;
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).map_err(corrupt))
            .collect()
    }

    async fn save_delivery(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let (d, due) = (self.k_wh("d"), self.k_wh("due"));
        self.script::<i64>(
            &SAVE,
            &[&d, &due],
            &[delivery.id.clone(), to_json(delivery)?, due_arg(delivery)],
        )
        .await?;
        Ok(())
    }

    async fn list_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError> {
        let limit = q.limit.max(1);
        let chunk = limit.clamp(50, 500);
        let (d, all) = (self.k_wh("d"), self.k_wh("all"));
        let mut max = match &q.cursor {
            Some(c) => format!("({c}"),
            None => "+".to_string(),
        };
        let mut out = Vec::new();
        loop {
            let ids: Vec<String> = self
                .query(
                    redis::cmd("ZREVRANGEBYLEX")
                        .arg(&all)
                        .arg(&max)
                        .arg("-")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(chunk),
                )
                .await?;
            let Some(last) = ids.last() else {
                return Ok(out);
            };
            max = format!("({last}");
            let bodies: Vec<Option<String>> =
                self.query(redis::cmd("HMGET").arg(&d).arg(&ids)).await?;
            for body in bodies.into_iter().flatten() {
                let delivery: Delivery = serde_json::from_str(&body).map_err(corrupt)?;
                if q.matches(&delivery) {
                    out.push(delivery);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if ids.len() < chunk {
                return Ok(out);
            }
        }
    }

    async fn get_delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        let body: Option<String> = self
            .query(redis::cmd("HGET").arg(self.k_wh("d")).arg(id))
            .await?;
        body.map(|b| serde_json::from_str(&b).map_err(corrupt))
            .transpose()
    }

    async fn once(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let set: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(format!("{}once:{{{key}}}", self.prefix))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)),
            )
            .await?;
        Ok(set.is_some())
    }
}
