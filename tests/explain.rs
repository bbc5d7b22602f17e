//! `gatehouse explain`: allow, every deny reason the offline path reaches, a public route,
//! no route, a row filter that needs percent-encoding, `--claims`, an unreachable issuer,
//! exit codes and bad input. Issuers use `jwks_file` keys (ES256, fast) so no network is
//! needed, except the deliberately unreachable one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse::devkit::{jwks, DevPki, IssuerOptions, KeyAlg, MockIssuer, SigningKey};
use gatehouse::explain::{self, Options};
use serde_json::{json, Value};

const ISS: &str = "https://corp.example";
const AUD: &str = "api://orders";

/// Server, issuers and upstream of the explain config; the example policy and two more
/// routes follow (`config()`).
const HEAD: &str = r#"
[server]
listen = "127.0.0.1:8443"
cert = "certs/server.crt"
key = "certs/server.key"

[issuers.corp]
issuer = "https://corp.example"
jwks_file = "corp.jwks.json"
audiences = ["api://orders"]
algorithms = ["ES256"]

[issuers.down]
issuer = "https://down.example"
jwks_uri = "https://127.0.0.1:1/keys"
audiences = ["api://orders"]

[upstreams.echo]
addrs = ["127.0.0.1:9443"]
sni = "localhost"
ca = "certs/ca.crt"
client_cert = "certs/client.crt"
client_key = "certs/client.key"
"#;

const MORE_ROUTES: &str = r#"
[[routes]]
name = "tenants"
path_prefix = "/tenants"
upstream = "echo"
allow_roles = []
[[routes.row_filters]]
header = "X-Tenant-Filter"
value = "tenant={claims.org.tenant};user={sub}"

[[routes]]
name = "down-only"
path_prefix = "/down"
upstream = "echo"
issuers = ["down"]
"#;

/// The explain config: the example policy with its orders-read route bound to
/// api.example.com, a tenants route and a route only the unreachable issuer serves.
fn config_text() -> String {
    let policy = include_str!("fixtures/policy.toml");
    let read = "name = \"orders-read\"\n";
    assert_eq!(policy.matches(read).count(), 1);
    let policy = policy.replace(read, &format!("{read}host = \"api.example.com\"\n"));
    format!("{HEAD}\n{policy}\n{MORE_ROUTES}")
}

struct Fx {
    dir: tempfile::TempDir,
    key: SigningKey,
    pki: DevPki,
}

impl Fx {
    fn new() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::generate().unwrap();
        pki.write_to(&dir.path().join("certs")).unwrap();
        let key = SigningKey::generate(KeyAlg::ES256).unwrap();
        std::fs::write(dir.path().join("corp.jwks.json"), jwks(&[&key]).to_string()).unwrap();
        std::fs::write(dir.path().join("gatehouse.toml"), config_text()).unwrap();
        Fx { dir, key, pki }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("gatehouse.toml")
    }

    /// Alice, data steward in eu-west, read scope, password login; `extra` overrides
    /// (`null` removes a claim).
    fn claims(&self, extra: Value) -> Value {
        let now = now();
        let mut c = json!({
            "iss": ISS,
            "aud": AUD,
            "sub": "alice",
            "email": "alice@example.com",
            "groups": ["sg-data-stewards"],
            "region": "eu-west",
            "scope": "orders.read",
            "amr": ["pwd"],
            "iat": now,
            "exp": now + 300,
        });
        let m = c.as_object_mut().unwrap();
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                m.remove(k);
            } else {
                m.insert(k.clone(), v.clone());
            }
        }
        c
    }

    fn token(&self, extra: Value) -> String {
        self.key.sign(&self.claims(extra))
    }

    /// Runs `explain --json` with a token; returns (json, exit code, raw stdout).
    fn run_token(&self, method: &str, url: &str, token: &str) -> (Value, i32, String) {
        self.run(Some(token), None, method, url, true)
    }

    fn run(
        &self,
        token: Option<&str>,
        claims: Option<&Path>,
        method: &str,
        url: &str,
        as_json: bool,
    ) -> (Value, i32, String) {
        let opts = Options {
            key_wait: Duration::from_secs(1),
        };
        let (out, err, code) =
            explain::run(&self.config(), token, claims, method, url, as_json, &opts);
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            assert!(!out.contains(t) && !err.contains(t), "token printed back");
            // Nor the signature or payload part on their own.
            for part in t.split('.').skip(1) {
                assert!(!out.contains(part), "token part printed back");
            }
        }
        let v = if as_json && code != 1 {
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"))
        } else {
            Value::Null
        };
        (v, code, out + &err)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const ORDERS: &str = "https://api.example.com/orders/7?page=2";

fn assert_denied(v: &Value, code: i32, reason: &str, status: u16) {
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(v["decision"], "deny", "{v:#}");
    assert_eq!(v["reason"], reason, "{v:#}");
    assert_eq!(v["status"], status, "{v:#}");
    assert_eq!(v["forwarded"], false);
}

#[test]
fn allow_shows_route_roles_headers_and_status() {
    let fx = Fx::new();
    let token = fx.token(json!({}));
    let (v, code, _) = fx.run_token("GET", ORDERS, &token);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["route"], "orders-read");
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["reason"], Value::Null);
    assert_eq!(v["status"], 200);
    assert_eq!(v["roles"], json!(["data-steward"]));
    assert_eq!(
        v["role_sources"],
        json!([{"role": "data-steward", "source": "group", "group": "sg-data-stewards"}])
    );
    assert_eq!(v["headers"]["x-auth-subject"], "alice");
    assert_eq!(v["headers"]["x-auth-roles"], "data-steward");
    assert_eq!(v["headers"]["x-auth-issuer"], "https://corp.example");
    assert_eq!(v["headers"]["x-row-filter"], "region=eu-west");
    assert_eq!(v["upstream"], "echo");
    let checks = v["token_checks"].as_array().unwrap();
    assert!(checks.iter().all(|c| c["result"] == "pass"), "{checks:#?}");
    assert!(checks.iter().any(
        |c| c["check"] == "issuer keys" && c["detail"].as_str().unwrap().contains("jwks_file")
    ));
    assert!(v["removed_headers"]
        .as_array()
        .unwrap()
        .contains(&json!("authorization")));

    // The text form walks the same steps and redacts the token.
    let (_, code, out) = fx.run(Some(&token), None, "get", ORDERS, false);
    assert_eq!(code, 0, "{out}");
    for want in [
        "matched orders-read",
        "from group sg-data-stewards",
        "x-row-filter: region=eu-west",
        "decision: allow",
        "status: 200 forwarded to upstream echo",
        &explain::redact(&token),
    ] {
        assert!(out.contains(want), "{want:?} in:\n{out}");
    }
}

#[test]
fn client_role_comes_from_client_id_and_admin_skips_filter() {
    let fx = Fx::new();
    let t = fx.token(
        json!({"sub": "billing-sync", "client_id": "billing-sync", "email": null, "groups": []}),
    );
    let (v, code, _) = fx.run_token("GET", ORDERS, &t);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        v["role_sources"],
        json!([{"role": "integration", "source": "client", "client_id": "billing-sync"}])
    );
    assert_eq!(v["headers"]["x-auth-client-id"], "billing-sync");
    let t = fx.token(json!({"groups": ["sg-mdm-admins"], "roles": ["data-steward"]}));
    let (v, code, _) = fx.run_token("GET", ORDERS, &t);
    assert_eq!(code, 0);
    assert_eq!(v["roles"], json!(["admin", "data-steward"]));
    assert_eq!(v["role_sources"][1]["source"], "claim");
    assert_eq!(
        v["headers"]["x-row-filter"],
        Value::Null,
        "admin is excepted"
    );
}

#[test]
fn bad_signature_same_kid_other_key() {
    let fx = Fx::new();
    let kid = fx.key.jwk()["kid"].as_str().unwrap().to_string();
    let forger = SigningKey::generate(KeyAlg::ES256).unwrap().with_kid(kid);
    let t = forger.sign(&fx.claims(json!({})));
    let (v, code, _) = fx.run_token("GET", ORDERS, &t);
    assert_denied(&v, code, "bad_signature", 401);
    let sig = v["token_checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "signature")
        .unwrap()
        .clone();
    assert_eq!(sig["result"], "fail");
}

#[test]
fn expired_and_wrong_audience() {
    let fx = Fx::new();
    let t = fx.token(json!({"exp": now() - 3600, "iat": now() - 7200}));
    let (v, code, _) = fx.run_token("GET", ORDERS, &t);
    assert_denied(&v, code, "expired", 401);
    let t = fx.token(json!({"aud": "api://billing"}));
    let (v, code, _) = fx.run_token("GET", ORDERS, &t);
    assert_denied(&v, code, "wrong_audience", 401);
}

#[test]
fn insufficient_role_scope_and_mfa() {
    let fx = Fx::new();
    let t = fx.token(json!({"groups": []}));
    let (v, code, _) = fx.run_token("GET", ORDERS, &t);
    assert_denied(&v, code, "insufficient_role", 403);
    assert_eq!(v["authorization"][0]["result"], "fail");
    assert_eq!(v["authorization"][1]["result"], "not_reached");

    let t = fx.token(json!({"scope": "profile"}));
    let (v, code, _) = fx.run_token("GET", ORDERS, &t);
    assert_denied(&v, code, "insufficient_scope", 403);

    let t = fx.token(json!({"scope": "orders.write"}));
    let (v, code, out) = fx.run_token("POST", "https://api.example.com/orders", &t);
    assert_denied(&v, code, "mfa_required", 403);
    assert_eq!(v["route"], "orders-update", "{out}");
    let t = fx.token(json!({"scope": "orders.write", "amr": ["pwd", "mfa"]}));
    let (v, code, _) = fx.run_token("POST", "https://api.example.com/orders", &t);
    assert_eq!(code, 0, "{v:#}");
}

#[test]
fn missing_filter_claim_denies() {
    let fx = Fx::new();
    let t = fx.token(json!({"region": null}));
    let (v, code, _) = fx.run_token("GET", ORDERS, &t);
    assert_denied(&v, code, "missing_claim", 403);
    assert!(v["detail"].as_str().unwrap().contains("region"));
}

#[test]
fn row_filter_values_are_percent_encoded() {
    let fx = Fx::new();
    let t = fx.token(json!({
        "sub": "alice@example.com",
        "org": {"tenant": "ACME Corp/EU,1\r\nX-Evil: 1"},
    }));
    let (v, code, _) = fx.run_token("DELETE", "https://other.example/tenants/9", &t);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["route"], "tenants");
    assert_eq!(
        v["headers"]["x-tenant-filter"],
        "tenant=ACME%20Corp%2FEU%2C1%0D%0AX-Evil%3A%201;user=alice%40example.com"
    );
}

#[test]
fn no_route_bad_path_and_public_route() {
    let fx = Fx::new();
    let t = fx.token(json!({}));
    // The orders-read route is bound to api.example.com.
    let (v, code, out) = fx.run_token("GET", "https://other.example/orders/7", &t);
    assert_denied(&v, code, "no_route", 404);
    assert_eq!(v["route"], Value::Null);
    assert!(out.contains("host is not api.example.com"), "{out}");
    let (v, code, _) = fx.run_token("GET", "https://api.example.com/nothing", &t);
    assert_denied(&v, code, "no_route", 404);
    let (v, code, _) = fx.run_token("GET", "https://api.example.com/public/../orders", &t);
    assert_denied(&v, code, "bad_path", 400);

    let (v, code, _) = fx.run_token("GET", "https://api.example.com/public", &t);
    assert_eq!(code, 0);
    assert_eq!(v["decision"], "public");
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "status");
    assert_eq!(v["reason"], Value::Null);
    assert_eq!(v["headers"], json!({"x-forwarded-proto": "https"}));
}

/// explain routes through the gateway's own routing step: a percent-encoded letter is
/// normalised before matching, as the gateway does (it used to route the raw path and
/// answer 404 where the gateway forwarded to orders-read).
#[test]
fn percent_encoded_path_routes_as_the_gateway_does() {
    let fx = Fx::new();
    let t = fx.token(json!({}));
    let (v, code, _) = fx.run_token("GET", "https://api.example.com/%6Frders/7", &t);
    assert_eq!(v["route"], "orders-read", "{v}");
    assert_eq!(code, 0, "{v}");
    let (v, _, _) = fx.run_token("GET", "https://API.example.com/orders/7", &t);
    assert_eq!(v["route"], "orders-read", "{v}");
}

#[test]
fn claims_skip_signature_but_check_the_rest() {
    let fx = Fx::new();
    let file = fx.dir.path().join("claims.json");
    std::fs::write(&file, fx.claims(json!({})).to_string()).unwrap();
    let (v, code, _) = fx.run(None, Some(&file), "GET", ORDERS, true);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["decision"], "allow");
    let checks = v["token_checks"].as_array().unwrap();
    let sig = checks.iter().find(|c| c["check"] == "signature").unwrap();
    assert_eq!(sig["result"], "skipped");
    assert!(sig["detail"].as_str().unwrap().contains("--claims"));
    let (_, _, out) = fx.run(None, Some(&file), "GET", ORDERS, false);
    assert!(out.contains("skipped"), "{out}");

    for (extra, reason) in [
        (json!({"exp": now() - 3600}), "expired"),
        (json!({"aud": ["x", "y"]}), "wrong_audience"),
        (json!({"iss": "https://evil.example"}), "wrong_issuer"),
        (json!({"nbf": now() + 3600}), "not_yet_valid"),
        (json!({"exp": null}), "malformed_token"),
    ] {
        std::fs::write(&file, fx.claims(extra).to_string()).unwrap();
        let (v, code, _) = fx.run(None, Some(&file), "GET", ORDERS, true);
        assert_denied(&v, code, reason, 401);
    }
}

#[test]
fn unreachable_issuer_is_reported_not_a_crash() {
    let fx = Fx::new();
    let other = SigningKey::generate(KeyAlg::ES256).unwrap();
    let t = other.sign(&fx.claims(json!({"iss": "https://down.example"})));
    let (v, code, out) = fx.run_token("GET", "https://api.example.com/down/1", &t);
    assert_denied(&v, code, "issuer_unavailable", 503);
    assert!(out.contains("jwks_uri https://127.0.0.1:1/keys"), "{out}");
}

#[test]
fn bad_input_exits_1() {
    let fx = Fx::new();
    let t = fx.token(json!({}));
    let claims = fx.dir.path().join("claims.json");
    std::fs::write(&claims, "[1, 2]").unwrap();
    let cases: Vec<(Option<&str>, Option<&Path>, &str, &str)> = vec![
        (None, None, "GET", ORDERS),
        (Some(&t), Some(&claims), "GET", ORDERS),
        (None, Some(&claims), "GET", ORDERS),
        (None, Some(Path::new("/nonexistent.json")), "GET", ORDERS),
        (Some(&t), None, "GET", "orders/7"),
        (Some(&t), None, "GE T", ORDERS),
        (Some(""), None, "GET", ORDERS),
    ];
    for (token, claims, method, url) in cases {
        let (_, code, out) = fx.run(token, claims, method, url, true);
        assert_eq!(code, 1, "{token:?} {claims:?} {method} {url}: {out}");
    }
    let (out, err, code) = explain::run(
        Path::new("/nonexistent/gatehouse.toml"),
        Some(&t),
        None,
        "GET",
        ORDERS,
        false,
        &Options::default(),
    );
    assert_eq!(code, 1);
    assert!(out.is_empty() && err.contains("/nonexistent/gatehouse.toml"));
    // A token from a file, `Bearer ` prefix tolerated.
    let tf = fx.dir.path().join("token.txt");
    std::fs::write(&tf, format!("Bearer {t}\n")).unwrap();
    let (v, code, _) = fx.run(
        Some(&format!("@{}", tf.display())),
        None,
        "GET",
        ORDERS,
        true,
    );
    assert_eq!(code, 0, "{v:#}");
}

/// With `--token`, keys come from the issuer's configured source: here OIDC discovery
/// against the devkit issuer over HTTPS.
#[test]
fn token_keys_from_discovery() {
    let fx = Fx::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let idp = rt
        .block_on(MockIssuer::start(
            &fx.pki.server,
            IssuerOptions {
                audience: AUD.into(),
                algs: vec![KeyAlg::ES256],
                ..IssuerOptions::default()
            },
        ))
        .unwrap();
    let config = config_text().replace(
        "[issuers.down]",
        &format!(
            "[issuers.idp]\nissuer = \"{}\"\ndiscovery = true\nca = \"certs/ca.crt\"\naudiences = [\"{AUD}\"]\n\n[issuers.down]",
            idp.issuer_url()
        ),
    );
    std::fs::write(fx.config(), config).unwrap();
    let t = idp.mint(
        KeyAlg::ES256,
        json!({"groups": ["sg-data-stewards"], "region": "eu-west", "scope": "orders.read"}),
    );
    let (v, code, out) = fx.run_token("GET", ORDERS, &t);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["decision"], "allow");
    let keys = v["token_checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "issuer keys")
        .unwrap()
        .clone();
    assert!(
        keys["detail"].as_str().unwrap().starts_with("discovery "),
        "{keys}"
    );
    assert!(idp.jwks_requests() >= 1);
    rt.block_on(idp.shutdown());
}
