//! Service discovery: resolves the upstreams' host names and `discover` entries again when
//! their answers expire (the records' TTL clamped to `[min_ttl, max_ttl]`), and hands a changed
//! backend list to the running state, which applies it the way a reload applies an upstream's
//! new list: backends that stay keep their state, new ones join (and are checked at once when
//! checks are on), vanished ones drain. A failed resolution keeps the last good set.
//!
//! Pingora's load-balancing crate has a `ServiceDiscovery` trait (`discover()` returns the
//! whole current set of `(address, weight)` backends with their enablement). It does not fit
//! our pools, and we do not depend on that crate: its answer carries no TTL, so the schedule
//! (the heart of DNS discovery) would have to live outside it anyway; its backends carry no
//! host (SNI, `Host`) nor backup flag; and our pools are built from the validated config
//! (`Pool::with_previous`, the reload path), so its set would be translated back into config
//! entries on every round. We keep its shape: one lookup returns the whole current set, and
//! the set, not a stream of changes, is what gets applied.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config::{BackendSpec, DiscoverSpec, Discovery, Upstream};
use crate::dns::{DnsError, Resolver};

/// What discovery reads and changes; the running config lives above this module, in `state`.
pub trait DiscoverySource: Send + Sync + 'static {
    /// The upstreams of the running config that have entries to discover.
    fn discovering(&self) -> Vec<(String, Upstream)>;
    /// Changes with every new config version.
    fn versions(&self) -> watch::Receiver<u64>;
    /// Puts `found` in place of the backends discovery made for `upstream`, when its entries
    /// are still `entries` (a reload may have changed them meanwhile). Returns the backends it
    /// replaced, or `None` when nothing was applied.
    fn apply(
        &self,
        upstream: &str,
        entries: &[DiscoverSpec],
        found: Vec<BackendSpec>,
    ) -> Option<Vec<BackendSpec>>;
    /// Where the loops report, for `/stats` and the metrics.
    fn statuses(&self) -> &Statuses;
}

/// Each discovering upstream's last results.
#[derive(Debug, Default)]
pub struct Statuses(Mutex<BTreeMap<String, Arc<Status>>>);

/// One upstream's discovery results.
#[derive(Debug, Default)]
pub struct Status {
    failures: AtomicU64,
    changes: AtomicU64,
    last: Mutex<Last>,
}

#[derive(Debug, Default, Clone)]
struct Last {
    addresses: Vec<String>,
    success: Option<SystemTime>,
    error: Option<(SystemTime, String)>,
    ttl: Option<Duration>,
}

impl Statuses {
    /// The status of `upstream`, made on first use.
    fn entry(&self, upstream: &str) -> Arc<Status> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(upstream.to_string()).or_default())
    }

    fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|name, _| keep(name));
    }

    /// Resolutions that failed, per upstream (`switchyard_discovery_failures_total`).
    pub fn failures(&self) -> Vec<(String, u64)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(name, s)| (name.clone(), s.failures.load(Ordering::Relaxed)))
            .collect()
    }

    /// The `/stats` block of `upstream`, if it discovers backends.
    pub fn json(&self, upstream: &str) -> Option<Value> {
        let status = {
            let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(map.get(upstream)?)
        };
        let last = status
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let time = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
        Some(json!({
            "addresses": last.addresses,
            "last_success": last.success.map(time),
            "last_error": last.error.as_ref().map(|(_, e)| e),
            "last_error_at": last.error.map(|(at, _)| time(at)),
            "ttl_seconds": last.ttl.map(|t| t.as_secs_f64()),
            "failures_total": status.failures.load(Ordering::Relaxed),
            "changes_total": status.changes.load(Ordering::Relaxed),
        }))
    }
}

impl Status {
    fn update(&self, f: impl FnOnce(&mut Last)) {
        f(&mut self.last.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// How a newly found set differs from the running one, by backend name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SetChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Still there with another weight or backup flag (SRV records).
    pub changed: Vec<String>,
}

impl SetChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// What `found` adds, removes and changes against `current`.
pub fn diff(current: &[BackendSpec], found: &[BackendSpec]) -> SetChange {
    let find = |list: &[BackendSpec], name: &str| list.iter().position(|b| b.name == name);
    let mut change = SetChange::default();
    for b in found {
        match find(current, &b.name) {
            None => change.added.push(b.name.clone()),
            Some(i) if current[i] != *b => change.changed.push(b.name.clone()),
            Some(_) => {}
        }
    }
    change.removed = current
        .iter()
        .filter(|b| find(found, &b.name).is_none())
        .map(|b| b.name.clone())
        .collect();
    change
}

/// Re-resolves the discovering upstreams of the running config until shutdown: one loop per
/// upstream, restarted when a reload changes its entries or settings.
pub struct DiscoveryService<S>(pub Arc<S>);

/// A loop that ends when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait]
impl<S: DiscoverySource> BackgroundService for DiscoveryService<S> {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut versions = self.0.versions();
        let mut running: BTreeMap<String, (Vec<DiscoverSpec>, Discovery, Task)> = BTreeMap::new();
        loop {
            versions.borrow_and_update();
            let wanted = self.0.discovering();
            running.retain(|name, (entries, settings, _)| {
                wanted.iter().any(|(n, up)| {
                    n == name && up.discover == *entries && up.discovery == *settings
                })
            });
            for (name, up) in wanted {
                if running.contains_key(&name) {
                    continue;
                }
                let entries = up.discover.clone();
                let settings = up.discovery.clone();
                let task = tokio::spawn(run(Arc::clone(&self.0), name.clone(), up));
                running.insert(name, (entries, settings, Task(task)));
            }
            self.0.statuses().retain(|name| running.contains_key(name));
            tokio::select! {
                _ = shutdown.changed() => return,
                changed = versions.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// Resolves `up`'s entries whenever the last answer expires, forever.
async fn run<S: DiscoverySource>(source: Arc<S>, name: String, up: Upstream) {
    let settings = &up.discovery;
    let status = source.statuses().entry(&name);
    status.update(|last| {
        last.addresses = up.discovered().map(|b| b.addr.to_string()).collect();
        // The load resolved them.
        last.success.get_or_insert_with(SystemTime::now);
    });
    let mut wait = up.discovery_due.map_or(settings.min_ttl, |due| {
        due.saturating_duration_since(Instant::now())
    });
    let mut failed_in_a_row = 0u32;
    let mut resolver = None;
    loop {
        tokio::time::sleep(wait).await;
        let result = match &resolver {
            Some(r) => resolve(r, &up.discover).await,
            None => match Resolver::new(&settings.nameservers, settings.timeout) {
                Ok(r) => resolve(resolver.insert(r), &up.discover).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok((found, ttl)) => {
                failed_in_a_row = 0;
                wait = settings.clamp(ttl);
                let addresses = found.iter().map(|b| b.addr.to_string()).collect();
                // Applying waits for a reload in progress: off the async workers.
                let applied = {
                    let (source, name) = (Arc::clone(&source), name.clone());
                    let (entries, found) = (up.discover.clone(), found.clone());
                    tokio::task::spawn_blocking(move || source.apply(&name, &entries, found))
                        .await
                        .ok()
                        .flatten()
                };
                if let Some(before) = applied {
                    let change = diff(&before, &found);
                    status.changes.fetch_add(1, Ordering::Relaxed);
                    log::info!(
                        "upstream {name}: discovery changed the backends: added {:?}, removed {:?}, changed {:?}",
                        change.added,
                        change.removed,
                        change.changed
                    );
                }
                status.update(|last| {
                    last.addresses = addresses;
                    last.success = Some(SystemTime::now());
                    last.ttl = Some(wait);
                });
            }
            Err(e) => {
                failed_in_a_row = failed_in_a_row.saturating_add(1);
                wait = retry_after(settings, failed_in_a_row);
                status.failures.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "upstream {name}: discovery failed, keeping the last good backends; next try in {wait:?}: {e}"
                );
                status.update(|last| last.error = Some((SystemTime::now(), e.to_string())));
            }
        }
    }
}

/// Every entry's backends and the lowest TTL; any failure fails the whole round, so a set is
/// never half replaced.
async fn resolve(
    resolver: &Resolver,
    entries: &[DiscoverSpec],
) -> Result<(Vec<BackendSpec>, Duration), DnsError> {
    let mut found = Vec::new();
    let mut ttl = Duration::MAX;
    for entry in entries {
        let answer = resolver.lookup(&entry.target).await?;
        ttl = ttl.min(answer.ttl);
        for b in entry.backends(&answer) {
            if !found.iter().any(|f: &BackendSpec| f.name == b.name) {
                found.push(b);
            }
        }
    }
    Ok((found, ttl))
}

/// After `n` failures in a row: `min_ttl`, doubled each time, at most `max_ttl`.
fn retry_after(settings: &Discovery, n: u32) -> Duration {
    let factor = 1u32 << n.saturating_sub(1).min(16);
    settings
        .min_ttl
        .saturating_mul(factor)
        .min(settings.max_ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, weight: u32) -> BackendSpec {
        let addr = name.rsplit('/').next().unwrap_or(name);
        BackendSpec {
            name: name.into(),
            addr: addr.parse().unwrap(),
            host: "api:80".into(),
            weight,
            backup: false,
            discovered: true,
            max_conns: None,
        }
    }

    #[test]
    fn diff_names_added_removed_and_changed() {
        let a = spec("api:80/10.0.0.1:80", 1);
        let b = spec("api:80/10.0.0.2:80", 1);
        let c = spec("api:80/10.0.0.3:80", 1);
        assert!(diff(&[a.clone(), b.clone()], &[b.clone(), a.clone()]).is_empty());
        let change = diff(&[a.clone(), b.clone()], &[b.clone(), c.clone()]);
        assert_eq!(change.added, vec![c.name.clone()]);
        assert_eq!(change.removed, vec![a.name.clone()]);
        assert!(change.changed.is_empty());
        let heavier = spec("api:80/10.0.0.2:80", 5);
        let change = diff(&[a.clone(), b.clone()], &[a.clone(), heavier]);
        assert_eq!(change.changed, vec![b.name.clone()]);
        assert!(change.added.is_empty() && change.removed.is_empty());
        assert_eq!(
            diff(&[], std::slice::from_ref(&a)).added,
            vec![a.name.clone()]
        );
    }

    #[test]
    fn failures_back_off_up_to_max_ttl() {
        let d = Discovery {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(10),
            ..Discovery::default()
        };
        let waits: Vec<u64> = (1..=6).map(|n| retry_after(&d, n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(retry_after(&d, u32::MAX), Duration::from_secs(10));
    }
}
