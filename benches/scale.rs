//! Scale of the stores and the cache (issue "5 · Performance", item 3).
//!
//! - Store lookup latency as the number of tokens grows from 1 k to 1 M, for the Redis
//!   store (a real `redis-server` this benchmark starts on an ephemeral port, no
//!   persistence) and the embedded redb store (a file in `SCALE_DIR`, default
//!   `/dev/shm` when present, so the figures are redb's own cost, not the disk's).
//!   At each size, 20 000 lookups of random existing tokens, one at a time.
//! - Memory of the token cache holding every token: the process's RSS before and after
//!   looking every token up through [`TokenCache`] (over the Redis store, so no store
//!   page cache lives in this process).
//!
//! Run: `cargo bench --bench scale` (or `scripts/bench --scale`). `SCALE_MAX` sets the
//! largest size (default 1 000 000). Prints a Markdown table and writes
//! `bench-results/scale-latest.json`.

// The allocator the `patgate` binary uses, so the cache's memory is measured as served.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/common/redis.rs"]
#[allow(dead_code)]
mod redis_server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use patgate::cache::TokenCache;
use patgate::config::StoreSettings;
use patgate::store::{RateLimit, TokenRecord, TokenStore, TokenType};
use patgate::token::TokenHash;

const SAMPLES: usize = 20_000;
const FILL_CONCURRENCY: usize = 64;

fn record(i: usize) -> TokenRecord {
    TokenRecord {
        id: format!("01SCALE{i:019}"),
        name: format!("scale token {i}"),
        description: "created by benches/scale.rs".into(),
        prefix: "pat_AbCdEfGh".into(),
        kind: TokenType::User,
        owner_id: format!("user-{}", i % 50_000),
        org_id: Some(format!("org-{}", i % 1_000)),
        project_id: None,
        permissions: vec!["read".into(), "write".into()],
        scopes: vec!["documents".into(), "billing".into()],
        created_at: jiff::Timestamp::now(),
        created_by: "admin:bench".into(),
        expires_at: Some(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365)),
        is_active: true,
        revoked_at: None,
        last_used_at: None,
        usage_count: 0,
        ip_allowlist: vec![],
        rate_limit: Some(RateLimit {
            requests: 100,
            per_seconds: 1,
            burst: Some(100),
        }),
        metadata: BTreeMap::new(),
    }
}

fn hash(i: usize) -> TokenHash {
    TokenHash::of(&format!("scale-{i}"))
}

/// Creates tokens `from..to`, `FILL_CONCURRENCY` at a time.
async fn fill(store: &Arc<dyn TokenStore>, from: usize, to: usize) {
    futures_util::stream::iter(from..to)
        .map(|i| {
            let store = store.clone();
            async move { store.create(&hash(i), &record(i)).await }
        })
        .buffer_unordered(FILL_CONCURRENCY)
        .for_each(|r| async move { r.expect("create") })
        .await;
}

/// Cheap deterministic PRNG (xorshift) so every run samples alike.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

struct Latency {
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
}

async fn measure(store: &Arc<dyn TokenStore>, size: usize, samples: usize) -> Latency {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ size as u64);
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let i = rng.below(size);
        let h = hash(i);
        let t = Instant::now();
        let found = store.lookup(&h).await.expect("lookup");
        times.push(t.elapsed());
        assert!(found.is_some(), "token {i} missing");
    }
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Latency {
        p50_us: us(times[times.len() / 2]),
        p99_us: us(times[times.len() * 99 / 100]),
        mean_us: times.iter().map(|d| us(*d)).sum::<f64>() / times.len() as f64,
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn sizes(max: usize) -> Vec<usize> {
    let mut v: Vec<usize> = [1_000, 10_000, 100_000, 1_000_000]
        .into_iter()
        .filter(|&s| s <= max)
        .collect();
    if v.last() != Some(&max) {
        v.push(max);
    }
    v
}

fn main() {
    // `cargo bench` passes `--bench`. Without it (`cargo test --all-targets` runs
    // bench targets too), a 2 000-token smoke run checks that everything works.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let max: usize = if bench_mode {
        std::env::var("SCALE_MAX")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1_000_000)
    } else {
        2_000
    };
    let samples = if bench_mode { SAMPLES } else { 500 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let redis = redis_server::RedisServer::start();
    let dir_root = std::env::var("SCALE_DIR").unwrap_or_else(|_| {
        if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm".into()
        } else {
            std::env::temp_dir().display().to_string()
        }
    });
    let dir = tempfile::tempdir_in(&dir_root).expect("temp dir");
    let yaml = |backend: &str| {
        format!(
            "store:\n  backend: {backend}\n  redis:\n    url: {}\n  embedded:\n    path: \"{}\"\ncache:\n  max_entries: {}\n  ttl_seconds: 3600\n  max_staleness_seconds: 3600\n",
            redis.url(),
            dir.path().join("scale.redb").display(),
            max + 1
        )
    };
    let mut table = Vec::new();
    let mut json = serde_json::Map::new();
    for backend in ["redis", "embedded"] {
        let settings = patgate::config::from_yaml(&yaml(backend)).expect("config");
        let store: Arc<dyn TokenStore> = rt.block_on(async {
            match &settings.store {
                StoreSettings::Redis(r) => Arc::new(
                    patgate::store::RedisStore::connect(r)
                        .await
                        .expect("redis store"),
                ) as Arc<dyn TokenStore>,
                StoreSettings::Embedded(e) => {
                    Arc::new(patgate::store::EmbeddedStore::open(e).expect("embedded store"))
                }
            }
        });
        let mut filled = 0;
        let mut rows = Vec::new();
        for size in sizes(max) {
            let t = Instant::now();
            rt.block_on(fill(&store, filled, size));
            let fill_s = t.elapsed().as_secs_f64();
            filled = size;
            let lat = rt.block_on(measure(&store, size, samples));
            eprintln!(
                "{backend:>8} {size:>9} tokens: lookup p50 {:.1} µs, p99 {:.1} µs (filled +{} in {fill_s:.1} s)",
                lat.p50_us,
                lat.p99_us,
                size - rows.last().map_or(0, |(s, _): &(usize, Latency)| *s)
            );
            rows.push((size, lat));
        }
        let first = rows[0].1.p50_us;
        for (size, lat) in &rows {
            table.push(format!(
                "| {backend} | {size} | {:.1} | {:.1} | {:.1} | {:.2} |",
                lat.p50_us,
                lat.p99_us,
                lat.mean_us,
                lat.p50_us / first
            ));
        }
        json.insert(
            backend.into(),
            serde_json::Value::Array(
                rows.iter()
                    .map(|(size, l)| {
                        serde_json::json!({"tokens": size, "p50_us": l.p50_us, "p99_us": l.p99_us, "mean_us": l.mean_us})
                    })
                    .collect(),
            ),
        );
        if backend == "redis" {
            // The cache, holding every token, over the Redis store.
            let cache = TokenCache::new(store.clone(), &settings.cache);
            let before = rss_bytes();
            rt.block_on(
                futures_util::stream::iter(0..max)
                    .map(|i| {
                        let cache = cache.clone();
                        async move { cache.lookup(hash(i)).await }
                    })
                    .buffer_unordered(FILL_CONCURRENCY)
                    .for_each(|r| async move {
                        assert!(r.expect("lookup").is_some());
                    }),
            );
            let entries = cache.len();
            let after = rss_bytes();
            let delta = after.saturating_sub(before);
            eprintln!(
                "cache: {entries} entries, RSS {} → {} MiB (+{} MiB, {} bytes/entry)",
                before >> 20,
                after >> 20,
                delta >> 20,
                delta / entries.max(1)
            );
            json.insert(
                "cache".into(),
                serde_json::json!({"entries": entries, "rss_before": before, "rss_after": after, "bytes_per_entry": delta / entries.max(1)}),
            );
            table.push(format!(
                "\ncache holding {entries} tokens: RSS +{} MiB ({} bytes per entry; goal: 1 M entries ≤ 300 MiB)\n",
                delta >> 20,
                delta / entries.max(1)
            ));
            drop(cache);
        }
        drop(store);
    }
    println!("| store | tokens | lookup p50 µs | p99 µs | mean µs | p50 ÷ p50 at 1 k |");
    println!("|---|---|---|---|---|---|");
    for line in &table {
        println!("{line}");
    }
    if !bench_mode {
        return;
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(
        out.join("scale-latest.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(json)).unwrap_or_default(),
    );
}
