//! The last few seconds of traffic for `/stats` and the dashboard: latency quantiles over a
//! sliding window, and answers by status class since start. Fixed-size atomics, no lock: each
//! second has a slot of latency buckets that the first request of a new second clears.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{json, Value};

/// Seconds the quantiles look back over (whole seconds before the current one).
pub const WINDOW_SECONDS: u64 = 10;

/// One slot per second, two more than the window so the slot being cleared is never read.
const SLOTS: usize = WINDOW_SECONDS as usize + 2;

/// Latency buckets: bucket `i` holds latencies up to `FIRST * STEP^i`; 96 quarter-octave
/// steps from 50 µs reach about 55 minutes, each within 19% of the next.
const BUCKETS: usize = 96;
const FIRST: f64 = 50e-6;
const STEP: f64 = 1.189_207_115; // 2^(1/4)

#[derive(Debug)]
struct Slot {
    /// The second (since `Recent::start`) whose requests the slot holds, plus one (0: none).
    second: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// Recent latencies and status classes; see the module docs.
#[derive(Debug)]
pub struct Recent {
    start: Instant,
    slots: [Slot; SLOTS],
    /// Answers by class since start: 1xx to 5xx, and others (0: nothing was sent).
    classes: [AtomicU64; 6],
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            start: Instant::now(),
            slots: std::array::from_fn(|_| Slot {
                second: AtomicU64::new(0),
                buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
            classes: Default::default(),
        }
    }
}

fn bucket(seconds: f64) -> usize {
    if seconds <= FIRST {
        return 0;
    }
    let i = ((seconds / FIRST).ln() / STEP.ln()).ceil();
    (i as usize).min(BUCKETS - 1)
}

fn upper(i: usize) -> f64 {
    FIRST * STEP.powi(i as i32)
}

impl Recent {
    fn now(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// Records one finished request.
    pub fn observe(&self, code: u16, seconds: f64) {
        self.observe_at(self.now(), code, seconds);
    }

    fn observe_at(&self, second: u64, code: u16, seconds: f64) {
        let class = match code {
            100..=599 => usize::from(code / 100) - 1,
            _ => 5,
        };
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        let tag = second + 1;
        let held = slot.second.load(Ordering::Acquire);
        if held != tag
            && slot
                .second
                .compare_exchange(held, tag, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This request opened the second: the slot's old counts go. A request of the same
            // second racing with the clearing may be lost; the window is an estimate.
            for b in &slot.buckets {
                b.store(0, Ordering::Relaxed);
            }
        }
        slot.buckets[bucket(seconds)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `traffic` part of `/stats`.
    pub fn stats(&self) -> Value {
        self.stats_at(self.now())
    }

    fn stats_at(&self, now: u64) -> Value {
        let mut counts = [0u64; BUCKETS];
        let first = now.saturating_sub(WINDOW_SECONDS);
        for slot in &self.slots {
            let tag = slot.second.load(Ordering::Acquire);
            // Whole seconds before the current one, within the window (`tag` is second + 1).
            if tag == 0 || tag <= first || tag > now {
                continue;
            }
            for (n, b) in counts.iter_mut().zip(&slot.buckets) {
                *n += b.load(Ordering::Relaxed);
            }
        }
        let total: u64 = counts.iter().sum();
        let quantile = |q: f64| -> Option<f64> {
            if total == 0 {
                return None;
            }
            let rank = (q * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            let i = counts.iter().position(|&n| {
                seen += n;
                seen >= rank
            })?;
            // The bucket's upper bound, in milliseconds to three decimals.
            Some((upper(i) * 1e6).round() / 1e3)
        };
        let window = now.clamp(1, WINDOW_SECONDS);
        let class = |i: usize| self.classes[i].load(Ordering::Relaxed);
        json!({
            "window_seconds": window,
            "requests": total,
            "rps": total as f64 / window as f64,
            "latency_ms": {"p50": quantile(0.5), "p90": quantile(0.9), "p99": quantile(0.99)},
            "status": {
                "1xx": class(0), "2xx": class(1), "3xx": class(2),
                "4xx": class(3), "5xx": class(4), "other": class(5),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_latencies() {
        for ms in [0.01, 0.05, 0.3, 1.0, 7.5, 120.0, 2500.0] {
            let s = ms / 1000.0;
            let i = bucket(s);
            assert!(upper(i) >= s * 0.999, "{ms} ms in bucket {i}");
            assert!(i == 0 || upper(i - 1) < s, "{ms} ms: a lower bucket fits");
        }
        assert_eq!(bucket(1e9), BUCKETS - 1);
    }

    #[test]
    fn quantiles_over_the_whole_seconds_of_the_window() {
        let r = Recent::default();
        // Second 3: 98 fast requests, 2 slow ones; second 4 is still running.
        for _ in 0..98 {
            r.observe_at(3, 200, 0.002);
        }
        r.observe_at(3, 503, 0.5);
        r.observe_at(3, 404, 0.5);
        r.observe_at(4, 200, 9.0);
        let s = r.stats_at(4);
        assert_eq!(s["requests"], 100);
        let p50 = s["latency_ms"]["p50"].as_f64().unwrap();
        assert!((2.0..2.4).contains(&p50), "{p50}");
        let p99 = s["latency_ms"]["p99"].as_f64().unwrap();
        assert!((500.0..600.0).contains(&p99), "{p99}");
        assert_eq!(s["status"]["2xx"], 99);
        assert_eq!(s["status"]["4xx"], 1);
        assert_eq!(s["status"]["5xx"], 1);
        assert_eq!(s["window_seconds"], 4);
        // Past the window the old second no longer counts, and a reused slot starts empty.
        let later = 4 + WINDOW_SECONDS;
        assert_eq!(r.stats_at(later)["requests"], 1);
        r.observe_at(3 + SLOTS as u64, 200, 0.001);
        assert_eq!(r.stats_at(4 + SLOTS as u64)["requests"], 1);
        assert!(r.stats_at(100)["latency_ms"]["p50"].is_null());
    }
}
