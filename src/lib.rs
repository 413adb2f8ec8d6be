//! # Switchyard
//!
//! An edge reverse proxy and load balancer on Pingora: one YAML file, one binary.
//!
//! # Layout
//! Modules in the order a request meets them:
//! - [`config`]: the YAML file, read and validated into a [`config::Config`].
//! - [`state`]: the running config as an atomically swapped runtime, shared by all parts.
//! - [`tls`]: TLS termination: certificates, SNI choice, the rustls server config.
//! - [`proxy`]: the front end (connections, TLS handshakes, HTTP/1.1 and HTTP/2) and the
//!   `ProxyHttp` phases.
//! - [`route`]: picks the route by host, path, method, headers and query.
//! - [`policy`]: path normalisation, access rules, rate limits (local and cluster), basic auth,
//!   redirect and rewrite templates, and header rules.
//! - [`cache`]: the response cache (RFC 9111) on a TinyUFO memory storage.
//! - [`compress`]: gzip, brotli and zstd, negotiated per request.
//! - [`etag`]: ETags and conditional requests.
//! - [`fields`]: list fields and field removal, shared by the proxy, cache and compression.
//! - [`upstream`]: pools, backend selection, active health checks and service discovery.
//! - [`dns`]: DNS lookups (A/AAAA, SRV) with their TTLs, for service discovery.
//! - [`metrics`]: Prometheus series.
//! - [`access_log`]: the per-request access log, written off the request path.
//! - [`logging`]: the logger, with Pingora's pool race counted instead of logged as an error.
//! - [`admin`]: the admin listener (health, stats, metrics, reload) and the live dashboard page.
//! - [`reload`]: live config reload (SIGHUP, admin, file watch).
//! - [`watch`]: debounced file watching (the config file, certificates).
//! - [`app`]: builds the Pingora server from a config and runs it.
//! - [`demo`]: built-in origins for `switchyard demo`.
//! - [`digest`]: hex and constant-time comparison for hashes, MACs and tokens.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod cache;
pub mod compress;
pub mod config;
pub mod demo;
pub mod digest;
pub mod dns;
pub mod etag;
pub mod fields;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod watch;
