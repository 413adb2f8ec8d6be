//! Route matching and traffic policy options: parsed values and key-path errors.

use super::{parse, rejects, BASE};
use crate::config::{RateKey, Scope, ValueMatch};

fn with_route(options: &str) -> String {
    format!(
        "{BASE}  - match: {{ path_prefix: /p/ }}\n    upstream: assessments\n{}",
        options
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    )
}

#[test]
fn matching_options_parse() {
    let c = parse(&format!(
        "{BASE}  - name: users\n    match:\n      path_regex: \"^/v[0-9]+/users/[0-9]+$\"\n      methods: [get, HEAD]\n      headers: {{ X-Tenant: acme, X-Env: \"~^(prod|stage)$\" }}\n      query: {{ version: \"2\" }}\n    upstream: assessments\n  - match: {{ path_exact: /health }}\n    upstream: assessments\n"
    ))
    .unwrap();
    let r = &c.routes[1];
    assert_eq!(r.name.as_deref(), Some("users"));
    assert_eq!(r.methods, [http::Method::GET, http::Method::HEAD]);
    assert_eq!(r.headers[0].0.as_str(), "x-env");
    assert!(matches!(&r.headers[0].1, ValueMatch::Regex(p) if p.0.is_match("prod")));
    assert_eq!(r.query[0].1, ValueMatch::Exact("2".into()));
    assert_eq!(c.routes[2].path_exact.as_deref(), Some("/health"));
}

#[test]
fn indistinguishable_routes_and_bad_matchers_are_rejected() {
    let two = |a: &str, b: &str| {
        format!("{BASE}  - match: {a}\n    upstream: assessments\n  - match: {b}\n    upstream: assessments\n")
    };
    rejects(
        &two(
            "{ path_exact: /x, methods: [GET] }",
            "{ path_exact: /x, methods: [get] }",
        ),
        "routes[2].match",
        "no request can tell this route from routes[1]",
    );
    // A method narrows: these two can be told apart.
    assert!(parse(&two(
        "{ path_exact: /x, methods: [GET] }",
        "{ path_exact: /x }"
    ))
    .is_ok());
    rejects(
        &two("{ path_regex: \"(\" }", "{ path_exact: /y }"),
        "routes[1].match.path_regex",
        "not a valid regex",
    );
    rejects(
        &two("{ path_exact: /x, path_prefix: /x }", "{ path_exact: /y }"),
        "routes[1].match.path_exact",
        "cannot be combined",
    );
    rejects(
        &two("{ methods: [\"G ET\"] }", "{ path_exact: /y }"),
        "routes[1].match.methods[0]",
        "not a method",
    );
    rejects(
        &two("{ headers: { \"X Bad\": a } }", "{ path_exact: /y }"),
        "routes[1].match.headers.X Bad",
        "not a field name",
    );
    rejects(
        &format!("{BASE}  - name: a\n    match: {{ path_prefix: /a/ }}\n    upstream: assessments\n  - name: a\n    match: {{ path_prefix: /b/ }}\n    upstream: assessments\n"),
        "routes[2].name",
        "another route is named `a`",
    );
}

#[test]
fn access_and_rate_limit_parse() {
    let c = parse(&with_route(
        "access: { allow: [10.0.0.0/8, \"2001:db8::/32\", 192.168.1.7], deny: [10.1.0.0/16] }\nrate_limit: { rate: 600/m, burst: 5, key: \"header:X-Api-Key\" }",
    ))
    .unwrap();
    let r = &c.routes[1];
    assert_eq!(r.access.allow.len(), 3);
    assert!(r.access.admits("10.2.3.4".parse().unwrap()));
    assert!(!r.access.admits("10.1.3.4".parse().unwrap()));
    assert!(!r.access.admits("11.0.0.1".parse().unwrap()));
    assert!(r.access.admits("::ffff:10.2.3.4".parse().unwrap()));
    let limit = r.rate_limit.as_ref().unwrap();
    assert_eq!((limit.count, limit.burst), (600, 5));
    assert_eq!(limit.period(), std::time::Duration::from_millis(100));
    assert!(matches!(&limit.key, RateKey::Header(h) if h == "x-api-key"));
    let default = parse(&with_route("rate_limit: { rate: 20/s }")).unwrap();
    let limit = default.routes[1].rate_limit.as_ref().unwrap();
    assert_eq!((limit.burst, &limit.key), (20, &RateKey::ClientIp));
}

#[test]
fn bad_access_and_rate_limits_are_rejected() {
    rejects(
        &with_route("access: { deny: [10.0.0.0/33] }"),
        "routes[1].access.deny[0]",
        "not an IP address",
    );
    rejects(
        &format!("server:\n  access: {{ allow: [nope] }}\n{BASE}"),
        "server.access.allow[0]",
        "not an IP address",
    );
    for (rate, reason) in [
        ("100", "not a rate"),
        ("0/s", "at least 1"),
        ("5/d", "not a rate"),
    ] {
        rejects(
            &with_route(&format!("rate_limit: {{ rate: \"{rate}\" }}")),
            "routes[1].rate_limit.rate",
            reason,
        );
    }
    rejects(
        &with_route("rate_limit: { rate: 1/s, burst: 0 }"),
        "routes[1].rate_limit.burst",
        "between 1",
    );
    rejects(
        &with_route("rate_limit: { rate: 1/s, key: ip }"),
        "routes[1].rate_limit.key",
        "not client_ip",
    );
    rejects(
        &with_route("rate_limit: { rate: 1/s, scope: region }"),
        "routes[1].rate_limit.scope",
        "not `local` or `cluster`",
    );
}

#[test]
fn cluster_rate_limits_need_a_redis_server() {
    rejects(
        &with_route("rate_limit: { rate: 1/s, scope: cluster }"),
        "routes[1].rate_limit.scope",
        "needs a Redis server",
    );
    rejects(
        &format!(
            "rate_limits: {{ redis: {{ url: \"http://r:6379\" }} }}\n{}",
            with_route("rate_limit: { rate: 1/s, scope: cluster }")
        ),
        "rate_limits.redis.url",
        "not a redis://",
    );
    rejects(
        &format!("rate_limits: {{ redis: {{ timeout: fast }} }}\n{BASE}"),
        "rate_limits.redis.timeout",
        "",
    );
    // The cache's Redis server, with the defaults.
    let c = parse(&format!(
        "cache:\n  redis: {{ url: \"redis://cache:6379/0\" }}\n{}",
        with_route("rate_limit: { rate: 1/s, scope: cluster }")
    ))
    .unwrap();
    let cluster = c.rate_limits.expect("cluster settings");
    assert_eq!(cluster.url, "redis://cache:6379/0");
    assert_eq!(cluster.key_prefix, "switchyard:rl:");
    assert_eq!(cluster.timeout, std::time::Duration::from_millis(50));
    assert_eq!(
        c.routes[1].rate_limit.as_ref().map(|l| l.scope),
        Some(Scope::Cluster)
    );
    // A server of its own.
    let c = parse(&format!(
        "rate_limits:\n  redis: {{ url: \"redis://limits:6379/1\", key_prefix: \"rl:\", timeout: 20ms }}\n{}",
        with_route("rate_limit: { rate: 1/s, scope: cluster }")
    ))
    .unwrap();
    let cluster = c.rate_limits.expect("cluster settings");
    assert_eq!(
        (cluster.url.as_str(), cluster.key_prefix.as_str()),
        ("redis://limits:6379/1", "rl:")
    );
    // Without a cluster-scoped route there is nothing to connect to.
    let c = parse(&format!(
        "rate_limits: {{ redis: {{ url: \"redis://r:6379\" }} }}\n{BASE}"
    ))
    .unwrap();
    assert_eq!(c.rate_limits, None);
}

#[test]
fn header_rules_refuse_framing_fields_and_unknown_variables() {
    let c = parse(&with_route(
        "request_headers: { set: { X-Client: \"$client_ip via $scheme\" }, remove: [X-Secret] }",
    ))
    .unwrap();
    assert_eq!(c.routes[1].request_headers.set.len(), 1);
    for field in ["Host", "Content-Length", "Transfer-Encoding", "Connection"] {
        rejects(
            &with_route(&format!("request_headers: {{ set: {{ {field}: x }} }}")),
            &format!("routes[1].request_headers.set.{field}"),
            "cannot change",
        );
    }
    rejects(
        &format!("server:\n  response_headers: {{ remove: [Upgrade] }}\n{BASE}"),
        "server.response_headers.remove[0]",
        "cannot change",
    );
    rejects(
        &with_route("response_headers: { add: { X-Who: \"$user\" } }"),
        "routes[1].response_headers.add.X-Who",
        "unknown variable",
    );
}

#[test]
fn strip_prefix_and_upstream_host_are_checked() {
    let c = parse(&with_route(
        "strip_prefix: /p\nupstream_host: API.internal:8080",
    ))
    .unwrap();
    assert_eq!(c.routes[1].strip_prefix.as_deref(), Some("/p"));
    assert_eq!(
        c.routes[1].upstream_host.as_deref(),
        Some("api.internal:8080")
    );
    rejects(
        &with_route("strip_prefix: /p/"),
        "routes[1].strip_prefix",
        "must start with /",
    );
    rejects(
        &with_route("upstream_host: \"a b\""),
        "routes[1].upstream_host",
        "not a host",
    );
}
