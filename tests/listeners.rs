//! End to end on the listeners: the plaintext redirect listener, HSTS, the TLS version
//! floor and ALPN on the HTTPS listener, the admin listener, and `serve` as a real
//! process (exit codes, listeners `check` must refuse or warn about) and the certificate
//! expiry metric.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

// ---- helpers ------------------------------------------------------------------------

/// Sends `request` over plain TCP and returns the whole response text.
fn plain_http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn header_of(raw: &str, name: &str) -> Option<String> {
    let head = raw.split("\r\n\r\n").next().unwrap_or("");
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// A rustls client trusting the dev CA, limited to `versions`, offering `alpn`.
fn tls_client(
    env: &Env,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in gatehouse::tls::parse_certs(env.pki.ca.cert_pem.as_bytes()).unwrap() {
        roots.add(c).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

type Handshake = std::io::Result<(
    Option<rustls::ProtocolVersion>,
    Option<Vec<u8>>,
    Option<String>,
)>;

/// Connects with `connector`; on success returns (version, ALPN, and the raw response
/// to `request` if one was given).
fn tls_exchange(
    env: &Env,
    connector: tokio_rustls::TlsConnector,
    request: Option<&str>,
) -> Handshake {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = env.https;
    env.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::other("handshake timed out"))??;
        let (_, conn) = tls.get_ref();
        let version = conn.protocol_version();
        let alpn = conn.alpn_protocol().map(|p| p.to_vec());
        let mut resp = None;
        if let Some(r) = request {
            tls.write_all(r.as_bytes()).await?;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
            resp = Some(String::from_utf8_lossy(&out).into_owned());
        }
        Ok((version, alpn, resp))
    })
}

const GET_PUBLIC: &str = "GET /public HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/// An env with its config written and no gateway running.
fn unstarted(server_extra: &str) -> Env {
    Env::with(EnvOptions {
        server_extra: server_extra.to_string(),
        start_gateway: false,
        ..EnvOptions::default()
    })
}

fn admin_get(env: &Env, path: &str) -> (u16, String, Option<String>) {
    let url = env.admin_url(path);
    env.block_on(async move {
        let r = reqwest::get(url).await.unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        (status, r.text().await.unwrap(), ct)
    })
}

// ---- redirect listener ----------------------------------------------------------------

#[test]
fn redirect_listener_sends_308_to_https_and_never_proxies() {
    let env = Env::start();
    let addr = env
        .gw()
        .redirect_addr
        .expect("redirect listener configured");
    let port = env.https.port();
    let raw = plain_http(
        addr,
        "GET /orders/7?x=1 HTTP/1.1\r\nHost: api.example.com:8080\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&raw), 308, "{raw}");
    assert_eq!(
        header_of(&raw, "location").as_deref(),
        Some(format!("https://api.example.com:{port}/orders/7?x=1").as_str())
    );
    // Any method, a body, a public path: still only a redirect.
    let raw = plain_http(
        addr,
        "POST /public/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(status_of(&raw), 308, "{raw}");
    assert_eq!(
        header_of(&raw, "location").as_deref(),
        Some(format!("https://localhost:{port}/public/x").as_str())
    );
    // A Host that could bend the URL is refused.
    let raw = plain_http(
        addr,
        "GET / HTTP/1.1\r\nHost: evil.com/x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&raw), 400, "{raw}");
    assert_eq!(
        env.echo().requests(),
        0,
        "the redirect listener never proxies"
    );
}

// ---- HSTS -------------------------------------------------------------------------------

#[test]
fn hsts_on_every_https_response() {
    let env = Env::start();
    for h2 in [false, true] {
        for (path, status) in [("/public", 200), ("/orders/7", 401), ("/nothing", 404)] {
            let r = env.get(path, None, h2);
            assert_eq!(r.status, status, "{path}");
            assert_eq!(
                r.header("strict-transport-security").as_deref(),
                Some("max-age=31536000"),
                "{path} h2={h2}"
            );
        }
    }
    // And on a denial with a token (403).
    let token = env.token(json!({"groups": [], "scope": "orders.read"}));
    let r = env.get("/orders/7", Some(&token), false);
    assert_eq!(r.status, 403);
    assert!(r.header("strict-transport-security").is_some());
}

#[test]
fn hsts_max_age_zero_turns_it_off() {
    let env = Env::with(EnvOptions {
        server_extra: "hsts_max_age_s = 0".into(),
        ..EnvOptions::default()
    });
    for h2 in [false, true] {
        for (path, status) in [("/public", 200), ("/orders/7", 401), ("/nothing", 404)] {
            let r = env.get(path, None, h2);
            assert_eq!(r.status, status, "{path}");
            assert_eq!(
                r.header("strict-transport-security"),
                None,
                "{path} h2={h2}"
            );
        }
    }
}

// ---- TLS version floor and ALPN -------------------------------------------------------------

#[test]
fn tls12_client_accepted_by_default() {
    let env = Env::start();
    let (version, _, resp) = tls_exchange(
        &env,
        tls_client(&env, &[&rustls::version::TLS12], &[b"http/1.1"]),
        Some(GET_PUBLIC),
    )
    .expect("TLS 1.2 handshake with the default floor");
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
    let resp = resp.unwrap();
    assert_eq!(status_of(&resp), 200, "{resp}");
}

#[test]
fn tls13_floor_refuses_tls12_in_a_separate_process() {
    // The TLS provider is process-global, so the 1.3 floor runs in its own process.
    let env = unstarted("tls_min_version = \"1.3\"");
    let mut p = Proc::serve(&env, "tls13");
    p.wait_listening(env.https);

    let err = tls_exchange(
        &env,
        tls_client(&env, &[&rustls::version::TLS12], &[b"http/1.1"]),
        Some(GET_PUBLIC),
    );
    assert!(err.is_err(), "a TLS 1.2-only client must fail: {err:?}");

    let (version, alpn, resp) = tls_exchange(
        &env,
        tls_client(&env, &[&rustls::version::TLS13], &[b"http/1.1"]),
        Some(GET_PUBLIC),
    )
    .expect("TLS 1.3 handshake");
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let resp = resp.unwrap();
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.contains("\"path\":\"/public\""), "{resp}");

    // SIGTERM: drain and exit 0.
    assert_eq!(unsafe { libc::kill(p.pid(), libc::SIGTERM) }, 0);
    let code = p.wait_code(Duration::from_secs(20));
    assert_eq!(code, Some(0), "stderr:\n{}", p.stderr());
}

#[test]
fn alpn_selects_h2_or_http11() {
    let env = Env::start();
    let both = [&rustls::version::TLS12, &rustls::version::TLS13];
    let (_, alpn, _) = tls_exchange(&env, tls_client(&env, &both, &[b"h2"]), None).unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (_, alpn, _) = tls_exchange(&env, tls_client(&env, &both, &[b"http/1.1"]), None).unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (_, alpn, _) =
        tls_exchange(&env, tls_client(&env, &both, &[b"h2", b"http/1.1"]), None).unwrap();
    assert_eq!(
        alpn.as_deref(),
        Some(&b"h2"[..]),
        "h2 preferred when offered"
    );
    for (h2, v) in [
        (true, reqwest::Version::HTTP_2),
        (false, reqwest::Version::HTTP_11),
    ] {
        let r = env.get("/public", None, h2);
        assert_eq!(r.status, 200);
        assert_eq!(r.version, v);
    }
}

// ---- admin listener --------------------------------------------------------------------------

#[test]
fn admin_listener_health_ready_metrics_and_404() {
    let env = Env::start();
    let (s, body, _) = admin_get(&env, "/healthz");
    assert_eq!(s, 200, "{body}");
    let (s, body, _) = admin_get(&env, "/readyz");
    assert_eq!(s, 200, "keys are loaded: {body}");
    // Some traffic so that labelled families have samples.
    assert_eq!(env.get("/public", None, false).status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let (s, body, ct) = admin_get(&env, "/metrics");
        assert_eq!(s, 200);
        assert!(ct.unwrap().starts_with("text/plain"));
        if body.contains("gatehouse_requests_total{") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for family in [
        "gatehouse_requests_total",
        "gatehouse_request_duration_seconds",
        "gatehouse_upstream_requests_total",
        "gatehouse_upstream_duration_seconds",
        "gatehouse_jwks_refresh_total",
        "gatehouse_jwks_keys",
        "gatehouse_decision_cache_hits_total",
        "gatehouse_decision_cache_misses_total",
        "gatehouse_decision_cache_entries",
        "gatehouse_certificate_expiry_timestamp_seconds",
        "gatehouse_audit_write_errors_total",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "{family} missing from /metrics:\n{metrics}"
        );
    }
    assert!(metrics.contains("gatehouse_jwks_keys{issuer=\"corp\"}"));
    let (s, _, _) = admin_get(&env, "/nope");
    assert_eq!(s, 404);
    let (s, _, _) = admin_get(&env, "/orders/7");
    assert_eq!(s, 404, "the admin listener never proxies");
    assert_eq!(env.echo().requests(), 1);
}

#[test]
fn issuer_down_since_start_is_not_ready_and_503_on_protected_routes() {
    let env = Env::with(EnvOptions {
        issuer_down_at_start: true,
        ..EnvOptions::default()
    });
    let (s, body, _) = admin_get(&env, "/readyz");
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("corp"), "the reason names the issuer: {body}");
    let (s, _, _) = admin_get(&env, "/healthz");
    assert_eq!(s, 200, "alive while not ready");

    let token = env.token(json!({}));
    for h2 in [false, true] {
        let r = env.get("/orders/7", Some(&token), h2);
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        let secs: u64 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("Retry-After in seconds");
        assert!(secs > 0);
        let p = r.json();
        assert_eq!(p["status"], 503);
        assert_eq!(
            p["request_id"].as_str(),
            r.header("x-request-id").as_deref()
        );
        assert!(!String::from_utf8_lossy(&r.body).contains(&token));
    }
    // Public routes do not need the issuer.
    assert_eq!(env.get("/public", None, false).status, 200);
    assert_eq!(env.echo().requests(), 1);

    // The issuer comes back: keys load on a retry and the gateway turns ready.
    env.issuer().set_down(false);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (s, body, _) = admin_get(&env, "/readyz");
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never became ready after the issuer came back: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(env.get("/orders/7", Some(&token), false).status, 200);
}

// ---- serve as a process: exit codes --------------------------------------------------------------

#[test]
fn serve_with_bad_config_exits_1_naming_file_line_col() {
    // The unknown key lands on line 8 of the generated file (after the seven fixed
    // [server] lines).
    let env = unstarted("listen_backlog = 5");
    let text = std::fs::read_to_string(&env.config).unwrap();
    assert_eq!(text.lines().nth(7), Some("listen_backlog = 5"));
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["serve", "-c"])
        .arg(&env.config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    let at = format!("{}:8:1", env.config.display());
    assert!(stderr.contains(&at), "expected {at} in:\n{stderr}");
    assert!(stderr.contains("listen_backlog"), "{stderr}");
    // Nothing was started.
    assert!(TcpStream::connect_timeout(&env.https, Duration::from_millis(200)).is_err());
}

#[test]
fn serve_with_https_port_in_use_exits_2_naming_the_address() {
    let env = unstarted("");
    let _busy = std::net::TcpListener::bind(env.https).expect("bind the HTTPS port first");
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["serve", "-c"])
        .arg(&env.config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&env.https.to_string()),
        "the message names {}:\n{stderr}",
        env.https
    );
}

/// `serve` refuses the env's config with exit 1 naming `what`, and so does `check`: it
/// must not pass what `serve` cannot start.
fn serve_and_check_refuse(env: &Env, what: &str) {
    let (serve, serve_out) = run_cli(env, "serve");
    assert_eq!(serve, Some(1), "{serve_out}");
    assert!(serve_out.contains(what), "{serve_out}");
    let (check, out) = run_cli(env, "check");
    assert_eq!(
        check,
        Some(1),
        "check passes what serve cannot start: {out}"
    );
}

/// `check` and `serve` both refuse (exit 1) `admin.listen` equal to `server.listen`.
#[test]
fn check_refuses_two_listeners_on_one_address() {
    let env = ops_env(false);
    let admin = admin_addr_of(&env);
    edit_config(
        &env,
        &format!("listen = \"{admin}\""),
        &format!("listen = \"{}\"", env.https),
    );
    serve_and_check_refuse(&env, "admin.listen");
}

/// `check` and `serve` both refuse (exit 1) an `audit.path` that cannot be a directory.
#[test]
fn check_refuses_an_audit_path_serve_cannot_open() {
    let env = ops_env(false);
    edit_config(&env, "path = \"audit\"", "path = \"pseudonym.key/audit\"");
    serve_and_check_refuse(&env, "audit");
}

/// `check` warns when the unauthenticated admin listener is bound off loopback.
#[test]
fn admin_listener_off_loopback_is_warned_about() {
    let env = ops_env(false);
    let admin = admin_addr_of(&env);
    edit_config(
        &env,
        &format!("listen = \"{admin}\""),
        &format!("listen = \"0.0.0.0:{}\"", admin.port()),
    );
    let rt = gatehouse::config::load(&env.config).expect("valid");
    assert!(
        rt.warnings.iter().any(|w| w.contains("admin")),
        "no warning about a public admin listener: {:?}",
        rt.warnings
    );
}

/// The plaintext redirect listener drops a connection that never finishes its request head
/// (slowloris).
#[test]
fn redirect_listener_drops_a_connection_that_never_finishes_its_request() {
    let env = ops_env(true);
    let addr = env.gw().redirect_addr.unwrap();
    assert_eq!(addr, redirect_addr_of(&env));
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: example.com\r\n")
        .unwrap();
    // Longer than hyper's 30 s header timeout and any sane header deadline.
    std::thread::sleep(Duration::from_secs(35));
    let _ = s.write_all(b"\r\n");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    let got = String::from_utf8_lossy(&buf[..n]);
    assert!(
        !got.starts_with("HTTP/1.1 308"),
        "a request trickled over 35 s was still served: {got:?}"
    );
}

/// The redirect's Location always names the Host header's host; tricks in Host or path
/// are 400 or stay in the path.
#[test]
fn redirect_never_bends_the_location_to_another_host() {
    use gatehouse::admin::redirect_response;
    let req = |host: &str, uri: &str| {
        http::Request::builder()
            .uri(uri)
            .header("host", host)
            .body(())
            .unwrap()
    };
    for (host, uri) in [
        ("good.example:80@evil.example", "/"),
        ("good.example\\evil.example", "/"),
        ("good.example/evil", "/"),
        ("good.example:8080:1", "/"),
        ("", "/"),
    ] {
        let r = redirect_response(&req(host, uri), 8443);
        assert_eq!(r.status(), 400, "{host:?}");
    }
    // Path tricks stay in the path: the authority is always the Host header's.
    for uri in [
        "//evil.example/x",
        "/%0d%0aSet-Cookie:x",
        "http://evil.example/y",
    ] {
        let r = redirect_response(&req("good.example", uri), 8443);
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        assert!(
            loc.starts_with("https://good.example:8443/"),
            "{uri}: {loc}"
        );
        assert!(!loc.contains('\r') && !loc.contains('\n'));
    }
}

#[test]
fn certificate_expiry_is_exported_for_every_loaded_certificate() {
    let env = ops_env(true);
    let m = env.metrics();
    for name in [
        "server",
        "upstream.echo.client",
        "upstream.echo.ca",
        "issuer.corp.ca",
    ] {
        let v = metric_value(
            &m,
            "gatehouse_certificate_expiry_timestamp_seconds",
            &[("name", name)],
        );
        assert!(v > chrono::Utc::now().timestamp() as f64, "{name}: {v}");
    }
}

/// The server's cipher suite order decides, not the client's (TLS scanners report a
/// server that follows the client: testssl.sh "NOT a cipher order configured"). A client
/// that lists the suites in reverse still gets the server's first one it supports, on
/// TLS 1.3 and on TLS 1.2.
#[test]
fn server_cipher_order_decides() {
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
