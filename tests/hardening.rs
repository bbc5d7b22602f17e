//! Red-team holes closed by the hardening pass (issue 10), end to end through the gateway:
//! host normalisation, URL and client-certificate override headers, and big numeric claims
//! in row filters. Each test failed before its fix.

mod common;

use common::*;
use serde_json::json;

fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A host-restricted protected route, then a host-less public route on the same path: a
/// request for the protected host that misses the first route lands on the second.
const HOST_ROUTES: &str = r#"
[roles.data-steward]
groups = ["sg-data-stewards"]

[[routes]]
name = "api-data"
host = "api.example.com"
path_prefix = "/data"
upstream = "echo"
allow_roles = ["data-steward"]

[[routes]]
name = "public-data"
path_prefix = "/data"
upstream = "echo"
auth = "none"
"#;

fn host_env() -> Env {
    Env::with(EnvOptions {
        routes: HOST_ROUTES.to_string(),
        ..EnvOptions::default()
    })
}

fn get_with_host(env: &Env, host_line: &str) -> String {
    raw_request(
        env,
        &format!("GET /data/1 HTTP/1.1\r\n{host_line}Connection: close\r\n\r\n"),
    )
}

#[test]
fn host_spellings_of_a_protected_host_reach_the_protected_route() {
    let env = host_env();
    let before = env.echo().requests();
    let mut failures = Vec::new();
    for host in [
        "api.example.com",
        "api.example.com.",
        "API.EXAMPLE.COM",
        "Api.Example.Com.:8443",
        "api.example.com:443",
    ] {
        let raw = get_with_host(&env, &format!("Host: {host}\r\n"));
        // No token: the protected route answers 401; the public one would answer 200.
        if status_of(&raw) != 401
            || !raw
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer")
        {
            failures.push(format!(
                "Host: {host} -> {}",
                raw.lines().next().unwrap_or("")
            ));
        }
    }
    assert!(failures.is_empty(), "protected route dodged: {failures:#?}");
    assert_eq!(env.echo().requests(), before, "nothing reached the backend");
    // Another host still gets the public route.
    let raw = get_with_host(&env, "Host: www.example.com\r\n");
    assert_eq!(status_of(&raw), 200, "{raw}");
}

#[test]
fn invalid_or_missing_host_is_400() {
    let env = host_env();
    let before = env.echo().requests();
    let mut failures = Vec::new();
    for host_line in [
        "Host: api.example.com:abc\r\n",
        "Host: api.example.com:99999\r\n",
        "Host: api.example.com:\r\n",
        "Host: api..example.com\r\n",
        "Host: api.example.com..\r\n",
        "Host: [::1\r\n",
        "Host: \r\n",
        // HTTP/1.1 without Host (RFC 9112 section 3.2).
        "",
    ] {
        let raw = get_with_host(&env, host_line);
        let problem = raw.contains("application/problem+json") && raw.contains("bad_host");
        if status_of(&raw) != 400 || !problem {
            failures.push(format!(
                "{host_line:?} -> {}",
                raw.lines().next().unwrap_or("(no answer)")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "not refused with a 400 problem: {failures:#?}"
    );
    assert_eq!(env.echo().requests(), before, "nothing reached the backend");
    // HTTP/1.0 may omit Host: it matches host-less routes only.
    let raw = raw_request(&env, "GET /data/1 HTTP/1.0\r\n\r\n");
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert!(raw.contains(r#""path":"/data/1""#), "{raw}");
}

#[test]
fn h2_authority_is_normalised_too() {
    let env = host_env();
    // HTTP/2 carries the host in :authority (from the URL); the name resolves to the
    // gateway here, and the dev certificate is for localhost, so verification is off.
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .resolve("api.example.com.", env.https)
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = format!("https://API.Example.com.:{}/data/1", env.https.port());
    let status = env.block_on(async { client.get(&url).send().await.unwrap().status().as_u16() });
    assert_eq!(
        status, 401,
        "an h2 request for the protected host (trailing dot) must reach the protected route"
    );
}

#[test]
fn url_and_client_certificate_override_headers_are_stripped() {
    let env = Env::start();
    let spoof = [
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("X_Original_URL", "/admin"),
        ("X_Rewrite_URL", "/admin"),
        (
            "X-Forwarded-Client-Cert",
            "By=spiffe://admin;Hash=00;Subject=\"CN=admin\"",
        ),
        ("X-Client-Cert", "-----BEGIN CERTIFICATE-----"),
        ("X-SSL-Client-Cert", "-----BEGIN CERTIFICATE-----"),
        ("X-SSL-Client-DN", "CN=admin"),
        ("X-SSL-Client-CN", "admin"),
        ("X_Forwarded_Client_Cert", "Subject=\"CN=admin\""),
        ("X_Client_Cert", "x"),
        ("X_SSL_Client_Cert", "x"),
        ("X_SSL_Client_DN", "CN=admin"),
        ("X_SSL_Client_CN", "admin"),
    ];
    let t = env.token(json!({}));
    for (path, token) in [("/public", None), ("/orders/1", Some(t.as_str()))] {
        let r = env.send(reqwest::Method::GET, path, token, &spoof, None, false);
        assert_eq!(r.status, 200, "{path}");
        let leaked: Vec<String> = spoof
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .filter(|k| !r.echoed(k).is_empty())
            .collect();
        assert!(
            leaked.is_empty(),
            "{path}: override headers reached the backend: {leaked:?}"
        );
    }
}

/// Row filters reading numeric claims: each number goes on exactly as the token's JSON
/// wrote it (no float rounding that makes two tenants one).
#[test]
fn numeric_claims_render_exactly() {
    let env = Env::with(EnvOptions {
        routes: r#"
[roles.data-steward]
groups = ["sg-data-stewards"]

[[routes]]
name = "tenant"
path_prefix = "/tenant"
upstream = "echo"
allow_roles = ["data-steward"]
[[routes.row_filters]]
header = "X-Tenant"
value = "tenant={claims.tenant}"
"#
        .into(),
        ..EnvOptions::default()
    });
    // Signed from JSON text, so the number is spelt in the token exactly as here.
    let key = env.issuer().key(gatehouse::devkit::KeyAlg::RS256);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mint = |number: &str| {
        key.sign_raw_payload(&format!(
            r#"{{"iss":"{}","aud":"{AUDIENCE}","sub":"alice","groups":["sg-data-stewards"],"exp":{exp},"tenant":{number}}}"#,
            env.issuer().issuer_url()
        ))
    };
    let cases = [
        ("1180591620717411303424", "tenant=1180591620717411303424"),
        ("1180591620717411303425", "tenant=1180591620717411303425"),
        ("18446744073709551616", "tenant=18446744073709551616"),
        ("42", "tenant=42"),
        ("-7", "tenant=-7"),
        ("0.1", "tenant=0.1"),
        ("2.50", "tenant=2.50"),
        // The one normalisation: an exponent is written `e+N` / `e-N`.
        ("1e3", "tenant=1e%2B3"),
        ("-1.5E+2", "tenant=-1.5e%2B2"),
    ];
    let mut failures = Vec::new();
    for (number, want) in cases {
        let t = mint(number);
        let r = env.get("/tenant/x", Some(&t), false);
        let got = if r.status == 200 {
            r.echoed("x-tenant")
        } else {
            vec![format!("status {}", r.status)]
        };
        if got != vec![want.to_string()] {
            failures.push(format!("{number}: {got:?}, want {want}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `X-Forwarded-For` from a trusted proxy (here the test client's own address) is kept and
/// extended; from anyone else it is replaced (SPEC section 3 step 7).
#[test]
fn forwarded_for_is_extended_only_from_trusted_proxies() {
    let trusting = Env::with(EnvOptions {
        server_extra: "trusted_proxies = [\"127.0.0.0/8\"]\n".into(),
        ..EnvOptions::default()
    });
    let r = trusting.send(
        reqwest::Method::GET,
        "/public/x",
        None,
        &[("x-forwarded-for", "198.51.100.7, 10.1.1.1")],
        None,
        false,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.echoed("x-forwarded-for"),
        ["198.51.100.7, 10.1.1.1, 127.0.0.1"]
    );
    let plain = Env::start();
    let r = plain.send(
        reqwest::Method::GET,
        "/public/x",
        None,
        &[("x-forwarded-for", "198.51.100.7")],
        None,
        false,
    );
    assert_eq!(
        r.echoed("x-forwarded-for"),
        ["127.0.0.1"],
        "a spoofed chain is replaced"
    );
}

/// The server's cipher suite order decides, not the client's (TLS scanners report a
/// server that follows the client: testssl.sh "NOT a cipher order configured"). A client
/// that lists the suites in reverse still gets the server's first one it supports, on
/// TLS 1.3 and on TLS 1.2.
#[test]
fn server_cipher_order_decides() {
    use std::sync::Arc;
    let env = Env::start();
    let process = rustls::crypto::CryptoProvider::get_default()
        .expect("the gateway installed a provider")
        .clone();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut provider = (*process).clone();
        // Suites for this version that an ECDSA server certificate can use.
        provider.cipher_suites.retain(|s| {
            s.version() == version
                && match s {
                    rustls::SupportedCipherSuite::Tls12(s12) => s12
                        .sign
                        .contains(&rustls::SignatureScheme::ECDSA_NISTP256_SHA256),
                    rustls::SupportedCipherSuite::Tls13(_) => true,
                }
        });
        let server_first = provider.cipher_suites[0].suite();
        provider.cipher_suites.reverse();
        assert_ne!(provider.cipher_suites[0].suite(), server_first);
        let mut roots = rustls::RootCertStore::empty();
        for c in gatehouse::tls::parse_certs(env.pki.ca.cert_pem.as_bytes()).unwrap() {
            roots.add(c).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let negotiated = env.block_on(async {
            let tcp = tokio::net::TcpStream::connect(env.https).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = connector.connect(name, tcp).await.unwrap();
            tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
        });
        assert_eq!(negotiated, server_first, "{version:?}");
    }
}
