//! Live reload: read and validate the file, keep what cannot change in place, carry the live
//! state over, and swap the new runtime in atomically. One code path for SIGHUP, `POST /reload`
//! and the file watcher.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde::Serialize;
use serde_json::Value;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Config, ConfigError};
use crate::state::{LastReload, Runtime, Shared};
use crate::watch::FileWatch;

/// A reload that took effect.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    pub version: u64,
    /// Key paths whose value changed.
    pub changed: Vec<String>,
    /// Changes that need a restart (or a graceful upgrade); the running value stays.
    pub requires_restart: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload (started with the built-in example)")]
    NoFile,
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Reloads the config file; on any error the running config stays untouched.
pub fn reload(shared: &Shared, trigger: &str) -> Result<ReloadOutcome, ReloadError> {
    let _one_at_a_time = shared.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let result = shared
        .config_path
        .as_deref()
        .ok_or(ReloadError::NoFile)
        .and_then(|path| Config::load(path).map_err(ReloadError::from))
        .map(|config| apply(shared, config));
    let (ok, error) = match &result {
        Ok(outcome) => {
            log::info!(
                "config reloaded ({trigger}): version {}, changed {:?}{} in {:?}",
                outcome.version,
                outcome.changed,
                if outcome.requires_restart.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", requires restart (not applied): {:?}",
                        outcome.requires_restart
                    )
                },
                started.elapsed()
            );
            (true, None)
        }
        Err(e) => {
            log::error!("config reload ({trigger}) failed, keeping the running config: {e}");
            (false, Some(e.to_string()))
        }
    };
    shared.metrics.observe_reload(ok);
    shared.record_reload(LastReload {
        ok,
        error,
        at: SystemTime::now(),
        trigger: trigger.to_string(),
        version: shared.runtime().version,
    });
    result
}

/// Swaps `config` in, keeping the settings that only a restart can change.
fn apply(shared: &Shared, mut config: Config) -> ReloadOutcome {
    let old = shared.runtime();
    let requires_restart = keep_restart_only(&old.config, &mut config);
    let mut changed = applied(diff(&old.config, &config), &requires_restart);
    let certificates = |c: &Config| c.tls.as_ref().map(|t| t.certificates.clone());
    if certificates(&old.config) != certificates(&config)
        && !changed.iter().any(|key| key.starts_with("tls"))
    {
        // The same file names with new contents.
        changed.push("tls.certificates".to_string());
    }
    if old.config.keepalive_pool_size() != config.keepalive_pool_size() {
        // Pingora's pool of idle upstream connections is made once, at start.
        log::warn!(
            "keepalive.idle adds up to {} now; the pool of idle upstream connections keeps the size it had at start until a restart",
            config.keepalive_pool_size()
        );
    }
    let version = old.version + 1;
    shared.install(Runtime::with_previous(version, config, Some(&old)));
    ReloadOutcome {
        version,
        changed,
        requires_restart,
    }
}

/// `changed` without what a restart would take (a key under a `requires_restart` name).
fn applied(mut changed: Vec<String>, requires_restart: &[String]) -> Vec<String> {
    changed.retain(|key| {
        !requires_restart.iter().any(|r| {
            key == r
                || key
                    .strip_prefix(r.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    });
    changed
}

/// Copies the running listen addresses, thread count and grace period into `new`, naming the
/// ones the file wanted changed.
fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<String> {
    let mut names = Vec::new();
    // A port 0 in the file means "any free port": the one picked at start still matches.
    let same_addr = |running: &std::net::SocketAddr, wanted: &std::net::SocketAddr| {
        running == wanted || (wanted.port() == 0 && running.ip() == wanted.ip())
    };
    let same_listen = old.server.listen.len() == new.server.listen.len()
        && old
            .server
            .listen
            .iter()
            .zip(&new.server.listen)
            .all(|(r, w)| same_addr(r, w));
    if !same_listen {
        names.push("server.listen".to_string());
    }
    new.server.listen = old.server.listen.clone();
    if old.server.threads != new.server.threads {
        names.push("server.threads".to_string());
        new.server.threads = old.server.threads;
    }
    if old.server.read_buffer != new.server.read_buffer {
        names.push("server.read_buffer".to_string());
        new.server.read_buffer = old.server.read_buffer;
    }
    if old.server.upgrade_socket != new.server.upgrade_socket {
        names.push("server.upgrade_socket".to_string());
        new.server.upgrade_socket = old.server.upgrade_socket.clone();
    }
    if old.server.grace_period != new.server.grace_period {
        names.push("server.grace_period".to_string());
        new.server.grace_period = old.server.grace_period;
    }
    if old.server.h2_max_concurrent_streams != new.server.h2_max_concurrent_streams {
        names.push("server.h2_max_concurrent_streams".to_string());
        new.server.h2_max_concurrent_streams = old.server.h2_max_concurrent_streams;
    }
    keep_tls_listeners(old, new, &mut names);
    if !same_addr(&old.admin.listen, &new.admin.listen) {
        names.push("admin.listen".to_string());
    }
    new.admin.listen = old.admin.listen;
    // The memory cache is sized once, at start; whether hits go direct is read per request.
    let mut kept = old.cache.clone();
    kept.direct_hits = new.cache.direct_hits;
    if kept != new.cache {
        names.push("cache".to_string());
        new.cache = kept;
    }
    names
}

/// TLS listeners are bound at start: a `tls` block cannot come or go, nor its `listen` change,
/// without a restart. The demo's certificate made in memory stays when the file has no block.
fn keep_tls_listeners(old: &Config, new: &mut Config, names: &mut Vec<String>) {
    match (&old.tls, &mut new.tls) {
        (None, None) => {}
        (Some(running), None) => {
            if running.certificates.iter().any(|c| c.cert_path.is_some()) {
                names.push("tls".to_string());
            }
            new.tls = old.tls.clone();
        }
        (None, Some(_)) => {
            names.push("tls".to_string());
            new.tls = None;
        }
        (Some(running), Some(wanted)) => {
            let same = running.listen.len() == wanted.listen.len()
                && running
                    .listen
                    .iter()
                    .zip(&wanted.listen)
                    .all(|(r, w)| r == w || (w.port() == 0 && r.ip() == w.ip()));
            if !same {
                names.push("tls.listen".to_string());
            }
            wanted.listen = running.listen.clone();
        }
    }
}

/// Watches the certificate and key files of the running `tls` block (when `tls.watch` is on)
/// and reloads the config when they change, so that new handshakes use the new certificates;
/// a pair that does not load keeps the running ones and is reported like any failed reload.
/// The watched set follows the running config. Runs on its own thread for the process's life.
pub fn watch_certificates(shared: Arc<Shared>) {
    if shared.config_path.is_none() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("certificate watch".into())
        .spawn(move || {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let mut watching: Vec<std::path::PathBuf> = Vec::new();
            // What the watched files held at the last look: reading them (as every reload
            // does) is an event too, and must not reload again.
            let read = |files: &[std::path::PathBuf]| -> Vec<Option<Vec<u8>>> {
                files.iter().map(|f| std::fs::read(f).ok()).collect()
            };
            let mut contents = Vec::new();
            let mut _watch: Option<FileWatch> = None;
            loop {
                let files = shared
                    .runtime()
                    .config
                    .tls
                    .as_ref()
                    .filter(|t| t.watch)
                    .map(|t| t.files())
                    .unwrap_or_default();
                if files != watching {
                    _watch = None;
                    if !files.is_empty() {
                        let tx = tx.clone();
                        match crate::watch::watch(&files, move || {
                            let _ = tx.send(());
                        }) {
                            Ok(watch) => _watch = Some(watch),
                            Err(e) => log::warn!("cannot watch the certificate files: {e}"),
                        }
                    }
                    contents = read(&files);
                    watching = files;
                }
                if rx.recv_timeout(std::time::Duration::from_secs(1)).is_ok() {
                    while rx.try_recv().is_ok() {}
                    let now = read(&watching);
                    if now != contents {
                        contents = now;
                        let _ = reload(&shared, "certificate change");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the certificate watch: {e}");
    }
}

/// Key paths that differ between two configs, sorted, derived from the file model (see
/// [`crate::config::file::FileConfig`]) so that no key can be left out: a changed value is
/// named down to its key (`server.header_timeout`, `upstreams.a.health_check.interval`), a
/// list as a whole (`routes`, `upstreams.a.backends`), and an upstream that appeared or went as
/// `upstreams.<name> (added)` / `(removed)`.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    diff_values("", &old.source, &new.source, &mut changed);
    changed.sort();
    changed
}

fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, after) in b {
                match a.get(key) {
                    Some(before) => diff_values(&join(key), before, after, out),
                    None => out.push(format!("{} (added)", join(key))),
                }
            }
            out.extend(
                a.keys()
                    .filter(|key| !b.contains_key(*key))
                    .map(|key| format!("{} (removed)", join(key))),
            );
        }
        (a, b) if a != b => out.push(if path.is_empty() {
            "(document)".to_string()
        } else {
            path.to_string()
        }),
        _ => {}
    }
}

/// Watches the config file (see [`crate::watch`]) and reloads after changes settle, when
/// `server.watch_config` is on and the content changed. The watch lasts while the returned
/// guard lives.
pub fn watch_file(shared: Arc<Shared>) -> Option<FileWatch> {
    let path = shared.config_path.clone()?;
    let mut last = std::fs::read(&path).ok();
    let watched = path.clone();
    let result = crate::watch::watch(std::slice::from_ref(&path), move || {
        if !shared.runtime().config.server.watch_config {
            return;
        }
        let now = std::fs::read(&watched).ok();
        if now.is_none() || now == last {
            return;
        }
        last = now;
        let _ = reload(&shared, "file change");
    });
    match result {
        Ok(watch) => Some(watch),
        Err(e) => {
            log::warn!(
                "cannot watch {}: {e}; file-watch reload is off",
                path.display()
            );
            None
        }
    }
}

/// Reloads the config on SIGHUP; reopens the access log on SIGUSR1 (logrotate's convention).
pub struct ReloadOnSignal {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for ReloadOnSignal {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            log::error!("cannot listen for SIGHUP; reload with POST /reload instead");
            return;
        };
        let mut usr1 = signal(SignalKind::user_defined1()).ok();
        if usr1.is_none() {
            log::error!("cannot listen for SIGUSR1; the access log reopens on reload only");
        }
        loop {
            let reopen = async {
                match usr1.as_mut() {
                    Some(usr1) => usr1.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = reopen => {
                    log::info!("SIGUSR1: reopening the access log");
                    self.shared.access_log.reopen();
                }
                _ = hup.recv() => {
                    let shared = Arc::clone(&self.shared);
                    let _ = tokio::task::spawn_blocking(move || reload(&shared, "SIGHUP")).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "upstreams:\n  a:\n    backends: [{address: 127.0.0.1:1}]\nroutes:\n  - upstream: a\n";

    fn parse(text: &str) -> Config {
        Config::parse(text, "t.yaml").unwrap()
    }

    #[test]
    fn diff_names_what_changed() {
        let old = parse(BASE);
        assert!(diff(&old, &old).is_empty());
        let new = parse(&BASE.replace("127.0.0.1:1}", "127.0.0.1:1, weight: 2}"));
        assert_eq!(diff(&old, &new), vec!["upstreams.a.backends"]);
        let two = format!(
            "{}  b:\n    backends: [{{address: 127.0.0.1:2}}]\nroutes:\n  - upstream: b\n",
            BASE.replace("routes:\n  - upstream: a\n", "")
        );
        let new = parse(&two);
        assert_eq!(diff(&old, &new), vec!["routes", "upstreams.b (added)"]);
        assert_eq!(diff(&new, &old), vec!["routes", "upstreams.b (removed)"]);
    }

    #[test]
    fn diff_names_every_key_of_the_model() {
        let old = parse(&format!("server:\n  listen: [\"127.0.0.1:0\"]\n{BASE}"));
        let new = parse(&format!(
            "server:\n  listen: [\"127.0.0.1:0\"]\n  header_timeout: 3s\n  max_connections: 10\n  server_header: x\nadmin:\n  allow_insecure: true\n{}    max_in_flight: 5\n    read_timeout: 2s\n    health_check: {{interval: 1s}}\n{}",
            &BASE[..BASE.find("routes:").unwrap()],
            &BASE[BASE.find("routes:").unwrap()..],
        ));
        assert_eq!(
            diff(&old, &new),
            vec![
                "admin.allow_insecure",
                "server.header_timeout",
                "server.max_connections",
                "server.server_header",
                "upstreams.a.health_check",
                "upstreams.a.max_in_flight",
                "upstreams.a.read_timeout",
            ]
        );
        let slower = parse(&format!(
            "{}    max_in_flight: 5\n    read_timeout: 2s\n    health_check: {{interval: 2s}}\n{}",
            &BASE[..BASE.find("routes:").unwrap()],
            &BASE[BASE.find("routes:").unwrap()..],
        ));
        assert_eq!(
            diff(&new, &slower),
            vec![
                "admin.allow_insecure",
                "server.header_timeout",
                "server.listen",
                "server.max_connections",
                "server.server_header",
                "upstreams.a.health_check.interval",
            ]
        );
    }

    #[test]
    fn restart_only_keys_are_not_listed_as_applied() {
        let old = parse(&format!("server:\n  listen: [\"127.0.0.1:8080\"]\n{BASE}"));
        let mut new = parse(&format!(
            "server:\n  listen: [\"127.0.0.1:9090\"]\n  threads: 7\ncache:\n  max_size: 1GiB\n{BASE}"
        ));
        let restart = keep_restart_only(&old, &mut new);
        assert_eq!(restart, vec!["server.listen", "server.threads", "cache"]);
        assert!(applied(diff(&old, &new), &restart).is_empty());
        let kept = vec!["cache.max_size".to_string(), "cache_x".to_string()];
        assert_eq!(applied(kept, &["cache".into()]), vec!["cache_x"]);
    }

    #[test]
    fn listen_changes_are_kept_and_reported() {
        let old = parse(&format!("server:\n  listen: [\"127.0.0.1:8080\"]\n{BASE}"));
        let mut new = parse(&format!(
            "server:\n  listen: [\"127.0.0.1:9090\"]\n  threads: 7\n{BASE}"
        ));
        let restart = keep_restart_only(&old, &mut new);
        assert_eq!(restart, vec!["server.listen", "server.threads"]);
        assert_eq!(new.server.listen, old.server.listen);
        assert_eq!(new.server.threads, old.server.threads);
        let mut zero = parse(&format!("server:\n  listen: [\"127.0.0.1:0\"]\n{BASE}"));
        assert!(keep_restart_only(&old, &mut zero).is_empty());
    }
}
