//! Local rate limits: GCRA per key with `governor`, one limiter per route. Keys are 64-bit
//! hashes; the key table is bounded (see [`MAX_KEYS`]).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use http::HeaderMap;
use xxhash_rust::xxh3::xxh3_64;

use crate::config::{RateKey, RateLimit};
use crate::fields::cookie_value;

/// Keys one route's limiter remembers. Idle keys (whose budget is full again) are swept every
/// [`SWEEP_EVERY`]; while the table is full of active keys, every request shares one overflow
/// budget. With about 64 bytes a key, a route's table stays under 7 MiB.
pub const MAX_KEYS: usize = 100_000;

/// How often idle keys are swept out.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The table size is looked at once per this many checks.
const CHECK_SIZE_EVERY: u64 = 256;

/// The key requests share while the table is full.
const OVERFLOW: u64 = u64::MAX;

/// One route's limiter.
#[derive(Debug)]
pub struct Limiter {
    limit: RateLimit,
    keyed: DefaultKeyedRateLimiter<u64>,
    clock: DefaultClock,
    started: Instant,
    checks: AtomicU64,
    /// Milliseconds after `started` of the last sweep.
    last_sweep: AtomicU64,
    full: AtomicBool,
}

/// A refused request: how long until the key may send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait(pub Duration);

impl Limiter {
    pub fn new(limit: &RateLimit) -> Limiter {
        let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
        // Validated: the period is at least 1 ns.
        let quota = Quota::with_period(limit.period())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Limiter {
            limit: limit.clone(),
            keyed: DefaultKeyedRateLimiter::dashmap(quota),
            clock: DefaultClock::default(),
            started: Instant::now(),
            checks: AtomicU64::new(0),
            last_sweep: AtomicU64::new(0),
            full: AtomicBool::new(false),
        }
    }

    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Keys remembered now.
    pub fn keys(&self) -> usize {
        self.keyed.len()
    }

    /// Takes one request from `key`'s budget.
    pub fn check(&self, key: u64) -> Result<(), Wait> {
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(CHECK_SIZE_EVERY)
        {
            self.maintain();
        }
        let key = if self.full.load(Ordering::Relaxed) {
            OVERFLOW
        } else {
            key
        };
        self.keyed
            .check_key(&key)
            .map_err(|not_until| Wait(not_until.wait_time_from(self.clock.now())))
    }

    fn maintain(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_sweep.load(Ordering::Relaxed);
        let len = self.keyed.len();
        let due = now.saturating_sub(last) >= SWEEP_EVERY.as_millis() as u64;
        if (due || len >= MAX_KEYS)
            && now.saturating_sub(last) >= 1000
            && self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.keyed.retain_recent();
            self.keyed.shrink_to_fit();
        }
        self.full
            .store(self.keyed.len() >= MAX_KEYS, Ordering::Relaxed);
    }
}

/// The key a request counts against: its header, cookie, client IP or the route.
pub fn key_of(key: &RateKey, headers: &HeaderMap, client: IpAddr) -> u64 {
    let ip = || match client {
        IpAddr::V4(v4) => xxh3_64(&v4.octets()),
        IpAddr::V6(v6) => xxh3_64(&v6.octets()),
    };
    match key {
        RateKey::ClientIp => ip(),
        RateKey::Route => 0,
        RateKey::Header(name) => headers
            .get(name)
            .map_or_else(ip, |v| xxh3_64(v.as_bytes()) ^ 0x5bd1_e995),
        RateKey::Cookie(name) => {
            let cookies = headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok());
            cookie_value(cookies, name).map_or_else(ip, |v| xxh3_64(v.as_bytes()) ^ 0x5bd1_e995)
        }
    }
}

/// The IETF `RateLimit-Policy` and `RateLimit` fields and `Retry-After` of a refusal.
pub fn refusal_fields(limit: &RateLimit, wait: Wait) -> [(&'static str, String); 3] {
    let retry = wait.0.as_secs() + u64::from(wait.0.subsec_nanos() > 0);
    let retry = retry.max(1);
    [
        ("retry-after", retry.to_string()),
        (
            "ratelimit-policy",
            format!("\"route\";q={};w={}", limit.count, limit.per.as_secs()),
        ),
        ("ratelimit", format!("\"route\";r=0;t={retry}")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(count: u32, burst: u32) -> RateLimit {
        RateLimit {
            count,
            per: Duration::from_secs(1),
            burst,
            key: RateKey::ClientIp,
            scope: crate::config::Scope::Local,
        }
    }

    #[test]
    fn burst_then_refusal_with_a_wait() {
        let l = Limiter::new(&limit(10, 3));
        for _ in 0..3 {
            assert!(l.check(1).is_ok());
        }
        let Err(Wait(wait)) = l.check(1) else {
            panic!("the fourth request must wait");
        };
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Another key has its own budget.
        assert!(l.check(2).is_ok());
    }

    #[test]
    fn fields_round_the_wait_up() {
        let f = refusal_fields(&limit(100, 5), Wait(Duration::from_millis(10)));
        assert_eq!(f[0].1, "1");
        assert_eq!(f[1].1, "\"route\";q=100;w=1");
        assert_eq!(f[2].1, "\"route\";r=0;t=1");
    }

    #[test]
    fn keys_fall_back_to_the_client_ip() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        let by_header = RateKey::Header(http::HeaderName::from_static("x-api-key"));
        assert_eq!(
            key_of(&by_header, &h, ip),
            key_of(&RateKey::ClientIp, &h, ip)
        );
        h.insert("x-api-key", "k1".parse().unwrap());
        assert_ne!(
            key_of(&by_header, &h, ip),
            key_of(&RateKey::ClientIp, &h, ip)
        );
        h.insert("cookie", "a=1; session=s1".parse().unwrap());
        let by_cookie = RateKey::Cookie("session".into());
        assert_eq!(key_of(&by_cookie, &h, ip), xxh3_64(b"s1") ^ 0x5bd1_e995);
    }
}
