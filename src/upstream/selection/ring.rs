//! Consistent hashing: a Ketama-style ring where each backend owns 160 points per unit of
//! weight, so removing one of N backends moves only the keys it owned (about 1/N).

use xxhash_rust::xxh3::xxh3_64;

/// Points each unit of weight puts on the ring (as nginx's `hash ... consistent`).
const POINTS_PER_WEIGHT: u32 = 160;

/// The ring: `(point, backend index)` sorted by point.
#[derive(Debug, Default)]
pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// Builds the ring from `(backend index, name, weight)`; a backend's points depend only on
    /// its name and weight, so unchanged backends keep their place when others come and go.
    pub fn build<'a>(members: impl IntoIterator<Item = (usize, &'a str, u32)>) -> Ring {
        let mut points = Vec::new();
        for (index, name, weight) in members {
            for k in 0..weight * POINTS_PER_WEIGHT {
                points.push((xxh3_64(format!("{name}-{k}").as_bytes()), index as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The first backend clockwise from `hash` that `skip` does not reject.
    pub fn select(&self, hash: u64, skip: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.points.len();
        if n == 0 {
            return None;
        }
        let start = self.points.partition_point(|p| p.0 < hash);
        (0..n)
            .map(|k| self.points[(start + k) % n].1 as usize)
            .find(|&i| !skip(i))
    }
}

/// The hash of a key (client IP, header, cookie or URI), stable across processes and versions.
pub fn hash_key(key: &[u8]) -> u64 {
    xxh3_64(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn ring_of(names: &[String], keep: impl Fn(usize) -> bool) -> Ring {
        Ring::build(
            names
                .iter()
                .enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(i, n)| (i, n.as_str(), 1)),
        )
    }

    fn keys(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| hash_key(format!("192.168.{}.{}", i / 256, i % 256).as_bytes()))
            .collect()
    }

    #[test]
    fn spread_is_even_enough() {
        let ring = ring_of(&names(4), |_| true);
        let mut counts = [0usize; 4];
        for k in keys(200) {
            counts[ring.select(k, |_| false).unwrap()] += 1;
        }
        for c in counts {
            assert!(c < 80, "one backend got {c} of 200: {counts:?}");
        }
    }

    #[test]
    fn weight_gives_proportionally_more() {
        let n = names(2);
        let ring = Ring::build([(0, n[0].as_str(), 3), (1, n[1].as_str(), 1)]);
        let heavy = keys(4000)
            .into_iter()
            .filter(|&k| ring.select(k, |_| false) == Some(0))
            .count();
        assert!((2700..3300).contains(&heavy), "heavy got {heavy} of 4000");
    }

    #[test]
    fn skipped_backend_falls_to_the_next_and_returns() {
        let ring = ring_of(&names(3), |_| true);
        for k in keys(100) {
            let owner = ring.select(k, |_| false).unwrap();
            let fallback = ring.select(k, |i| i == owner).unwrap();
            assert_ne!(fallback, owner);
            assert_eq!(ring.select(k, |_| false), Some(owner));
        }
        assert_eq!(ring.select(1, |_| true), None);
        assert_eq!(Ring::default().select(1, |_| false), None);
    }

    proptest! {
        #[test]
        fn removing_one_backend_moves_only_its_keys(n in 2usize..10, removed in 0usize..10) {
            let removed = removed % n;
            let all = names(n);
            let before = ring_of(&all, |_| true);
            let after = ring_of(&all, |i| i != removed);
            let keys = keys(2000);
            let mut moved = 0;
            for &k in &keys {
                let a = before.select(k, |_| false).unwrap();
                let b = after.select(k, |_| false).unwrap();
                if a != removed {
                    prop_assert_eq!(a, b, "a key moved between backends that both stayed");
                } else {
                    moved += 1;
                }
            }
            // About 1/N of the keys move: allow 2x slack for hashing noise.
            let share = moved as f64 / keys.len() as f64;
            prop_assert!(share < 2.0 / n as f64, "moved {} of 2000 with n={}", moved, n);
        }
    }
}
