//! Config loading of the upstream capacity controls: backups, slow start, queues, keep-alive
//! and `max_conns`.

use std::time::Duration;

use super::*;

const BASE: &str = r#"
upstreams:
  assessments:
    backends:
      - address: 127.0.0.1:9001
      - address: 127.0.0.1:9002
        backup: true
routes:
  - match: { path_prefix: / }
    upstream: assessments
"#;

#[test]
fn backup_is_read_per_backend() {
    let config = Config::parse(BASE, "test.yaml").expect("parses");
    let up = &config.upstreams["assessments"];
    assert!(!up.backends[0].backup);
    assert!(up.backends[1].backup);
}

#[test]
fn only_backups_is_rejected() {
    let text = BASE.replace(
        "      - address: 127.0.0.1:9001\n",
        "      - address: 127.0.0.1:9001\n        backup: true\n",
    );
    let err = Config::parse(&text, "test.yaml").expect_err("rejected");
    assert_eq!(err.path, "upstreams.assessments.backends");
    assert!(err.to_string().contains("without `backup: true`"), "{err}");
}

#[test]
fn backup_must_be_a_boolean() {
    let err = Config::parse(
        &BASE.replace("backup: true", "backup: sometimes"),
        "test.yaml",
    )
    .expect_err("rejected");
    assert!(
        err.path.starts_with("upstreams.assessments.backends"),
        "{err}"
    );
}

#[test]
fn capacity_keys_are_read_with_their_defaults() {
    let config = Config::parse(BASE, "test.yaml").expect("parses");
    let up = &config.upstreams["assessments"];
    assert_eq!(up.capacity, Capacity::default());
    assert_eq!(up.capacity.keepalive.idle, 512);
    assert_eq!(up.capacity.keepalive.idle_timeout, Duration::from_secs(60));
    assert_eq!(up.backends[0].max_conns, None);
    let text = BASE
        .replace(
            "    backends:\n",
            "    slow_start: 30s\n    queue: { timeout: 500ms }\n    keepalive: { idle: 64, idle_timeout: 10s }\n    backends:\n",
        )
        .replace(
            "      - address: 127.0.0.1:9001\n",
            "      - address: 127.0.0.1:9001\n        max_conns: 2\n",
        );
    let config = Config::parse(&text, "test.yaml").expect("parses");
    let up = &config.upstreams["assessments"];
    assert_eq!(up.capacity.slow_start, Some(Duration::from_secs(30)));
    assert_eq!(
        up.capacity.queue,
        Some(Queue {
            size: 100,
            timeout: Duration::from_millis(500)
        })
    );
    assert_eq!(up.capacity.keepalive.idle, 64);
    assert_eq!(up.backends[0].max_conns, Some(2));
    assert_eq!(config.keepalive_pool_size(), 64);
}

#[test]
fn bad_capacity_values_name_their_key() {
    for (from, to, path) in [
        (
            "    backends:\n",
            "    slow_start: 0s\n    backends:\n",
            "upstreams.assessments.slow_start",
        ),
        (
            "    backends:\n",
            "    queue: { size: 0 }\n    backends:\n",
            "upstreams.assessments.queue.size",
        ),
        (
            "    backends:\n",
            "    queue: { timeout: soon }\n    backends:\n",
            "upstreams.assessments.queue.timeout",
        ),
        (
            "    backends:\n",
            "    keepalive: { idle: 0 }\n    backends:\n",
            "upstreams.assessments.keepalive.idle",
        ),
        (
            "      - address: 127.0.0.1:9001\n",
            "      - address: 127.0.0.1:9001\n        max_conns: 0\n",
            "upstreams.assessments.backends[0].max_conns",
        ),
    ] {
        let err = Config::parse(&BASE.replace(from, to), "test.yaml").expect_err(to);
        assert_eq!(err.path, path, "{err}");
    }
}
