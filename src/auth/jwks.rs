//! JWKS lifecycle: one [`KeyStore`] per issuer holding its parsed verification keys.
//!
//! Flow: a [`JwksFetcher`] (file, `jwks_uri` or discovery over HTTPS) produces a JWKS
//! document; [`parse_jwks`] keeps the usable signature keys (RSA, EC P-256/P-384, OKP
//! Ed25519; `use = "enc"` and unknown types skipped without failing the set); the store
//! swaps them in atomically (`ArcSwap`), so verification reads keys without locks.
//!
//! Fetches happen only on the background I/O runtime: the periodic refresh task, and the
//! on-demand refetch a request asks for when a token names an unknown `kid`. The latter is
//! throttled to one per [`REFETCH_MIN_INTERVAL`] per issuer; concurrent misses share the
//! single fetch and wait for it on a watch channel. A failed fetch keeps the last good
//! keys and retries with backoff.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;

use super::http::{self, HttpsClient};
use crate::admin::metrics::{JWKS_KEYS, JWKS_REFRESH_TOTAL};

/// At most one on-demand (unknown `kid`) refetch per issuer in this interval, and the
/// shortest refresh period a `Cache-Control: max-age` may impose.
pub const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// First retry delay after a failed fetch; doubles up to the refresh period.
const BACKOFF_START: Duration = Duration::from_secs(5);
/// How long a request waits for an on-demand refetch (a fetch itself is capped at 5 s).
const REFETCH_WAIT: Duration = Duration::from_secs(6);
/// RSA keys below this size are ignored: they are forgeable in practice.
const MIN_RSA_BITS: usize = 2048;

/// Key type and curve, the part of a key that decides which `alg` may use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// Whether a JWS `alg` may be verified with a key of this kind (RFC 7518 / 8037).
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::EcP256, ES256)
                | (KeyKind::EcP384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }
}

/// One verification key from a JWKS.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it states one: then only that alg may use the key.
    pub alg: Option<Algorithm>,
    /// The key parsed once for each algorithm it may verify. aws-lc-rs keeps the parsed
    /// key (for RSA with its Montgomery constants) with it, so a token costs the
    /// signature check alone, not a key parse as well (docs/ARCHITECTURE.md, "Cold path").
    parsed: Arc<[(Algorithm, ParsedPublicKey)]>,
}

impl VerifyKey {
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }

    /// Whether `signature` (raw bytes) signs `message` under this key with `alg`; `false`
    /// for an alg the key does not fit.
    pub fn verifies(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.parsed
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, k)| k.verify_sig(message, signature).is_ok())
    }
}

/// What a JWK's key is made of, decoded.
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An EC point (`04 || x || y`) or an Ed25519 public key.
    Point(Vec<u8>),
}

/// RSA algorithms with aws-lc-rs's parameters (the same jsonwebtoken's aws-lc backend
/// uses: 2048 to 8192 bits).
static RSA_ALGS: [(Algorithm, &sig::RsaParameters); 6] = [
    (Algorithm::RS256, &sig::RSA_PKCS1_2048_8192_SHA256),
    (Algorithm::RS384, &sig::RSA_PKCS1_2048_8192_SHA384),
    (Algorithm::RS512, &sig::RSA_PKCS1_2048_8192_SHA512),
    (Algorithm::PS256, &sig::RSA_PSS_2048_8192_SHA256),
    (Algorithm::PS384, &sig::RSA_PSS_2048_8192_SHA384),
    (Algorithm::PS512, &sig::RSA_PSS_2048_8192_SHA512),
];

/// Parses the key once for every algorithm it may verify: the JWK's own `alg` only,
/// when it states one, else each algorithm its type fits.
fn parse_key(
    kind: KeyKind,
    only: Option<Algorithm>,
    m: &Material,
) -> Result<Arc<[(Algorithm, ParsedPublicKey)]>, JwkError> {
    let wanted = |a: Algorithm| only.is_none_or(|o| o == a);
    let rejected = |e: aws_lc_rs::error::KeyRejected| JwkError::Rejected(e.to_string());
    let mut out = Vec::new();
    match (kind, m) {
        (KeyKind::Rsa, Material::Rsa { n, e }) => {
            let c = RsaPublicKeyComponents { n, e };
            for (alg, params) in RSA_ALGS.iter().filter(|(a, _)| wanted(*a)) {
                out.push((*alg, c.to_parsed_public_key(params).map_err(rejected)?));
            }
        }
        (KeyKind::EcP256 | KeyKind::EcP384 | KeyKind::Ed25519, Material::Point(p)) => {
            let (alg, v): (Algorithm, &'static dyn sig::VerificationAlgorithm) = match kind {
                KeyKind::EcP256 => (Algorithm::ES256, &sig::ECDSA_P256_SHA256_FIXED),
                KeyKind::EcP384 => (Algorithm::ES384, &sig::ECDSA_P384_SHA384_FIXED),
                _ => (Algorithm::EdDSA, &sig::ED25519),
            };
            if wanted(alg) {
                out.push((alg, ParsedPublicKey::new(v, p).map_err(rejected)?));
            }
        }
        _ => unreachable!("material matches the key kind"),
    }
    Ok(out.into())
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish()
    }
}

/// The keys of one JWKS document, after filtering.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
}

impl KeySet {
    /// Keys with this `kid` (a JWKS may repeat a kid for different algs).
    pub fn by_kid<'a>(&'a self, kid: &'a str) -> impl Iterator<Item = &'a VerifyKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.kid.as_deref() == Some(kid))
    }
}

/// Why a JWKS document could not be installed. Individual unusable keys are no error of
/// the document: they are skipped (see [`parse_jwks`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is not JSON: {0}")]
    NotJson(String),
    #[error("JWKS has no \"keys\" array")]
    NoKeysArray,
    #[error("JWKS holds no usable signature key")]
    NoUsableKey,
    /// The source failed (file, HTTPS, discovery); the fetcher's own message.
    #[error("{0}")]
    Fetch(String),
}

/// Why one key of a JWKS was skipped with a warning.
#[derive(Debug, thiserror::Error)]
enum JwkError {
    #[error("not a JWK: {0}")]
    NotJwk(serde_json::Error),
    #[error("{kty} key with a missing or malformed member")]
    Malformed { kty: String },
    #[error("\"{0}\" is not base64url")]
    BadBase64(&'static str),
    #[error("RSA key of {bits} bits is below {MIN_RSA_BITS}")]
    RsaTooShort { bits: usize },
    #[error("EC coordinates of the wrong length")]
    EcLength,
    #[error("Ed25519 key of the wrong length")]
    EdLength,
    #[error("key type does not fit its own alg {0:?}")]
    AlgMismatch(Algorithm),
    #[error("key refused: {0}")]
    Rejected(String),
}

/// Parses a JWKS document. Fails only when the document itself is not a JWKS (not JSON,
/// no `keys` array); individual unusable keys are skipped and logged so one odd key from
/// the IdP does not take every key down with it.
pub fn parse_jwks(issuer: &str, body: &[u8]) -> Result<KeySet, JwksError> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| JwksError::NotJson(e.to_string()))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwksError::NoKeysArray)?;
    let mut out = Vec::new();
    for (i, jwk) in keys.iter().enumerate() {
        match parse_jwk(jwk) {
            Ok(Some(k)) => out.push(k),
            Ok(None) => {}
            Err(e) => tracing::warn!(issuer, index = i, error = %e, "JWKS key ignored"),
        }
    }
    Ok(KeySet { keys: out })
}

/// One key, through jsonwebtoken's `jwk` types. `Ok(None)`: a key we deliberately do not
/// use (encryption key, symmetric, another type or curve, an alg we do not verify with).
fn parse_jwk(value: &Value) -> Result<Option<VerifyKey>, JwkError> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
    if !value.is_object() {
        return Ok(None);
    }
    let jwk = Jwk::deserialize(value).map_err(JwkError::NotJwk)?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return Ok(None);
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Ok(None);
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        // An alg we do not verify with (RSA-OAEP, HS256, unknown) means the key is not ours.
        Some(a) => match Algorithm::try_from(a) {
            Ok(a) if !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
                Some(a)
            }
            _ => return Ok(None),
        },
    };
    let b64 = |v: &str, member: &'static str| {
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v)
            .map_err(|_| JwkError::BadBase64(member))
    };
    let (kind, material) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = b64(&p.n, "n")?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < MIN_RSA_BITS {
                return Err(JwkError::RsaTooShort { bits });
            }
            let e = b64(&p.e, "e")?;
            (KeyKind::Rsa, Material::Rsa { n, e })
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (kind, len) = match p.curve {
                EllipticCurve::P256 => (KeyKind::EcP256, 32),
                EllipticCurve::P384 => (KeyKind::EcP384, 48),
                _ => return Ok(None),
            };
            let (x, y) = (b64(&p.x, "x")?, b64(&p.y, "y")?);
            if x.len() != len || y.len() != len {
                return Err(JwkError::EcLength);
            }
            let point = [&[4u8][..], &x, &y].concat();
            (kind, Material::Point(point))
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Ok(None);
            }
            let x = b64(&p.x, "x")?;
            if x.len() != 32 {
                return Err(JwkError::EdLength);
            }
            (KeyKind::Ed25519, Material::Point(x))
        }
        AlgorithmParameters::Other(o) => {
            // A signature key type and curve we use that did not parse as one lacks a
            // member (or has one that is not a string): say so. Anything else is simply
            // not a key for us.
            let member = |m: &str| o.fields.get(m).and_then(Value::as_str);
            return match (member("kty"), member("crv")) {
                (Some("RSA"), _)
                | (Some("EC"), Some("P-256" | "P-384"))
                | (Some("OKP"), Some("Ed25519")) => Err(JwkError::Malformed {
                    kty: member("kty").unwrap_or_default().to_string(),
                }),
                _ => Ok(None),
            };
        }
        // Symmetric keys, and types a later jsonwebtoken may add.
        _ => return Ok(None),
    };
    if let Some(a) = alg {
        if !kind.fits(a) {
            return Err(JwkError::AlgMismatch(a));
        }
    }
    Ok(Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        kind,
        alg,
        parsed: parse_key(kind, alg, &material)?,
    }))
}

/// A fetched JWKS document and how long the server says it stays fresh.
#[derive(Debug)]
pub struct Fetched {
    pub body: Vec<u8>,
    pub max_age: Option<Duration>,
}

/// Where an issuer's keys come from. Implementations are called on the I/O runtime; the
/// error string is logged with the issuer name, so it must not contain secrets.
#[async_trait::async_trait]
pub trait JwksFetcher: Send + Sync + 'static {
    /// Fetches the current JWKS document.
    async fn fetch(&self) -> Result<Fetched, String>;
    /// A synchronous fetch, for sources cheap enough to read at `start()` (files), so a
    /// file-based issuer is ready before the first request. `None`: not supported.
    fn fetch_now(&self) -> Option<Result<Fetched, String>> {
        None
    }
}

/// `jwks_file`: re-read on every refresh so an edited file is picked up.
pub struct FileFetcher(pub PathBuf);

#[async_trait::async_trait]
impl JwksFetcher for FileFetcher {
    async fn fetch(&self) -> Result<Fetched, String> {
        let path = self.0.clone();
        match tokio::task::spawn_blocking(move || crate::files::read_bounded(&path)).await {
            Ok(r) => r
                .map(|body| Fetched {
                    body,
                    max_age: None,
                })
                .map_err(|e| format!("{}: {e}", self.0.display())),
            Err(e) => Err(e.to_string()),
        }
    }
    fn fetch_now(&self) -> Option<Result<Fetched, String>> {
        Some(
            crate::files::read_bounded(&self.0)
                .map(|body| Fetched {
                    body,
                    max_age: None,
                })
                .map_err(|e| format!("{}: {e}", self.0.display())),
        )
    }
}

/// `jwks_uri` or discovery over HTTPS. The client is built on first use so
/// `Authenticator::new` does no I/O (reading the system roots is I/O).
pub struct HttpFetcher {
    /// `Some(issuer)`: discover the `jwks_uri` from `{issuer}/.well-known/openid-configuration`.
    discovery_issuer: Option<String>,
    /// The configured `jwks_uri`, or the one discovery found last (cleared on failure so
    /// the next attempt rediscovers: the IdP may have moved it).
    jwks_uri: Mutex<Option<String>>,
    ca_pem: Option<Vec<u8>>,
    client: OnceLock<Result<HttpsClient, String>>,
}

impl HttpFetcher {
    pub fn jwks_uri(uri: String, ca_pem: Option<Vec<u8>>) -> Self {
        HttpFetcher {
            discovery_issuer: None,
            jwks_uri: Mutex::new(Some(uri)),
            ca_pem,
            client: OnceLock::new(),
        }
    }

    pub fn discovery(issuer: String, ca_pem: Option<Vec<u8>>) -> Self {
        HttpFetcher {
            discovery_issuer: Some(issuer),
            jwks_uri: Mutex::new(None),
            ca_pem,
            client: OnceLock::new(),
        }
    }

    fn client(&self) -> Result<&HttpsClient, String> {
        self.client
            .get_or_init(|| HttpsClient::new(self.ca_pem.as_deref()).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    async fn discover(&self, client: &HttpsClient, issuer: &str) -> Result<String, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let resp = client
            .get(&url)
            .await
            .map_err(|e| format!("discovery: {e}"))?;
        if !resp.status.is_success() {
            return Err(format!("discovery: HTTP status {}", resp.status));
        }
        let doc: Value =
            serde_json::from_slice(&resp.body).map_err(|e| format!("discovery: not JSON: {e}"))?;
        // OIDC Discovery section 4.3: the document must name exactly the issuer we trust,
        // or a compromised path could point us at another tenant's keys.
        if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err(
                "discovery: document's \"issuer\" differs from the configured issuer".into(),
            );
        }
        doc.get("jwks_uri")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| "discovery: no \"jwks_uri\"".to_string())
    }
}

#[async_trait::async_trait]
impl JwksFetcher for HttpFetcher {
    async fn fetch(&self) -> Result<Fetched, String> {
        let client = self.client()?;
        let cached = self.jwks_uri.lock().expect("not poisoned").clone();
        let uri = match (cached, &self.discovery_issuer) {
            (Some(u), _) => u,
            (None, Some(issuer)) => {
                let u = self.discover(client, issuer).await?;
                *self.jwks_uri.lock().expect("not poisoned") = Some(u.clone());
                u
            }
            (None, None) => return Err("no jwks_uri".into()),
        };
        let result = async {
            let resp = client.get(&uri).await.map_err(|e| format!("jwks: {e}"))?;
            if !resp.status.is_success() {
                return Err(format!("jwks: HTTP status {}", resp.status));
            }
            Ok(Fetched {
                max_age: http::max_age(&resp.headers),
                body: resp.body.to_vec(),
            })
        }
        .await;
        if result.is_err() && self.discovery_issuer.is_some() {
            *self.jwks_uri.lock().expect("not poisoned") = None;
        }
        result
    }
}

/// What a request should do after a `kid` miss.
pub enum Refetch {
    /// A fetch is running (maybe just started for us): wait on this, then look again.
    Wait(watch::Receiver<u64>),
    /// One ran less than [`REFETCH_MIN_INTERVAL`] ago: the kid is unknown, do not wait.
    Throttled,
}

#[derive(Default)]
struct RefetchState {
    last_started: Option<Instant>,
    in_flight: bool,
}

/// The live keys of one issuer plus the machinery that keeps them fresh.
pub struct KeyStore {
    name: String,
    refresh: Duration,
    fetcher: Arc<dyn JwksFetcher>,
    io: tokio::runtime::Handle,
    keys: ArcSwap<KeySet>,
    /// `true` once keys were installed at least once (readiness).
    loaded: watch::Sender<bool>,
    /// Bumped after each on-demand refetch completes (ok or not).
    refetched: watch::Sender<u64>,
    refetch: Mutex<RefetchState>,
    /// Serialises fetch+install so an older answer never overwrites a newer one.
    fetch_lock: tokio::sync::Mutex<()>,
    started: AtomicBool,
    /// Authenticators holding this store; the refresh task stops when it falls to zero.
    holders: AtomicUsize,
    /// `true` (or the sender dropped with the store) stops the refresh task.
    stop: watch::Sender<bool>,
}

impl KeyStore {
    pub fn new(
        name: String,
        refresh: Duration,
        fetcher: Arc<dyn JwksFetcher>,
        io: tokio::runtime::Handle,
    ) -> Arc<Self> {
        // Present from the start: an issuer that never gets keys shows 0, so an alert on
        // `gatehouse_jwks_keys == 0` fires for it too.
        JWKS_KEYS.with_label_values(&[&name]).set(0);
        for result in ["ok", "error"] {
            JWKS_REFRESH_TOTAL
                .with_label_values(&[&name, result])
                .inc_by(0);
        }
        Arc::new(KeyStore {
            name,
            refresh: refresh.max(Duration::from_secs(1)),
            fetcher,
            io,
            keys: ArcSwap::from_pointee(KeySet::default()),
            loaded: watch::channel(false).0,
            refetched: watch::channel(0).0,
            refetch: Mutex::new(RefetchState::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            started: AtomicBool::new(false),
            holders: AtomicUsize::new(0),
            stop: watch::channel(false).0,
        })
    }

    /// The current keys (lock-free snapshot).
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Whether keys were ever installed.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Waits until keys were installed once (returns at once if they were).
    pub async fn wait_loaded(&self) {
        let mut rx = self.loaded.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    pub(crate) fn hold(&self) {
        self.holders.fetch_add(1, Ordering::SeqCst);
    }

    /// Drops one holder; the last one stops the refresh task.
    pub(crate) fn release(&self) {
        if self.holders.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.stop.send_replace(true);
        }
    }

    /// Installs a fetched document; on a parse error the old keys stay.
    fn install(&self, fetched: &Fetched) -> Result<usize, JwksError> {
        let set = parse_jwks(&self.name, &fetched.body)?;
        let n = set.keys.len();
        if n == 0 {
            // An empty set would lock everybody out; keep what we had.
            return Err(JwksError::NoUsableKey);
        }
        self.keys.store(Arc::new(set));
        JWKS_KEYS.with_label_values(&[&self.name]).set(n as i64);
        self.loaded.send_replace(true);
        Ok(n)
    }

    fn record(&self, result: &Result<usize, JwksError>) {
        match result {
            Ok(n) => {
                JWKS_REFRESH_TOTAL
                    .with_label_values(&[&self.name, "ok"])
                    .inc();
                tracing::debug!(issuer = %self.name, keys = n, "JWKS refreshed");
            }
            Err(e) => {
                JWKS_REFRESH_TOTAL
                    .with_label_values(&[&self.name, "error"])
                    .inc();
                if self.is_loaded() {
                    tracing::warn!(issuer = %self.name, error = %e, "JWKS refresh failed; keeping last good keys");
                } else {
                    tracing::error!(issuer = %self.name, error = %e,
                        "JWKS fetch failed and there are no signing keys yet: routes accepting this issuer answer 503 until it succeeds");
                }
            }
        }
    }

    /// One fetch + install, counted and logged. Returns the server's max-age on success.
    pub async fn refresh_once(&self) -> Result<Option<Duration>, JwksError> {
        let _g = self.fetch_lock.lock().await;
        let fetched = self.fetcher.fetch().await.map_err(JwksError::Fetch);
        let result = fetched.and_then(|f| self.install(&f).map(|n| (n, f.max_age)));
        self.record(&result.as_ref().map(|(n, _)| *n).map_err(Clone::clone));
        result.map(|(_, max_age)| max_age)
    }

    /// Loads synchronously when the source allows it (files). Returns whether it did.
    fn load_now(&self) -> bool {
        let Some(fetched) = self.fetcher.fetch_now() else {
            return false;
        };
        let result = fetched
            .map_err(JwksError::Fetch)
            .and_then(|f| self.install(&f));
        self.record(&result);
        result.is_ok()
    }

    /// Starts the refresh task on the I/O runtime (once; later calls do nothing).
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let first_done = self.load_now();
        let weak = Arc::downgrade(self);
        let mut stop = self.stop.subscribe();
        let refresh = self.refresh;
        self.io.spawn(async move {
            let mut backoff = BACKOFF_START;
            let mut delay = if first_done { refresh } else { Duration::ZERO };
            loop {
                if !delay.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        // Err: the store was dropped; Ok: stop() was called.
                        _ = stop.changed() => break,
                    }
                }
                if *stop.borrow() {
                    break;
                }
                let Some(store) = Weak::upgrade(&weak) else {
                    break;
                };
                delay = match store.refresh_once().await {
                    Ok(max_age) => {
                        backoff = BACKOFF_START;
                        next_refresh(refresh, max_age)
                    }
                    Err(_) => {
                        let d = backoff;
                        backoff = (backoff * 2).min(refresh.max(BACKOFF_START));
                        d
                    }
                };
            }
        });
    }

    /// Called by a request whose token names an unknown `kid` (or fits no key): starts the
    /// single throttled refetch if allowed, and says whether there is one to wait for.
    pub fn request_refetch(self: &Arc<Self>) -> Refetch {
        let rx = self.refetched.subscribe();
        let mut st = self.refetch.lock().expect("not poisoned");
        if st.in_flight {
            return Refetch::Wait(rx);
        }
        if st
            .last_started
            .is_some_and(|t| t.elapsed() < REFETCH_MIN_INTERVAL)
        {
            return Refetch::Throttled;
        }
        st.last_started = Some(Instant::now());
        st.in_flight = true;
        drop(st);
        let store = Arc::clone(self);
        // In the span of the request that asked, so the fetch's log lines name it.
        let span = tracing::Span::current();
        self.io.spawn(tracing::Instrument::instrument(
            async move {
                tracing::info!(issuer = %store.name, "unknown key id: refetching JWKS");
                let _ = store.refresh_once().await;
                store.refetch.lock().expect("not poisoned").in_flight = false;
                store.refetched.send_modify(|g| *g += 1);
            },
            span,
        ));
        Refetch::Wait(rx)
    }

    /// Waits for the refetch behind `rx` to finish, bounded by [`REFETCH_WAIT`].
    pub async fn wait_refetch(mut rx: watch::Receiver<u64>) {
        let _ = tokio::time::timeout(REFETCH_WAIT, rx.changed()).await;
    }
}

/// Next periodic refresh: the configured period, shortened by a smaller `max-age`, but
/// never below [`REFETCH_MIN_INTERVAL`] (an IdP saying `max-age=0` must not make us poll).
fn next_refresh(refresh: Duration, max_age: Option<Duration>) -> Duration {
    let d = match max_age {
        Some(m) => refresh.min(m),
        None => refresh,
    };
    d.max(REFETCH_MIN_INTERVAL)
}

#[cfg(test)]
#[path = "jwks_tests.rs"]
mod tests;
