//! Coarse clocks for the request path.
//!
//! One background thread (`patgate-clock`, started by [`start`]) reads the monotonic
//! and the wall clock every [`RESOLUTION`] and publishes both; the request path then
//! reads the time with an atomic load instead of a `clock_gettime` call (about 25 ns
//! each on VMs whose TSC quanta cannot use).
//!
//! Only what has second-scale semantics reads these clocks: cache freshness
//! (`cache.ttl_seconds`), token expiry, and the usage counters' last-used time. The
//! rate limiters keep the precise clock: a GCRA with a 1 ms emission interval and no
//! burst would admit one request per clock step on a coarse clock. Latency
//! measurements keep the precise clock too.
//!
//! Until [`start`] has run (unit tests, library users that never call it), every read
//! falls back to the precise clock, so nothing depends on the thread for correctness.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use jiff::Timestamp;

/// How often the published time is refreshed.
pub const RESOLUTION: Duration = Duration::from_millis(10);

/// Wall-clock microseconds since the Unix epoch; 0 until the thread runs.
static WALL_MICROS: AtomicI64 = AtomicI64::new(0);
static STARTED: OnceLock<bool> = OnceLock::new();

fn publish() {
    quanta::set_recent(quanta::Instant::now());
    WALL_MICROS.store(Timestamp::now().as_microsecond(), Ordering::Relaxed);
}

/// Starts the clock thread (once per process; later calls do nothing). Returns
/// whether it runs; if the thread cannot be spawned, reads stay precise.
pub fn start() -> bool {
    *STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("patgate-clock".into())
            .spawn(|| {
                loop {
                    publish();
                    std::thread::sleep(RESOLUTION);
                }
            });
        match spawned {
            Ok(_) => {
                // Wait for the first publication so readers never mix clocks.
                while WALL_MICROS.load(Ordering::Acquire) == 0 {
                    std::thread::yield_now();
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "clock thread not started; using the precise clock");
                false
            }
        }
    })
}

/// The monotonic time, at most [`RESOLUTION`] old.
#[inline]
pub fn recent() -> quanta::Instant {
    quanta::Instant::recent()
}

/// The wall-clock time, at most [`RESOLUTION`] old.
#[inline]
pub fn wall() -> Timestamp {
    let micros = WALL_MICROS.load(Ordering::Relaxed);
    if micros == 0 {
        return Timestamp::now();
    }
    Timestamp::from_microsecond(micros).unwrap_or_else(|_| Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn started_clocks_follow_the_precise_ones_within_a_few_resolutions() {
        assert!(start());
        assert!(start(), "a second start is a no-op");
        for _ in 0..20 {
            let lag = Timestamp::now().duration_since(wall());
            assert!(
                lag >= jiff::SignedDuration::ZERO - jiff::SignedDuration::from_millis(1)
                    && lag < jiff::SignedDuration::from_millis(100),
                "wall clock lag {lag:?}"
            );
            let mono_lag = quanta::Instant::now().saturating_duration_since(recent());
            assert!(
                mono_lag < Duration::from_millis(100),
                "monotonic lag {mono_lag:?}"
            );
            std::thread::sleep(Duration::from_millis(3));
        }
        // It moves.
        let a = wall();
        std::thread::sleep(Duration::from_millis(30));
        assert!(wall() > a);
        let m = recent();
        std::thread::sleep(Duration::from_millis(30));
        assert!(recent() > m);
    }
}
