//! The most requested cache keys of the last minute or two, with their hits and misses, for
//! `GET /cache/top`: a bounded Space-Saving sketch (Metwally et al.) per one-minute window,
//! the current and the previous one, so memory stays fixed whatever the key space.
//!
//! Written by hand: the sketch is forty lines, and the crates that offer one count a single
//! number per key, not hits and misses.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked per window; a key outside them replaces the least counted one.
const CAPACITY: usize = 256;
const WINDOW: Duration = Duration::from_secs(60);

/// One key's counts in a window. `error` bounds how much of `hits + misses` belonged to the
/// keys it replaced (Space-Saving's overestimate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub hits: u64,
    pub misses: u64,
    pub error: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.hits + self.misses
    }
}

#[derive(Debug, Default)]
struct Sketch {
    keys: HashMap<String, Counts>,
}

impl Sketch {
    fn record(&mut self, key: &str, hit: bool) {
        if !self.keys.contains_key(key) && self.keys.len() >= CAPACITY {
            let evicted = self
                .keys
                .iter()
                .min_by_key(|(_, c)| c.total())
                .map(|(k, c)| (k.clone(), c.total()));
            if let Some((old, floor)) = evicted {
                self.keys.remove(&old);
                self.keys.insert(
                    key.to_string(),
                    Counts {
                        hits: 0,
                        misses: floor,
                        error: floor,
                    },
                );
            }
        }
        // Looked up by `&str` first: a key already counted costs no allocation.
        let counts = match self.keys.get_mut(key) {
            Some(counts) => counts,
            None => self.keys.entry(key.to_string()).or_default(),
        };
        if hit {
            counts.hits += 1;
        } else {
            counts.misses += 1;
        }
    }
}

#[derive(Debug)]
struct Windows {
    started: Instant,
    current: Sketch,
    previous: Sketch,
}

/// The sketch of the current and the previous minute.
#[derive(Debug)]
pub struct TopKeys {
    windows: Mutex<Windows>,
}

impl Default for TopKeys {
    fn default() -> TopKeys {
        TopKeys {
            windows: Mutex::new(Windows {
                started: Instant::now(),
                current: Sketch::default(),
                previous: Sketch::default(),
            }),
        }
    }
}

impl TopKeys {
    /// Counts one lookup of `key`. Skipped when another request holds the sketch: it is a
    /// sample, and no request waits for it.
    pub fn record(&self, key: &str, hit: bool) {
        let Ok(mut windows) = self.windows.try_lock() else {
            return;
        };
        windows.rotate(Instant::now());
        windows.current.record(key, hit);
    }

    /// The `n` keys requested most over the current and the previous window, most first.
    pub fn top(&self, n: usize) -> Vec<(String, Counts)> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.rotate(Instant::now());
        let mut merged: HashMap<&str, Counts> = HashMap::new();
        for (key, c) in windows.previous.keys.iter().chain(&windows.current.keys) {
            let m = merged.entry(key.as_str()).or_default();
            m.hits += c.hits;
            m.misses += c.misses;
            m.error += c.error;
        }
        let mut out: Vec<(String, Counts)> = merged
            .into_iter()
            .map(|(k, c)| (k.to_string(), c))
            .collect();
        out.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then_with(|| a.0.cmp(&b.0)));
        out.truncate(n);
        out
    }
}

impl Windows {
    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age < WINDOW {
            return;
        }
        self.previous = if age < WINDOW * 2 {
            std::mem::take(&mut self.current)
        } else {
            self.current = Sketch::default();
            Sketch::default()
        };
        self.started = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_requested_keys_come_first_with_hits_and_misses() {
        let top = TopKeys::default();
        for _ in 0..5 {
            top.record("h/a", true);
        }
        top.record("h/a", false);
        top.record("h/b", false);
        top.record("h/b", true);
        top.record("h/c", false);
        let found = top.top(2);
        assert_eq!(found[0].0, "h/a");
        assert_eq!((found[0].1.hits, found[0].1.misses), (5, 1));
        assert_eq!(found[1].0, "h/b");
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn memory_stays_bounded_and_heavy_keys_survive_a_scan() {
        let top = TopKeys::default();
        for _ in 0..1000 {
            top.record("h/hot", true);
        }
        for i in 0..10_000 {
            top.record(&format!("h/cold/{i}"), false);
        }
        let windows = top.windows.lock().unwrap();
        assert!(windows.current.keys.len() <= CAPACITY);
        drop(windows);
        assert_eq!(top.top(1)[0].0, "h/hot");
    }

    #[test]
    fn windows_roll_over_after_a_minute() {
        let mut w = Windows {
            started: Instant::now(),
            current: Sketch::default(),
            previous: Sketch::default(),
        };
        w.current.record("k", true);
        let later = w.started + WINDOW + Duration::from_secs(1);
        w.rotate(later);
        assert!(w.current.keys.is_empty());
        assert_eq!(w.previous.keys["k"].hits, 1);
        w.rotate(later + WINDOW * 3);
        assert!(w.previous.keys.is_empty(), "an idle stretch forgets both");
    }
}
