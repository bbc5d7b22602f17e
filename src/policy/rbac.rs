//! Authorization: the caller's roles, the route's requirements, and the headers that tell
//! the backend who is calling and which rows it may see.
//!
//! Roles of a caller = values of the issuer's `roles_claim` ∪ roles whose `groups` meet
//! the token's groups ∪ roles whose `clients` list its client ID (docs/configuration.md, roles).
//! Anything a route does not allow is denied.

use http::{HeaderName, HeaderValue};
use indexmap::IndexMap;

use super::route::{AuthMode, Route};
use super::row_filter::{encode, RenderError, Values};
use crate::auth::{AuthError, DenyReason, Identity};
use crate::names::header;

/// Where a role came from (shown by `explain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoleSource {
    Claim,
    Group(String),
    Client(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleGrant {
    pub role: String,
    pub source: RoleSource,
}

/// One `[roles.NAME]`: who holds the role besides callers whose token names it.
#[derive(Clone, Debug, Default)]
pub struct RoleSettings {
    /// Token groups any of which grants the role.
    pub groups: Vec<String>,
    /// Client IDs (client-credentials tokens) that hold the role.
    pub clients: Vec<String>,
    /// Line of the `[roles.NAME]` header in the config file.
    pub line: usize,
}

/// Every role the caller holds, with its first source, sorted by role name.
pub fn roles_of(id: &Identity, roles: &IndexMap<String, RoleSettings>) -> Vec<RoleGrant> {
    let mut out: Vec<RoleGrant> = Vec::new();
    let mut add = |role: &str, source: RoleSource| {
        if !out.iter().any(|g| g.role == role) {
            out.push(RoleGrant {
                role: role.to_string(),
                source,
            });
        }
    };
    for r in &id.roles {
        add(r, RoleSource::Claim);
    }
    for (name, cfg) in roles {
        if let Some(g) = cfg.groups.iter().find(|g| id.groups.contains(g)) {
            add(name, RoleSource::Group(g.clone()));
        }
        // Only a client-credentials token speaks for the client: a person signed in
        // through that client app (user token with the same client ID claim) must not
        // inherit the client's roles.
        if let Some(c) = id
            .client_id
            .as_ref()
            .filter(|c| id.is_client && cfg.clients.contains(c))
        {
            add(name, RoleSource::Client(c.clone()));
        }
    }
    out.sort_by(|a, b| a.role.cmp(&b.role));
    out
}

/// Who a verified caller is, kept with a denial for the audit log.
#[derive(Clone, Debug)]
pub struct Caller {
    pub iss: String,
    pub sub: Option<String>,
    pub client_id: Option<String>,
    /// Sorted.
    pub roles: Vec<String>,
}

impl Caller {
    pub fn of(id: &Identity, roles_cfg: &IndexMap<String, RoleSettings>) -> Caller {
        Caller {
            iss: id.iss.clone(),
            sub: id.sub.clone(),
            client_id: id.client_id.clone(),
            roles: roles_of(id, roles_cfg)
                .into_iter()
                .map(|g| g.role)
                .collect(),
        }
    }
}

/// An allowed request: who, and what to tell the backend.
#[derive(Clone, Debug)]
pub struct Grant {
    pub subject: Option<String>,
    pub client_id: Option<String>,
    /// The token's `iss`.
    pub iss: String,
    /// Issuer config name.
    pub issuer: String,
    /// Sorted.
    pub roles: Vec<String>,
    /// Identity and row-filter headers, values already encoded.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Token expiry (Unix seconds), bounds the cache lifetime.
    pub exp: u64,
}

struct View<'a> {
    id: &'a Identity,
    roles: &'a [String],
}

impl Values for View<'_> {
    fn claim(&self, path: &str) -> Option<&serde_json::Value> {
        self.id.claim(path).filter(|v| !v.is_null())
    }
    fn sub(&self) -> Option<&str> {
        self.id.sub.as_deref()
    }
    fn client_id(&self) -> Option<&str> {
        self.id.client_id.as_deref()
    }
    fn roles(&self) -> &[String] {
        self.roles
    }
    // The template's `{issuer}` is the token's `iss`, not the issuer's config name.
    #[allow(clippy::misnamed_getters)]
    fn issuer(&self) -> &str {
        &self.id.iss
    }
}

fn header_value(s: &str) -> HeaderValue {
    // Every value is percent-encoded ASCII, so this cannot fail; fall back to empty
    // rather than panic on the request path.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Decides one verified caller on one route. Checks in order: roles, scopes, MFA, then
/// renders row filters (a missing claim denies).
pub fn decide(
    route: &Route,
    id: &Identity,
    roles_cfg: &IndexMap<String, RoleSettings>,
) -> Result<Grant, AuthError> {
    debug_assert_eq!(route.auth, AuthMode::Required);
    let grants = roles_of(id, roles_cfg);
    let roles: Vec<String> = grants.into_iter().map(|g| g.role).collect();
    if !route.allow_roles.is_empty() && !route.allow_roles.iter().any(|r| roles.contains(r)) {
        return Err(AuthError::new(
            DenyReason::InsufficientRole,
            format!(
                "route {} needs one of the roles: {}",
                route.name,
                route.allow_roles.join(", ")
            ),
        ));
    }
    let missing: Vec<&String> = route
        .require_scopes
        .iter()
        .filter(|s| !id.scopes.contains(s))
        .collect();
    if !missing.is_empty() {
        let m: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        return Err(AuthError::new(
            DenyReason::InsufficientScope,
            format!("the token lacks the scopes: {}", m.join(" ")),
        ));
    }
    if route.require_mfa && !id.has_mfa() {
        return Err(AuthError::new(
            DenyReason::MfaRequired,
            "this route needs a token from a multi-factor login (amr mfa, otp or hwk)",
        ));
    }
    let mut headers = Vec::with_capacity(4 + route.row_filters.len());
    if let Some(sub) = &id.sub {
        headers.push((header::X_AUTH_SUBJECT, header_value(&encode(sub))));
    }
    if id.is_client {
        if let Some(c) = &id.client_id {
            headers.push((header::X_AUTH_CLIENT_ID, header_value(&encode(c))));
        }
    }
    let joined: Vec<String> = roles.iter().map(|r| encode(r)).collect();
    headers.push((header::X_AUTH_ROLES, header_value(&joined.join(","))));
    // Verbatim: `iss` matched a configured issuer exactly, and config accepts only https
    // URLs there, so a backend can compare it with its IdP's URL as is.
    headers.push((header::X_AUTH_ISSUER, header_value(&id.iss)));
    let view = View { id, roles: &roles };
    for f in &route.row_filters {
        if f.except_roles.iter().any(|r| roles.contains(r)) {
            continue;
        }
        // The renderer refuses empty and non-visible-ASCII values; the HeaderValue check
        // is a second line, and it denies too (never an empty header instead).
        let rendered = f
            .template
            .render(&view)
            .and_then(|v| HeaderValue::from_str(&v).map_err(|_| RenderError::Invalid));
        match rendered {
            Ok(v) => headers.push((f.header.clone(), v)),
            Err(RenderError::Missing(ph)) => {
                let what = RenderError::Missing(ph);
                return Err(AuthError::new(
                    DenyReason::MissingClaim,
                    format!(
                        "the row filter {} needs {what}, which the token does not carry",
                        f.header
                    ),
                ));
            }
            Err(RenderError::Invalid) => {
                return Err(AuthError::new(
                    DenyReason::MissingClaim,
                    format!(
                        "the row filter {} did not render to a valid header value",
                        f.header
                    ),
                ));
            }
        }
    }
    Ok(Grant {
        subject: id.sub.clone(),
        client_id: id.client_id.clone(),
        iss: id.iss.clone(),
        issuer: id.issuer.clone(),
        roles,
        headers,
        exp: id.exp,
    })
}
