//! Config loading of the upstream capacity controls: backups.

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
