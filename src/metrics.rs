//! Prometheus metrics: request counters and latency in a registry, and per-backend series
//! rendered at scrape time from the pools' own atomics (so the hot path never touches them).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

use crate::cache::Lookup;
use crate::state::{Runtime, Shared};

/// One route's series, resolved in the registry on first use and then updated with atomics
/// alone: no label hashing or registry lock per request. Built with each config version.
#[derive(Debug)]
pub struct RouteSeries {
    route: String,
    upstream: String,
    duration: OnceLock<Histogram>,
    /// `code="200"`, by far the most common; other codes are looked up by label.
    ok: OnceLock<IntCounter>,
    lookups: [OnceLock<IntCounter>; Lookup::ALL.len()],
}

impl RouteSeries {
    pub fn new(route: String, upstream: String) -> RouteSeries {
        RouteSeries {
            route,
            upstream,
            duration: OnceLock::new(),
            ok: OnceLock::new(),
            lookups: Default::default(),
        }
    }

    /// The `route` label.
    pub fn route(&self) -> &str {
        &self.route
    }
}

/// Times Pingora's connection pool found a pooled upstream connection but could not take it
/// over (its idle-watch task still held it), so the request opened a new connection. Counted
/// by the logger, which sees Pingora's "failed to acquire reusable stream" line (see `main.rs`).
pub static POOL_ACQUIRE_RACES: AtomicU64 = AtomicU64::new(0);

/// The registry and the series updated per request.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests_total: IntCounterVec,
    request_duration: HistogramVec,
    reloads_total: IntCounterVec,
    cache_lookups: IntCounterVec,
    upstream_connects: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new("switchyard_requests_total", "Client requests answered"),
            &["route", "upstream", "code"],
        )
        .expect("static metric definition");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from request to the end of the response",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["route"],
        )
        .expect("static metric definition");
        let reloads_total = IntCounterVec::new(
            Opts::new(
                "switchyard_config_reloads_total",
                "Config reloads by result (ok, error)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(requests_total.clone()))
            .expect("unique metric name");
        registry
            .register(Box::new(reloads_total.clone()))
            .expect("unique metric name");
        let cache_lookups = IntCounterVec::new(
            Opts::new(
                "switchyard_cache_lookups_total",
                "Cache lookups on cache-enabled routes by result (hit, miss, stale, expired, bypass, revalidated)",
            ),
            &["route", "result"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(cache_lookups.clone()))
            .expect("unique metric name");
        registry
            .register(Box::new(request_duration.clone()))
            .expect("unique metric name");
        let upstream_connects = IntCounterVec::new(
            Opts::new(
                "switchyard_upstream_connects_total",
                "Upstream connections requests went out on: reused from the pool (true) or new (false)",
            ),
            &["upstream", "backend", "reused"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(upstream_connects.clone()))
            .expect("unique metric name");
        Metrics {
            registry,
            requests_total,
            request_duration,
            reloads_total,
            cache_lookups,
            upstream_connects,
        }
    }

    /// Counts one upstream connection a request went out on. A label lookup per attempt (about
    /// 100 ns): the backend's own atomics belong to the pool, which is rebuilt on reload.
    pub fn observe_upstream_connect(&self, upstream: &str, backend: &str, reused: bool) {
        let reused = if reused { "true" } else { "false" };
        self.upstream_connects
            .with_label_values(&[upstream, backend, reused])
            .inc();
    }

    /// Counts one cache lookup result on a route.
    pub fn observe_cache(&self, series: &RouteSeries, lookup: Lookup) {
        series.lookups[lookup as usize]
            .get_or_init(|| {
                self.cache_lookups
                    .with_label_values(&[series.route.as_str(), lookup.as_str()])
            })
            .inc();
    }

    /// Counts one reload attempt.
    pub fn observe_reload(&self, ok: bool) {
        self.reloads_total
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Records one finished client request on a route.
    pub fn observe_route_request(&self, series: &RouteSeries, code: u16, seconds: f64) {
        let (route, upstream) = (series.route.as_str(), series.upstream.as_str());
        if code == 200 {
            series
                .ok
                .get_or_init(|| {
                    self.requests_total
                        .with_label_values(&[route, upstream, "200"])
                })
                .inc();
        } else {
            self.count_request(route, upstream, code);
        }
        series
            .duration
            .get_or_init(|| self.request_duration.with_label_values(&[route]))
            .observe(seconds);
    }

    /// Records one finished client request by its labels (requests that matched no route).
    pub fn observe_request(&self, route: &str, upstream: &str, code: u16, seconds: f64) {
        self.count_request(route, upstream, code);
        self.request_duration
            .with_label_values(&[route])
            .observe(seconds);
    }

    fn count_request(&self, route: &str, upstream: &str, code: u16) {
        // 0 (nothing was answered) has no status code: it is counted as "000".
        let status = http::StatusCode::from_u16(code).ok();
        let code = status.as_ref().map_or("000", http::StatusCode::as_str);
        self.requests_total
            .with_label_values(&[route, upstream, code])
            .inc();
    }

    /// The Prometheus text exposition of everything, for `GET /metrics`.
    pub fn render(&self, shared: &Shared) -> String {
        let runtime = &shared.runtime();
        let cache = &shared.cache;
        let mut out = Vec::with_capacity(8192);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("cannot encode metrics: {e}");
        }
        let mut out = String::from_utf8(out).unwrap_or_default();
        let _ = writeln!(
            out,
            "# HELP switchyard_config_version Version of the running config (1 at start)\n\
             # TYPE switchyard_config_version gauge\nswitchyard_config_version {}",
            runtime.version
        );
        let s = &cache.storage.stats;
        let _ = writeln!(
            out,
            "# HELP switchyard_cache_bytes Bytes held by the memory cache\n\
             # TYPE switchyard_cache_bytes gauge\nswitchyard_cache_bytes {}\n\
             # HELP switchyard_cache_entries Responses held by the memory cache\n\
             # TYPE switchyard_cache_entries gauge\nswitchyard_cache_entries {}\n\
             # HELP switchyard_cache_evictions_total Responses evicted to stay under max_size\n\
             # TYPE switchyard_cache_evictions_total counter\nswitchyard_cache_evictions_total {}",
            s.bytes.load(std::sync::atomic::Ordering::Relaxed),
            s.entries.load(std::sync::atomic::Ordering::Relaxed),
            s.evictions.load(std::sync::atomic::Ordering::Relaxed),
        );
        for (family, help, pick) in [
            (
                "switchyard_compression_bytes_in_total",
                "Body bytes given to the compressor",
                2usize,
            ),
            (
                "switchyard_compression_bytes_out_total",
                "Compressed bytes produced",
                3,
            ),
            (
                "switchyard_compression_responses_total",
                "Responses compressed",
                1,
            ),
        ] {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} counter");
            for row in shared.compression.snapshot() {
                let value = [0, row.1, row.2, row.3][pick];
                let _ = writeln!(out, "{family}{{algorithm=\"{}\"}} {value}", row.0);
            }
        }
        if let Some(redis) = &cache.storage.redis {
            let rs = &redis.stats;
            let _ = writeln!(
                out,
                "# HELP switchyard_cache_redis_errors_total Redis tier operations that failed or timed out\n\
                 # TYPE switchyard_cache_redis_errors_total counter"
            );
            for (op, count) in crate::cache::redis::OPS.iter().zip(&rs.errors) {
                let _ = writeln!(
                    out,
                    "switchyard_cache_redis_errors_total{{op=\"{op}\"}} {}",
                    count.load(std::sync::atomic::Ordering::Relaxed)
                );
            }
            let load =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP switchyard_cache_redis_lookups_total Redis tier lookups by result\n\
                 # TYPE switchyard_cache_redis_lookups_total counter\n\
                 switchyard_cache_redis_lookups_total{{result=\"hit\"}} {}\n\
                 switchyard_cache_redis_lookups_total{{result=\"miss\"}} {}\n\
                 # HELP switchyard_cache_redis_connected 1 while the Redis tier is connected\n\
                 # TYPE switchyard_cache_redis_connected gauge\n\
                 switchyard_cache_redis_connected {}\n\
                 # HELP switchyard_cache_redis_purges_total Purges published to and received from other instances\n\
                 # TYPE switchyard_cache_redis_purges_total counter\n\
                 switchyard_cache_redis_purges_total{{direction=\"published\"}} {}\n\
                 switchyard_cache_redis_purges_total{{direction=\"received\"}} {}",
                load(&rs.hits),
                load(&rs.misses),
                u8::from(rs.connected.load(std::sync::atomic::Ordering::Relaxed)),
                load(&rs.purges_published),
                load(&rs.purges_received),
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchyard_upstream_pool_acquire_races_total Pooled upstream connections Pingora could not hand over (its idle watch still held them), so a new connection was opened\n\
             # TYPE switchyard_upstream_pool_acquire_races_total counter\n\
             switchyard_upstream_pool_acquire_races_total {}",
            POOL_ACQUIRE_RACES.load(Ordering::Relaxed)
        );
        render_backends(&mut out, runtime);
        out
    }
}

/// Per-backend gauges and counters, read from the live pools.
fn render_backends(out: &mut String, runtime: &Runtime) {
    type Read = fn(&crate::upstream::Backend) -> u64;
    let families: [(&str, &str, &str, Read); 5] = [
        (
            "switchyard_upstream_backend_healthy",
            "gauge",
            "1 when active health checks pass, 0 when they took the backend out",
            |b| u64::from(b.is_healthy()),
        ),
        (
            "switchyard_upstream_backend_in_flight",
            "gauge",
            "Requests sent to the backend and not yet finished",
            |b| b.in_flight(),
        ),
        (
            "switchyard_upstream_backend_requests_total",
            "counter",
            "Requests sent to the backend",
            |b| b.requests_total(),
        ),
        (
            "switchyard_upstream_backend_failures_total",
            "counter",
            "Failed exchanges with the backend (connect errors, timeouts, broken responses)",
            |b| b.failures_total(),
        ),
        (
            "switchyard_upstream_backend_ejections_total",
            "counter",
            "Times passive health ejected the backend",
            |b| b.ejections_total(),
        ),
    ];
    for (name, kind, help, read) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (upstream, pool) in &runtime.pools {
            for backend in &pool.backends {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\",backend=\"{}\"}} {}",
                    escape(upstream),
                    escape(&backend.name),
                    read(backend)
                );
            }
        }
    }
}

/// Escapes a label value for the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_render_as_three_digits() {
        let m = Metrics::new();
        m.observe_request("r", "u", 200, 0.1);
        m.observe_request("r", "u", 499, 0.1);
        m.observe_request("r", "u", 0, 0.1);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&m.registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        for code in ["200", "499", "000"] {
            assert!(
                text.contains(&format!("code=\"{code}\"")),
                "{code} in {text}"
            );
        }
    }

    #[test]
    fn route_series_count_into_the_labelled_series() {
        let m = Metrics::new();
        // Two config versions of one route share the registry's series.
        for _ in 0..2 {
            let series = RouteSeries::new("api/".into(), "pool".into());
            m.observe_route_request(&series, 200, 0.01);
            m.observe_route_request(&series, 200, 0.01);
            m.observe_route_request(&series, 503, 0.01);
            m.observe_cache(&series, Lookup::Hit);
            m.observe_cache(&series, Lookup::Bypass);
        }
        let count = |code: &str| {
            m.requests_total
                .with_label_values(&["api/", "pool", code])
                .get()
        };
        assert_eq!((count("200"), count("503")), (4, 2));
        let lookups = |result: &str| m.cache_lookups.with_label_values(&["api/", result]).get();
        assert_eq!(
            (lookups("hit"), lookups("bypass"), lookups("miss")),
            (2, 2, 0)
        );
        assert_eq!(
            m.request_duration
                .with_label_values(&["api/"])
                .get_sample_count(),
            6
        );
    }

    #[test]
    fn upstream_connects_are_labelled_by_reuse() {
        let m = Metrics::new();
        m.observe_upstream_connect("pool", "127.0.0.1:1", true);
        m.observe_upstream_connect("pool", "127.0.0.1:1", true);
        m.observe_upstream_connect("pool", "127.0.0.1:1", false);
        let count = |reused: &str| {
            m.upstream_connects
                .with_label_values(&["pool", "127.0.0.1:1", reused])
                .get()
        };
        assert_eq!((count("true"), count("false")), (2, 1));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
