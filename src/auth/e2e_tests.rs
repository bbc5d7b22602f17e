//! The authenticator against the devkit's HTTPS issuer over real sockets: discovery,
//! `jwks_uri`, rotation, outage, trust roots and introspection.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;

use super::*;
use crate::devkit::{DevPki, IssuerOptions, KeyAlg, MockIssuer};

async fn issuer() -> (DevPki, MockIssuer) {
    let pki = DevPki::generate().unwrap();
    let mock = MockIssuer::start(&pki.server, IssuerOptions::default())
        .await
        .unwrap();
    (pki, mock)
}

fn settings(mock: &MockIssuer, pki: &DevPki, keys: KeySource) -> IssuerSettings {
    IssuerSettings {
        name: "corp".into(),
        issuer: mock.issuer_url(),
        keys,
        audiences: vec![mock.audience()],
        algorithms: vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
        leeway_s: 30,
        ca_pem: Some(pki.ca.cert_pem.clone().into_bytes()),
        jwks_refresh_s: 600,
        roles_claim: "roles".into(),
        groups_claim: "groups".into(),
        scopes_claim: "scope".into(),
        client_id_claim: "client_id".into(),
        introspection: None,
    }
}

fn started(s: IssuerSettings) -> Arc<Authenticator> {
    let a = Arc::new(Authenticator::new(
        vec![s],
        tokio::runtime::Handle::current(),
        None,
    ));
    a.start();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_rotation_and_outage() {
    let (pki, mock) = issuer().await;
    let a = started(settings(&mock, &pki, KeySource::Discovery));
    assert!(
        a.wait_ready(Duration::from_secs(10)).await,
        "{:?}",
        a.not_ready()
    );
    assert_eq!((mock.discovery_requests(), mock.jwks_requests()), (1, 1));
    for alg in [KeyAlg::RS256, KeyAlg::ES256] {
        let id = a.verify(&mock.mint(alg, json!({})), None).await.unwrap();
        assert_eq!(id.sub.as_deref(), Some("alice"));
    }

    // Rollover: the new kid is unknown, one refetch finds it.
    mock.rotate(KeyAlg::ES256);
    assert!(a
        .verify(&mock.mint(KeyAlg::ES256, json!({})), None)
        .await
        .is_ok());
    assert_eq!(mock.jwks_requests(), 2);

    // A flood of unknown kids within 30 s costs the IdP nothing more.
    let stranger = crate::devkit::SigningKey::generate(KeyAlg::ES256).unwrap();
    let claims = json!({"iss": mock.issuer_url(), "aud": mock.audience(), "exp": jwt::now() + 60});
    let mut tasks = Vec::new();
    for i in 0..32 {
        let a = a.clone();
        let t = stranger.clone().with_kid(format!("k{i}")).sign(&claims);
        tasks.push(tokio::spawn(async move { a.verify(&t, None).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err().reason, DenyReason::UnknownKey);
    }
    assert_eq!(mock.jwks_requests(), 2);

    // IdP down: a forced refresh fails and the last good keys keep serving.
    mock.set_down(true);
    let store = &a.stores_for_tests()[0];
    assert!(store.refresh_once().await.is_err());
    assert!(a
        .verify(&mock.mint(KeyAlg::RS256, json!({})), None)
        .await
        .is_ok());
    a.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_uri_and_trust_roots() {
    let (pki, mock) = issuer().await;
    let a = started(settings(&mock, &pki, KeySource::JwksUri(mock.jwks_uri())));
    assert!(a.wait_ready(Duration::from_secs(10)).await);
    assert_eq!(mock.discovery_requests(), 0);
    assert!(a
        .verify(&mock.mint(KeyAlg::RS256, json!({})), None)
        .await
        .is_ok());

    // A CA that did not sign the issuer's certificate: never ready, requests get 503.
    let other = DevPki::generate().unwrap();
    let mut s = settings(&mock, &pki, KeySource::Discovery);
    s.ca_pem = Some(other.ca.cert_pem.into_bytes());
    let b = started(s);
    assert!(!b.wait_ready(Duration::from_millis(1500)).await);
    let e = b
        .verify(&mock.mint(KeyAlg::RS256, json!({})), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason, DenyReason::IssuerUnavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_must_name_the_configured_issuer() {
    let (pki, mock) = issuer().await;
    // Same server, but we claim a different issuer string: the document's `issuer` differs.
    let mut s = settings(&mock, &pki, KeySource::Discovery);
    s.issuer = format!("{}/", mock.issuer_url());
    let a = started(s);
    assert!(!a.wait_ready(Duration::from_millis(1500)).await);
    assert_eq!(mock.jwks_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_introspected_and_cached() {
    let (pki, mock) = issuer().await;
    mock.register_client("gatehouse", "s3cret", KeyAlg::ES256, json!({}));
    mock.register_opaque(
        "opaque-token-1",
        json!({"sub": "svc", "client_id": "svc", "scope": "orders.read",
               "exp": jwt::now() + 120, "iss": mock.issuer_url()}),
    );
    let mut s = settings(&mock, &pki, KeySource::JwksUri(mock.jwks_uri()));
    s.introspection = Some(Introspection {
        url: mock.introspection_endpoint(),
        client_id: "gatehouse".into(),
        client_secret: "s3cret".into(),
    });
    let a = started(s.clone());
    let id = a.verify("opaque-token-1", None).await.unwrap();
    assert!(id.is_client);
    assert_eq!(id.scopes, ["orders.read"]);
    // Cached: revocation at the IdP is seen only when the cache entry ends (<= 300 s).
    mock.revoke_opaque("opaque-token-1");
    assert!(a.verify("opaque-token-1", None).await.is_ok());
    assert_eq!(mock.introspect_requests(), 1);
    let e = a.verify("never-issued", None).await.unwrap_err();
    assert_eq!(e.reason, DenyReason::IntrospectionInactive);

    // Wrong client secret: the IdP refuses us, which is an outage, not a bad token.
    s.introspection.as_mut().unwrap().client_secret = "wrong".into();
    let b = started(s);
    let e = b.verify("other-token", None).await.unwrap_err();
    assert_eq!(e.reason, DenyReason::IssuerUnavailable);
}
