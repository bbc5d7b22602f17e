//! The devkit's own servers over real sockets, driven by reqwest (rustls, HTTP/1.1 and h2).
//!
//! Every other integration test builds on these pieces, so this file pins down what they
//! promise: discovery and JWKS that a real verifier accepts, a working client-credentials
//! token endpoint, an echo backend that insists on mTLS and reports what it received.

use std::time::{Duration, Instant};

use gatehouse::devkit::echo::pattern_byte;
use gatehouse::devkit::{
    DevPki, EchoBackend, EchoOptions, IssuerOptions, KeyAlg, MockIssuer, SigningKey,
};
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A reqwest client trusting only the dev CA; with the gateway's client identity if asked.
fn client(
    pki: &DevPki,
    identity: Option<&gatehouse::devkit::CertPair>,
    http1: bool,
) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.cert_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(20));
    if let Some(id) = identity {
        let pem = format!("{}\n{}", id.cert_pem, id.key_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

async fn start_issuer(pki: &DevPki, algs: Vec<KeyAlg>) -> MockIssuer {
    MockIssuer::start(
        &pki.server,
        IssuerOptions {
            algs,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

async fn start_echo(pki: &DevPki) -> EchoBackend {
    EchoBackend::start(&pki.backend, &pki.ca.cert_pem, EchoOptions::default())
        .await
        .unwrap()
}

/// Verifies `token` against the issuer's served JWKS the way a relying party would.
async fn verify_via_jwks(
    http: &reqwest::Client,
    issuer: &MockIssuer,
    token: &str,
) -> Result<Value, String> {
    let jwks: Value = http
        .get(issuer.jwks_uri())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.clone().ok_or("no kid")?;
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or_else(|| format!("kid {kid} not in JWKS"))?;
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[issuer.issuer_url()]);
    v.set_audience(&[issuer.audience()]);
    decode::<Value>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

fn header_values<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn discovery_document_fields() {
    let pki = DevPki::generate().unwrap();
    let issuer = start_issuer(&pki, vec![KeyAlg::ES256]).await;
    let http = client(&pki, None, false);
    let resp = http.get(issuer.discovery_url()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["issuer"], issuer.issuer_url());
    assert_eq!(doc["jwks_uri"], issuer.jwks_uri());
    assert_eq!(doc["token_endpoint"], issuer.token_endpoint());
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    assert_eq!(doc["grant_types_supported"], json!(["client_credentials"]));
    assert!(issuer.issuer_url().starts_with("https://127.0.0.1:"));

    let missing = http
        .get(format!("{}/nope", issuer.issuer_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    issuer.shutdown().await;
}

#[tokio::test]
async fn jwks_verifies_minted_tokens_for_each_alg() {
    let pki = DevPki::generate().unwrap();
    let issuer = start_issuer(&pki, KeyAlg::ALL.to_vec()).await;
    let http = client(&pki, None, false);
    let resp = http.get(issuer.jwks_uri()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let cc = resp.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cc.contains("max-age=300"), "{cc}");
    for alg in KeyAlg::ALL {
        let token = issuer.mint(alg, json!({"roles": ["reader"]}));
        let claims = verify_via_jwks(&http, &issuer, &token)
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["roles"], json!(["reader"]));
        assert_eq!(
            decode_header(&token).unwrap().kid.unwrap(),
            issuer.key(alg).kid
        );
    }
    // A key the issuer never published must not verify.
    let stranger = SigningKey::generate(KeyAlg::ES256).unwrap();
    let forged = stranger.sign(
        &json!({"iss": issuer.issuer_url(), "aud": issuer.audience(), "exp": 4_000_000_000u64}),
    );
    assert!(verify_via_jwks(&http, &issuer, &forged).await.is_err());
    issuer.shutdown().await;
}

#[tokio::test]
async fn token_endpoint_client_credentials() {
    let pki = DevPki::generate().unwrap();
    let issuer = start_issuer(&pki, vec![KeyAlg::ES256]).await;
    issuer.register_client(
        "svc-orders",
        "s3cret",
        KeyAlg::ES256,
        json!({"scope": "orders.read", "region": "eu"}),
    );
    let http = client(&pki, None, false);

    // HTTP Basic client authentication, default scope from registration.
    let resp = http
        .post(issuer.token_endpoint())
        .basic_auth("svc-orders", Some("s3cret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let claims = verify_via_jwks(&http, &issuer, body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(claims["sub"], "svc-orders");
    assert_eq!(claims["client_id"], "svc-orders");
    assert_eq!(claims["azp"], "svc-orders");
    assert_eq!(claims["scope"], "orders.read");
    assert_eq!(claims["region"], "eu");
    assert!(claims["jti"].is_string());

    // Form-post client authentication with a requested scope.
    let resp = http
        .post(issuer.token_endpoint())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "svc-orders"),
            ("client_secret", "s3cret"),
            ("scope", "orders.read orders.write"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let claims = verify_via_jwks(&http, &issuer, body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(claims["scope"], "orders.read orders.write");

    // Wrong secret; another grant type.
    for (secret, grant, status, error) in [
        ("wrong", "client_credentials", 401, "invalid_client"),
        ("s3cret", "password", 400, "unsupported_grant_type"),
    ] {
        let resp = http
            .post(issuer.token_endpoint())
            .basic_auth("svc-orders", Some(secret))
            .form(&[("grant_type", grant)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{grant} with secret {secret}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], error);
    }
    assert_eq!(issuer.token_requests(), 4);
    issuer.shutdown().await;
}

#[tokio::test]
async fn introspection_of_opaque_tokens() {
    let pki = DevPki::generate().unwrap();
    let issuer = start_issuer(&pki, vec![KeyAlg::ES256]).await;
    issuer.register_client("gatehouse", "pw", KeyAlg::ES256, json!({}));
    issuer.register_opaque(
        "opaque-123",
        json!({"sub": "carol", "scope": "orders.read"}),
    );
    let http = client(&pki, None, true);
    let introspect = |token: &'static str, secret: &'static str| {
        http.post(issuer.introspection_endpoint())
            .basic_auth("gatehouse", Some(secret))
            .form(&[("token", token)])
            .send()
    };
    let body: Value = introspect("opaque-123", "pw")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["sub"], "carol");
    let body: Value = introspect("unknown", "pw")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"active": false}));
    assert_eq!(introspect("opaque-123", "bad").await.unwrap().status(), 401);
    assert_eq!(issuer.introspect_requests(), 3);
    issuer.shutdown().await;
}

#[tokio::test]
async fn issuer_down_answers_503() {
    let pki = DevPki::generate().unwrap();
    let issuer = start_issuer(&pki, vec![KeyAlg::ES256]).await;
    let http = client(&pki, None, false);
    issuer.set_down(true);
    assert_eq!(
        http.get(issuer.jwks_uri()).send().await.unwrap().status(),
        503
    );
    assert_eq!(
        http.get(issuer.discovery_url())
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    issuer.set_down(false);
    assert_eq!(
        http.get(issuer.jwks_uri()).send().await.unwrap().status(),
        200
    );
    assert_eq!(issuer.jwks_requests(), 2);
    issuer.shutdown().await;
}

#[tokio::test]
async fn rotate_changes_the_jwks() {
    let pki = DevPki::generate().unwrap();
    let issuer = start_issuer(&pki, vec![KeyAlg::RS256, KeyAlg::ES256]).await;
    let http = client(&pki, None, false);
    let kids = |doc: &Value| -> Vec<String> {
        doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };
    let old_token = issuer.mint(KeyAlg::ES256, json!({}));
    let old = issuer.key(KeyAlg::ES256);
    let before: Value = http
        .get(issuer.jwks_uri())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(kids(&before).contains(&old.kid));

    let new = issuer.rotate(KeyAlg::ES256);
    let after: Value = http
        .get(issuer.jwks_uri())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!kids(&after).contains(&old.kid));
    assert!(kids(&after).contains(&new.kid));
    assert!(kids(&after).contains(&issuer.key(KeyAlg::RS256).kid));
    assert!(verify_via_jwks(&http, &issuer, &old_token).await.is_err());
    let new_token = issuer.mint(KeyAlg::ES256, json!({}));
    verify_via_jwks(&http, &issuer, &new_token).await.unwrap();

    // An extra published key verifies too.
    let extra = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let token = extra.sign(
        &json!({"iss": issuer.issuer_url(), "aud": issuer.audience(), "exp": 4_000_000_000u64}),
    );
    issuer.add_key(extra);
    verify_via_jwks(&http, &issuer, &token).await.unwrap();
    issuer.shutdown().await;
}

#[tokio::test]
async fn echo_requires_a_client_certificate() {
    let pki = start_pki();
    let echo = start_echo(&pki).await;
    let url = format!("{}/anything", echo.url());

    let anonymous = client(&pki, None, true);
    assert!(anonymous.get(&url).send().await.is_err());

    // A certificate from another CA is no better.
    let other = DevPki::generate().unwrap();
    let stranger = client(&pki, Some(&other.client), true);
    assert!(stranger.get(&url).send().await.is_err());

    let good = client(&pki, Some(&pki.client), true);
    assert_eq!(good.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(echo.requests(), 1);
    echo.shutdown().await;
}

fn start_pki() -> DevPki {
    DevPki::generate().unwrap()
}

#[tokio::test]
async fn echo_reports_the_request_over_h1_and_h2() {
    let pki = start_pki();
    let echo = start_echo(&pki).await;
    for (http1, version) in [(true, "HTTP/1.1"), (false, "HTTP/2.0")] {
        let http = client(&pki, Some(&pki.client), http1);
        let body = b"hello echo".to_vec();
        let resp = http
            .post(format!("{}/orders/42?x=1&y=two", echo.url()))
            .header("x-test", "a")
            .header("x-other", "b")
            .header("x-test", "c")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let expected = if http1 {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        assert_eq!(resp.version(), expected);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let doc: Value = resp.json().await.unwrap();
        assert_eq!(doc["method"], "POST");
        assert_eq!(doc["path"], "/orders/42");
        assert_eq!(doc["query"], "x=1&y=two");
        assert_eq!(doc["version"], version);
        assert_eq!(header_values(&doc, "x-test"), vec!["a", "c"]);
        assert_eq!(header_values(&doc, "x-other"), vec!["b"]);
        let subject = doc["client_subject"].as_str().unwrap();
        assert!(subject.contains("CN=gatehouse-gateway"), "{subject}");
        assert_eq!(doc["client_cn"], "gatehouse-gateway");
        assert_eq!(doc["body_len"], body.len());
        assert_eq!(doc["body_sha256"], hex::encode(Sha256::digest(&body)));
    }
    echo.shutdown().await;
}

#[tokio::test]
async fn echo_upload_hashes_a_large_body() {
    let pki = start_pki();
    let echo = start_echo(&pki).await;
    let http = client(&pki, Some(&pki.client), false);
    let body: Vec<u8> = (0..3_000_001u64).map(|i| (i * 7 % 256) as u8).collect();
    let doc: Value = http
        .post(format!("{}/upload", echo.url()))
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["body_len"], body.len());
    assert_eq!(doc["body_sha256"], hex::encode(Sha256::digest(&body)));
    echo.shutdown().await;
}

#[tokio::test]
async fn echo_bytes_streams_the_pattern() {
    let pki = start_pki();
    let echo = start_echo(&pki).await;
    for http1 in [true, false] {
        let http = client(&pki, Some(&pki.client), http1);
        let n: u64 = 5 * 1024 * 1024 + 17;
        let resp = http
            .get(format!("{}/bytes?n={n}", echo.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.content_length(), Some(n));
        let mut stream = resp.bytes_stream();
        let mut offset = 0u64;
        use futures::StreamExt as _;
        while let Some(chunk) = stream.next().await {
            for b in chunk.unwrap() {
                assert_eq!(b, pattern_byte(offset), "byte {offset}");
                offset += 1;
            }
        }
        assert_eq!(offset, n);
    }
    echo.shutdown().await;
}

#[tokio::test]
async fn echo_slow_and_status() {
    let pki = start_pki();
    let echo = start_echo(&pki).await;
    let http = client(&pki, Some(&pki.client), true);
    let started = Instant::now();
    let resp = http
        .get(format!("{}/slow?ms=300", echo.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let resp = http
        .get(format!("{}/status?code=418", echo.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 418);
    let resp = http
        .get(format!("{}/status?code=204", echo.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
    echo.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_open_connections() {
    let pki = start_pki();
    let echo = start_echo(&pki).await;
    let url = echo.url();
    let http = client(&pki, Some(&pki.client), true);
    // A request in flight when the backend goes away must fail, not hang.
    let slow = tokio::spawn({
        let http = http.clone();
        let url = url.clone();
        async move { http.get(format!("{url}/slow?ms=30000")).send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    echo.shutdown().await;
    assert!(slow.await.unwrap().is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    let fresh = client(&pki, Some(&pki.client), true);
    assert!(fresh.get(&url).send().await.is_err());
}

#[tokio::test]
async fn write_to_produces_loadable_files() {
    let pki = start_pki();
    let dir = tempfile::tempdir().unwrap();
    pki.write_to(dir.path()).unwrap();
    for name in ["ca", "server", "client", "backend"] {
        let cert = std::fs::read_to_string(dir.path().join(format!("{name}.crt"))).unwrap();
        let key = std::fs::read_to_string(dir.path().join(format!("{name}.key"))).unwrap();
        assert!(cert.contains("BEGIN CERTIFICATE"));
        assert!(key.contains("BEGIN PRIVATE KEY"));
    }
    // Leaves issued later chain to the same CA: the echo backend accepts them as clients.
    let echo = start_echo(&pki).await;
    let rotated = pki.issue("gatehouse-gateway-2", &[], true).unwrap();
    let http = client(&pki, Some(&rotated), true);
    let doc: Value = http
        .get(echo.url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["client_cn"], "gatehouse-gateway-2");
    echo.shutdown().await;
}
