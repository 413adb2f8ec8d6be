//! `routes[].cache.warm`: the URLs Switchyard fetches through itself so they are stored before
//! clients ask, and refreshes before they expire.

use std::time::Duration;

use super::file::FileWarm;
use super::key::{Invalid, Key};

/// A route's warm list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warm {
    /// Paths with their query (`/api/catalog?page=1`), in priority order.
    pub urls: Vec<String>,
    /// Longest time between two fetches of a URL (it is also refetched when 90% of its
    /// freshness has passed, or when it is no longer stored).
    pub every: Duration,
    /// Fetches in flight at once.
    pub concurrency: usize,
    /// The `Host` the fetches carry: the route's exact host unless given.
    pub host: String,
    /// The `Accept-Encoding` the fetches carry, so the variant most clients get is the one
    /// warmed.
    pub accept_encoding: String,
}

/// Most URLs one route may warm.
const MAX_URLS: usize = 10_000;

/// Validates `routes[i].cache.warm` at `key` for a route matching `exact_host` (`None` when the
/// route matches any host or a wildcard).
pub(super) fn warm(key: &Key, w: FileWarm, exact_host: Option<&str>) -> Result<Warm, Invalid> {
    let mut urls: Vec<String> = w.urls.unwrap_or_default();
    if let Some(path) = &w.file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            key.field("file")
                .invalid(format!("cannot read {path}: {e}"))
        })?;
        urls.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    if urls.is_empty() {
        return Err(key.invalid("needs urls or a file of URLs"));
    }
    if urls.len() > MAX_URLS {
        return Err(key.invalid(format!("{} URLs; at most {MAX_URLS}", urls.len())));
    }
    for (i, url) in urls.iter().enumerate() {
        let valid = url.starts_with('/')
            && url.bytes().all(|b| b.is_ascii_graphic())
            && url.parse::<http::uri::PathAndQuery>().is_ok();
        if !valid {
            return Err(key
                .field("urls")
                .index(i)
                .invalid(format!("`{url}` is not a path like /api/catalog?page=1")));
        }
    }
    let host = match (w.host.as_deref().map(str::trim), exact_host) {
        (Some(h), _) if !h.is_empty() => {
            if !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            {
                return Err(key
                    .field("host")
                    .invalid(format!("`{h}` is not a host name")));
            }
            h.to_ascii_lowercase()
        }
        (_, Some(h)) => h.to_string(),
        _ => {
            return Err(key
                .field("host")
                .invalid("needed: the route does not match one exact host"))
        }
    };
    let concurrency = match w.concurrency {
        None => 4,
        Some(n) if (1..=64).contains(&n) => n as usize,
        Some(n) => {
            return Err(key
                .field("concurrency")
                .invalid(format!("{n} is out of range 1..=64")))
        }
    };
    let every = key
        .field("every")
        .duration(w.every.as_deref(), Duration::from_secs(300))?;
    if every < Duration::from_secs(1) {
        return Err(key.field("every").invalid("must be at least 1s"));
    }
    Ok(Warm {
        urls,
        every,
        concurrency,
        host,
        accept_encoding: w
            .accept_encoding
            .unwrap_or_else(|| "gzip, deflate, br, zstd".to_string()),
    })
}
