//! Integration tests: the real `switchyard` binary against real origins over loopback sockets.

mod common;

mod admin;
mod balancing;
mod cache;
mod cache_rfc;
mod cache_safety;
mod capacity;
mod chaos;
mod cli;
mod compress;
mod docs;
mod forwarded;
mod frontend;
mod h2;
mod hardening;
mod health;
mod ip_hash;
mod least_conn;
mod lifecycle;
mod observability;
mod policy;
mod policy_routes;
mod proxy_protocol;
mod redis;
mod reload;
mod retries;
mod routing;
mod sticky;
mod tls;
mod upgrade;
mod upstream_h2;
mod upstream_tls;
