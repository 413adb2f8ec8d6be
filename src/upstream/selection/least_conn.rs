//! Least connections: the available backend with the fewest in-flight requests per unit of
//! weight; ties go to smooth weighted round-robin so that idle backends share by weight. The
//! weight is the effective one, so under slow start a ramping backend counts its connections
//! as heavier (as nginx weights the connection count).

use std::sync::Arc;

use super::RoundRobin;
use crate::upstream::Backend;

/// Picks among `backends` (those `skip` rejects and unavailable ones excluded). `rr` holds the
/// smooth schedule of the available backends and breaks ties.
pub fn select(
    backends: &[Arc<Backend>],
    rr: &RoundRobin,
    skip: impl Fn(usize) -> bool,
) -> Option<usize> {
    // Loads compared as fractions in_flight / weight, by cross-multiplying.
    let mut best: Option<(u64, u64)> = None;
    let mut best_index = 0;
    let mut ties = 0;
    for (i, b) in backends.iter().enumerate() {
        if !b.is_available() || skip(i) {
            continue;
        }
        let load = (b.in_flight(), u64::from(b.capacity.effective()));
        match best {
            Some((f, w)) if load.0 * w > f * load.1 => {}
            Some((f, w)) if load.0 * w == f * load.1 => ties += 1,
            _ => {
                best = Some(load);
                best_index = i;
                ties = 1;
            }
        }
    }
    let (f, w) = best?;
    if ties == 1 {
        return Some(best_index);
    }
    let is_least = |i: usize| {
        let b = &backends[i];
        b.in_flight() * w == f * u64::from(b.capacity.effective())
    };
    // Counts may move between the scan and here; the scanned minimum is still a fine answer.
    rr.select(|i| skip(i) || !is_least(i)).or(Some(best_index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendSpec;
    use proptest::prelude::*;

    fn backends(weights: &[u32]) -> (Vec<Arc<Backend>>, RoundRobin) {
        let list: Vec<Arc<Backend>> = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                Arc::new(Backend::new(&BackendSpec {
                    name: format!("b{i}"),
                    host: format!("b{i}"),
                    addr: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                    weight,
                    backup: false,
                    discovered: false,
                    max_conns: None,
                }))
            })
            .collect();
        let rr = RoundRobin::default();
        rr.rebuild(&weights.iter().copied().enumerate().collect::<Vec<_>>());
        (list, rr)
    }

    #[test]
    fn busy_backend_is_avoided() {
        let (b, rr) = backends(&[1, 1, 1]);
        let _busy: Vec<_> = (0..3).map(|_| b[0].start_request()).collect();
        for _ in 0..10 {
            assert_ne!(select(&b, &rr, |_| false), Some(0));
        }
    }

    #[test]
    fn ties_alternate_by_weight() {
        let (b, rr) = backends(&[2, 1]);
        let picks: Vec<usize> = (0..30)
            .map(|_| select(&b, &rr, |_| false).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 20);
        assert!(picks.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn load_is_per_unit_of_weight() {
        let (b, rr) = backends(&[4, 1]);
        // 3 in flight on weight 4 (0.75) beats 1 in flight on weight 1 (1.0).
        let _a: Vec<_> = (0..3).map(|_| b[0].start_request()).collect();
        let _b = b[1].start_request();
        assert_eq!(select(&b, &rr, |_| false), Some(0));
    }

    #[test]
    fn skipped_and_nothing_left() {
        let (b, rr) = backends(&[1, 1]);
        assert_eq!(select(&b, &rr, |i| i == 0), Some(1));
        assert_eq!(select(&b, &rr, |_| true), None);
    }

    proptest! {
        #[test]
        fn visits_every_available_backend(n in 1usize..12, busy in proptest::collection::vec(0u64..4, 12)) {
            let (b, rr) = backends(&vec![1; n]);
            let _guards: Vec<_> = (0..n)
                .flat_map(|i| (0..busy[i]).map(move |_| i))
                .map(|i| b[i].start_request())
                .collect();
            // Repeatedly take the least loaded and add a request to it: every backend is reached.
            let mut seen = vec![false; n];
            let mut held = Vec::new();
            for _ in 0..(n * 5) {
                let i = select(&b, &rr, |_| false).unwrap();
                seen[i] = true;
                held.push(b[i].start_request());
            }
            prop_assert!(seen.iter().all(|&s| s));
        }
    }
}
