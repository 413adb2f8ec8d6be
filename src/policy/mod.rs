//! Per-request traffic policy: path normalisation, access rules, rate limits and header rules.
//! The proxy calls these in the order a request meets them: normalise → route → access →
//! rate limit → (redirect, cache, upstream) → request headers → response headers.

pub mod cluster;
pub mod headers;
pub mod normalize;
pub mod rate;

use std::net::IpAddr;

use crate::config::{Access, Route, Server};

/// Why a request was refused by policy (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Access,
    RateLimit,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Refusal::Access, Refusal::RateLimit];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Access => "access",
            Refusal::RateLimit => "rate_limit",
        }
    }
}

/// `server.access`, then the route's: both must admit `ip`.
pub fn admits(server: &Server, route: Option<&Route>, ip: IpAddr) -> bool {
    let empty = Access::default();
    server.access.admits(ip) && route.map_or(&empty, |r| &r.access).admits(ip)
}
