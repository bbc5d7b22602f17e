//! `gatehouse explain`: one request dry-run through the real routing, authentication and
//! authorization code, without a backend, printing every step (README, "Checking one request").
//!
//! - Routing: [`route::check_path`] and [`route::find`], as the proxy calls them.
//! - `--token`: an [`Authenticator`] built from the config on a private tokio runtime,
//!   fetching keys from each issuer's configured source (JWKS file, `jwks_uri`, discovery)
//!   and verifying with [`Authenticator::verify`]. An issuer that cannot be reached ends
//!   as `issuer_unavailable` (503), never a crash.
//! - `--claims`: the claims are taken as already verified except for what the verifier
//!   checks after the signature: `iss`, `aud`, `exp`, `nbf`/`iat` with the issuer's
//!   leeway, through the verifier's own `auth::jwt::check_claims`; the signature and
//!   issuer-key checks are skipped and the output says so.
//! - Roles with their source ([`rbac::roles_of`]), the decision and the row-filter
//!   headers, percent-encoding included, and the status the client gets. With `--token`
//!   the decision comes from the gateway's own decision step
//!   ([`Live::decide_with_caller`], which `pipeline::admit` calls for every request), so
//!   explain and the gateway cannot disagree; with `--claims` (no token to decide on) from
//!   [`rbac::decide`], the authorization that step runs.
//!
//! The token is never printed back: [`redact`] keeps 8 characters and the length.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::auth::{AuthError, Authenticator, DenyReason, Identity, IssuerSettings, KeySource};
use crate::config::Runtime;
use crate::gate::{Live, Outcome};
use crate::names::Decision;
use crate::policy::rbac::{self, RoleGrant};
use crate::policy::route::{self, AuthMode, Route};

mod output;

pub use output::{explain_cli, run};

/// Exit code when the request would be forwarded.
pub const EXIT_FORWARDED: i32 = 0;
/// Exit code on bad input (config, URL, claims file, arguments).
pub const EXIT_BAD_INPUT: i32 = 1;
/// Exit code when the gateway would refuse the request.
pub const EXIT_REFUSED: i32 = 3;

/// What the caller presents.
#[derive(Clone, Debug)]
pub enum Credential {
    /// A bearer token, verified like the gateway does (keys from the issuer's source).
    Token(String),
    /// Claims of an already-verified token (signature and key checks skipped).
    Claims(Value),
}

/// Knobs of one run.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long to wait for an issuer's keys before calling it unavailable.
    pub key_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            key_wait: Duration::from_secs(5),
        }
    }
}

/// Result of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckResult {
    Pass,
    Fail,
    Skipped,
    NotReached,
}

impl CheckResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckResult::Pass => "pass",
            CheckResult::Fail => "fail",
            CheckResult::Skipped => "skipped",
            CheckResult::NotReached => "not_reached",
        }
    }
}

/// One token or authorization check, in the order the gateway runs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub result: CheckResult,
    pub detail: String,
}

/// The whole dry run.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub method: String,
    pub host: Option<String>,
    pub path: String,
    /// Why the path was refused (400), if it was.
    pub path_refused: Option<String>,
    pub route: Option<Arc<Route>>,
    /// Why each route did not match, when none did.
    pub near_misses: Vec<String>,
    /// The credential as shown: a redacted token or "claims".
    pub credential: String,
    pub token_checks: Vec<Check>,
    pub roles: Vec<RoleGrant>,
    pub authz_checks: Vec<Check>,
    pub decision: Decision,
    /// Deny reason (docs/reference.md; `no_route` and `bad_path` for the gateway's own 404 / 400).
    pub reason: Option<String>,
    pub detail: Option<String>,
    /// Identity and row-filter headers, values as the backend would get them.
    pub headers: Vec<(String, String)>,
    pub status: u16,
    pub forwarded: bool,
}

/// `eyJhbGci…(812 chars)`: enough to tell tokens apart, useless to replay.
pub fn redact(token: &str) -> String {
    let head: String = token.chars().take(8).collect();
    format!("{head}…({} chars)", token.chars().count())
}

fn check(name: &'static str, result: CheckResult, detail: impl Into<String>) -> Check {
    Check {
        name,
        result,
        detail: detail.into(),
    }
}

/// Runs one request through routing, authentication and authorization.
pub fn explain(
    rt: &Arc<Runtime>,
    method: &str,
    url: &str,
    cred: &Credential,
    opts: &Options,
) -> Result<Explanation, String> {
    let (host, path) = split_url(url)?;
    let method = method.to_ascii_uppercase();
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(format!("{method:?} is not an HTTP method"));
    }
    let mut e = Explanation {
        method: method.clone(),
        host: host.clone(),
        path: path.clone(),
        path_refused: None,
        route: None,
        near_misses: Vec::new(),
        credential: match cred {
            Credential::Token(t) => format!("token {}", redact(t)),
            Credential::Claims(_) => {
                "claims (already verified: signature and issuer-key checks skipped)".into()
            }
        },
        token_checks: Vec::new(),
        roles: Vec::new(),
        authz_checks: Vec::new(),
        decision: Decision::Deny,
        reason: None,
        detail: None,
        headers: Vec::new(),
        status: 0,
        forwarded: false,
    };
    // The same routing step as the gateway (target, path normalisation, Host, first
    // match): a URL a client could send gets the route the gateway would give it.
    let mut head = http::Request::builder()
        .method(method.as_str())
        .uri(&path)
        // A URL without a host is a request without Host: HTTP/1.0 may send one.
        .version(if host.is_some() {
            http::Version::HTTP_11
        } else {
            http::Version::HTTP_10
        });
    if let Some(h) = &host {
        head = head.header(http::header::HOST, h.as_str());
    }
    let mut head = head
        .body(())
        .map_err(|err| format!("cannot build a request for {url:?}: {err}"))?
        .into_parts()
        .0;
    let r = match crate::pipeline::route_request(rt, &mut head) {
        Ok(r) => r,
        Err(p) if p.status == 404 => {
            let host = host.as_deref().and_then(|h| route::normalize_host(h).ok());
            e.near_misses = near_misses(rt, host.as_deref(), head.uri.path(), &method);
            return Ok(refuse(e, p.kind, p.detail, 404));
        }
        Err(p) => {
            e.path_refused = Some(p.detail.clone());
            return Ok(refuse(e, p.kind, p.detail, p.status));
        }
    };
    if head.uri.path() != path {
        e.path = head.uri.path().to_string();
    }
    e.route = Some(r.clone());
    if r.auth == AuthMode::None {
        e.decision = Decision::Public;
        e.status = 200;
        e.forwarded = true;
        return Ok(e);
    }
    let (verified, outcome) = match cred {
        Credential::Token(t) => verify_token(rt, &r, t, opts, &mut e.token_checks),
        // Claims taken as verified: there is no token for the gateway's decision step, so
        // the authorization that step runs is called directly.
        Credential::Claims(c) => (verify_claims(rt, &r, c, &mut e.token_checks), None),
    };
    let id = match verified {
        Ok(id) => id,
        Err(err) => return Ok(deny(e, err)),
    };
    e.roles = rbac::roles_of(&id, &rt.roles);
    // With a token, the decision is the gateway's own (`gate::Live::decide_with_caller`,
    // what `pipeline::admit` calls for every request); the identity above only explains it.
    let decided = match outcome {
        Some(Outcome::Allow(g)) => Ok(g),
        Some(Outcome::Deny(err)) => Err(err),
        Some(Outcome::Public) | None => rbac::decide(&r, &id, &rt.roles).map(Arc::new),
    };
    e.authz_checks = authz_checks(&r, &id, &e.roles, decided.as_ref().err());
    match decided {
        Ok(grant) => {
            e.decision = Decision::Allow;
            e.status = 200;
            e.forwarded = true;
            e.headers = grant
                .headers(&r)
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            Ok(e)
        }
        Err(err) => Ok(deny(e, err)),
    }
}

fn refuse(mut e: Explanation, reason: &str, detail: String, status: u16) -> Explanation {
    e.decision = Decision::Deny;
    e.reason = Some(reason.to_string());
    e.detail = Some(detail);
    e.status = status;
    e
}

fn deny(e: Explanation, err: AuthError) -> Explanation {
    refuse(e, err.reason.as_str(), err.detail, err.reason.status())
}

/// `https://host[:port]/path?query` or `/path?query` → (host with port, path).
fn split_url(url: &str) -> Result<(Option<String>, String), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("cannot parse the URL {url:?}: {e}"))?;
    let path = uri.path().to_string();
    if uri.scheme().is_none() && !url.starts_with('/') {
        return Err(format!(
            "{url:?} is neither an absolute URL (https://host/path) nor a path (/path)"
        ));
    }
    if uri.scheme().is_some() {
        let Some(a) = uri.authority() else {
            return Err(format!("the URL {url:?} has no host"));
        };
        let host = a.as_str().rsplit('@').next().unwrap_or(a.as_str());
        return Ok((Some(host.to_string()), path));
    }

    Ok((None, path))
}

/// Why each route did not take the request (shown when none did).
fn near_misses(rt: &Runtime, host: Option<&str>, path: &str, method: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in &rt.routes {
        let mut why = Vec::new();
        if let Some(h) = &r.host {
            let ok = host == Some(h.as_str());
            if !ok {
                why.push(format!("host is not {h}"));
            }
        }
        if !route::prefix_matches(&r.path_prefix, path) {
            why.push(format!("path is not under {}", r.path_prefix));
        }
        if !r.serves(method) {
            let ms = r.methods.as_deref().unwrap_or_default().join(", ");
            why.push(format!("method {method} not in {ms}"));
        }
        out.push(format!("{}: {}", r.name, why.join("; ")));
    }
    out
}

/// The verifier's test for a JWT (three base64url parts, the first two non-empty);
/// anything else goes to introspection.
fn looks_like_jwt(token: &str) -> bool {
    let b64 = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3 && !parts[0].is_empty() && !parts[1].is_empty() && parts.iter().all(|p| b64(p))
}

/// Decodes a JWT's header and payload without verifying (display and issuer choice only).
fn peek(token: &str) -> Option<(Map<String, Value>, Map<String, Value>)> {
    let mut parts = token.split('.');
    let (h, p) = (parts.next()?, parts.next()?);
    parts.next()?;
    let obj = |s: &str| -> Option<Map<String, Value>> {
        match serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).ok()?) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        }
    };
    Some((obj(h)?, obj(p)?))
}

fn key_source(s: &IssuerSettings) -> String {
    match &s.keys {
        KeySource::Discovery => format!(
            "discovery {}/.well-known/openid-configuration",
            s.issuer.trim_end_matches('/')
        ),
        KeySource::JwksUri(u) => format!("jwks_uri {u}"),
        KeySource::JwksFile(p) => format!("jwks_file {}", p.display()),
    }
}

const TOKEN_CHECKS: [&str; 9] = [
    "format",
    "issuer",
    "algorithm",
    "issuer keys",
    "signing key",
    "signature",
    "audience",
    "expiry",
    "not before",
];

/// Which of [`TOKEN_CHECKS`] a verifier error comes from.
fn failing_check(e: &AuthError) -> usize {
    let d = e.detail.as_str();
    match e.reason {
        DenyReason::WrongIssuer => 1,
        DenyReason::DisallowedAlgorithm => 2,
        DenyReason::IssuerUnavailable => 3,
        DenyReason::UnknownKey => 4,
        DenyReason::BadSignature => 5,
        DenyReason::WrongAudience => 6,
        DenyReason::Expired => 7,
        DenyReason::NotYetValid => 8,
        DenyReason::MalformedToken if d.contains("exp") => 7,
        DenyReason::MalformedToken if d.contains("nbf") || d.contains("iat") => 8,
        DenyReason::MalformedToken if d.contains("signature") => 5,
        _ => 0,
    }
}

fn fmt_time(t: u64) -> String {
    chrono::DateTime::from_timestamp(t as i64, 0)
        .map(|d| d.to_rfc3339())
        .unwrap_or_else(|| t.to_string())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `--token`: the real verifier, keys from each issuer's configured source.
/// Verifies `token` for the token checks shown, and decides the request with the
/// gateway's own decision step ([`Live::decide_with_caller`]) on the same keys.
fn verify_token(
    rt: &Arc<Runtime>,
    r: &Route,
    token: &str,
    opts: &Options,
    checks: &mut Vec<Check>,
) -> (Result<Identity, AuthError>, Option<Outcome>) {
    let peeked = peek(token);
    let iss = peeked
        .as_ref()
        .and_then(|(_, p)| p.get("iss").and_then(Value::as_str).map(str::to_string));
    let wait_for: Vec<&IssuerSettings> = rt
        .issuers
        .iter()
        .filter(|i| Some(&i.issuer) == iss.as_ref())
        .filter(|i| r.issuers.as_ref().is_none_or(|l| l.contains(&i.name)))
        .collect();
    let io = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gatehouse-explain")
        .enable_all()
        .build()
    {
        Ok(io) => io,
        Err(e) => {
            let e = AuthError::new(
                DenyReason::IssuerUnavailable,
                format!("cannot start the key-fetching runtime: {e}"),
            );
            return (Err(e), None);
        }
    };
    let auth = Arc::new(Authenticator::new(
        rt.issuers.clone(),
        io.handle().clone(),
        None,
    ));
    auth.start();
    let (result, outcome) = io.block_on(async {
        let start = Instant::now();
        while start.elapsed() < opts.key_wait {
            let missing = auth.not_ready();
            if wait_for.iter().all(|i| !missing.contains(&i.name)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let verified = auth.verify(token, r.issuers.as_deref()).await;
        let live = Live::new(rt.clone(), auth.clone());
        let authorization = format!("Bearer {token}");
        let (outcome, _) = live
            .decide_with_caller(r, Some(authorization.as_bytes()))
            .await;
        (verified, outcome)
    });
    auth.stop();
    drop(auth);
    io.shutdown_background();

    let (header, payload) = peeked.unwrap_or_default();
    let issuer = wait_for.first();
    let pass_detail = |i: usize| -> String {
        let s = |m: &Map<String, Value>, k: &str| {
            m.get(k)
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        };
        match i {
            0 => "JWS compact, header and payload decode".into(),
            1 => issuer
                .map(|s| format!("{} ({}), accepted on this route", s.name, s.issuer))
                .unwrap_or_default(),
            2 => s(&header, "alg").unwrap_or_default(),
            3 => issuer.map(|s| key_source(s)).unwrap_or_default(),
            4 => s(&header, "kid")
                .map_or("no kid: every key that fits".into(), |k| format!("kid {k}")),
            5 => "verifies".into(),
            6 => s(&payload, "aud").unwrap_or_default(),
            7 => payload
                .get("exp")
                .and_then(Value::as_u64)
                .map(fmt_time)
                .unwrap_or_default(),
            _ => "nbf / iat not in the future".into(),
        }
    };
    if looks_like_jwt(token) {
        let failed = result.as_ref().err().map(failing_check);
        for (i, name) in TOKEN_CHECKS.into_iter().enumerate() {
            let c = match failed {
                Some(f) if i == f => {
                    let e = result.as_ref().unwrap_err();
                    let mut d = format!("{}: {}", e.reason, e.detail);
                    if i == 3 {
                        if let Some(s) = issuer {
                            d = format!("{d} ({} unreachable or invalid)", key_source(s));
                        }
                    }
                    check(name, CheckResult::Fail, d)
                }
                Some(f) if i > f => check(name, CheckResult::NotReached, ""),
                _ => check(name, CheckResult::Pass, pass_detail(i)),
            };
            checks.push(c);
        }
    } else {
        checks.push(match &result {
            Ok(_) => check("introspection", CheckResult::Pass, "active"),
            Err(e) => check(
                "introspection",
                CheckResult::Fail,
                format!("{}: {}", e.reason, e.detail),
            ),
        });
    }
    (result, Some(outcome))
}

/// `--claims`: pick the issuer like the verifier (exact `iss`, accepted on the route),
/// skip signature and keys, check the registered claims.
fn verify_claims(
    rt: &Runtime,
    r: &Route,
    claims: &Value,
    checks: &mut Vec<Check>,
) -> Result<Identity, AuthError> {
    let skipped = "skipped with --claims: no token, so no signature or issuer keys to check";
    checks.push(check("format", CheckResult::Skipped, skipped));
    let Some(payload) = claims.as_object() else {
        let e = AuthError::new(
            DenyReason::MalformedToken,
            "the claims are not a JSON object",
        );
        checks.push(check("claims", CheckResult::Fail, e.to_string()));
        return Err(e);
    };
    let iss = payload.get("iss").and_then(Value::as_str);
    let same: Vec<&IssuerSettings> = rt
        .issuers
        .iter()
        .filter(|i| Some(i.issuer.as_str()) == iss)
        .collect();
    let picked = same
        .iter()
        .find(|i| r.issuers.as_ref().is_none_or(|l| l.contains(&i.name)));
    let settings = match (same.is_empty(), picked) {
        (_, Some(s)) => *s,
        (true, None) => {
            // The operator's own claims: name the values, trailing-slash mistakes included.
            let configured: Vec<String> = rt
                .issuers
                .iter()
                .map(|i| format!("{}: {:?}", i.name, i.issuer))
                .collect();
            let detail = format!(
                "token iss {:?} is not a configured issuer ({})",
                iss.unwrap_or(""),
                configured.join(", ")
            );
            return fail_rest(
                checks,
                1,
                AuthError::new(DenyReason::WrongIssuer, detail),
                &|_| String::new(),
            );
        }
        (false, None) => {
            return fail_rest(
                checks,
                1,
                AuthError::new(DenyReason::WrongIssuer, "issuer not accepted on this route"),
                &|_| String::new(),
            )
        }
    };
    checks.push(check(
        "issuer",
        CheckResult::Pass,
        format!(
            "{} ({}), accepted on this route",
            settings.name, settings.issuer
        ),
    ));
    for name in ["algorithm", "issuer keys", "signing key", "signature"] {
        checks.push(check(name, CheckResult::Skipped, skipped));
    }
    match crate::auth::jwt::check_claims(payload, settings, now()) {
        Ok(exp) => {
            checks.push(check(
                "audience",
                CheckResult::Pass,
                payload.get("aud").map(Value::to_string).unwrap_or_default(),
            ));
            checks.push(check("expiry", CheckResult::Pass, fmt_time(exp)));
            checks.push(check(
                "not before",
                CheckResult::Pass,
                "nbf / iat not in the future",
            ));
            Ok(Identity::from_claims(
                settings,
                settings.issuer.clone(),
                exp,
                claims.clone(),
            ))
        }
        Err(e) => {
            let aud = payload.get("aud").map(Value::to_string).unwrap_or_default();
            let e = if e.reason == DenyReason::WrongAudience {
                AuthError::new(
                    e.reason,
                    format!(
                        "token aud {} is not one of {} accepts: {:?}",
                        if aud.is_empty() {
                            "(none)".to_string()
                        } else {
                            aud.clone()
                        },
                        settings.name,
                        settings.audiences
                    ),
                )
            } else {
                e
            };
            let at = failing_check(&e);
            fail_rest(checks, at, e, &|i| {
                if i == 6 {
                    aud.clone()
                } else {
                    String::new()
                }
            })
        }
    }
}

/// Records the failing check `TOKEN_CHECKS[at]` (passing the ones between) and returns
/// the error.
fn fail_rest(
    checks: &mut Vec<Check>,
    at: usize,
    e: AuthError,
    pass: &dyn Fn(usize) -> String,
) -> Result<Identity, AuthError> {
    for (i, name) in TOKEN_CHECKS.into_iter().enumerate() {
        if checks.iter().any(|c| c.name == name) {
            continue;
        }
        let c = if i == at {
            check(
                name,
                CheckResult::Fail,
                format!("{}: {}", e.reason, e.detail),
            )
        } else if i > at {
            check(name, CheckResult::NotReached, "")
        } else {
            check(name, CheckResult::Pass, pass(i))
        };
        checks.push(c);
    }
    Err(e)
}

/// The authorization checks of [`rbac::decide`], in its order, marked from its answer.
fn authz_checks(
    r: &Route,
    id: &Identity,
    roles: &[RoleGrant],
    err: Option<&AuthError>,
) -> Vec<Check> {
    let order = [
        (DenyReason::InsufficientRole, "role"),
        (DenyReason::InsufficientScope, "scopes"),
        (DenyReason::MfaRequired, "mfa"),
        (DenyReason::MissingClaim, "row filters"),
    ];
    let failed = err.and_then(|e| order.iter().position(|(r, _)| *r == e.reason));
    let held: Vec<&str> = roles.iter().map(|g| g.role.as_str()).collect();
    let info = |i: usize| -> String {
        match i {
            0 if r.allow_roles.is_empty() => "any authenticated caller (allow_roles = [])".into(),
            0 => format!(
                "needs one of {}; holds {}",
                r.allow_roles.join(", "),
                if held.is_empty() {
                    "none".into()
                } else {
                    held.join(", ")
                }
            ),
            1 if r.require_scopes.is_empty() => "none required".into(),
            1 => format!(
                "needs {}; token has {}",
                r.require_scopes.join(" "),
                if id.scopes.is_empty() {
                    "none".into()
                } else {
                    id.scopes.join(" ")
                }
            ),
            2 if !r.require_mfa => "not required".into(),
            2 => format!("required; amr = [{}]", id.amr.join(", ")),
            _ if r.row_filters.is_empty() => "none on this route".into(),
            _ => r
                .row_filters
                .iter()
                .map(|f| {
                    let skip = f.except_roles.iter().any(|x| held.contains(&x.as_str()));
                    format!(
                        "{}={}{}",
                        crate::matrix::display_header(f.header.as_str()),
                        f.template.source(),
                        if skip {
                            " (not applied: except_roles)"
                        } else {
                            ""
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        }
    };
    order
        .iter()
        .enumerate()
        .map(|(i, (_, name))| match failed {
            Some(f) if i == f => {
                let e = err.unwrap();
                check(
                    name,
                    CheckResult::Fail,
                    format!("{}: {} ({})", e.reason, e.detail, info(i)),
                )
            }
            Some(f) if i > f => check(name, CheckResult::NotReached, ""),
            _ => check(name, CheckResult::Pass, info(i)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_eight_chars_and_length() {
        let t = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
        let r = redact(t);
        assert_eq!(r, format!("eyJhbGci…({} chars)", t.len()));
        assert!(!r.contains("eyJzdWIi"));
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("https://api.example.com:8443/orders/7?x=1").unwrap(),
            (Some("api.example.com:8443".into()), "/orders/7".into())
        );
        assert_eq!(split_url("/orders").unwrap(), (None, "/orders".into()));
        assert_eq!(
            split_url("https://h/a/../b").unwrap().1,
            "/a/../b",
            "not normalised: check_path must see it"
        );
        assert!(split_url("orders").is_err());
        assert!(split_url("https://exa mple.com/").is_err());
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(looks_like_jwt("a.b."));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("opaque-token"));
        assert!(!looks_like_jwt("a.b.c.d"));
    }
}
