//! Smooth weighted round-robin, precomputed so that picking is one atomic add.
//!
//! nginx's smooth algorithm spreads weights 3:1 as A,A,B,A rather than A,A,A,B. Running it on
//! every request needs a lock; instead the whole cycle (one slot per unit of weight, after
//! dividing by the weights' gcd) is computed when the set of healthy backends changes, and a
//! request takes the next slot with `fetch_add`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// One full cycle of backend indexes in smooth weighted order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    slots: Vec<u32>,
}

impl Schedule {
    /// Builds the cycle for `(index, weight)` pairs; weights of 0 are left out.
    pub fn build(members: &[(usize, u32)]) -> Schedule {
        let members: Vec<(usize, i64)> = members
            .iter()
            .filter(|(_, w)| *w > 0)
            .map(|&(i, w)| (i, i64::from(w)))
            .collect();
        let divisor = members.iter().fold(0, |g, &(_, w)| gcd(g, w)).max(1);
        let weights: Vec<i64> = members.iter().map(|&(_, w)| w / divisor).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; members.len()];
        let mut slots = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (k, w) in weights.iter().enumerate() {
                current[k] += w;
                if current[k] > current[best] {
                    best = k;
                }
            }
            current[best] -= total;
            slots.push(members[best].0 as u32);
        }
        Schedule { slots }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Smooth weighted round-robin over the healthy backends of one pool.
#[derive(Debug, Default)]
pub struct RoundRobin {
    schedule: ArcSwap<Schedule>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// Replaces the cycle; called when health or membership changes.
    pub fn rebuild(&self, members: &[(usize, u32)]) {
        self.schedule.store(Arc::new(Schedule::build(members)));
    }

    /// The next backend index not rejected by `skip`, or `None` when none is left.
    pub fn select(&self, skip: impl Fn(usize) -> bool) -> Option<usize> {
        self.pick(skip, true)
    }

    /// Like [`select`](Self::select) but without taking a turn: for a retry, so that a
    /// request that failed over does not shift the rotation of everyone else.
    pub fn peek(&self, skip: impl Fn(usize) -> bool) -> Option<usize> {
        self.pick(skip, false)
    }

    fn pick(&self, skip: impl Fn(usize) -> bool, take_turn: bool) -> Option<usize> {
        let schedule = self.schedule.load();
        let len = schedule.slots.len();
        if len == 0 {
            return None;
        }
        let start = if take_turn {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            self.next.load(Ordering::Relaxed)
        };
        for step in 0..len {
            let index = schedule.slots[(start.wrapping_add(step)) % len] as usize;
            if !skip(index) {
                if step > 0 && take_turn {
                    // Move the cycle past the slots skipped over, so the backend after a
                    // skipped one does not get its turn twice.
                    self.next.fetch_add(step, Ordering::Relaxed);
                }
                return Some(index);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sequence(members: &[(usize, u32)], n: usize) -> Vec<usize> {
        let rr = RoundRobin::default();
        rr.rebuild(members);
        (0..n).map(|_| rr.select(|_| false).unwrap()).collect()
    }

    #[test]
    fn weights_three_to_one_interleave() {
        assert_eq!(sequence(&[(0, 3), (1, 1)], 4), vec![0, 0, 1, 0]);
    }

    #[test]
    fn nginx_example_5_1_1() {
        // The sequence from nginx's commit introducing smooth weighted round-robin.
        let names = ['a', 'b', 'c'];
        let seq: String = sequence(&[(0, 5), (1, 1), (2, 1)], 7)
            .into_iter()
            .map(|i| names[i])
            .collect();
        assert_eq!(seq, "aabacaa");
    }

    #[test]
    fn gcd_shrinks_the_cycle() {
        assert_eq!(Schedule::build(&[(0, 300), (1, 100)]).len(), 4);
        assert_eq!(Schedule::build(&[(0, 1000), (1, 999)]).len(), 1999);
    }

    #[test]
    fn empty_selects_nothing() {
        let rr = RoundRobin::default();
        assert_eq!(rr.select(|_| false), None);
        rr.rebuild(&[(0, 1)]);
        assert_eq!(rr.select(|i| i == 0), None);
    }

    #[test]
    fn skipping_one_backend_keeps_the_others_even() {
        let rr = RoundRobin::default();
        rr.rebuild(&[(0, 1), (1, 1), (2, 1)]);
        let picks: Vec<usize> = (0..30).map(|_| rr.select(|i| i == 0).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 15, "{picks:?}");
        assert!(picks.windows(2).all(|w| w[0] != w[1]), "{picks:?}");
    }

    #[test]
    fn skip_moves_to_the_next_slot() {
        let rr = RoundRobin::default();
        rr.rebuild(&[(0, 1), (1, 1), (2, 1)]);
        for _ in 0..10 {
            let picked = rr.select(|i| i == 1).unwrap();
            assert_ne!(picked, 1);
        }
    }

    proptest! {
        #[test]
        fn every_member_gets_exactly_its_share(weights in proptest::collection::vec(1u32..20, 1..16)) {
            let members: Vec<(usize, u32)> = weights.iter().copied().enumerate().collect();
            let schedule = Schedule::build(&members);
            let divisor = weights.iter().fold(0i64, |g, &w| gcd(g, i64::from(w)));
            for (i, w) in &members {
                let count = schedule.slots.iter().filter(|&&s| s as usize == *i).count() as i64;
                prop_assert_eq!(count, i64::from(*w) / divisor);
            }
        }

        #[test]
        fn no_member_waits_longer_than_its_fair_gap(weights in proptest::collection::vec(1u32..10, 2..8)) {
            // Smoothness: a member of weight w out of total t appears in every window of
            // 2 * ceil(t / w) consecutive slots (around the cycle); a burst would break it.
            let members: Vec<(usize, u32)> = weights.iter().copied().enumerate().collect();
            let schedule = Schedule::build(&members);
            let total = schedule.len();
            let divisor = weights.iter().fold(0i64, |g, &w| gcd(g, i64::from(w)));
            for (i, w) in &members {
                let w = (i64::from(*w) / divisor) as usize;
                let window = 2 * total.div_ceil(w);
                for start in 0..total {
                    let seen = (0..window.min(total)).any(|k| schedule.slots[(start + k) % total] as usize == *i);
                    prop_assert!(seen, "member {} absent from window at {}", i, start);
                }
            }
        }
    }
}
