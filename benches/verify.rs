//! Cold JWT verification through `Authenticator::verify` (no decision cache involved):
//! header vetting, issuer and key lookup, signature, claims and identity building, per
//! algorithm, with keys from a `jwks_file` issuer.
//!
//! Run: `cargo bench --bench verify -- --warm-up-time 1 --measurement-time 3`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gatehouse::auth::{Authenticator, IssuerSettings, KeySource};
use gatehouse::devkit::{jwks, KeyAlg, SigningKey};
use jsonwebtoken::Algorithm;
use serde_json::json;

const ISS: &str = "https://idp.example/tenant";
const AUD: &str = "api://orders";
const ALGS: [KeyAlg; 4] = [KeyAlg::RS256, KeyAlg::PS256, KeyAlg::ES256, KeyAlg::EdDSA];

fn bench_verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys: Vec<SigningKey> = ALGS
        .iter()
        .map(|a| SigningKey::generate(*a).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corp.jwks.json");
    let refs: Vec<&SigningKey> = keys.iter().collect();
    std::fs::write(&path, jwks(&refs).to_string()).unwrap();
    let settings = IssuerSettings {
        name: "corp".into(),
        issuer: ISS.into(),
        keys: KeySource::JwksFile(path),
        audiences: vec![AUD.into()],
        algorithms: vec![
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ],
        leeway_s: 30,
        ca_pem: None,
        jwks_refresh_s: 3600,
        roles_claim: "realm_access.roles".into(),
        groups_claim: "groups".into(),
        scopes_claim: "scope".into(),
        client_id_claim: "client_id".into(),
        introspection: None,
    };
    let auth = {
        let _g = rt.enter();
        Authenticator::new(vec![settings], rt.handle().clone(), None)
    };
    auth.start();
    assert!(auth.not_ready().is_empty());

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": ISS, "aud": AUD, "sub": "alice", "exp": now + 3600, "iat": now,
        "realm_access": {"roles": ["steward"]}, "groups": ["sg-a"], "scope": "orders.read",
        "preferred_username": "alice", "amr": ["pwd", "mfa"],
    });
    let mut group = c.benchmark_group("verify");
    for key in &keys {
        let token = key.sign(&claims);
        assert!(rt.block_on(auth.verify(&token, None)).is_ok());
        group.bench_with_input(BenchmarkId::from_parameter(key.alg), &token, |b, t| {
            b.iter(|| rt.block_on(auth.verify(t, None)).unwrap())
        });
    }
    group.finish();
    auth.stop();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench_verify
}
criterion_main!(benches);
