//! Criterion benchmarks of the in-process hot path.
//!
//! - `auth/decision_cache_hit`: the whole auth pipeline (Bearer extraction, format +
//!   checksum, SHA-256, cache hit, state, owner state, IP allowlist, route policy,
//!   rate limit) for a cached token. Goal: ≤ 0.5 µs median, ≤ 2 µs p99 (the per-call
//!   distribution is printed after its criterion run, see [`per_call_latency`]).
//! - `auth/reject_bad_checksum`: a malformed token, rejected before any lookup.
//! - `token/parse`, `token/sha256`: the pure pieces, for reference.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, header};
use patgate::auth::{self, RequestFacts};
use patgate::cache::TokenCache;
use patgate::lifecycle::{Actor, Caller, Lifecycle, NewToken};
use patgate::ratelimit::RateLimiter;
use patgate::store::TokenStore;
use patgate::store::embedded::EmbeddedStore;
use patgate::token::{self, TokenHash};

fn bench(c: &mut Criterion) {
    // As `serve` does: the request path reads the coarse clocks.
    patgate::clock::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        r#"
store:
  backend: embedded
  embedded:
    path: "{}"
tokens:
  creation_limit: 0
rate_limit:
  default: {{requests: 1000000000, per_seconds: 1, burst: 1000000000}}
routes:
  - name: api
    path_prefix: /api/
    upstream: http://127.0.0.1:3000
    require: {{scopes: [documents], permissions: [read]}}
"#,
        dir.path().join("bench.redb").display()
    );
    let settings = patgate::config::from_yaml(&yaml).expect("bench config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let patgate::config::StoreSettings::Embedded(emb) = &settings.store else {
        unreachable!("the bench config uses the embedded store")
    };
    let store: std::sync::Arc<dyn TokenStore> =
        std::sync::Arc::new(EmbeddedStore::open(emb).expect("store"));
    let cache = TokenCache::new(store.clone(), &settings.cache);
    let lifecycle = Lifecycle::new(store, cache.clone(), settings.tokens.clone());
    let (raw, _) = rt
        .block_on(lifecycle.create(
            NewToken {
                name: "bench".into(),
                owner_id: "u1".into(),
                scopes: vec!["documents".into()],
                permissions: vec!["read".into()],
                ip_allowlist: vec!["127.0.0.0/8".parse().expect("cidr")],
                ..Default::default()
            },
            &Caller::new(Actor::System),
        ))
        .expect("create");
    let limiters = RateLimiter::local(settings.rate_limit.default);
    let route = settings.routes[0].clone();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {raw}")).expect("header"),
    );
    let ip: IpAddr = "127.0.0.1".parse().expect("ip");
    let method = Method::GET;
    let facts = RequestFacts {
        headers: &headers,
        method: &method,
        path: "/api/documents/1",
        client_ip: ip,
    };
    // Warm the cache (token and owner entries).
    rt.block_on(auth::authenticate(
        facts,
        Some(&route),
        &settings.tokens,
        &cache,
        &limiters,
    ))
    .expect("allowed");

    c.bench_function("auth/decision_cache_hit", |b| {
        b.to_async(&rt).iter(|| async {
            auth::authenticate(
                black_box(facts),
                Some(&route),
                &settings.tokens,
                &cache,
                &limiters,
            )
            .await
            .is_ok()
        })
    });

    per_call_latency(&rt, || {
        auth::authenticate(facts, Some(&route), &settings.tokens, &cache, &limiters)
    });

    let mut bad = raw.clone().into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    let mut bad_headers = HeaderMap::new();
    bad_headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_bytes(&[b"Bearer ".as_slice(), &bad].concat()).expect("header"),
    );
    let bad_facts = RequestFacts {
        headers: &bad_headers,
        ..facts
    };
    c.bench_function("auth/reject_bad_checksum", |b| {
        b.to_async(&rt).iter(|| async {
            auth::authenticate(
                black_box(bad_facts),
                Some(&route),
                &settings.tokens,
                &cache,
                &limiters,
            )
            .await
            .is_err()
        })
    });

    // Usage counting on the request path, with and without the key-sharing signals
    // (one lock; the signals add a prefix computation and a scan of the token's
    // pending prefixes, here 8 distinct /24s).
    for enabled in [false, true] {
        let usage = patgate::usage::UsageRecorder::new();
        usage.set_signals(patgate::config::IpSignals {
            enabled,
            ..Default::default()
        });
        let ips: Vec<std::net::IpAddr> = (0..8u8)
            .map(|i| std::net::IpAddr::from([203, 0, i, 7]))
            .collect();
        let now = jiff::Timestamp::now();
        let mut i = 0usize;
        let name = if enabled {
            "usage/record_with_ip_signals"
        } else {
            "usage/record"
        };
        c.bench_function(name, |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                usage.record(black_box("01KTOKENIDXXXXXXXXXXXXXXXX"), now, ips[i % 8]);
            })
        });
    }

    c.bench_function("token/parse", |b| {
        b.iter(|| token::parse(black_box(&raw), "pat_").is_ok())
    });
    c.bench_function("token/sha256", |b| {
        b.iter(|| TokenHash::of(black_box(&raw)))
    });
}

/// Criterion reports per-sample means (each sample averages many calls), so the p99
/// goal for one decision is checked here: 1 M calls timed one by one after 100 k
/// warm-up calls, the clock's own cost (median of back-to-back reads) subtracted.
fn per_call_latency<F, Fut, T, E>(rt: &tokio::runtime::Runtime, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    use std::time::Instant;
    const CALLS: usize = 1_000_000;
    let mut clock: Vec<u64> = (0..10_000)
        .map(|_| {
            let t = Instant::now();
            black_box(Instant::now());
            t.elapsed().as_nanos() as u64
        })
        .collect();
    clock.sort_unstable();
    let overhead = clock[clock.len() / 2];
    let mut ns: Vec<u64> = rt.block_on(async {
        for _ in 0..100_000 {
            assert!(call().await.is_ok(), "warm-up call denied");
        }
        let mut ns = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let t = Instant::now();
            let ok = call().await.is_ok();
            ns.push((t.elapsed().as_nanos() as u64).saturating_sub(overhead));
            assert!(ok, "timed call denied");
        }
        ns
    });
    ns.sort_unstable();
    let q = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)];
    println!(
        "auth/decision_cache_hit per call ({CALLS} calls, clock overhead {overhead} ns \
         subtracted): p50 {} ns, p99 {} ns, p99.9 {} ns, p99.99 {} ns, max {} ns",
        q(0.50),
        q(0.99),
        q(0.999),
        q(0.9999),
        ns[ns.len() - 1]
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
