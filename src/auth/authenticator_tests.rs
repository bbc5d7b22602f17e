//! Every token rule through `Authenticator::verify`, including the
//! classic JWT attacks. Keys come from the devkit; the JWKS comes from an in-memory
//! fetcher that counts fetches, so the refetch throttle is tested without sockets.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};

use super::*;
use crate::auth::jwks::{Fetched, JwksFetcher};
use crate::auth::Introspection;
use crate::devkit::{forge_token, jwks, KeyAlg, SigningKey};

const ISS: &str = "https://idp.example/tenant";
const AUD: &str = "api://orders";

/// In-memory JWKS source: counts fetches, can be slow or failing.
struct MemFetcher {
    doc: Mutex<Value>,
    fetches: AtomicUsize,
    fail: AtomicBool,
    delay: Duration,
}

impl MemFetcher {
    fn new(doc: Value) -> Arc<Self> {
        Arc::new(MemFetcher {
            doc: Mutex::new(doc),
            fetches: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            delay: Duration::from_millis(50),
        })
    }
    fn count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl JwksFetcher for MemFetcher {
    async fn fetch(&self) -> Result<Fetched, String> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if self.fail.load(Ordering::SeqCst) {
            return Err("IdP down".into());
        }
        Ok(Fetched {
            body: self.doc.lock().unwrap().to_string().into_bytes(),
            max_age: None,
        })
    }
}

fn settings(name: &str, iss: &str) -> IssuerSettings {
    IssuerSettings {
        name: name.into(),
        issuer: iss.into(),
        keys: KeySource::Discovery,
        audiences: vec![AUD.into(), "api://other".into()],
        algorithms: vec![
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ],
        leeway_s: 30,
        ca_pem: None,
        jwks_refresh_s: 600,
        roles_claim: "realm_access.roles".into(),
        groups_claim: "groups".into(),
        scopes_claim: "scope".into(),
        client_id_claim: "client_id".into(),
        introspection: None,
    }
}

fn now() -> u64 {
    super::jwt::now()
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": now() + 300, "iat": now()})
}

fn with(mut c: Value, k: &str, v: Value) -> Value {
    c[k] = v;
    c
}

fn without(mut c: Value, k: &str) -> Value {
    c.as_object_mut().unwrap().remove(k);
    c
}

fn key(alg: KeyAlg) -> SigningKey {
    SigningKey::generate(alg).unwrap()
}

/// An authenticator with one issuer "corp" whose JWKS holds `keys`, started and ready.
async fn setup(keys: &[&SigningKey], s: IssuerSettings) -> (Authenticator, Arc<MemFetcher>) {
    let f = MemFetcher::new(jwks(keys));
    let a = Authenticator::with_fetchers(
        vec![(s, f.clone() as Arc<dyn JwksFetcher>)],
        tokio::runtime::Handle::current(),
        None,
    );
    a.start();
    assert!(a.wait_ready(Duration::from_secs(5)).await);
    (a, f)
}

async fn reason(a: &Authenticator, token: &str) -> DenyReason {
    a.verify(token, None).await.unwrap_err().reason
}

#[tokio::test]
async fn valid_tokens_of_every_algorithm_verify() {
    for alg in [
        KeyAlg::RS256,
        KeyAlg::PS256,
        KeyAlg::ES256,
        KeyAlg::ES384,
        KeyAlg::EdDSA,
    ] {
        let k = key(alg);
        let (a, _) = setup(&[&k], settings("corp", ISS)).await;
        let id = a.verify(&k.sign(&claims()), None).await.unwrap();
        assert_eq!(id.issuer, "corp");
        assert_eq!(id.iss, ISS);
        assert_eq!(id.sub.as_deref(), Some("alice"));
        assert!(!id.is_client);
        assert_eq!(a.key_count("corp"), Some(1));
    }
}

#[tokio::test]
async fn identity_claims_mapping() {
    let k = key(KeyAlg::ES256);
    let (a, _) = setup(&[&k], settings("corp", ISS)).await;
    let c = json!({"iss": ISS, "aud": [ "x", AUD ], "sub": "alice", "exp": now() + 60,
        "preferred_username": "alice",
        "realm_access": {"roles": ["steward", "reader"]}, "groups": "sg-a",
        "scope": "orders.read orders.write", "amr": ["pwd", "mfa"], "region": "eu"});
    let id = a.verify(&k.sign(&c), Some(&["corp".into()])).await.unwrap();
    assert_eq!(id.roles, ["steward", "reader"]);
    assert_eq!(id.groups, ["sg-a"]);
    assert_eq!(id.scopes, ["orders.read", "orders.write"]);
    assert!(id.has_mfa());
    assert_eq!(
        id.claim("realm_access.roles"),
        Some(&json!(["steward", "reader"]))
    );
    assert_eq!(id.claim("region"), Some(&json!("eu")));
    assert_eq!(id.exp, c["exp"].as_u64().unwrap());
    // Scopes as an array (e.g. Entra `scp`).
    let c2 = with(claims(), "scope", json!(["a", "b"]));
    assert_eq!(
        a.verify(&k.sign(&c2), None).await.unwrap().scopes,
        ["a", "b"]
    );
}

#[tokio::test]
async fn client_credentials_token() {
    let k = key(KeyAlg::ES256);
    let (a, _) = setup(&[&k], settings("corp", ISS)).await;
    let c = with(
        with(claims(), "sub", json!("billing-sync")),
        "client_id",
        json!("billing-sync"),
    );
    let id = a.verify(&k.sign(&c), None).await.unwrap();
    assert!(id.is_client);
    assert_eq!(id.client_id.as_deref(), Some("billing-sync"));
    let c = with(without(claims(), "sub"), "client_id", json!("billing-sync"));
    assert!(a.verify(&k.sign(&c), None).await.unwrap().is_client);
    let c = with(
        with(claims(), "client_id", json!("web")),
        "email",
        json!("a@x"),
    );
    let id = a.verify(&k.sign(&c), None).await.unwrap();
    assert!(!id.is_client);
    assert_eq!(id.client_id.as_deref(), Some("web"));
}

#[tokio::test]
async fn alg_none_is_refused() {
    let k = key(KeyAlg::ES256);
    let (a, _) = setup(&[&k], settings("corp", ISS)).await;
    for alg in ["none", "None", "NONE", "nOnE"] {
        let t = forge_token(
            &json!({"alg": alg, "typ": "JWT", "kid": k.kid}),
            &claims(),
            None,
        );
        assert_eq!(
            reason(&a, &t).await,
            DenyReason::DisallowedAlgorithm,
            "{alg}"
        );
    }
    let t = forge_token(&json!({"typ": "JWT"}), &claims(), None);
    assert_eq!(reason(&a, &t).await, DenyReason::MalformedToken);
}

#[tokio::test]
async fn hs256_keyed_with_the_public_key_is_refused() {
    let k = key(KeyAlg::RS256);
    let (a, _) = setup(&[&k], settings("corp", ISS)).await;
    let pem = k.public_key_pem();
    for alg in ["HS256", "HS384", "HS512"] {
        let t = forge_token(
            &json!({"alg": alg, "kid": k.kid}),
            &claims(),
            Some(pem.as_bytes()),
        );
        assert_eq!(
            reason(&a, &t).await,
            DenyReason::DisallowedAlgorithm,
            "{alg}"
        );
    }
}

#[tokio::test]
async fn foreign_key_with_a_known_kid_is_a_bad_signature() {
    let k = key(KeyAlg::ES256);
    let (a, f) = setup(&[&k], settings("corp", ISS)).await;
    let attacker = key(KeyAlg::ES256).with_kid(k.kid.clone());
    assert_eq!(
        reason(&a, &attacker.sign(&claims())).await,
        DenyReason::BadSignature
    );
    // Tampered payload under a genuine signature.
    let good = k.sign(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let evil = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        with(claims(), "sub", json!("admin")).to_string(),
    );
    let t = format!("{}.{}.{}", parts[0], evil, parts[2]);
    assert_eq!(reason(&a, &t).await, DenyReason::BadSignature);
    // Empty signature.
    let t = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(reason(&a, &t).await, DenyReason::BadSignature);
    // A known kid never triggers a refetch.
    assert_eq!(f.count(), 1);
}

#[tokio::test]
async fn jku_x5u_and_crit_headers_are_refused() {
    let k = key(KeyAlg::ES256);
    let (a, f) = setup(&[&k], settings("corp", ISS)).await;
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(k.kid.clone());
    let mut jku = h.clone();
    jku.jku = Some("https://evil.example/jwks".into());
    let mut x5u = h.clone();
    x5u.x5u = Some("https://evil.example/cert".into());
    let mut crit = h.clone();
    crit.crit = Some(vec!["exp".into()]);
    for hdr in [jku, x5u, crit] {
        let t = k.sign_with_header(hdr, &claims());
        assert_eq!(reason(&a, &t).await, DenyReason::MalformedToken);
    }
    assert_eq!(
        f.count(),
        1,
        "nothing fetched from the header's URL or ours"
    );
}

#[tokio::test]
async fn algorithm_must_be_allowed_and_fit_the_key() {
    let ec = key(KeyAlg::ES256);
    let rsa = key(KeyAlg::RS256);
    let mut s = settings("corp", ISS);
    s.algorithms = vec![Algorithm::ES256, Algorithm::PS256, Algorithm::RS256];
    let (a, _) = setup(&[&ec, &rsa], s).await;
    // RS512 is asymmetric but not on this issuer's allowlist.
    let mut h = Header::new(Algorithm::RS512);
    h.kid = Some(rsa.kid.clone());
    let t = rsa.sign_with_header(h, &claims());
    assert_eq!(reason(&a, &t).await, DenyReason::DisallowedAlgorithm);
    // An RSA signature presented under the EC key's kid (kty confusion).
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(ec.kid.clone());
    let t = rsa.sign_with_header(h, &claims());
    assert_eq!(reason(&a, &t).await, DenyReason::DisallowedAlgorithm);
    // The JWK says alg RS256; a PS256 token by the same key does not fit it.
    let mut h = Header::new(Algorithm::PS256);
    h.kid = Some(rsa.kid.clone());
    let t = rsa.sign_with_header(h, &claims());
    assert_eq!(reason(&a, &t).await, DenyReason::DisallowedAlgorithm);
}

#[tokio::test]
async fn no_kid_tries_every_fitting_key() {
    let k1 = key(KeyAlg::ES256);
    let k2 = key(KeyAlg::ES256);
    let (a, _) = setup(&[&k1, &k2], settings("corp", ISS)).await;
    let h = Header::new(Algorithm::ES256);
    let t = k2.sign_with_header(h.clone(), &claims());
    assert!(a.verify(&t, None).await.is_ok());
    let t = key(KeyAlg::ES256).sign_with_header(h, &claims());
    assert_eq!(reason(&a, &t).await, DenyReason::BadSignature);
    // No kid and no key of the token's type at all.
    let t = key(KeyAlg::EdDSA).sign_with_header(Header::new(Algorithm::EdDSA), &claims());
    assert_eq!(reason(&a, &t).await, DenyReason::UnknownKey);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refetch_is_single_and_throttled() {
    let k = key(KeyAlg::ES256);
    let (a, f) = setup(&[&k], settings("corp", ISS)).await;
    assert_eq!(f.count(), 1);
    let a = Arc::new(a);
    let stranger = key(KeyAlg::ES256);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let a = a.clone();
        let t = stranger
            .clone()
            .with_kid(format!("kid-{i}"))
            .sign(&claims());
        tasks.push(tokio::spawn(async move { a.verify(&t, None).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err().reason, DenyReason::UnknownKey);
    }
    assert_eq!(f.count(), 2, "64 concurrent misses share one refetch");
    // Within 30 s further misses do not fetch at all, and answer at once.
    let started = std::time::Instant::now();
    for i in 0..20 {
        let t = stranger
            .clone()
            .with_kid(format!("again-{i}"))
            .sign(&claims());
        assert_eq!(reason(&a, &t).await, DenyReason::UnknownKey);
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(f.count(), 2);
}

#[tokio::test]
async fn rotated_key_is_found_by_refetch() {
    let old = key(KeyAlg::ES256);
    let (a, f) = setup(&[&old], settings("corp", ISS)).await;
    let new = key(KeyAlg::EdDSA);
    *f.doc.lock().unwrap() = jwks(&[&old, &new]);
    let id = a.verify(&new.sign(&claims()), None).await.unwrap();
    assert_eq!(id.sub.as_deref(), Some("alice"));
    assert_eq!(f.count(), 2);
    assert_eq!(a.key_count("corp"), Some(2));
}

#[tokio::test]
async fn time_claims_with_leeway() {
    let k = key(KeyAlg::ES256);
    let (a, _) = setup(&[&k], settings("corp", ISS)).await; // leeway 30 s
    let n = now();
    let ok = |c: Value| k.sign(&c);
    assert_eq!(
        reason(&a, &ok(with(claims(), "exp", json!(n - 100)))).await,
        DenyReason::Expired
    );
    assert!(a
        .verify(&ok(with(claims(), "exp", json!(n - 10))), None)
        .await
        .is_ok());
    assert_eq!(
        reason(&a, &ok(without(claims(), "exp"))).await,
        DenyReason::MalformedToken
    );
    assert_eq!(
        reason(&a, &ok(with(claims(), "exp", json!("soon")))).await,
        DenyReason::MalformedToken
    );
    assert!(a
        .verify(&ok(with(claims(), "nbf", json!(n + 10))), None)
        .await
        .is_ok());
    assert_eq!(
        reason(&a, &ok(with(claims(), "nbf", json!(n + 100)))).await,
        DenyReason::NotYetValid
    );
    assert!(a
        .verify(&ok(with(claims(), "iat", json!(n + 10))), None)
        .await
        .is_ok());
    assert_eq!(
        reason(&a, &ok(with(claims(), "iat", json!(n + 100)))).await,
        DenyReason::NotYetValid
    );
}

#[tokio::test]
async fn issuer_checks() {
    let k = key(KeyAlg::ES256);
    let (a, f) = setup(&[&k], settings("corp", ISS)).await;
    let t = |c: Value| k.sign(&c);
    assert_eq!(
        reason(&a, &t(with(claims(), "iss", json!("https://evil")))).await,
        DenyReason::WrongIssuer
    );
    // Exact match: no trailing-slash or case games.
    let slash = format!("{ISS}/");
    assert_eq!(
        reason(&a, &t(with(claims(), "iss", json!(slash)))).await,
        DenyReason::WrongIssuer
    );
    assert_eq!(
        reason(&a, &t(without(claims(), "iss"))).await,
        DenyReason::WrongIssuer
    );
    // The route accepts only other issuers.
    let e = a
        .verify(&t(claims()), Some(&["partner".into()]))
        .await
        .unwrap_err();
    assert_eq!(e.reason, DenyReason::WrongIssuer);
    assert!(a
        .verify(&t(claims()), Some(&["partner".into(), "corp".into()]))
        .await
        .is_ok());
    assert_eq!(f.count(), 1);
}

#[tokio::test]
async fn audience_checks() {
    let k = key(KeyAlg::ES256);
    let (a, _) = setup(&[&k], settings("corp", ISS)).await;
    let t = |c: Value| k.sign(&c);
    assert_eq!(
        reason(&a, &t(with(claims(), "aud", json!("api://billing")))).await,
        DenyReason::WrongAudience
    );
    assert_eq!(
        reason(&a, &t(without(claims(), "aud"))).await,
        DenyReason::WrongAudience
    );
    assert_eq!(
        reason(&a, &t(with(claims(), "aud", json!(["a", "b"])))).await,
        DenyReason::WrongAudience
    );
    assert!(a
        .verify(&t(with(claims(), "aud", json!(["a", AUD]))), None)
        .await
        .is_ok());
    assert!(a
        .verify(&t(with(claims(), "aud", json!("api://other"))), None)
        .await
        .is_ok());
}

#[tokio::test]
async fn garbage_and_oversize() {
    let k = key(KeyAlg::ES256);
    let (a, _) = setup(&[&k], settings("corp", ISS)).await;
    for g in [
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.???.***",
        "e30.e30.e30",
        "eyJhbGciOiJFUzI1NiJ9.bm9wZQ.c2ln",
        "",
    ] {
        assert_eq!(reason(&a, g).await, DenyReason::MalformedToken, "{g}");
    }
    let huge = format!("{}.{}.sig", "a".repeat(MAX_TOKEN_BYTES), "b");
    let e = a.verify(&huge, None).await.unwrap_err();
    assert_eq!(
        (e.reason, e.detail.as_str()),
        (DenyReason::MalformedToken, "token too large")
    );
    // Details never echo the token.
    let t = k.sign(&with(claims(), "exp", json!(1)));
    let e = a.verify(&t, None).await.unwrap_err();
    assert!(!e.detail.contains(&t[..10]) && !e.to_string().contains(&t[..10]));
}

#[tokio::test]
async fn never_loaded_issuer_is_unavailable() {
    let f = MemFetcher::new(json!({"keys": []}));
    f.fail.store(true, Ordering::SeqCst);
    let a = Authenticator::with_fetchers(
        vec![(settings("corp", ISS), f.clone() as Arc<dyn JwksFetcher>)],
        tokio::runtime::Handle::current(),
        None,
    );
    a.start();
    assert!(!a.wait_ready(Duration::from_millis(300)).await);
    assert_eq!(a.not_ready(), ["corp"]);
    let k = key(KeyAlg::ES256);
    let e = a.verify(&k.sign(&claims()), None).await.unwrap_err();
    assert_eq!(e.reason, DenyReason::IssuerUnavailable);
    assert_eq!(e.reason.status(), 503);
}

#[tokio::test]
async fn failed_refresh_keeps_last_good_keys() {
    let k = key(KeyAlg::ES256);
    let (a, f) = setup(&[&k], settings("corp", ISS)).await;
    f.fail.store(true, Ordering::SeqCst);
    let store = &a.issuers[0].store;
    assert!(store.refresh_once().await.is_err());
    // An IdP answering with an empty or broken set must not wipe the keys either.
    f.fail.store(false, Ordering::SeqCst);
    *f.doc.lock().unwrap() = json!({"keys": []});
    assert!(store.refresh_once().await.is_err());
    *f.doc.lock().unwrap() = json!("not a jwks");
    assert!(store.refresh_once().await.is_err());
    assert!(a.verify(&k.sign(&claims()), None).await.is_ok());
    assert!(a.not_ready().is_empty());
}

#[tokio::test]
async fn file_based_jwks_is_ready_at_start() {
    let k = key(KeyAlg::EdDSA);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corp.jwks.json");
    std::fs::write(&path, jwks(&[&k]).to_string()).unwrap();
    let mut s = settings("corp", ISS);
    s.keys = KeySource::JwksFile(path);
    let a = Authenticator::new(vec![s], tokio::runtime::Handle::current(), None);
    assert_eq!(a.not_ready(), ["corp"]);
    a.start();
    // Loaded synchronously by start(): no await needed.
    assert!(a.not_ready().is_empty());
    assert!(a.verify(&k.sign(&claims()), None).await.is_ok());

    let mut s = settings("gone", ISS);
    s.keys = KeySource::JwksFile(dir.path().join("missing.json"));
    let b = Authenticator::new(vec![s], tokio::runtime::Handle::current(), None);
    b.start();
    assert_eq!(b.not_ready(), ["gone"]);
}

#[tokio::test]
async fn reload_reuses_unchanged_stores() {
    let k = key(KeyAlg::ES256);
    let (a, f) = setup(&[&k], settings("corp", ISS)).await;
    let f2 = MemFetcher::new(json!({"keys": []}));
    let mut changed = settings("partner", "https://partner.example");
    changed.leeway_s = 5;
    let b = Authenticator::with_fetchers(
        vec![
            (settings("corp", ISS), f2.clone() as Arc<dyn JwksFetcher>),
            (changed, f2.clone() as Arc<dyn JwksFetcher>),
        ],
        tokio::runtime::Handle::current(),
        Some(&a),
    );
    assert!(Arc::ptr_eq(&a.issuers[0].store, &b.issuers[0].store));
    assert_eq!(b.not_ready(), ["partner"]);
    b.start();
    // The old one goes away; the reused store keeps serving the new one.
    a.stop();
    drop(a);
    assert!(b.verify(&k.sign(&claims()), None).await.is_ok());
    assert_eq!(f.count(), 1);
    assert_eq!(b.issuer_names(), ["corp", "partner"]);
}

#[tokio::test]
async fn opaque_tokens_without_introspection_are_malformed() {
    let k = key(KeyAlg::ES256);
    let (a, _) = setup(&[&k], settings("corp", ISS)).await;
    assert_eq!(
        reason(&a, "2YotnFZFEjr1zCsicMWpAA").await,
        DenyReason::MalformedToken
    );
}

#[tokio::test]
async fn opaque_tokens_go_to_an_allowed_introspection_endpoint() {
    let mut s = settings("corp", ISS);
    s.keys = KeySource::JwksUri("https://127.0.0.1:1/keys".into());
    // Plain HTTP is refused before connecting: the IdP counts as unavailable.
    s.introspection = Some(Introspection {
        url: "http://127.0.0.1:1/introspect".into(),
        client_id: "gatehouse".into(),
        client_secret: "s".into(),
    });
    let a = Authenticator::new(vec![s], tokio::runtime::Handle::current(), None);
    let e = a.verify("2YotnFZFEjr1zCsicMWpAA", None).await.unwrap_err();
    assert_eq!(e.reason, DenyReason::IssuerUnavailable);
    let e = a
        .verify("2YotnFZFEjr1zCsicMWpAA", Some(&["other".into()]))
        .await
        .unwrap_err();
    assert_eq!(e.reason, DenyReason::WrongIssuer);
}

#[tokio::test]
async fn two_config_issuers_may_share_an_iss() {
    let k = key(KeyAlg::ES256);
    let doc = jwks(&[&k]);
    let mut narrow = settings("orders-idp", ISS);
    narrow.audiences = vec!["api://billing".into()];
    let wide = settings("corp", ISS);
    let a = Authenticator::with_fetchers(
        vec![
            (narrow, MemFetcher::new(doc.clone()) as Arc<dyn JwksFetcher>),
            (wide, MemFetcher::new(doc) as Arc<dyn JwksFetcher>),
        ],
        tokio::runtime::Handle::current(),
        None,
    );
    a.start();
    assert!(a.wait_ready(Duration::from_secs(5)).await);
    let t = k.sign(&claims());
    // The route picks which config entry (and so which audiences) applies.
    let id = a.verify(&t, Some(&["corp".into()])).await.unwrap();
    assert_eq!(id.issuer, "corp");
    let e = a
        .verify(&t, Some(&["orders-idp".into()]))
        .await
        .unwrap_err();
    assert_eq!(e.reason, DenyReason::WrongAudience);
}
