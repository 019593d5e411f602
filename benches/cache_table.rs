//! The token table ([`patgate::cache::table::Table`]) against moka, which it replaced
//! for the token cache.
//!
//! - Memory: RSS growth over `TABLE_N` (default 1 000 000) inserts of a 32-byte key and
//!   a 16-byte value, divided by the entries held. Each variant runs in a fresh child
//!   process (this binary, re-run with `CACHE_TABLE_VARIANT` set), so one's freed
//!   memory can't flatter the next: the table, moka `future::Cache` with per-entry
//!   expiry (as the token cache used it) and with none, and a plain `HashMap` as the
//!   floor. Also times one full [`Table::sweep`] of the filled table.
//! - Criterion: a hit (`get` of a present key) in a 100 000-entry table and in moka.
//!
//! Run: `cargo bench --bench cache_table`. Without `--bench` (`cargo test
//! --all-targets`), a 10 000-entry memory smoke run only.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use patgate::cache::table::Table;
use patgate::token::{HashKeyState, TokenHash};

type Value = [u64; 2];

const LIFE: Duration = Duration::from_secs(3600);

fn key(i: u64) -> TokenHash {
    TokenHash::of(&format!("table-bench-{i}"))
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

struct Life;

impl moka::Expiry<TokenHash, Value> for Life {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        _value: &Value,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(LIFE)
    }
}

fn table(max: u64) -> Table<Value, ()> {
    Table::new(max, |_| LIFE, |_, _| {})
}

fn moka(max: u64, expiry: bool) -> moka::future::Cache<TokenHash, Value, HashKeyState> {
    let b = moka::future::Cache::builder().max_capacity(max);
    if expiry {
        b.expire_after(Life)
            .build_with_hasher(HashKeyState::default())
    } else {
        b.build_with_hasher(HashKeyState::default())
    }
}

/// In a child: fills one variant with `n` entries; prints `variant entries bytes/entry`.
fn measure(variant: &str, n: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let before = rss_bytes();
    let mut extra = String::new();
    let entries = match variant {
        "table" => {
            let t = table(n + 1);
            for i in 0..n {
                t.insert(key(i), [i, i]);
            }
            let held = t.entry_count();
            let started = Instant::now();
            t.sweep();
            extra = format!(
                " (a full sweep: {:.1} ms)",
                started.elapsed().as_secs_f64() * 1e3
            );
            std::mem::forget(t);
            held
        }
        "moka-expire-after" | "moka-no-expiry" => {
            let c = moka(n + 1, variant == "moka-expire-after");
            rt.block_on(async {
                for i in 0..n {
                    c.insert(key(i), [i, i]).await;
                }
                c.run_pending_tasks().await;
            });
            let held = c.entry_count();
            std::mem::forget(c);
            held
        }
        "hashmap" => {
            let mut m: HashMap<TokenHash, Value, HashKeyState> = HashMap::default();
            for i in 0..n {
                m.insert(key(i), [i, i]);
            }
            let held = m.len() as u64;
            std::mem::forget(m);
            held
        }
        other => panic!("unknown variant {other}"),
    };
    let delta = rss_bytes().saturating_sub(before);
    println!(
        "{variant:<18} {entries:>8} entries  +{:>4} MiB  {:>4} B/entry{extra}",
        delta >> 20,
        delta / entries.max(1)
    );
}

fn hits(c: &mut Criterion) {
    const N: u64 = 100_000;
    let t = table(N + 1);
    for i in 0..N {
        t.insert(key(i), [i, i]);
    }
    let k = key(N / 2);
    c.bench_function("table/get_hit", |b| b.iter(|| t.get(black_box(&k))));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let m = moka(N + 1, true);
    rt.block_on(async {
        for i in 0..N {
            m.insert(key(i), [i, i]).await;
        }
        m.run_pending_tasks().await;
    });
    c.bench_function("moka/get_hit", |b| {
        b.to_async(&rt).iter(|| m.get(black_box(&k)))
    });
}

fn main() {
    if let Ok(variant) = std::env::var("CACHE_TABLE_VARIANT") {
        let n = std::env::var("TABLE_N")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1_000_000);
        measure(&variant, n);
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs a smoke test.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let n = if bench_mode {
        std::env::var("TABLE_N").unwrap_or_else(|_| "1000000".into())
    } else {
        "10000".into()
    };
    let exe = std::env::current_exe().expect("own path");
    println!("RSS growth over {n} inserts of a 32-byte key and a 16-byte value:");
    for variant in ["table", "moka-expire-after", "moka-no-expiry", "hashmap"] {
        let status = std::process::Command::new(&exe)
            .env("CACHE_TABLE_VARIANT", variant)
            .env("TABLE_N", &n)
            .status()
            .expect("run child");
        assert!(status.success(), "{variant}: {status}");
    }
    if bench_mode {
        let mut c = Criterion::default().configure_from_args();
        hits(&mut c);
        c.final_summary();
    }
}
