//! [`Authenticator`]: the trusted issuers, their key stores and introspection clients.
//!
//! `verify` runs on the request's runtime and only reads key snapshots or awaits
//! channels; fetches and introspection POSTs run on the `io` runtime given to `new`.
//! A config reload builds a new `Authenticator` with the old one as `previous`: issuers
//! whose settings did not change keep their live [`KeyStore`] (no fetch storm, no window
//! without keys). A store's refresh task stops when the last `Authenticator` holding it is
//! dropped or stopped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::introspect::{Introspector, LazyClient};
use super::jwks::{FileFetcher, HttpFetcher, JwksFetcher, KeyStore, Refetch};
use super::jwt::{self, KeyPick};
use super::{AuthError, DenyReason, Identity, IssuerSettings, KeySource, MAX_TOKEN_BYTES};

struct Issuer {
    settings: Arc<IssuerSettings>,
    store: Arc<KeyStore>,
    introspect_client: Arc<LazyClient>,
}

/// Verifies bearer tokens against the configured issuers. `Send + Sync`; share via `Arc`.
pub struct Authenticator {
    issuers: Vec<Issuer>,
    /// Exact `iss` -> indexes in `issuers` (two config entries may share an `iss`, e.g.
    /// with different audiences for different routes).
    by_iss: HashMap<String, Vec<usize>>,
    introspector: Arc<Introspector>,
    io: tokio::runtime::Handle,
    released: AtomicBool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuers", &self.issuer_names())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds key stores; does no I/O. `io` is the runtime on which all network I/O and
    /// refresh timers run (gatehouse's background runtime, not a request's). An issuer
    /// whose settings equal those of the same-named issuer in `previous` reuses its live
    /// key store.
    pub fn new(
        issuers: Vec<IssuerSettings>,
        io: tokio::runtime::Handle,
        previous: Option<&Authenticator>,
    ) -> Self {
        let with = issuers
            .into_iter()
            .map(|s| {
                let fetcher: Arc<dyn JwksFetcher> = match &s.keys {
                    KeySource::JwksFile(p) => Arc::new(FileFetcher(p.clone())),
                    KeySource::JwksUri(u) => {
                        Arc::new(HttpFetcher::jwks_uri(u.clone(), s.ca_pem.clone()))
                    }
                    KeySource::Discovery => {
                        Arc::new(HttpFetcher::discovery(s.issuer.clone(), s.ca_pem.clone()))
                    }
                };
                (s, fetcher)
            })
            .collect();
        Self::with_fetchers(with, io, previous)
    }

    /// Like [`Authenticator::new`] with an explicit key source per issuer (tests, benches,
    /// or a source gatehouse does not ship).
    pub fn with_fetchers(
        issuers: Vec<(IssuerSettings, Arc<dyn JwksFetcher>)>,
        io: tokio::runtime::Handle,
        previous: Option<&Authenticator>,
    ) -> Self {
        let mut out = Vec::with_capacity(issuers.len());
        let mut by_iss = HashMap::new();
        for (settings, fetcher) in issuers {
            // A JWKS file is re-read on every reload (SIGHUP is how an operator installs
            // new static keys), so its store is never carried over.
            let from_file = matches!(settings.keys, KeySource::JwksFile(_));
            // Keys depend only on where they come from: a reload that changes audiences,
            // leeway or claim mapping keeps the live keys (and keeps serving if the IdP
            // is down at that moment).
            let reused = previous.filter(|_| !from_file).and_then(|p| {
                p.issuers
                    .iter()
                    .find(|i| same_key_source(&i.settings, &settings))
                    .map(|i| (Arc::clone(&i.store), Arc::clone(&i.introspect_client)))
            });
            let (store, introspect_client) = reused.unwrap_or_else(|| {
                let refresh = Duration::from_secs(settings.jwks_refresh_s);
                (
                    KeyStore::new(settings.name.clone(), refresh, fetcher, io.clone()),
                    Arc::new(LazyClient::new()),
                )
            });
            store.hold();
            by_iss
                .entry(settings.issuer.clone())
                .or_insert_with(Vec::new)
                .push(out.len());
            out.push(Issuer {
                settings: Arc::new(settings),
                store,
                introspect_client,
            });
        }
        Authenticator {
            issuers: out,
            by_iss,
            // Never carried over: a cached introspection answer was interpreted under the
            // old settings (audiences, claim mapping), and a reload must not serve it.
            introspector: Default::default(),
            io,
            released: AtomicBool::new(false),
        }
    }

    /// Loads file-based JWKS at once and spawns the fetch/refresh tasks on `io`.
    /// Idempotent; stores reused from a previous `Authenticator` are already running.
    pub fn start(&self) {
        if self.released.load(Ordering::SeqCst) {
            return;
        }
        for i in &self.issuers {
            i.store.start();
        }
    }

    /// Releases this `Authenticator`'s hold on its stores; a store's refresh task stops
    /// once no `Authenticator` holds it (so stopping the old one after a reload does not
    /// stop the stores the new one reused). Dropping does the same.
    pub fn stop(&self) {
        if !self.released.swap(true, Ordering::SeqCst) {
            for i in &self.issuers {
                i.store.release();
            }
        }
    }

    /// Waits until every issuer has had keys at least once; `false` on timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let all = futures::future::join_all(self.issuers.iter().map(|i| i.store.wait_loaded()));
        tokio::time::timeout(timeout, all).await.is_ok()
    }

    /// Names of issuers that never had keys (for `/readyz`).
    pub fn not_ready(&self) -> Vec<String> {
        self.issuers
            .iter()
            .filter(|i| !i.store.is_loaded())
            .map(|i| i.settings.name.clone())
            .collect()
    }

    /// Config names of the issuers, in config order.
    pub fn issuer_names(&self) -> Vec<String> {
        self.issuers
            .iter()
            .map(|i| i.settings.name.clone())
            .collect()
    }

    /// Number of keys an issuer currently holds (`None`: no such issuer).
    #[cfg(test)]
    pub(crate) fn key_count(&self, name: &str) -> Option<usize> {
        self.issuers
            .iter()
            .find(|i| i.settings.name == name)
            .map(|i| i.store.keys().keys.len())
    }

    #[cfg(test)]
    pub(crate) fn stores_for_tests(&self) -> Vec<Arc<KeyStore>> {
        self.issuers.iter().map(|i| Arc::clone(&i.store)).collect()
    }

    /// Verifies a bearer token. `allowed_issuers` is the route's `issuers` list (config
    /// names); `None` allows every issuer.
    pub async fn verify(
        &self,
        token: &str,
        allowed_issuers: Option<&[String]>,
    ) -> Result<Identity, AuthError> {
        // A child span of the request's when tracing exports; otherwise just the check.
        crate::telemetry::in_child(
            "token verification",
            Vec::new,
            |e: &AuthError| Some(e.reason.as_str()),
            self.verify_token(token, allowed_issuers),
        )
        .await
    }

    async fn verify_token(
        &self,
        token: &str,
        allowed_issuers: Option<&[String]>,
    ) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::new(
                DenyReason::MalformedToken,
                "token too large",
            ));
        }
        if !jwt::looks_like_jwt(token) {
            return self.introspect(token, allowed_issuers).await;
        }
        let u = jwt::decode_unverified(token)?;
        let wrong_issuer = |d: &str| AuthError::new(DenyReason::WrongIssuer, d);
        let same_iss = u
            .iss()
            .and_then(|iss| self.by_iss.get(iss))
            .ok_or_else(|| wrong_issuer("issuer not trusted"))?;
        // Several configs may share one `iss` (e.g. different audiences): the token is
        // good when it passes under any of those the route accepts, in config order; if
        // none accepts it, the first config's answer is the one reported.
        let mut first_err = None;
        for issuer in same_iss
            .iter()
            .map(|&i| &self.issuers[i])
            .filter(|i| allowed(allowed_issuers, &i.settings.name))
        {
            match Self::verify_with(issuer, &u).await {
                Ok(exp) => {
                    let settings = &issuer.settings;
                    return Ok(Identity::from_claims(
                        settings,
                        settings.issuer.clone(),
                        exp,
                        serde_json::Value::Object(u.payload),
                    ));
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| wrong_issuer("issuer not accepted on this route")))
    }

    /// Algorithm, key, signature and claims of a decoded JWT under one issuer config.
    /// Returns `exp`.
    async fn verify_with(issuer: &Issuer, u: &jwt::Unverified<'_>) -> Result<u64, AuthError> {
        let settings = &issuer.settings;
        if !settings.algorithms.contains(&u.alg) {
            return Err(AuthError::new(
                DenyReason::DisallowedAlgorithm,
                "algorithm not accepted for this issuer",
            ));
        }
        let store = &issuer.store;
        if !store.is_loaded() {
            return Err(AuthError::new(
                DenyReason::IssuerUnavailable,
                "issuer keys not loaded yet",
            ));
        }
        let mut keys = store.keys();
        if matches!(
            jwt::pick_keys(&keys, u.alg, u.kid.as_deref()),
            KeyPick::Unknown
        ) {
            // Maybe the IdP rotated: one shared, throttled refetch, then look once more.
            if let Refetch::Wait(rx) = store.request_refetch() {
                let _ = crate::telemetry::in_child(
                    "jwks fetch",
                    || {
                        vec![opentelemetry::KeyValue::new(
                            "issuer",
                            settings.name.clone(),
                        )]
                    },
                    |_: &()| None,
                    async {
                        KeyStore::wait_refetch(rx).await;
                        Ok::<(), ()>(())
                    },
                )
                .await;
                keys = store.keys();
            }
        }
        match jwt::pick_keys(&keys, u.alg, u.kid.as_deref()) {
            KeyPick::Found(candidates) => jwt::check_signature(u, &candidates)?,
            KeyPick::Misfit => {
                return Err(AuthError::new(
                    DenyReason::DisallowedAlgorithm,
                    "algorithm does not match the key",
                ))
            }
            KeyPick::Unknown => {
                return Err(AuthError::new(
                    DenyReason::UnknownKey,
                    "signing key not known",
                ))
            }
        }
        jwt::check_claims(&u.payload, settings, jwt::now())
    }

    /// Opaque tokens: ask the issuers with introspection that the route accepts, in config
    /// order; the first active answer wins.
    async fn introspect(
        &self,
        token: &str,
        allowed_issuers: Option<&[String]>,
    ) -> Result<Identity, AuthError> {
        let with: Vec<&Issuer> = self
            .issuers
            .iter()
            .filter(|i| i.settings.introspection.is_some())
            .collect();
        if with.is_empty() {
            return Err(AuthError::new(
                DenyReason::MalformedToken,
                "token is not a JWT",
            ));
        }
        let candidates: Vec<&Issuer> = with
            .into_iter()
            .filter(|i| allowed(allowed_issuers, &i.settings.name))
            .collect();
        let mut last = AuthError::new(DenyReason::WrongIssuer, "issuer not accepted on this route");
        for i in candidates {
            match self
                .introspector
                .introspect(&self.io, &i.settings, &i.introspect_client, token)
                .await
            {
                Ok(id) => return Ok(id),
                Err(e) => {
                    // An unavailable IdP outranks "inactive" from another: retrying may help.
                    if last.reason != DenyReason::IssuerUnavailable {
                        last = e;
                    }
                }
            }
        }
        Err(last)
    }
}

fn allowed(allowed_issuers: Option<&[String]>, name: &str) -> bool {
    allowed_issuers.is_none_or(|list| list.iter().any(|n| n == name))
}

impl Drop for Authenticator {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
#[path = "authenticator_tests.rs"]
mod tests;

/// Whether two issuer settings fetch the same keys the same way (name included: it is the
/// store's metric label).
fn same_key_source(a: &IssuerSettings, b: &IssuerSettings) -> bool {
    a.name == b.name
        && a.issuer == b.issuer
        && a.keys == b.keys
        && a.ca_pem == b.ca_pem
        && a.jwks_refresh_s == b.jwks_refresh_s
}
