//! A backend's capacity state: the operator's admin state (ready, drain, maint), its
//! `max_conns`, and slow start, which ramps the weight of a backend that joins or recovers
//! from 1/10 to full over the upstream's `slow_start`.
//!
//! Weights are kept in tenths while they ramp ([`BackendCapacity::effective`]), so that the
//! smooth round-robin schedule and least-connections can use them as whole numbers. Time is
//! milliseconds on a process-wide monotonic clock ([`now_ms`]); every function that depends
//! on it also takes the time as an argument, so tests set the clock.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::queue::WaitQueue;

/// What the operator set on a backend through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// Takes requests as its health allows.
    Ready,
    /// No new requests (sticky clients move); requests in flight finish.
    Drain,
    /// Drained, counted unhealthy, and not health-checked.
    Maint,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    pub fn parse(text: &str) -> Option<AdminState> {
        match text {
            "ready" => Some(AdminState::Ready),
            "drain" => Some(AdminState::Drain),
            "maint" => Some(AdminState::Maint),
            _ => None,
        }
    }

    fn from_u8(n: u8) -> AdminState {
        match n {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            AdminState::Ready => 0,
            AdminState::Drain => 1,
            AdminState::Maint => 2,
        }
    }
}

/// Steps of a ramp: the effective weight changes every `slow_start / RAMP_STEPS`.
pub const RAMP_STEPS: u64 = 10;

/// `ramp_since` when the backend is not ramping.
const NOT_RAMPING: u64 = u64::MAX;

/// Milliseconds since the first call in this process (a monotonic clock).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Bumped whenever any backend starts a ramp, so that every pool holding it rebuilds its
/// schedule on its next pick (a ramp may start where the pool is not at hand: an ejection
/// ending, a reload).
static RAMP_STARTS: AtomicU64 = AtomicU64::new(0);

/// Ramp starts so far, process-wide.
pub(super) fn ramp_starts() -> u64 {
    RAMP_STARTS.load(Ordering::Acquire)
}

/// The capacity state of one backend; part of [`super::Backend`].
#[derive(Debug)]
pub struct BackendCapacity {
    admin_state: AtomicU8,
    /// Requests in flight at once; 0: no limit. Changes on reload.
    max_conns: AtomicU32,
    /// The upstream's `slow_start` in ms (0: none). Changes on reload.
    slow_start_ms: AtomicU64,
    /// When the current ramp began ([`now_ms`]), or `NOT_RAMPING`.
    ramp_since: AtomicU64,
    /// The weight in tenths as selection uses it now: `weight * 10`, less while ramping.
    effective: AtomicU32,
    /// The upstream's wait queue, woken when a request here finishes.
    pub(super) waiters: OnceLock<Arc<WaitQueue>>,
}

impl BackendCapacity {
    pub fn new(weight: u32, max_conns: Option<u32>) -> BackendCapacity {
        BackendCapacity {
            admin_state: AtomicU8::new(AdminState::Ready.to_u8()),
            max_conns: AtomicU32::new(max_conns.unwrap_or(0)),
            slow_start_ms: AtomicU64::new(0),
            ramp_since: AtomicU64::new(NOT_RAMPING),
            effective: AtomicU32::new(weight.saturating_mul(10)),
            waiters: OnceLock::new(),
        }
    }

    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin_state.load(Ordering::Acquire))
    }

    /// Sets the admin state; returns the previous one.
    pub(super) fn swap_admin_state(&self, state: AdminState) -> AdminState {
        AdminState::from_u8(self.admin_state.swap(state.to_u8(), Ordering::AcqRel))
    }

    /// `max_conns`, when set.
    pub fn max_conns(&self) -> Option<u32> {
        Some(self.max_conns.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }

    pub(super) fn configure(&self, max_conns: Option<u32>, slow_start: Option<Duration>) {
        self.max_conns
            .store(max_conns.unwrap_or(0), Ordering::Relaxed);
        let ms = slow_start.map_or(0, |d| d.as_millis().max(1) as u64);
        self.slow_start_ms.store(ms, Ordering::Relaxed);
    }

    /// The weight selection uses, in tenths of the configured weight's units.
    pub fn effective(&self) -> u32 {
        self.effective.load(Ordering::Relaxed)
    }

    /// Starts a slow-start ramp at `now` (no-op when the upstream has no `slow_start`).
    pub fn begin_ramp(&self, now: u64) {
        if self.slow_start_ms.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.ramp_since.store(now, Ordering::Release);
        RAMP_STARTS.fetch_add(1, Ordering::AcqRel);
    }

    pub fn is_ramping(&self) -> bool {
        self.ramp_since.load(Ordering::Acquire) != NOT_RAMPING
    }

    /// Recomputes the effective weight at `now` for `weight`; returns when it next changes
    /// (`None`: not ramping). A finished ramp ends here.
    pub(super) fn update(&self, weight: u32, now: u64) -> Option<u64> {
        let since = self.ramp_since.load(Ordering::Acquire);
        let period = self.slow_start_ms.load(Ordering::Relaxed);
        let (tenths, next) = if since == NOT_RAMPING || period == 0 {
            (weight.saturating_mul(10), None)
        } else {
            ramp(weight, now.saturating_sub(since), period)
        };
        if next.is_none() && since != NOT_RAMPING {
            // Leave a ramp restarted meanwhile alone.
            let _ = self.ramp_since.compare_exchange(
                since,
                NOT_RAMPING,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
        self.effective.store(tenths, Ordering::Relaxed);
        next.map(|after| since.saturating_add(after))
    }
}

/// The weight in tenths `elapsed` ms into a ramp of `period` ms, and when (ms after the ramp
/// began) the next step starts. Step k of 10 gives `weight * (1/10 + 9k/100)`: 1/10 at the
/// start, full at the end.
pub fn ramp(weight: u32, elapsed: u64, period: u64) -> (u32, Option<u64>) {
    let full = weight.saturating_mul(10);
    if elapsed >= period {
        return (full, None);
    }
    let step = elapsed * RAMP_STEPS / period;
    let tenths = (u64::from(weight) * (10 + 9 * step) / 10).max(1) as u32;
    let next = ((step + 1) * period).div_ceil(RAMP_STEPS);
    (tenths.min(full), Some(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_goes_from_a_tenth_to_full_in_ten_steps() {
        assert_eq!(ramp(1, 0, 10_000), (1, Some(1_000)));
        assert_eq!(ramp(10, 0, 10_000), (10, Some(1_000)));
        assert_eq!(ramp(10, 5_500, 10_000), (55, Some(6_000)));
        assert_eq!(ramp(10, 9_999, 10_000), (91, Some(10_000)));
        assert_eq!(ramp(10, 10_000, 10_000), (100, None));
        let steps: Vec<u32> = (0..10).map(|k| ramp(100, k * 1_000, 10_000).0).collect();
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    }

    #[test]
    fn a_backend_ramps_only_with_slow_start_and_ends_its_ramp() {
        let c = BackendCapacity::new(2, None);
        c.begin_ramp(0);
        assert!(!c.is_ramping());
        c.configure(None, Some(Duration::from_secs(10)));
        c.begin_ramp(1_000);
        assert!(c.is_ramping());
        assert_eq!(c.update(2, 1_000), Some(2_000));
        assert_eq!(c.effective(), 2);
        assert_eq!(c.update(2, 6_000), Some(7_000));
        assert_eq!(c.effective(), 2 * (10 + 45) / 10);
        assert_eq!(c.update(2, 11_000), None);
        assert_eq!(c.effective(), 20);
        assert!(!c.is_ramping());
    }

    #[test]
    fn admin_states_round_trip() {
        for s in [AdminState::Ready, AdminState::Drain, AdminState::Maint] {
            assert_eq!(AdminState::parse(s.as_str()), Some(s));
            assert_eq!(AdminState::from_u8(s.to_u8()), s);
        }
        assert_eq!(AdminState::parse("down"), None);
    }
}
