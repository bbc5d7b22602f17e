//! Embedded OIDC issuer over HTTPS, for the demo and the integration tests.
//!
//! Serves discovery (`/.well-known/openid-configuration`), the key set (`/jwks`), an
//! OAuth 2.0 client-credentials token endpoint (`/token`, RFC 6749 §4.4) and token
//! introspection (`/introspect`, RFC 7662). Tests drive the failure modes the gateway must
//! survive through the handle: [`MockIssuer::rotate`] (key rollover), [`MockIssuer::set_down`]
//! (IdP outage: 503 on discovery and JWKS), [`MockIssuer::jwks_requests`] (to prove an
//! unknown-`kid` flood does not turn into a JWKS fetch flood), and [`MockIssuer::mint`] for
//! tokens with arbitrary claims signed by a published key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::keys::{KeyAlg, SigningKey};
use super::pki::CertPair;
use super::serve::{self, Body, Handler, TlsServer};

/// How the issuer is set up at start.
#[derive(Debug, Clone)]
pub struct IssuerOptions {
    /// Listening address; port 0 picks a free one.
    pub addr: SocketAddr,
    /// `aud` of minted and issued tokens.
    pub audience: String,
    /// One current key per algorithm is generated at start.
    pub algs: Vec<KeyAlg>,
    /// Lifetime of minted and issued tokens.
    pub token_ttl_s: u64,
}

impl Default for IssuerOptions {
    fn default() -> Self {
        IssuerOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            audience: "api://gatehouse-demo".to_string(),
            algs: vec![KeyAlg::RS256, KeyAlg::ES256],
            token_ttl_s: 3600,
        }
    }
}

/// Request bodies larger than this are refused; forms here are tiny.
const MAX_FORM_BYTES: usize = 64 * 1024;

struct Client {
    secret: String,
    alg: KeyAlg,
    extra_claims: Value,
}

#[derive(Default)]
struct KeyRing {
    /// The key `mint` and the token endpoint sign with, per algorithm.
    current: HashMap<KeyAlg, Arc<SigningKey>>,
    /// Everything published at `/jwks`, in publication order.
    published: Vec<Arc<SigningKey>>,
}

struct State {
    issuer: String,
    audience: String,
    ttl_s: u64,
    keys: Mutex<KeyRing>,
    clients: Mutex<HashMap<String, Client>>,
    opaque: Mutex<HashMap<String, Value>>,
    down: AtomicBool,
    jwks_requests: AtomicUsize,
    discovery_requests: AtomicUsize,
    token_requests: AtomicUsize,
    introspect_requests: AtomicUsize,
}

/// A running dev issuer.
pub struct MockIssuer {
    server: TlsServer,
    state: Arc<State>,
}

impl MockIssuer {
    /// Generates the keys for `opts.algs` and starts serving HTTPS with `tls`.
    pub async fn start(tls: &CertPair, opts: IssuerOptions) -> anyhow::Result<MockIssuer> {
        let config = serve::server_config(tls, None)?;
        let mut ring = KeyRing::default();
        for alg in &opts.algs {
            if !ring.current.contains_key(alg) {
                let key = Arc::new(SigningKey::generate(*alg)?);
                ring.current.insert(*alg, key.clone());
                ring.published.push(key);
            }
        }
        // Bind first: the issuer URL (and so `iss`) depends on the port we get, so the
        // state is filled in after binding. Nobody knows the port before `start` returns,
        // so the "starting" answer is unreachable in practice.
        let listener_addr = opts.addr;
        let state_slot: Arc<OnceLock<Arc<State>>> = Arc::new(OnceLock::new());
        let slot = state_slot.clone();
        let handler: Handler = Arc::new(move |req, _info| {
            let state = slot.get().cloned();
            Box::pin(async move {
                match state {
                    Some(state) => handle(&state, req).await,
                    None => serve::json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"error": "starting"}),
                    ),
                }
            })
        });
        let server = TlsServer::start(listener_addr, config, handler).await?;
        let addr = server.addr();
        let host = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        let state = Arc::new(State {
            issuer: format!("https://{host}"),
            audience: opts.audience,
            ttl_s: opts.token_ttl_s,
            keys: Mutex::new(ring),
            clients: Mutex::new(HashMap::new()),
            opaque: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
            jwks_requests: AtomicUsize::new(0),
            discovery_requests: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
            introspect_requests: AtomicUsize::new(0),
        });
        let _ = state_slot.set(state.clone());
        Ok(MockIssuer { server, state })
    }

    /// The `iss` value, e.g. `https://127.0.0.1:PORT` (no trailing slash).
    pub fn issuer_url(&self) -> String {
        self.state.issuer.clone()
    }

    /// `{issuer}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.state.issuer)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.state.issuer)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.state.issuer)
    }

    pub fn introspection_endpoint(&self) -> String {
        format!("{}/introspect", self.state.issuer)
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The `aud` put into tokens.
    pub fn audience(&self) -> String {
        self.state.audience.clone()
    }

    /// The current key for `alg`. An algorithm not configured at start gets a key
    /// generated and published on first use, so tests need not plan ahead.
    pub fn key(&self, alg: KeyAlg) -> Arc<SigningKey> {
        self.state.key(alg)
    }

    /// A token signed with the current `alg` key. Defaults: `iss`, `aud`, `sub: "alice"`,
    /// `iat` now, `exp` now + ttl; `extra_claims` (an object) overrides them, and a claim
    /// set to `null` is removed.
    pub fn mint(&self, alg: KeyAlg, extra_claims: Value) -> String {
        let now = now_s();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.state.issuer));
        claims.insert("aud".into(), json!(self.state.audience));
        claims.insert("sub".into(), json!("alice"));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + self.state.ttl_s));
        merge(&mut claims, &extra_claims);
        self.key(alg).sign(&Value::Object(claims))
    }

    /// Replaces the current `alg` key with a fresh one; the old key leaves the JWKS.
    pub fn rotate(&self, alg: KeyAlg) -> Arc<SigningKey> {
        let new = Arc::new(SigningKey::generate(alg).expect("key generation"));
        let mut ring = self.state.keys.lock().unwrap();
        if let Some(old) = ring.current.insert(alg, new.clone()) {
            ring.published.retain(|k| !Arc::ptr_eq(k, &old));
        }
        ring.published.push(new.clone());
        new
    }

    /// Publishes an extra key (not used by `mint`); replaces a published key with the same kid.
    pub fn add_key(&self, key: SigningKey) {
        let mut ring = self.state.keys.lock().unwrap();
        ring.published.retain(|k| k.kid != key.kid);
        ring.published.push(Arc::new(key));
    }

    /// The JWKS document as currently served.
    pub fn jwks(&self) -> Value {
        self.state.jwks()
    }

    /// While down, discovery and JWKS answer 503 (token and introspection keep working).
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// `GET /jwks` requests received (503s while down included).
    pub fn jwks_requests(&self) -> usize {
        self.state.jwks_requests.load(Ordering::SeqCst)
    }

    /// Discovery requests received (503s while down included).
    pub fn discovery_requests(&self) -> usize {
        self.state.discovery_requests.load(Ordering::SeqCst)
    }

    /// `POST /token` requests received.
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// `POST /introspect` requests received (for decision-cache tests).
    pub fn introspect_requests(&self) -> usize {
        self.state.introspect_requests.load(Ordering::SeqCst)
    }

    /// Registers a client for `/token` and `/introspect`. Its tokens are signed with the
    /// current `alg` key and carry `extra_claims` (an object; `"scope"` there is the
    /// default scope when the request names none).
    pub fn register_client(&self, client_id: &str, secret: &str, alg: KeyAlg, extra_claims: Value) {
        self.state.clients.lock().unwrap().insert(
            client_id.to_string(),
            Client {
                secret: secret.to_string(),
                alg,
                extra_claims,
            },
        );
    }

    /// Makes `/introspect` answer `{"active": true, ..claims}` for `token`.
    pub fn register_opaque(&self, token: &str, claims: Value) {
        self.state
            .opaque
            .lock()
            .unwrap()
            .insert(token.to_string(), claims);
    }

    /// Makes `/introspect` answer `{"active": false}` for `token` again (revocation).
    #[cfg(test)]
    pub(crate) fn revoke_opaque(&self, token: &str) {
        self.state.opaque.lock().unwrap().remove(token);
    }

    /// Stops the listener and every connection task.
    pub async fn shutdown(self) {
        self.server.shutdown().await
    }
}

impl State {
    fn key(&self, alg: KeyAlg) -> Arc<SigningKey> {
        let mut ring = self.keys.lock().unwrap();
        if let Some(k) = ring.current.get(&alg) {
            return k.clone();
        }
        let key = Arc::new(SigningKey::generate(alg).expect("key generation"));
        ring.current.insert(alg, key.clone());
        ring.published.push(key.clone());
        key
    }

    fn jwks(&self) -> Value {
        let ring = self.keys.lock().unwrap();
        json!({ "keys": ring.published.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
    }

    fn discovery(&self) -> Value {
        let mut algs: Vec<&str> = {
            let ring = self.keys.lock().unwrap();
            ring.published.iter().map(|k| k.alg.as_str()).collect()
        };
        algs.sort_unstable();
        algs.dedup();
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/jwks", self.issuer),
            "token_endpoint": format!("{}/token", self.issuer),
            "introspection_endpoint": format!("{}/introspect", self.issuer),
            "id_token_signing_alg_values_supported": algs,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
        })
    }
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match path.as_str() {
        "/.well-known/openid-configuration" | "/jwks" => {
            if method != Method::GET && method != Method::HEAD {
                return method_not_allowed("GET");
            }
            let doc = if path == "/jwks" {
                state.jwks_requests.fetch_add(1, Ordering::SeqCst);
                state.jwks()
            } else {
                state.discovery_requests.fetch_add(1, Ordering::SeqCst);
                state.discovery()
            };
            if state.down.load(Ordering::SeqCst) {
                let mut resp = serve::json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": "temporarily_unavailable"}),
                );
                resp.headers_mut()
                    .insert(hyper::header::RETRY_AFTER, "5".parse().unwrap());
                return resp;
            }
            let mut resp = serve::json(StatusCode::OK, &doc);
            resp.headers_mut().insert(
                hyper::header::CACHE_CONTROL,
                "public, max-age=300".parse().unwrap(),
            );
            resp
        }
        "/token" | "/introspect" => {
            if method != Method::POST {
                return method_not_allowed("POST");
            }
            let basic = basic_credentials(&req);
            let form = match serve::read_body(req.into_body(), MAX_FORM_BYTES).await {
                Ok(b) => url::form_urlencoded::parse(&b)
                    .into_owned()
                    .collect::<HashMap<String, String>>(),
                Err(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request"),
            };
            if path == "/token" {
                state.token_requests.fetch_add(1, Ordering::SeqCst);
                token(state, basic, &form)
            } else {
                state.introspect_requests.fetch_add(1, Ordering::SeqCst);
                introspect(state, basic, &form)
            }
        }
        _ => serve::json(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
    }
}

/// Client authentication: the client ID, or on failure whether Basic was used (which
/// decides if the 401 carries a `WWW-Authenticate: Basic` challenge).
fn authenticate(
    state: &State,
    basic: Option<(String, String)>,
    form: &HashMap<String, String>,
) -> Result<String, bool> {
    let used_basic = basic.is_some();
    let (id, secret) = match basic {
        Some(creds) => creds,
        None => match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) => (id.clone(), secret.clone()),
            _ => return Err(false),
        },
    };
    let clients = state.clients.lock().unwrap();
    match clients.get(&id) {
        Some(c) if constant_time_eq(c.secret.as_bytes(), secret.as_bytes()) => Ok(id),
        _ => Err(used_basic),
    }
}

fn token(
    state: &State,
    basic: Option<(String, String)>,
    form: &HashMap<String, String>,
) -> Response<Body> {
    let client_id = match authenticate(state, basic, form) {
        Ok(id) => id,
        Err(used_basic) => return invalid_client(used_basic),
    };
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(_) => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
        None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request"),
    }
    let (alg, extra) = {
        let clients = state.clients.lock().unwrap();
        let c = &clients[&client_id];
        (c.alg, c.extra_claims.clone())
    };
    let now = now_s();
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(state.issuer));
    claims.insert("aud".into(), json!(state.audience));
    claims.insert("sub".into(), json!(client_id));
    claims.insert("client_id".into(), json!(client_id));
    claims.insert("azp".into(), json!(client_id));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + state.ttl_s));
    claims.insert("jti".into(), json!(hex::encode(rand::random::<[u8; 16]>())));
    merge(&mut claims, &extra);
    if let Some(scope) = form.get("scope").filter(|s| !s.trim().is_empty()) {
        claims.insert("scope".into(), json!(scope));
    }
    let expires_in = claims
        .get("exp")
        .and_then(Value::as_u64)
        .map(|exp| exp.saturating_sub(now))
        .unwrap_or(state.ttl_s);
    let scope = claims.get("scope").cloned();
    let access_token = state.key(alg).sign(&Value::Object(claims));
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
    });
    if let Some(scope) = scope {
        body["scope"] = scope;
    }
    no_store(serve::json(StatusCode::OK, &body))
}

fn introspect(
    state: &State,
    basic: Option<(String, String)>,
    form: &HashMap<String, String>,
) -> Response<Body> {
    if let Err(used_basic) = authenticate(state, basic, form) {
        return invalid_client(used_basic);
    }
    let Some(token) = form.get("token") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    let claims = state.opaque.lock().unwrap().get(token).cloned();
    let body = match claims {
        Some(claims) => {
            let mut out = Map::new();
            out.insert("active".into(), json!(true));
            merge(&mut out, &claims);
            // `active` is the server's verdict, not a claim a test can override.
            out.insert("active".into(), json!(true));
            Value::Object(out)
        }
        None => json!({"active": false}),
    };
    no_store(serve::json(StatusCode::OK, &body))
}

/// `Authorization: Basic` credentials; RFC 6749 §2.3.1 form-encodes both parts first.
fn basic_credentials<B>(req: &Request<B>) -> Option<(String, String)> {
    let value = req
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(rest.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

fn invalid_client(used_basic: bool) -> Response<Body> {
    let mut resp = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    if used_basic {
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            "Basic realm=\"gatehouse-dev-issuer\"".parse().unwrap(),
        );
    }
    resp
}

fn oauth_error(status: StatusCode, error: &str) -> Response<Body> {
    no_store(serve::json(status, &json!({ "error": error })))
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = serve::json(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": "method_not_allowed"}),
    );
    resp.headers_mut()
        .insert(hyper::header::ALLOW, allow.parse().unwrap());
    resp
}

fn no_store(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert(hyper::header::CACHE_CONTROL, "no-store".parse().unwrap());
    resp
}

/// Overlays `extra` (if an object) onto `base`; `null` values delete.
fn merge(base: &mut Map<String, Value>, extra: &Value) {
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            if v.is_null() {
                base.remove(k);
            } else {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_overrides_and_removes() {
        let mut base = Map::new();
        base.insert("a".into(), json!(1));
        base.insert("b".into(), json!(2));
        merge(&mut base, &json!({"a": 3, "b": null, "c": "x"}));
        assert_eq!(Value::Object(base), json!({"a": 3, "c": "x"}));
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let raw = STANDARD.encode("my%20client:p%3Ass");
        let req = Request::builder()
            .header("authorization", format!("Basic {raw}"))
            .body(())
            .unwrap();
        assert_eq!(
            basic_credentials(&req),
            Some(("my client".to_string(), "p:ss".to_string()))
        );
    }

    #[tokio::test]
    async fn mint_rotate_and_jwks() {
        let pki = crate::devkit::DevPki::generate().unwrap();
        let issuer = MockIssuer::start(
            &pki.server,
            IssuerOptions {
                algs: vec![KeyAlg::ES256],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(issuer.issuer_url().starts_with("https://127.0.0.1:"));
        let token = issuer.mint(KeyAlg::ES256, json!({"sub": "bob", "iat": null}));
        let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
        assert_eq!(claims["sub"], "bob");
        assert_eq!(claims["iss"], issuer.issuer_url());
        assert_eq!(claims["aud"], "api://gatehouse-demo");
        assert!(claims.get("iat").is_none());
        assert!(claims["exp"].as_u64().unwrap() > now_s() + 3000);
        let old = issuer.key(KeyAlg::ES256);
        let new = issuer.rotate(KeyAlg::ES256);
        let kids: Vec<String> = issuer.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kids, vec![new.kid.clone()]);
        assert_ne!(old.kid, new.kid);
        issuer.shutdown().await;
    }
}
