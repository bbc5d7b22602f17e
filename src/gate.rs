//! The decision step of the request path, free of the engine so that the proxy, `explain`
//! and unit tests share it: public route, or bearer token → cache → verify → authorize.

use std::sync::Arc;

use crate::auth::{bearer_bytes, token68, AuthError, Authenticator};
use crate::cache::{DecisionCache, NegativeCache, NEGATIVE_ENTRIES, NEGATIVE_TTL};
use crate::config::Runtime;
use crate::policy::rbac::{self, Caller, Grant};
use crate::policy::route::{AuthMode, Route};

/// One loaded configuration with everything built from it. Swapped whole on reload, so a
/// request finishes under the config it started with, and the decision cache never
/// outlives its config.
pub struct Live {
    pub rt: Arc<Runtime>,
    pub auth: Arc<Authenticator>,
    pub cache: DecisionCache,
    /// Tokens that recently failed verification for good.
    pub refused: NegativeCache,
    /// One pooled mTLS client per upstream, built with this config.
    pub upstreams: crate::proxy::upstream::Clients,
    /// Metric handles per route (by `Route::index`), and for requests that matched none.
    pub route_metrics: Vec<crate::admin::metrics::RouteMetrics>,
    pub unrouted_metrics: crate::admin::metrics::RouteMetrics,
    /// `Strict-Transport-Security: max-age=N` for this config, `None` when off.
    pub hsts: Option<http::HeaderValue>,
}

/// What the gate decided for one request.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// `auth = "none"`: forwarded without identity.
    Public,
    Allow(Arc<Grant>),
    Deny(AuthError),
}

impl Live {
    pub fn new(rt: Arc<Runtime>, auth: Arc<Authenticator>) -> Self {
        let threads = rt.server.threads;
        Self::for_threads(rt, auth, threads)
    }

    /// Like [`Live::new`], for a process whose data plane runs `threads` proxy threads
    /// whatever `rt` says (a reload does not change the running thread count).
    pub fn for_threads(rt: Arc<Runtime>, auth: Arc<Authenticator>, threads: usize) -> Self {
        let cache = DecisionCache::new(rt.cache.max_entries, rt.cache.ttl_s, threads);
        let upstreams = crate::proxy::upstream::clients(&rt.upstreams);
        debug_assert!(rt.routes.iter().enumerate().all(|(i, r)| r.index == i));
        let hsts = (rt.server.hsts_max_age_s > 0).then(|| {
            http::HeaderValue::from_str(&format!("max-age={}", rt.server.hsts_max_age_s))
                .expect("digits are a valid value")
        });
        let route_metrics = rt
            .routes
            .iter()
            .map(|r| crate::admin::metrics::RouteMetrics::new(&r.name))
            .collect();
        Live {
            rt,
            auth,
            cache,
            refused: NegativeCache::new(NEGATIVE_ENTRIES, NEGATIVE_TTL),
            upstreams,
            route_metrics,
            unrouted_metrics: crate::admin::metrics::RouteMetrics::new("_none"),
            hsts,
        }
    }

    /// Authenticates and authorizes one request on `route`. `authorization` is the raw
    /// `Authorization` header value, if any.
    pub async fn decide(&self, route: &Route, authorization: Option<&[u8]>) -> Outcome {
        self.decide_with_caller(route, authorization).await.0
    }

    /// Like [`Live::decide`], also returning who a verified-but-denied caller was (for
    /// the audit log; an allowed caller is in its `Grant`).
    pub async fn decide_with_caller(
        &self,
        route: &Route,
        authorization: Option<&[u8]>,
    ) -> (Outcome, Option<Arc<Caller>>) {
        if route.auth == AuthMode::None {
            return (Outcome::Public, None);
        }
        let raw = match bearer_bytes(authorization) {
            Ok(t) => t,
            Err(e) => return (Outcome::Deny(e), None),
        };
        // Looked up before the token's characters are checked: only a token that passed
        // that check is ever cached, and equal bytes pass it again.
        let key = DecisionCache::key(route.index, raw);
        if let Some(hit) = self.cache.get(&key) {
            return match hit.decision {
                Ok(g) => (Outcome::Allow(g), None),
                Err(e) => (Outcome::Deny(e), hit.caller),
            };
        }
        if let Some(e) = self.refused.get(&key) {
            return (Outcome::Deny(e), None);
        }
        let token = match token68(raw) {
            Ok(t) => t,
            Err(e) => return (Outcome::Deny(e), None),
        };
        // Boxed: the verification's future (JWKS fetch, introspection) is kilobytes, and
        // inline it would make every request's future that large, cache hits included.
        let verify = Box::pin(self.auth.verify(token, route.issuers.as_deref()));
        let id = match verify.await {
            Ok(id) => id,
            Err(e) => {
                self.refused.remember(key, &e);
                return (Outcome::Deny(e), None);
            }
        };
        let decision = rbac::decide(route, &id, &self.rt.roles).map(Arc::new);
        let caller = decision
            .is_err()
            .then(|| Arc::new(Caller::of(&id, &self.rt.roles)));
        self.cache
            .insert(key, decision.clone(), caller.clone(), id.exp);
        match decision {
            Ok(g) => (Outcome::Allow(g), None),
            Err(e) => (Outcome::Deny(e), caller),
        }
    }
}
