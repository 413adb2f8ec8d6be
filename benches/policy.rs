//! Cost of traffic policy per request on a route with an access list, a rate limit and three
//! request header rules: path normalisation, routing, access, the limiter and the rules.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use pingora_http::RequestHeader;
use switchyard::config::Config;
use switchyard::policy::headers::{apply, Vars};
use switchyard::policy::normalize::normalize;
use switchyard::policy::{admits, rate};
use switchyard::route::{Request, Router};

const CONFIG: &str = r#"
server:
  access: { deny: [198.51.100.0/24] }
upstreams:
  api:
    backends: [{ address: "127.0.0.1:9001" }]
routes:
  - match: { path_prefix: / }
    upstream: api
  - name: api
    match: { path_prefix: /api/, methods: [GET, POST] }
    upstream: api
    access: { allow: [10.0.0.0/8, 192.0.2.0/24, "2001:db8::/32"], deny: [10.66.0.0/16] }
    rate_limit: { rate: 1000000/s, burst: 1000000, key: client_ip }
    request_headers:
      set: { X-Client-IP: "$client_ip", X-Edge: "$scheme://$host" }
      add: { X-Via: edge }
"#;

fn request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/api/items/42?page=2", None).unwrap();
    req.insert_header("Host", "api.example.com").unwrap();
    req.insert_header("User-Agent", "Mozilla/5.0").unwrap();
    req.insert_header("Accept", "application/json").unwrap();
    req
}

fn policy(c: &mut Criterion) {
    let config = Config::parse(CONFIG, "bench.yaml").unwrap();
    let router = Router::new(&config.routes);
    let route = &config.routes[1];
    let limiter = rate::Limiter::new(route.rate_limit.as_ref().unwrap());
    let client = "192.0.2.10".parse().unwrap();
    c.bench_function("policy_route_access_rate_3_header_rules", |b| {
        b.iter_batched(
            request,
            |mut req| {
                let path = normalize(req.uri.path()).unwrap();
                let (_, found) = router
                    .find(&Request {
                        host: "api.example.com",
                        path: &path,
                        query: req.uri.query(),
                        method: &req.method,
                        headers: &req.headers,
                    })
                    .unwrap();
                assert!(admits(&config.server, Some(found), client));
                let key = rate::key_of(
                    &route.rate_limit.as_ref().unwrap().key,
                    &req.headers,
                    client,
                );
                assert!(limiter.check(key).is_ok());
                let vars = Vars {
                    client_ip: Some(client),
                    host: "api.example.com",
                    request_id: "",
                    scheme: "https",
                };
                apply(&found.request_headers, &mut req, &vars).unwrap();
                black_box(req)
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("normalize_attack_path", |b| {
        b.iter(|| {
            normalize(black_box("/public/%2e%2E/%61dmin//x/./y"))
                .unwrap()
                .len()
        })
    });
}

criterion_group!(benches, policy);
criterion_main!(benches);
