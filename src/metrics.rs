//! Prometheus metrics: request counters and latency in a registry, and the live series (cache,
//! compression, Redis tier, backends) built at scrape time from a [`Snapshot`] of the
//! subsystems' own atomics (so the hot path never touches them). One encoder renders both.

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

mod recent;
mod snapshot;

pub use recent::Recent;
pub use snapshot::{RefusedConnections, Snapshot};

use crate::cache::Lookup;
use crate::policy::Refusal;

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
    refused: [OnceLock<IntCounter>; Refusal::ALL.len()],
    request_size: OnceLock<Histogram>,
    response_size: OnceLock<Histogram>,
}

/// A stage of one upstream attempt, each timed from the attempt's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTiming {
    /// A new connection was established (pooled connections are not timed).
    Connect,
    /// The response header arrived.
    FirstByte,
    /// The response body ended.
    Total,
}

impl RouteSeries {
    pub fn new(route: String, upstream: String) -> RouteSeries {
        RouteSeries {
            route,
            upstream,
            duration: OnceLock::new(),
            ok: OnceLock::new(),
            lookups: Default::default(),
            request_size: OnceLock::new(),
            response_size: OnceLock::new(),
            refused: Default::default(),
        }
    }

    /// The `route` label.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The upstream this route sends to.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Cache lookups on this route by result, since start (the registry keeps a series across
    /// reloads while the route label stays).
    pub fn lookups(&self) -> impl Iterator<Item = (Lookup, u64)> + '_ {
        Lookup::ALL
            .iter()
            .zip(&self.lookups)
            .map(|(lookup, counter)| (*lookup, counter.get().map_or(0, IntCounter::get)))
    }

    /// Requests refused by policy on this route, by reason, since start.
    pub fn refused(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL
            .iter()
            .zip(&self.refused)
            .map(|(reason, counter)| (*reason, counter.get().map_or(0, IntCounter::get)))
    }
}

/// Times Pingora's connection pool found a pooled upstream connection but could not take it
/// over (its idle-watch task still held it), so the request opened a new connection. Counted
/// by the logger, which sees Pingora's "failed to acquire reusable stream" line (see `logging.rs`).
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
    tls_handshake_errors: IntCounterVec,
    client_requests: IntCounterVec,
    access_log_dropped: IntCounter,
    h2_reset_floods: IntCounter,
    /// Upstream connect, first byte and total times, by `upstream` and `backend`.
    upstream_timings: [HistogramVec; 3],
    request_size: HistogramVec,
    response_size: HistogramVec,
    policy_refused: IntCounterVec,
    /// `client_requests` for (http/1.1, h2) × (plain, TLS), resolved on first use.
    protocols: [OnceLock<IntCounter>; 4],
    /// The last seconds of latency and the status classes, for `/stats`.
    pub recent: Recent,
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
        let tls_handshake_errors = IntCounterVec::new(
            Opts::new(
                "switchyard_tls_handshake_errors_total",
                "TLS handshakes that failed, by reason (timeout, plain_http, not_tls, closed, protocol, version, alpn)",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let client_requests = IntCounterVec::new(
            Opts::new(
                "switchyard_client_requests_total",
                "Client requests by protocol (http/1.1, h2) and whether they came over TLS",
            ),
            &["protocol", "tls"],
        )
        .expect("static metric definition");
        let policy_refused = IntCounterVec::new(
            Opts::new(
                "switchyard_policy_refused_total",
                "Requests refused by traffic policy, by route and reason (access, rate_limit)",
            ),
            &["route", "reason"],
        )
        .expect("static metric definition");
        for counter in [&tls_handshake_errors, &client_requests, &policy_refused] {
            registry
                .register(Box::new(counter.clone()))
                .expect("unique metric name");
        }
        let access_log_dropped = IntCounter::new(
            "switchyard_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind",
        )
        .expect("static metric definition");
        let h2_reset_floods = IntCounter::new(
            "switchyard_h2_reset_floods_total",
            "HTTP/2 streams refused on connections running too many handlers (rapid reset); each such connection is sent GOAWAY",
        )
        .expect("static metric definition");
        for counter in [&access_log_dropped, &h2_reset_floods] {
            registry
                .register(Box::new(counter.clone()))
                .expect("unique metric name");
        }
        let latency = |name: &str, help: &str| {
            let vec = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ]),
                &["upstream", "backend"],
            )
            .expect("static metric definition");
            registry
                .register(Box::new(vec.clone()))
                .expect("unique metric name");
            vec
        };
        let upstream_timings = [
            latency(
                "switchyard_upstream_connect_seconds",
                "Time to establish a new upstream connection",
            ),
            latency(
                "switchyard_upstream_first_byte_seconds",
                "Time from the start of an upstream attempt to the response header",
            ),
            latency(
                "switchyard_upstream_response_seconds",
                "Time from the start of an upstream attempt to the end of the response body",
            ),
        ];
        let size = |name: &str, help: &str| {
            let vec = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(
                    prometheus::exponential_buckets(64.0, 4.0, 11).expect("static buckets"),
                ),
                &["route"],
            )
            .expect("static metric definition");
            registry
                .register(Box::new(vec.clone()))
                .expect("unique metric name");
            vec
        };
        let request_size = size(
            "switchyard_request_size_bytes",
            "Request body bytes read from the client, by route",
        );
        let response_size = size(
            "switchyard_response_size_bytes",
            "Response body bytes sent to the client, by route",
        );
        Metrics {
            upstream_timings,
            request_size,
            response_size,
            access_log_dropped,
            h2_reset_floods,
            registry,
            tls_handshake_errors,
            client_requests,
            policy_refused,
            protocols: Default::default(),
            recent: Recent::default(),
            requests_total,
            request_duration,
            reloads_total,
            cache_lookups,
            upstream_connects,
        }
    }

    /// The counter of dropped access log lines (the writer counts into it).
    /// An HTTP/2 connection closed for resetting too many streams (`proxy::h2_streams`).
    pub fn count_h2_reset_flood(&self) {
        self.h2_reset_floods.inc();
    }

    pub fn access_log_dropped(&self) -> IntCounter {
        self.access_log_dropped.clone()
    }

    /// Counts one upstream connection a request went out on. A label lookup per attempt (about
    /// 100 ns): the backend's own atomics belong to the pool, which is rebuilt on reload.
    pub fn observe_upstream_connect(&self, upstream: &str, backend: &str, reused: bool) {
        let reused = if reused { "true" } else { "false" };
        self.upstream_connects
            .with_label_values(&[upstream, backend, reused])
            .inc();
    }

    /// Records one stage of an upstream attempt.
    pub fn observe_upstream_timing(
        &self,
        upstream: &str,
        backend: &str,
        stage: UpstreamTiming,
        seconds: f64,
    ) {
        self.upstream_timings[stage as usize]
            .with_label_values(&[upstream, backend])
            .observe(seconds);
    }

    /// Records the request and response body sizes of one request on a route.
    pub fn observe_route_sizes(&self, series: &RouteSeries, request: u64, response: u64) {
        let route = series.route.as_str();
        series
            .request_size
            .get_or_init(|| self.request_size.with_label_values(&[route]))
            .observe(request as f64);
        series
            .response_size
            .get_or_init(|| self.response_size.with_label_values(&[route]))
            .observe(response as f64);
    }

    /// Counts one failed TLS handshake.
    pub fn observe_tls_handshake_error(&self, reason: &str) {
        self.tls_handshake_errors.with_label_values(&[reason]).inc();
    }

    /// Counts one client request by protocol (HTTP/1.1 or HTTP/2) and transport.
    pub fn observe_protocol(&self, h2: bool, tls: bool) {
        let slot = usize::from(h2) * 2 + usize::from(tls);
        self.protocols[slot]
            .get_or_init(|| {
                let protocol = if h2 { "h2" } else { "http/1.1" };
                let tls = if tls { "true" } else { "false" };
                self.client_requests.with_label_values(&[protocol, tls])
            })
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

    /// Counts one request refused by policy; `series` is `None` when no route matched.
    pub fn observe_refused(&self, series: Option<&RouteSeries>, reason: Refusal) {
        match series {
            Some(series) => series.refused[reason as usize]
                .get_or_init(|| {
                    self.policy_refused
                        .with_label_values(&[series.route.as_str(), reason.as_str()])
                })
                .inc(),
            None => self
                .policy_refused
                .with_label_values(&["none", reason.as_str()])
                .inc(),
        }
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
        self.recent.observe(code, seconds);
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
        self.recent.observe(code, seconds);
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

    /// The Prometheus text exposition of everything, for `GET /metrics`: the registry's
    /// series, and the live ones read from `snapshot`, rendered by one encoder.
    pub fn render(&self, snapshot: &Snapshot<'_>) -> String {
        let mut families = self.registry.gather();
        // The encoder refuses a family without samples (an upstream list can be empty).
        families.extend(
            snapshot
                .families()
                .into_iter()
                .filter(|f| !f.get_metric().is_empty()),
        );
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::with_capacity(8192);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            log::error!("cannot encode metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
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
    fn live_families_render_with_escaped_labels() {
        use prometheus::proto::MetricType;
        use snapshot::family;

        let text = String::from_utf8({
            let mut out = Vec::new();
            let f = family(
                "switchyard_test_total",
                "help",
                MetricType::COUNTER,
                [(vec![("backend", "a\"b\\c\nd".to_string())], 3.0)],
            );
            TextEncoder::new().encode(&[f], &mut out).unwrap();
            out
        })
        .unwrap();
        assert!(
            text.contains("# TYPE switchyard_test_total counter"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_test_total{backend=\"a\\\"b\\\\c\\nd\"} 3"),
            "{text}"
        );
    }
}
