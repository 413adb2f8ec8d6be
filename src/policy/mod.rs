//! Per-request traffic policy: path normalisation, access rules, rate limits, basic auth,
//! redirects and rewrites, and header rules. The proxy calls these in the order a request meets
//! them: normalise → route → access → rate limit → basic auth → (redirect, cache, upstream) →
//! rewrite and request headers → response headers.

pub mod auth;
pub mod cluster;
pub mod headers;
pub mod normalize;
pub mod rate;
pub mod url;

use std::net::IpAddr;

use crate::config::{Access, Route, Server};

/// Why a request was refused by policy (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Access,
    RateLimit,
    /// `basic_auth`: missing or wrong credentials.
    Auth,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Refusal::Access, Refusal::RateLimit, Refusal::Auth];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Access => "access",
            Refusal::RateLimit => "rate_limit",
            Refusal::Auth => "basic_auth",
        }
    }
}

/// `server.access`, then the route's: both must admit `ip`.
pub fn admits(server: &Server, route: Option<&Route>, ip: IpAddr) -> bool {
    let empty = Access::default();
    server.access.admits(ip) && route.map_or(&empty, |r| &r.access).admits(ip)
}
