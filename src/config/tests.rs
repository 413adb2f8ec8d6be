//! Config loading: every rejection names its key path; the example config parses.

use std::time::Duration;

use super::*;

const BASE: &str = r#"
upstreams:
  assessments:
    backends:
      - address: 127.0.0.1:9001
        weight: 3
      - address: 127.0.0.1:9002
routes:
  - match: { path_prefix: / }
    upstream: assessments
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.yaml")
}

/// Asserts that `text` is rejected at `path` with a reason containing `reason`.
fn rejects(text: &str, path: &str, reason: &str) {
    let err = parse(text).expect_err("config should be rejected");
    assert_eq!(err.file, "test.yaml");
    assert_eq!(err.path, path, "wrong key path in: {err}");
    assert!(
        err.reason.contains(reason),
        "reason `{}` lacks `{reason}`",
        err.reason
    );
    assert!(err.to_string().starts_with(&format!("test.yaml: {path}: ")));
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.server.listen, vec!["0.0.0.0:8080".parse().unwrap()]);
    assert_eq!(c.server.grace_period, Duration::from_secs(10));
    assert_eq!(c.admin.listen, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(c.admin.token, None);
    let up = &c.upstreams["assessments"];
    assert_eq!(up.strategy, Strategy::RoundRobin);
    assert_eq!(up.backends[0].weight, 3);
    assert_eq!(up.backends[1].weight, 1);
    assert_eq!(up.health_check, None);
    assert_eq!(c.routes[0].path_prefix, "/");
}

#[test]
fn example_config_parses() {
    let text = include_str!("../../conf/switchyard.yaml");
    let c = parse(text).unwrap();
    assert!(c.upstreams.contains_key("assessments"));
    assert!(c.upstreams["assessments"].health_check.is_some());
    assert!(!c.routes.is_empty());
}

#[test]
fn full_health_check_block() {
    let text = BASE.replace(
        "      - address: 127.0.0.1:9002\n",
        "      - address: 127.0.0.1:9002\n    health_check:\n      type: http\n      path: /health\n      expect_status: 200\n      interval: 250ms\n      timeout: 1s\n      unhealthy_threshold: 3\n      healthy_threshold: 2\n    connect_timeout: 2s\n    read_timeout: 30s\n",
    );
    let up = parse(&text).unwrap().upstreams["assessments"].clone();
    let hc = up.health_check.unwrap();
    assert_eq!(
        hc.kind,
        CheckKind::Http {
            path: "/health".into(),
            expect_status: Some(200)
        }
    );
    assert_eq!(hc.interval, Duration::from_millis(250));
    assert_eq!(up.connect_timeout, Duration::from_secs(2));
    assert_eq!(up.read_timeout, Duration::from_secs(30));
}

#[test]
fn env_expands_in_values() {
    std::env::set_var("SWITCHYARD_TEST_TOKEN_A", "tok-123");
    let text = format!("admin:\n  token: \"${{SWITCHYARD_TEST_TOKEN_A}}\"\n{BASE}");
    assert_eq!(
        parse(&text).unwrap().admin.token.as_deref(),
        Some("tok-123")
    );
    let text = format!("admin:\n  token: \"${{SWITCHYARD_TEST_UNSET_B}}\"\n{BASE}");
    assert_eq!(parse(&text).unwrap().admin.token, None);
}

#[test]
fn rejects_unknown_keys() {
    rejects(
        &BASE.replace("weight: 3", "weight: 3\n        wieght: 2"),
        "upstreams.assessments.backends[0].wieght",
        "unknown field `wieght`",
    );
    rejects(
        &format!("server:\n  listn: [\"127.0.0.1:1\"]\n{BASE}"),
        "server.listn",
        "unknown field `listn`",
    );
    rejects(
        &format!("extra: 1\n{BASE}"),
        "extra",
        "unknown field `extra`",
    );
}

#[test]
fn rejects_route_to_missing_upstream() {
    rejects(
        &BASE.replace("    upstream: assessments", "    upstream: nowhere"),
        "routes[0].upstream",
        "upstream `nowhere` is not defined",
    );
}

#[test]
fn rejects_upstream_without_backends() {
    rejects(
        "upstreams:\n  empty:\n    backends: []\nroutes:\n  - upstream: empty\n",
        "upstreams.empty.backends",
        "at least one backend",
    );
}

#[test]
fn rejects_weight_zero() {
    rejects(
        &BASE.replace("weight: 3", "weight: 0"),
        "upstreams.assessments.backends[0].weight",
        "out of range",
    );
}

#[test]
fn rejects_bad_address() {
    rejects(
        &BASE.replace("127.0.0.1:9002", "not-an-address"),
        "upstreams.assessments.backends[1].address",
        "not an address",
    );
    rejects(
        &BASE.replace("127.0.0.1:9002", "127.0.0.1:99999"),
        "upstreams.assessments.backends[1].address",
        "not a valid address",
    );
    rejects(
        &format!("server:\n  listen: [\"localhost\"]\n{BASE}"),
        "server.listen[0]",
        "not an address",
    );
}

#[test]
fn rejects_bad_durations() {
    rejects(
        &format!("server:\n  grace_period: 5 minutes\n{BASE}"),
        "server.grace_period",
        "unknown unit",
    );
    rejects(
        &BASE.replace(
            "      - address: 127.0.0.1:9002\n",
            "      - address: 127.0.0.1:9002\n    connect_timeout: 10\n",
        ),
        "upstreams.assessments.connect_timeout",
        "no unit",
    );
    rejects(
        &BASE.replace(
            "      - address: 127.0.0.1:9002\n",
            "      - address: 127.0.0.1:9002\n    health_check: { interval: 0s }\n",
        ),
        "upstreams.assessments.health_check.interval",
        "greater than 0",
    );
}

#[test]
fn rejects_zero_thresholds() {
    for key in ["unhealthy_threshold", "healthy_threshold"] {
        rejects(
            &BASE.replace(
                "      - address: 127.0.0.1:9002\n",
                &format!("      - address: 127.0.0.1:9002\n    health_check: {{ {key}: 0 }}\n"),
            ),
            &format!("upstreams.assessments.health_check.{key}"),
            "at least 1",
        );
    }
}

#[test]
fn strategies_parse_and_unknown_ones_are_rejected() {
    for (name, strategy) in [
        ("least_connections", Strategy::LeastConnections),
        ("ip_hash", Strategy::IpHash),
    ] {
        let c = parse(&BASE.replace(
            "  assessments:\n",
            &format!("  assessments:\n    strategy: {name}\n"),
        ));
        assert_eq!(c.unwrap().upstreams["assessments"].strategy, strategy);
    }
    rejects(
        &BASE.replace("  assessments:\n", "  assessments:\n    strategy: random\n"),
        "upstreams.assessments.strategy",
        "unknown strategy",
    );
    let weighted = parse(&BASE.replace(
        "  assessments:\n",
        "  assessments:\n    strategy: weighted\n",
    ));
    assert_eq!(
        weighted.unwrap().upstreams["assessments"].strategy,
        Strategy::RoundRobin
    );
}

#[test]
fn rejects_wrong_types_with_path() {
    rejects(
        &BASE.replace("weight: 3", "weight: heavy"),
        "upstreams.assessments.backends[0].weight",
        "invalid type",
    );
    rejects(
        "upstreams: {}\nroutes: []\n",
        "upstreams",
        "at least one upstream",
    );
    rejects("", "(document)", "empty");
    rejects("upstreams: [\n", "line 2 column 1", "invalid YAML");
}

#[test]
fn rejects_bad_routes() {
    rejects(
        &BASE.replace("path_prefix: /", "path_prefix: api"),
        "routes[0].match.path_prefix",
        "must start with /",
    );
    rejects(
        &BASE.replace("match: { path_prefix: / }", "match: { host: \"bad host\" }"),
        "routes[0].match.host",
        "not a host name",
    );
    rejects(
        &format!("{BASE}  - match: {{ path_prefix: / }}\n    upstream: assessments\n"),
        "routes[1].match",
        "no request can tell this route from routes[0]",
    );
}

#[test]
fn rejects_bad_trusted_proxy() {
    rejects(
        &format!("server:\n  trusted_proxies: [\"10.0.0.0/8\", \"nope\"]\n{BASE}"),
        "server.trusted_proxies[1]",
        "not an IP address or CIDR",
    );
}

#[test]
fn host_matches_parse() {
    let text = BASE.replace(
        "match: { path_prefix: / }",
        "match: { host: \"*.Example.com\", path_prefix: / }",
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.routes[0].host,
        Some(HostMatch::Wildcard(".example.com".into()))
    );
}

fn with_upstream_keys(keys: &str) -> String {
    BASE.replace("  assessments:\n", &format!("  assessments:\n{keys}"))
}

#[test]
fn balancing_keys_parse() {
    let c = parse(&with_upstream_keys(
        "    strategy: ip_hash\n    hash_key: header:X-User\n    sticky: { cookie: SID, ttl: 30m, secret: k }\n    retries: 2\n    retry_on: [connect_failure, timeout, 502, \"503\"]\n    passive_health: { consecutive_failures: 4, ejection_time: 10s }\n",
    ))
    .unwrap();
    let up = &c.upstreams["assessments"];
    assert_eq!(up.hash_key, HashKey::Header("x-user".into()));
    assert_eq!(
        up.sticky,
        Some(Sticky {
            cookie: "SID".into(),
            ttl: Duration::from_secs(1800),
            secret: Some("k".into())
        })
    );
    assert_eq!(
        up.retry,
        RetryPolicy {
            retries: 2,
            connect_failure: true,
            timeout: true,
            statuses: vec![502, 503]
        }
    );
    assert_eq!(
        up.passive_health,
        Some(PassiveHealth {
            consecutive_failures: 4,
            ejection_time: Duration::from_secs(10)
        })
    );
    let defaults = parse(BASE).unwrap();
    assert_eq!(
        defaults.upstreams["assessments"].retry,
        RetryPolicy::default()
    );
    assert_eq!(
        defaults.upstreams["assessments"].hash_key,
        HashKey::ClientIp
    );
}

#[test]
fn rejects_bad_balancing_keys() {
    rejects(
        &with_upstream_keys("    hash_key: uri\n"),
        "upstreams.assessments.hash_key",
        "ip_hash only",
    );
    rejects(
        &with_upstream_keys("    strategy: ip_hash\n    hash_key: body\n"),
        "upstreams.assessments.hash_key",
        "not one of",
    );
    rejects(
        &with_upstream_keys("    retries: 11\n"),
        "upstreams.assessments.retries",
        "out of range",
    );
    rejects(
        &with_upstream_keys("    retry_on: [connect_failure, 404]\n"),
        "upstreams.assessments.retry_on[1]",
        "not connect_failure, timeout or a 5xx",
    );
    rejects(
        &with_upstream_keys("    sticky: { cookie: \"bad name\" }\n"),
        "upstreams.assessments.sticky.cookie",
        "not a valid cookie name",
    );
    rejects(
        &with_upstream_keys("    passive_health: { consecutive_failures: 0 }\n"),
        "upstreams.assessments.passive_health.consecutive_failures",
        "at least 1",
    );
}

#[test]
fn cache_blocks_parse() {
    let text = format!(
        "cache:\n  max_size: 64MiB\n  max_object_size: 1MiB\n  lock_timeout: 500ms\n{}",
        BASE.replace(
            "    upstream: assessments\n",
            "    upstream: assessments\n    cache:\n      enabled: true\n      default_ttl: 60s\n      max_ttl: 1d\n      stale_while_revalidate: 10s\n      stale_if_error: 5m\n"
        )
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.cache,
        Cache {
            max_size: 64 << 20,
            max_object_size: 1 << 20,
            lock_timeout: Duration::from_millis(500),
            redis: None,
            targeted_fields: vec![
                http::HeaderName::from_static("switchyard-cache-control"),
                http::HeaderName::from_static("cdn-cache-control"),
            ],
            strip_targeted: false,
            direct_hits: true,
        }
    );
    assert_eq!(
        c.routes[0].cache,
        Some(RouteCache {
            default_ttl: Some(Duration::from_secs(60)),
            max_ttl: Some(Duration::from_secs(86400)),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(300),
            cookies: CookiePolicy::Bypass,
            client_cache_control: ClientCacheControl::Ignore,
            warm: None,
        })
    );
    let off = BASE.replace(
        "    upstream: assessments\n",
        "    upstream: assessments\n    cache: { enabled: false, default_ttl: 5s }\n",
    );
    assert_eq!(parse(&off).unwrap().routes[0].cache, None);
    assert_eq!(parse(BASE).unwrap().routes[0].cache, None);
    assert_eq!(parse(BASE).unwrap().cache.max_size, 256 << 20);
}

#[test]
fn rejects_bad_cache_values() {
    rejects(
        &format!("cache:\n  max_size: lots\n{BASE}"),
        "cache.max_size",
        "not a size",
    );
    rejects(
        &format!("cache:\n  max_size: 1MiB\n  max_object_size: 2MiB\n{BASE}"),
        "cache.max_object_size",
        "not be larger",
    );
    rejects(
        &BASE.replace(
            "    upstream: assessments\n",
            "    upstream: assessments\n    cache: { default_ttl: soon }\n",
        ),
        "routes[0].cache.default_ttl",
        "not a duration",
    );
}

#[test]
fn compression_layers() {
    use crate::compress::Algorithm;
    let routes = "routes:\n  - match: { path_prefix: /a/ }\n    upstream: assessments\n  - match: { path_prefix: /b/ }\n    upstream: assessments\n    compression: false\n  - match: { path_prefix: /c/ }\n    upstream: assessments\n    compression: { algorithms: [gzip], level: { gzip: 9 } }\n";
    let base = BASE.split("routes:").next().unwrap();
    let text = format!(
        "compression:\n  algorithms: [br, zstd, gzip]\n  min_size: 2KiB\n  level: {{ gzip: 5, br: 3, zstd: 2 }}\n  types: [text/*, application/json]\n{base}{routes}"
    );
    let c = parse(&text).unwrap();
    let a = c.routes[0].compression.as_ref().unwrap();
    assert_eq!(
        a.algorithms,
        vec![Algorithm::Brotli, Algorithm::Zstd, Algorithm::Gzip]
    );
    assert_eq!(a.min_size, 2048);
    assert_eq!(a.levels.br, 3);
    assert_eq!(c.routes[1].compression, None);
    let cr = c.routes[2].compression.as_ref().unwrap();
    assert_eq!(cr.algorithms, vec![Algorithm::Gzip]);
    assert_eq!(cr.levels.gzip, 9);
    assert_eq!(cr.min_size, 2048, "the rest comes from the global block");
    // Without a global block, routes do not compress unless they ask.
    assert_eq!(parse(BASE).unwrap().routes[0].compression, None);
    let on = BASE.replace(
        "    upstream: assessments\n",
        "    upstream: assessments\n    compression: true\n",
    );
    assert_eq!(
        parse(&on).unwrap().routes[0].compression,
        Some(Default::default())
    );
}

#[test]
fn rejects_bad_compression() {
    rejects(
        &format!("compression:\n  algorithms: [br, deflate]\n{BASE}"),
        "compression.algorithms[1]",
        "unknown algorithm",
    );
    rejects(
        &format!("compression:\n  level: {{ br: 12 }}\n{BASE}"),
        "compression.level.br",
        "out of range",
    );
    rejects(
        &BASE.replace(
            "    upstream: assessments\n",
            "    upstream: assessments\n    compression: { types: [html] }\n",
        ),
        "routes[0].compression.types[0]",
        "not a media type",
    );
    rejects(
        &BASE.replace(
            "    upstream: assessments\n",
            "    upstream: assessments\n    compression: { levels: {} }\n",
        ),
        "routes[0].compression.levels",
        "unknown field",
    );
    rejects(
        &BASE.replace(
            "    upstream: assessments\n",
            "    upstream: assessments\n    compression: yes please\n",
        ),
        "routes[0].compression",
        "expected false, true",
    );
}

#[test]
fn redis_tier_parses_and_validates() {
    let text = format!(
        "cache:\n  redis:\n    url: redis://:pw@127.0.0.1:6379/0\n    key_prefix: \"sy:\"\n    max_object_size: 1MiB\n    timeout: 50ms\n    pool_size: 4\n{BASE}"
    );
    let redis = parse(&text).unwrap().cache.redis.unwrap();
    assert_eq!(redis.key_prefix, "sy:");
    assert_eq!(redis.timeout, Duration::from_millis(50));
    assert_eq!(redis.pool_size, 4);
    assert_eq!(redis.url_redacted(), "redis://***@127.0.0.1:6379/0");
    let defaults = parse(&format!(
        "cache:\n  redis: {{ url: \"redis://127.0.0.1\" }}\n{BASE}"
    ))
    .unwrap()
    .cache
    .redis
    .unwrap();
    assert_eq!(defaults.key_prefix, "switchyard:");
    assert_eq!(defaults.max_object_size, 1 << 20);
    rejects(
        &format!("cache:\n  redis: {{ url: \"http://x\" }}\n{BASE}"),
        "cache.redis.url",
        "not a redis://",
    );
    rejects(
        &format!("cache:\n  redis: {{ url: \"redis://x\", pool_size: 0 }}\n{BASE}"),
        "cache.redis.pool_size",
        "out of range",
    );
}

#[test]
fn limits_parse_with_defaults() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.server.header_timeout, Duration::from_secs(10));
    assert_eq!(c.server.keepalive_timeout, Duration::from_secs(60));
    assert_eq!(c.server.max_connections, 10_000);
    assert_eq!(c.server.max_connections_per_ip, None);
    assert_eq!(c.server.max_header_size, 64 << 10);
    assert_eq!(c.server.read_buffer, 1 << 10);
    assert_eq!(c.server.max_body_size, 16 << 20);
    assert_eq!(c.server.server_header.as_deref(), Some("switchyard"));
    let text = format!(
        "server:\n  max_connections: 5\n  max_connections_per_ip: 2\n  max_header_size: 8KiB\n  max_body_size: 1MiB\n  header_timeout: 2s\n  server_header: \"\"\n{}",
        BASE.replace("  assessments:\n", "  assessments:\n    max_in_flight: 3\n")
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.server.max_connections, 5);
    assert_eq!(c.server.max_connections_per_ip, Some(2));
    assert_eq!(c.server.server_header, None);
    assert_eq!(c.upstreams["assessments"].max_in_flight, Some(3));
}

#[test]
fn admin_off_loopback_needs_a_token() {
    rejects(
        &format!("admin:\n  listen: 0.0.0.0:9901\n{BASE}"),
        "admin.listen",
        "admin.token is not set",
    );
    assert!(parse(&format!(
        "admin:\n  listen: 0.0.0.0:9901\n  token: t\n{BASE}"
    ))
    .is_ok());
    assert!(parse(&format!(
        "admin:\n  listen: 0.0.0.0:9901\n  allow_insecure: true\n{BASE}"
    ))
    .is_ok());
    rejects(
        &format!("server:\n  max_connections: 0\n{BASE}"),
        "server.max_connections",
        "at least 1",
    );
    rejects(
        &format!("server:\n  max_connections_per_ip: 0\n{BASE}"),
        "server.max_connections_per_ip",
        "at least 1",
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    /// Whatever the document, loading answers Ok or a ConfigError; it never panics.
    #[test]
    fn random_documents_never_panic(doc in yaml_strategy()) {
        let _ = Config::parse(&doc, "fuzz.yaml");
    }

    /// Arbitrary bytes as well.
    #[test]
    fn random_text_never_panics(text in ".{0,400}") {
        let _ = Config::parse(&text, "fuzz.yaml");
    }
}

/// YAML documents built from the config's own keys and odd values, nested at random.
fn yaml_strategy() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let keys = prop::sample::select(vec![
        "server",
        "admin",
        "upstreams",
        "routes",
        "cache",
        "compression",
        "listen",
        "backends",
        "address",
        "weight",
        "health_check",
        "match",
        "host",
        "path_prefix",
        "upstream",
        "strategy",
        "sticky",
        "retries",
        "retry_on",
        "passive_health",
        "redis",
        "url",
        "level",
        "types",
        "algorithms",
        "min_size",
        "interval",
        "timeout",
        "max_size",
        "token",
    ]);
    let scalars = prop::sample::select(vec![
        "0",
        "-1",
        "1",
        "99999999999999999999",
        "1.5",
        "true",
        "null",
        "~",
        "\"\"",
        "5s",
        "250ms",
        "1d",
        "256MiB",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        "[::1]:80",
        "round_robin",
        "ip_hash",
        "weighted",
        "gzip",
        "br",
        "\"${UNSET_VAR}\"",
        "'*.x'",
        "/",
        "{}",
        "[]",
        "\"\\u0000\"",
        "!!binary aGVsbG8=",
        "&a 1",
        "*a",
    ]);
    let leaf = scalars.prop_map(|s| s.to_string());
    leaf.prop_recursive(4, 64, 6, move |inner| {
        let keys = keys.clone();
        prop_oneof![
            prop::collection::vec((keys, inner.clone()), 0..6).prop_map(|kv| {
                let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", body.join(", "))
            }),
            prop::collection::vec(inner, 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
        ]
    })
}

#[test]
fn route_cache_cookies_and_client_cache_control() {
    let with = |block: &str| {
        BASE.replace(
            "    upstream: assessments\n",
            &format!("    upstream: assessments\n    cache: {block}\n"),
        )
    };
    let cache = |block: &str| {
        parse(&with(block)).unwrap().routes[0]
            .cache
            .clone()
            .unwrap()
    };
    let defaults = cache("{ enabled: true }");
    assert_eq!(defaults.cookies, CookiePolicy::Bypass);
    assert_eq!(defaults.client_cache_control, ClientCacheControl::Ignore);
    assert_eq!(cache("{ cookies: ignore }").cookies, CookiePolicy::Ignore);
    assert_eq!(
        cache("{ cookies: [lang, ab_test, lang] }").cookies,
        CookiePolicy::Key(vec!["ab_test".into(), "lang".into()])
    );
    assert_eq!(
        cache("{ client_cache_control: honor }").client_cache_control,
        ClientCacheControl::Honor
    );
    rejects(
        &with("{ cookies: always }"),
        "routes[0].cache.cookies",
        "expected bypass, ignore or a list",
    );
    rejects(
        &with("{ cookies: [] }"),
        "routes[0].cache.cookies",
        "expected",
    );
    rejects(
        &with("{ cookies: [\"a=b\"] }"),
        "routes[0].cache.cookies[0]",
        "cookie name",
    );
    rejects(
        &with("{ client_cache_control: obey }"),
        "routes[0].cache.client_cache_control",
        "expected ignore or honor",
    );
}

#[test]
fn admin_hosts_are_names() {
    let base = BASE;
    let ok = parse(&format!(
        "admin:\n  hosts: [Admin.Internal, \"ops.example:8443\"]\n{base}"
    ))
    .unwrap();
    assert_eq!(ok.admin.hosts, vec!["admin.internal", "ops.example:8443"]);
    rejects(
        &format!("admin:\n  hosts: [ok.example, \"http://x/\"]\n{base}"),
        "admin.hosts[1]",
        "is not a host name",
    );
    rejects(
        &format!("admin:\n  hosts: [\"\"]\n{base}"),
        "admin.hosts[0]",
        "is not a host name",
    );
}

#[test]
fn targeted_fields_are_field_names_and_never_cache_control() {
    let with = |block: &str| parse(&format!("cache:\n{block}{BASE}"));
    let c = with("  targeted_fields: [Edge-Cache-Control]\n  strip_targeted: true\n").unwrap();
    assert_eq!(c.cache.targeted_fields, ["edge-cache-control"]);
    assert!(c.cache.strip_targeted);
    let e = with("  targeted_fields: [CDN-Cache-Control, Cache-Control]\n").unwrap_err();
    assert!(e.to_string().contains("cache.targeted_fields[1]"), "{e}");
    let e = with("  targeted_fields: [\"bad name\"]\n").unwrap_err();
    assert!(e.to_string().contains("cache.targeted_fields[0]"), "{e}");
}

#[test]
fn warm_lists_need_paths_and_a_host() {
    let route = |warm: &str| {
        parse(&BASE.replace(
            "    upstream: assessments\n",
            &format!("    upstream: assessments\n    cache:\n      warm: {warm}\n"),
        ))
    };
    let ok = route("{ urls: [/a, \"/b?x=1\"], host: api.example.com, every: 1m, concurrency: 2 }")
        .unwrap();
    let warm = ok.routes[0].cache.as_ref().unwrap().warm.clone().unwrap();
    assert_eq!(warm.urls, ["/a", "/b?x=1"]);
    assert_eq!(warm.host, "api.example.com");
    assert_eq!(warm.every, Duration::from_secs(60));
    assert_eq!(warm.concurrency, 2);
    let e = route("{ urls: [/a] }").unwrap_err().to_string();
    assert!(e.contains("routes[0].cache.warm.host"), "{e}");
    let e = route("{ urls: [a], host: h }").unwrap_err().to_string();
    assert!(e.contains("routes[0].cache.warm.urls[0]"), "{e}");
    let e = route("{ host: h }").unwrap_err().to_string();
    assert!(e.contains("routes[0].cache.warm"), "{e}");
    let e = route("{ urls: [/a], host: h, concurrency: 0 }")
        .unwrap_err()
        .to_string();
    assert!(e.contains("routes[0].cache.warm.concurrency"), "{e}");
    let e = route("{ file: /nonexistent/urls.txt, host: h }")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("routes[0].cache.warm.file") && e.contains("/nonexistent/urls.txt"),
        "{e}"
    );
    let exact = parse(&BASE.replace(
        "  - match: { path_prefix: / }\n    upstream: assessments\n",
        "  - match: { host: Shop.Example, path_prefix: / }\n    upstream: assessments\n    cache: { warm: { urls: [/a] } }\n",
    ))
    .unwrap();
    let warm = exact.routes[0]
        .cache
        .as_ref()
        .unwrap()
        .warm
        .clone()
        .unwrap();
    assert_eq!(warm.host, "shop.example", "the route's exact host");
}
mod policy;
mod policy_routes;
