//! How a request's target and Host choose a route, end to end: every spelling a backend
//! would read as another path or host (percent-encoded letters, path parameters, dot
//! segments, encoded separators, non-origin-form targets, Host spellings and absolute-form
//! authorities) either reaches the route the backend will serve or is refused with 400.

mod common;

use common::*;
use serde_json::json;

/// A specific admin route, a specific orders route with a row filter, and a catch-all
/// for any authenticated caller: a common layout ("everything else: just be logged in").
fn layered_env() -> Env {
    Env::with(EnvOptions {
        routes: LAYERED_ROUTES.to_string(),
        ..EnvOptions::default()
    })
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

/// Percent-encoded unreserved characters (`/%61dmin`, `/%6Frders`) are decoded before routing:
/// backends decode them to /admin and /orders, so they must not land on the catch-all.
#[test]
fn percent_encoded_unreserved_chars_do_not_dodge_a_route() {
    let env = layered_env();
    // alice: data-steward, not admin, region eu-west.
    let t = env.token(json!({}));
    let mut failures = Vec::new();
    for p in ["/%61dmin/users", "/%41dmin", "/%6Frders/7", "/o%72ders"] {
        let r = env.get(p, Some(&t), false);
        let echoed_filter = if r.status == 200 {
            r.echoed("x-row-filter")
        } else {
            vec![]
        };
        // Acceptable: 400 (refused), or 403 on the admin route, or 200 *with* the orders
        // row filter. Not acceptable: 200 from the catch-all without the filter.
        // `/%41dmin` is `/Admin`: another path (paths are case-sensitive), and it is
        // forwarded as exactly that, so routing and backend agree.
        let backend_path = if r.status == 200 {
            r.json()["path"].clone()
        } else {
            json!(null)
        };
        let ok = r.status == 400
            || (p.contains("dmin") && r.status == 403)
            || (p == "/%41dmin" && backend_path == json!("/Admin"))
            || (p.contains("ders") && echoed_filter == vec!["region=eu-west".to_string()]);
        if !ok {
            failures.push(format!(
                "{p}: status {} row filter {:?} (backend path {:?})",
                r.status,
                echoed_filter,
                if r.status == 200 {
                    r.json()["path"].clone()
                } else {
                    json!(null)
                }
            ));
        }
    }
    assert!(failures.is_empty(), "routing bypass: {failures:#?}");
}

/// Path parameters (`/admin;x`, `/orders;jsessionid=1/7`, `/rest/..;/admin`) do not dodge a
/// route: Tomcat, Jetty and Spring strip `;...` (and resolve `..;`) and serve /admin there.
#[test]
fn matrix_parameters_do_not_dodge_a_route() {
    let env = layered_env();
    let t = env.token(json!({}));
    let mut failures = Vec::new();
    for p in [
        "/admin;x=1",
        "/admin;/users",
        "/orders;jsessionid=1/7",
        "/rest/..;/admin",
        "/rest/.;/orders/7",
    ] {
        let r = env.get(p, Some(&t), false);
        if r.status == 200 && r.echoed("x-row-filter").is_empty() {
            failures.push(format!(
                "{p}: 200 from route catch-all, backend path {}",
                r.json()["path"]
            ));
        }
    }
    assert!(failures.is_empty(), "routing bypass: {failures:#?}");
}

/// A request-target that is neither origin- nor absolute-form (`x:/admin`, `admin`) is
/// refused: java.net.URI and Python's urlsplit read its path as /admin.
#[test]
fn non_origin_form_targets_are_refused() {
    let env = layered_env();
    let t = env.token(json!({}));
    let mut failures = Vec::new();
    for target in ["x:/admin/users", "foo:/orders/7", "admin"] {
        let raw = raw_get(&env, target, Some(&t), "");
        // Must be the gateway's own 400 (problem+json), not something the backend said
        // after the request was routed and forwarded.
        let own_400 = status_of(&raw) == 400 && raw.contains("urn:gatehouse:problem:");
        if !own_400 {
            let head = raw.lines().next().unwrap_or_default().to_string();
            failures.push(format!("{target}: forwarded, backend answered {head:?}"));
        }
    }
    let routed: Vec<String> = env
        .audit_lines()
        .iter()
        .map(|l| {
            format!(
                "route={} path={} decision={}",
                l["route"], l["path"], l["decision"]
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "odd targets routed as '/': {failures:#?}\naudit: {routed:#?}"
    );
}

/// Encoded separators, NUL, backslash, dot segments in every spelling: refused.
#[test]
fn encoded_path_tricks_are_refused() {
    let env = layered_env();
    let t = env.token(json!({}));
    for p in [
        "/rest/..%2fadmin",
        "/rest/%2e%2e/admin",
        "/rest/%2E./admin",
        "/rest/.%2e/admin",
        "/rest%5c..%5cadmin",
        "/admin%00",
        "/rest/../admin",
        "/rest//admin",
    ] {
        let raw = raw_get(&env, p, Some(&t), "");
        assert_eq!(status_of(&raw), 400, "{p}: {raw}");
    }
}

/// Absolute-form targets whose authority differs from Host, and duplicate Host headers,
/// are refused before routing.
#[test]
fn host_confusion_is_refused() {
    let env = Env::with(EnvOptions {
        routes: r#"
[[routes]]
name = "pub-localhost"
host = "localhost"
path_prefix = "/"
upstream = "echo"
auth = "none"
"#
        .into(),
        ..EnvOptions::default()
    });
    let before = env.echo().requests();
    for req in [
        "GET https://internal-admin.example/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: localhost\r\nHost: internal-admin.example\r\nConnection: close\r\n\r\n",
        "GET http://localhost@internal-admin.example/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        "GET http:/\\internal-admin.example/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ] {
        let raw = raw_request(&env, req);
        assert_eq!(status_of(&raw), 400, "{req:?}: {raw}");
    }
    assert_eq!(env.echo().requests(), before);
    // A matching absolute-form target is fine and reaches the backend with that Host.
    let raw = raw_request(
        &env,
        "GET https://localhost/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert!(raw.contains(r#"["host","localhost"]"#), "{raw}");
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
    // The backend's request is HTTP/1.1 and needs a Host: the upstream's address (the
    // pool's own name for the address never leaks into it).
    let backend = env.echo.as_ref().unwrap().addr().to_string();
    assert!(
        raw.contains(&format!(r#"["host","{backend}"]"#)),
        "the backend must see Host: {backend}: {raw}"
    );
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
