//! Tests of JWKS parsing, the key store and its fetchers.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};

use super::*;
use crate::devkit::{jwks, KeyAlg, SigningKey};

fn key(alg: KeyAlg) -> SigningKey {
    SigningKey::generate(alg).unwrap()
}

#[test]
fn key_kinds_fit_only_their_algorithms() {
    use Algorithm::*;
    let all = [
        RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256,
    ];
    let fits = |k: KeyKind| all.iter().filter(|a| k.fits(**a)).count();
    assert_eq!(fits(KeyKind::Rsa), 6);
    assert!(KeyKind::EcP256.fits(ES256) && !KeyKind::EcP256.fits(ES384));
    assert!(KeyKind::EcP384.fits(ES384) && !KeyKind::EcP384.fits(ES256));
    assert_eq!(fits(KeyKind::Ed25519), 1);
    assert!(!KeyKind::Rsa.fits(HS256));
}

#[test]
fn parse_keeps_usable_signature_keys_only() {
    let ec = key(KeyAlg::ES256);
    let ed = key(KeyAlg::EdDSA);
    let mut doc = jwks(&[&ec, &ed]);
    let mut enc = ec.jwk();
    enc["use"] = json!("enc");
    enc["kid"] = json!("enc-key");
    let mut oaep = ec.jwk();
    oaep["alg"] = json!("RSA-OAEP");
    let mut verify_ops_missing = ec.jwk();
    verify_ops_missing["key_ops"] = json!(["encrypt"]);
    let mut short_x = ec.jwk();
    short_x["x"] = json!("AAAA");
    let mut mismatched = ec.jwk();
    mismatched["alg"] = json!("RS256");
    let extra = [
        enc,
        oaep,
        verify_ops_missing,
        short_x,
        mismatched,
        json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}),
        json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}),
        json!({"kty": "OKP", "crv": "X25519", "x": "AA"}),
        // 512-bit RSA: too small to trust.
        json!({"kty": "RSA", "n": "AQAB".repeat(16), "e": "AQAB"}),
        json!({"kty": "RSA", "e": "AQAB"}),
        json!("not an object"),
    ];
    doc["keys"].as_array_mut().unwrap().extend(extra);
    let set = parse_jwks("corp", doc.to_string().as_bytes()).unwrap();
    let kids: Vec<_> = set.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
    assert_eq!(kids, [ec.kid.clone(), ed.kid.clone()]);
    assert_eq!(set.keys[0].kind, KeyKind::EcP256);
    assert_eq!(set.keys[0].alg, Some(Algorithm::ES256));
    assert_eq!(set.keys[1].kind, KeyKind::Ed25519);
    assert_eq!(set.by_kid(&ec.kid).count(), 1);

    assert!(parse_jwks("corp", b"nope").is_err());
    assert!(parse_jwks("corp", b"{\"nokeys\": 1}").is_err());
    assert!(parse_jwks("corp", b"{\"keys\": []}")
        .unwrap()
        .keys
        .is_empty());
}

#[test]
fn rsa_and_p384_keys_parse() {
    let rsa = key(KeyAlg::PS256);
    let p384 = key(KeyAlg::ES384);
    let set = parse_jwks("corp", jwks(&[&rsa, &p384]).to_string().as_bytes()).unwrap();
    assert_eq!(set.keys[0].kind, KeyKind::Rsa);
    assert!(set.keys[0].fits(Algorithm::PS256) && !set.keys[0].fits(Algorithm::RS256));
    assert_eq!(set.keys[1].kind, KeyKind::EcP384);
}

#[test]
fn refresh_period_honours_max_age_within_bounds() {
    let ten_min = Duration::from_secs(600);
    assert_eq!(next_refresh(ten_min, None), ten_min);
    assert_eq!(
        next_refresh(ten_min, Some(Duration::from_secs(120))),
        Duration::from_secs(120)
    );
    assert_eq!(
        next_refresh(ten_min, Some(Duration::from_secs(3600))),
        ten_min
    );
    assert_eq!(
        next_refresh(ten_min, Some(Duration::ZERO)),
        REFETCH_MIN_INTERVAL
    );
}

struct Flaky {
    calls: AtomicUsize,
    doc: Vec<u8>,
}

#[async_trait::async_trait]
impl JwksFetcher for Flaky {
    async fn fetch(&self) -> Result<Fetched, String> {
        // Every other call fails.
        if self.calls.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
            return Err("connection refused".into());
        }
        Ok(Fetched {
            body: self.doc.clone(),
            max_age: Some(Duration::from_secs(60)),
        })
    }
}

#[tokio::test]
async fn store_keeps_last_good_keys_and_counts_results() {
    let k = key(KeyAlg::ES256);
    let name = "jwks-test-flaky";
    let f = Arc::new(Flaky {
        calls: AtomicUsize::new(0),
        doc: jwks(&[&k]).to_string().into_bytes(),
    });
    let store = KeyStore::new(
        name.into(),
        Duration::from_secs(600),
        f,
        tokio::runtime::Handle::current(),
    );
    assert!(!store.is_loaded());
    let ok = || JWKS_REFRESH_TOTAL.with_label_values(&[name, "ok"]).get();
    let errors = || JWKS_REFRESH_TOTAL.with_label_values(&[name, "error"]).get();
    assert_eq!(
        store.refresh_once().await,
        Ok(Some(Duration::from_secs(60)))
    );
    assert!(store.is_loaded());
    assert!(store.refresh_once().await.is_err());
    assert_eq!(store.keys().keys.len(), 1);
    assert_eq!((ok(), errors()), (1, 1));
    assert_eq!(JWKS_KEYS.with_label_values(&[name]).get(), 1);
}

#[tokio::test]
async fn refresh_task_loads_and_stops_with_the_store() {
    let k = key(KeyAlg::ES256);
    let f = Arc::new(Flaky {
        calls: AtomicUsize::new(0),
        doc: jwks(&[&k]).to_string().into_bytes(),
    });
    let store = KeyStore::new(
        "jwks-test-task".into(),
        Duration::from_secs(600),
        f.clone(),
        tokio::runtime::Handle::current(),
    );
    store.hold();
    store.start();
    store.start(); // idempotent
    tokio::time::timeout(Duration::from_secs(5), store.wait_loaded())
        .await
        .unwrap();
    assert_eq!(f.calls.load(Ordering::SeqCst), 1);
    let weak = Arc::downgrade(&store);
    store.release();
    drop(store);
    tokio::task::yield_now().await;
    assert!(
        weak.upgrade().is_none(),
        "the task holds no strong reference"
    );
}

#[tokio::test]
async fn file_fetcher_reads_and_reports_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.json");
    std::fs::write(&p, b"{\"keys\": []}").unwrap();
    assert_eq!(
        FileFetcher(p.clone()).fetch().await.unwrap().body,
        b"{\"keys\": []}"
    );
    assert!(FileFetcher(p.clone()).fetch_now().unwrap().is_ok());
    let missing = FileFetcher(dir.path().join("nope.json"));
    assert!(missing.fetch().await.is_err());
    assert!(missing.fetch_now().unwrap().is_err());
}

#[tokio::test]
async fn http_fetcher_refuses_plain_http() {
    let f = HttpFetcher::jwks_uri("http://127.0.0.1:1/keys".into(), None);
    let e = f.fetch().await.unwrap_err();
    assert!(e.contains("non-HTTPS"), "{e}");
    let f = HttpFetcher::discovery("http://127.0.0.1:1".into(), None);
    let e = f.fetch().await.unwrap_err();
    assert!(e.contains("non-HTTPS"), "{e}");
}

#[test]
fn malformed_keys_of_usable_types_are_reported_others_skipped_quietly() {
    let malformed = |v: Value| matches!(parse_jwk(&v), Err(JwkError::Malformed { .. }));
    let skipped = |v: Value| matches!(parse_jwk(&v), Ok(None));
    assert!(malformed(json!({"kty": "RSA", "e": "AQAB"})));
    assert!(malformed(json!({"kty": "EC", "crv": "P-256", "x": "AA"})));
    assert!(malformed(json!({"kty": "OKP", "crv": "Ed25519"})));
    assert!(skipped(json!({"kty": "OKP", "crv": "X25519", "x": "AA"})));
    assert!(skipped(
        json!({"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"})
    ));
    assert!(skipped(json!({"kty": "oct", "k": "c2VjcmV0"})));
    assert!(skipped(json!(["not", "an", "object"])));
    // A member of the wrong type is not read as absent: `"use": 5` does not make an
    // encryption key usable for signatures, a numeric kid does not make it kid-less.
    let ec = key(KeyAlg::ES256);
    for (member, value) in [
        ("use", json!(5)),
        ("kid", json!(7)),
        ("key_ops", json!("verify")),
    ] {
        let mut jwk = ec.jwk();
        jwk[member] = value;
        assert!(
            matches!(parse_jwk(&jwk), Err(JwkError::NotJwk(_))),
            "{member}"
        );
    }
    assert!(parse_jwk(&ec.jwk()).unwrap().is_some());
}

#[test]
fn jwks_errors_name_the_problem() {
    assert!(matches!(
        parse_jwks("corp", b"nope"),
        Err(JwksError::NotJson(_))
    ));
    assert_eq!(
        parse_jwks("corp", b"{\"nokeys\": 1}").unwrap_err(),
        JwksError::NoKeysArray
    );
    assert_eq!(
        JwksError::NoKeysArray.to_string(),
        "JWKS has no \"keys\" array"
    );
}
