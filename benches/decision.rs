//! The decision path without sockets: route match + decision-cache hit + header
//! injection (what every repeat request costs), and a full cold decision (token
//! verification + authorization + row-filter rendering).
//!
//! `cargo bench --bench decision`

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse::auth::Authenticator;
use gatehouse::devkit::{jwks, DevPki, KeyAlg, SigningKey};
use gatehouse::gate::{Live, Outcome};
use gatehouse::policy::{rbac, route};
use serde_json::json;

struct Fixture {
    _dir: tempfile::TempDir,
    live: Live,
    io: tokio::runtime::Runtime,
    token: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    DevPki::generate()
        .unwrap()
        .write_to(&dir.path().join("certs"))
        .unwrap();
    let key = SigningKey::generate(KeyAlg::ES256).unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&key]).to_string()).unwrap();
    let cfg = r#"
[server]
listen = "127.0.0.1:1"
cert = "certs/server.crt"
key = "certs/server.key"
[issuers.corp]
issuer = "https://idp.example"
jwks_file = "jwks.json"
audiences = ["api://orders"]
[roles.data-steward]
groups = ["sg-data-stewards"]
[roles.admin]
groups = ["sg-admins"]
[upstreams.orders]
addrs = ["127.0.0.1:2"]
sni = "localhost"
ca = "certs/ca.crt"
client_cert = "certs/client.crt"
client_key = "certs/client.key"
[[routes]]
name = "status"
path_prefix = "/status"
upstream = "orders"
auth = "none"
[[routes]]
name = "customers"
path_prefix = "/customers"
upstream = "orders"
allow_roles = ["admin"]
[[routes]]
name = "orders-read"
path_prefix = "/orders"
methods = ["GET", "HEAD"]
upstream = "orders"
allow_roles = ["data-steward", "admin"]
require_scopes = ["orders.read"]
[[routes.row_filters]]
header = "X-Row-Filter"
value = "region={claims.region};tenant={claims.tenant}"
except_roles = ["admin"]
"#;
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, cfg).unwrap();
    let rt = Arc::new(gatehouse::config::load(&path).unwrap());
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let auth = Arc::new(Authenticator::new(
        rt.issuers.clone(),
        io.handle().clone(),
        None,
    ));
    auth.start();
    assert!(io.block_on(auth.wait_ready(Duration::from_secs(5))));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = key.sign(&json!({
        "iss": "https://idp.example", "aud": "api://orders", "sub": "alice",
        "exp": now + 3600, "iat": now, "groups": ["sg-data-stewards", "sg-other"],
        "scope": "orders.read", "region": "eu-west", "tenant": "acme corp",
        "email": "alice@example.com",
    }));
    Fixture {
        _dir: dir,
        live: Live::new(rt, auth),
        io,
        token,
    }
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    let authz = format!("Bearer {}", f.token);
    let route = route::find(
        &f.live.rt.routes,
        Some("api.example.com"),
        "/orders/42",
        "GET",
    )
    .unwrap()
    .clone();
    // Warm the cache once.
    assert!(matches!(
        f.io.block_on(f.live.decide(&route, Some(authz.as_bytes()))),
        Outcome::Allow(_)
    ));

    let mut g = c.benchmark_group("decision");
    // The request head exists before the gateway sees it: build it outside the timing.
    let new_head = || {
        http::Request::builder()
            .uri("/orders/42?limit=10")
            .header("host", "api.example.com")
            .header("authorization", authz.as_str())
            .header("user-agent", "bench/1.0")
            .header("accept", "*/*")
            .body(())
            .unwrap()
            .into_parts()
            .0
    };
    let client_ip: gatehouse::pipeline::Peer = std::net::IpAddr::from([127, 0, 0, 1]).into();
    g.bench_function("cached: pipeline::admit + forward_headers", |b| {
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        b.iter_batched_ref(
            new_head,
            |head| {
                let a = {
                    let mut fut = std::pin::pin!(gatehouse::pipeline::admit(&f.live, head));
                    // A cache hit completes without awaiting anything.
                    let std::task::Poll::Ready(a) = fut.as_mut().poll(&mut cx) else {
                        panic!("expected a synchronous cache hit")
                    };
                    a
                };
                let (Some(r), Some(o)) = (a.route, a.outcome) else {
                    panic!("expected an admitted request")
                };
                gatehouse::proxy::headers::remove_hop_by_hop(&mut head.headers);
                gatehouse::pipeline::forward_headers(
                    &mut head.headers,
                    &head.uri,
                    &r,
                    &o,
                    http::HeaderValue::from_str(&a.request_id).unwrap(),
                    &client_ip,
                    &f.live.rt.server.trusted_proxies,
                );
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let grant = match f.io.block_on(f.live.decide(&route, Some(authz.as_bytes()))) {
        Outcome::Allow(g) => g,
        _ => unreachable!(),
    };
    g.bench_function(
        "part: insert the grant's headers into an http::HeaderMap",
        |b| {
            b.iter_batched_ref(
                || new_head().headers,
                |h| {
                    for (n, v) in grant.headers(&route) {
                        h.insert(n.clone(), v);
                    }
                },
                criterion::BatchSize::SmallInput,
            )
        },
    );
    g.bench_function("part: cache key (sha256 of token)", |b| {
        b.iter(|| gatehouse::cache::DecisionCache::key(route.index, &f.token))
    });
    let key = gatehouse::cache::DecisionCache::key(route.index, &f.token);
    g.bench_function("part: cache get", |b| b.iter(|| f.live.cache.get(&key)));
    // The `1k` load of the peer bench: a thousand live decisions, asked for in turn, in
    // a cache of the default size.
    let many = gatehouse::cache::DecisionCache::new(100_000, 300, 1);
    let keys: Vec<[u8; 32]> = (0..1000)
        .map(|i| gatehouse::cache::DecisionCache::key(0, format!("token-{i}")))
        .collect();
    for k in &keys {
        many.insert(*k, Ok(grant.clone()), None, u64::MAX);
    }
    let mut i = 0usize;
    g.bench_function("part: cache get, 1 000 keys in turn", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            many.get(&keys[i]).is_some()
        })
    });
    // The cold path's cache work: a new key each time, into a cache that is full.
    let full = gatehouse::cache::DecisionCache::new(10_000, 300, 1);
    let mut n = 0u64;
    g.bench_function("part: cache insert (full cache, new key)", |b| {
        b.iter(|| {
            n += 1;
            let k = gatehouse::cache::DecisionCache::key(0, n.to_string());
            full.insert(k, Ok(grant.clone()), None, u64::MAX);
        })
    });
    g.bench_function("part: route find", |b| {
        b.iter(|| {
            route::find(
                &f.live.rt.routes,
                Some("api.example.com"),
                "/orders/42",
                "GET",
            )
            .is_some()
        })
    });
    g.bench_function("cold: verify ES256 + authorize + render", |b| {
        b.iter(|| {
            let id = f.io.block_on(f.live.auth.verify(&f.token, None)).unwrap();
            rbac::decide(&route, &id, &f.live.rt.roles).unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
