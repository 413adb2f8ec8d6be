//! The command line: `--check` exit codes and messages, `--version`.

use std::process::Command;

use crate::common::binary;

fn check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(binary())
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_accepts_the_example_config() {
    let out = Command::new(binary())
        .args(["--check", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/switchyard.yaml"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_rejects_with_file_key_path_and_reason() {
    let (code, text) = check(
        "upstreams:\n  a:\n    backends:\n      - address: 127.0.0.1:1\n      - address: nowhere\nroutes:\n  - upstream: a\n",
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("bad.yaml: upstreams.a.backends[1].address:"),
        "{text}"
    );
    assert!(text.contains("not an address"), "{text}");

    let (code, text) = check(
        "upstreams:\n  a:\n    backends: [{address: 127.0.0.1:1}]\nroutes:\n  - upstream: b\n",
    );
    assert_eq!(code, 1);
    assert!(
        text.contains("routes[0].upstream: upstream `b` is not defined"),
        "{text}"
    );
}

#[test]
fn check_reports_a_missing_file() {
    let out = Command::new(binary())
        .args(["--check", "--config", "/nonexistent/switchyard.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("/nonexistent/switchyard.yaml: (file): cannot read"));
}

#[test]
fn version_prints() {
    let out = Command::new(binary()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("switchyard "));
}
