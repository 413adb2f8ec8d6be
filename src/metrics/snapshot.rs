//! The live series (cache, compression, Redis tier, backends), built at scrape time from the
//! subsystems' own atomics that their owner hands over in a [`Snapshot`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use super::POOL_ACQUIRE_RACES;
use crate::cache::memory::StorageStats;
use crate::cache::redis::{RedisStats, OPS};
use crate::compress::CompressionStats;
use crate::policy::cluster::STATS as CLUSTER;
use crate::upstream::capacity::AdminState;
use crate::upstream::{Backend, Pool};

/// Client connections the front end refused, by reason.
#[derive(Debug, Default)]
pub struct RefusedConnections {
    /// Over `server.max_connections`.
    pub max_connections: AtomicU64,
    /// Over `server.max_connections_per_ip`.
    pub max_connections_per_ip: AtomicU64,
}

impl RefusedConnections {
    /// `(reason, count)` for each reason.
    pub fn rows(&self) -> [(&'static str, u64); 2] {
        [
            (
                "max_connections",
                self.max_connections.load(Ordering::Relaxed),
            ),
            (
                "max_connections_per_ip",
                self.max_connections_per_ip.load(Ordering::Relaxed),
            ),
        ]
    }

    pub fn total(&self) -> u64 {
        self.rows().iter().map(|(_, n)| n).sum()
    }
}

/// The live state that metrics read at scrape time, handed over by its owner (the shared
/// state), so that this module reads atomics it is given and never the state itself.
#[derive(Debug)]
pub struct Snapshot<'a> {
    pub config_version: u64,
    pub storage: &'a StorageStats,
    /// Stored responses invalidated after unsafe methods.
    pub invalidations: &'a AtomicU64,
    /// Warm fetches made, and those that failed.
    pub warm_fetches: (&'a AtomicU64, &'a AtomicU64),
    pub redis: Option<&'a RedisStats>,
    pub compression: &'a CompressionStats,
    pub pools: &'a BTreeMap<String, Arc<Pool>>,
    /// The TLS certificates in use.
    pub certificates: &'a [crate::tls::Certificate],
    /// Failed service-discovery resolutions, per discovering upstream.
    pub discovery_failures: Vec<(String, u64)>,
    pub refused_connections: &'a RefusedConnections,
}

impl Snapshot<'_> {
    /// The families built from live values (counters kept in the subsystems' own atomics).
    pub(super) fn families(&self) -> Vec<MetricFamily> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let mut out = vec![
            family(
                "switchyard_config_version",
                "Version of the running config (1 at start)",
                MetricType::GAUGE,
                [(vec![], self.config_version as f64)],
            ),
            family(
                "switchyard_cache_bytes",
                "Bytes held by the memory cache",
                MetricType::GAUGE,
                [(vec![], load(&self.storage.bytes))],
            ),
            family(
                "switchyard_cache_entries",
                "Responses held by the memory cache",
                MetricType::GAUGE,
                [(vec![], load(&self.storage.entries))],
            ),
            family(
                "switchyard_cache_evictions_total",
                "Responses evicted to stay under max_size",
                MetricType::COUNTER,
                [(vec![], load(&self.storage.evictions))],
            ),
            family(
                "switchyard_cache_invalidations_total",
                "Stored responses invalidated, by reason (RFC 9111 §4.4: unsafe-method)",
                MetricType::COUNTER,
                [(
                    vec![("reason", "unsafe-method".to_string())],
                    load(self.invalidations),
                )],
            ),
            family(
                "switchyard_cache_warm_fetches_total",
                "Warm fetches of cache.warm lists, by result (ok, failed)",
                MetricType::COUNTER,
                [
                    (
                        vec![("result", "ok".to_string())],
                        load(self.warm_fetches.0) - load(self.warm_fetches.1),
                    ),
                    (
                        vec![("result", "failed".to_string())],
                        load(self.warm_fetches.1),
                    ),
                ],
            ),
        ];
        let rows = self.compression.snapshot();
        for (name, help, pick) in [
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
            let samples = rows.iter().map(|row| {
                let value = [0, row.1, row.2, row.3][pick];
                (vec![("algorithm", row.0.to_string())], value as f64)
            });
            out.push(family(name, help, MetricType::COUNTER, samples));
        }
        if !self.discovery_failures.is_empty() {
            out.push(family(
                "switchyard_discovery_failures_total",
                "Service-discovery resolutions that failed (the last good backends were kept)",
                MetricType::COUNTER,
                self.discovery_failures
                    .iter()
                    .map(|(up, n)| (vec![("upstream", up.clone())], *n as f64)),
            ));
        }
        if let Some(rs) = self.redis {
            out.push(family(
                "switchyard_cache_redis_errors_total",
                "Redis tier operations that failed or timed out",
                MetricType::COUNTER,
                OPS.iter()
                    .zip(&rs.errors)
                    .map(|(op, count)| (vec![("op", op.to_string())], load(count))),
            ));
            out.push(family(
                "switchyard_cache_redis_lookups_total",
                "Redis tier lookups by result",
                MetricType::COUNTER,
                [
                    (vec![("result", "hit".to_string())], load(&rs.hits)),
                    (vec![("result", "miss".to_string())], load(&rs.misses)),
                ],
            ));
            out.push(family(
                "switchyard_cache_redis_connected",
                "1 while the Redis tier is connected",
                MetricType::GAUGE,
                [(
                    vec![],
                    f64::from(u8::from(rs.connected.load(Ordering::Relaxed))),
                )],
            ));
            out.push(family(
                "switchyard_cache_redis_purges_total",
                "Purges published to and received from other instances",
                MetricType::COUNTER,
                [
                    (
                        vec![("direction", "published".to_string())],
                        load(&rs.purges_published),
                    ),
                    (
                        vec![("direction", "received".to_string())],
                        load(&rs.purges_received),
                    ),
                ],
            ));
        }
        out.push(family(
            "switchyard_rate_limit_fallback_total",
            "Cluster rate-limit checks the local limiter answered because Redis was slow, down or not connected",
            MetricType::COUNTER,
            [(vec![], load(&CLUSTER.fallbacks))],
        ));
        out.push(family(
            "switchyard_rate_limit_cluster_checks_total",
            "Cluster rate-limit checks Redis answered",
            MetricType::COUNTER,
            [(vec![], load(&CLUSTER.checks))],
        ));
        out.push(family(
            "switchyard_connections_refused_total",
            "Client connections refused by the front end, by reason (max_connections, max_connections_per_ip)",
            MetricType::COUNTER,
            self.refused_connections
                .rows()
                .map(|(reason, n)| (vec![("reason", reason.to_string())], n as f64)),
        ));
        out.push(family(
            "switchyard_upstream_pool_acquire_races_total",
            "Pooled upstream connections Pingora could not hand over (its idle watch still held them), so a new connection was opened",
            MetricType::COUNTER,
            [(vec![], load(&POOL_ACQUIRE_RACES))],
        ));
        if !self.certificates.is_empty() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            out.push(family(
                "switchyard_tls_certificate_expiry_seconds",
                "Seconds until each TLS certificate expires, by its first DNS name",
                MetricType::GAUGE,
                self.certificates.iter().map(|c| {
                    let name = c.names.first().cloned().unwrap_or_default();
                    (vec![("name", name)], (c.not_after - now) as f64)
                }),
            ));
        }
        out.extend(self.backend_families());
        out.extend(self.queue_families());
        out
    }

    /// The wait queue of each upstream with a `queue`.
    fn queue_families(&self) -> Vec<MetricFamily> {
        type Read = fn(&Pool) -> f64;
        let families: [(&str, MetricType, &str, Read); 3] = [
            (
                "switchyard_upstream_queue_length",
                MetricType::GAUGE,
                "Requests waiting for a backend below its max_conns",
                |p| p.waiters.len() as f64,
            ),
            (
                "switchyard_upstream_queue_timeouts_total",
                MetricType::COUNTER,
                "Requests answered 503 after waiting the whole queue timeout",
                |p| p.waiters.timeouts() as f64,
            ),
            (
                "switchyard_upstream_queue_full_total",
                MetricType::COUNTER,
                "Requests answered 503 at once because the queue was full",
                |p| p.waiters.rejected() as f64,
            ),
        ];
        families
            .into_iter()
            .map(|(name, kind, help, read)| {
                let samples = self
                    .pools
                    .iter()
                    .filter(|(_, pool)| pool.capacity.queue.is_some())
                    .map(|(upstream, pool)| (vec![("upstream", upstream.clone())], read(pool)));
                family(name, help, kind, samples)
            })
            .collect()
    }

    /// Per-backend gauges and counters, read from the live pools.
    fn backend_families(&self) -> Vec<MetricFamily> {
        type Read = fn(&Backend) -> u64;
        let families: [(&str, MetricType, &str, Read); 6] = [
            (
                "switchyard_upstream_backend_healthy",
                MetricType::GAUGE,
                "1 when active health checks pass, 0 when they took the backend out",
                |b| u64::from(b.is_healthy()),
            ),
            (
                "switchyard_upstream_backend_ready",
                MetricType::GAUGE,
                "1 when the admin state is ready, 0 when drained or in maintenance",
                |b| u64::from(b.admin_state() == AdminState::Ready),
            ),
            (
                "switchyard_upstream_backend_in_flight",
                MetricType::GAUGE,
                "Requests sent to the backend and not yet finished",
                |b| b.in_flight(),
            ),
            (
                "switchyard_upstream_backend_requests_total",
                MetricType::COUNTER,
                "Requests sent to the backend",
                |b| b.requests_total(),
            ),
            (
                "switchyard_upstream_backend_failures_total",
                MetricType::COUNTER,
                "Failed exchanges with the backend (connect errors, timeouts, broken responses)",
                |b| b.failures_total(),
            ),
            (
                "switchyard_upstream_backend_ejections_total",
                MetricType::COUNTER,
                "Times passive health ejected the backend",
                |b| b.ejections_total(),
            ),
        ];
        families
            .into_iter()
            .map(|(name, kind, help, read)| {
                let samples = self.pools.iter().flat_map(|(upstream, pool)| {
                    pool.backends.iter().map(move |backend| {
                        (
                            vec![
                                ("upstream", upstream.clone()),
                                ("backend", backend.name.clone()),
                            ],
                            read(backend) as f64,
                        )
                    })
                });
                family(name, help, kind, samples)
            })
            .collect()
    }
}

/// A family of `kind` with one sample per `(labels, value)`; the encoder escapes the labels.
pub(super) fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, f64)>,
) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    let metrics = samples
        .into_iter()
        .map(|(labels, value)| {
            let mut metric = Metric::default();
            metric.set_label(
                labels
                    .into_iter()
                    .map(|(name, value)| {
                        let mut pair = LabelPair::default();
                        pair.set_name(name.to_string());
                        pair.set_value(value);
                        pair
                    })
                    .collect(),
            );
            if kind == MetricType::COUNTER {
                let mut counter = Counter::default();
                counter.set_value(value);
                metric.set_counter(counter);
            } else {
                let mut gauge = Gauge::default();
                gauge.set_value(value);
                metric.set_gauge(gauge);
            }
            metric
        })
        .collect();
    family.set_metric(metrics);
    family
}
