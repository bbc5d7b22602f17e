//! Authorization: the caller's roles, the route's requirements, and the headers that tell
//! the backend who is calling and which rows it may see.
//!
//! Roles of a caller = values of the issuer's `roles_claim` ∪ roles whose `groups` meet
//! the token's groups ∪ roles whose `clients` list its client ID (docs/configuration.md, roles).
//! Anything a route does not allow is denied.

use std::sync::Arc;

use bytes::Bytes;
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
    /// Sorted; shared with the audit records of requests denied to this caller.
    pub roles: Arc<[String]>,
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
///
/// One of these is kept per cached decision, so it is laid out to be small: the header
/// values sit in one buffer of exactly their size, each named by an index into the
/// route's header names (a value per request is a slice of it: a reference count, no
/// copy), the roles are shared with the audit records that name them, and no `Vec` keeps
/// spare capacity. See docs/ARCHITECTURE.md, "Decision cache memory".
#[derive(Clone, Debug)]
pub struct Grant {
    pub subject: Option<Box<str>>,
    pub client_id: Option<Box<str>>,
    /// The token's `iss`.
    pub iss: Box<str>,
    /// Issuer config name.
    pub issuer: Box<str>,
    /// Sorted; shared with the audit records of requests this grant allows.
    pub roles: Arc<[String]>,
    /// Identity and row-filter header values, already encoded, one after the other.
    values: Bytes,
    /// Which header each value is, in order; see [`Grant::headers`].
    spans: Box<[Span]>,
    /// Token expiry (Unix seconds), bounds the cache lifetime.
    pub exp: u64,
    /// The subject's audit pseudonym, made by the first request this grant allows (an
    /// HMAC per cached caller, not per request).
    pub pseudonym: crate::audit::PseudonymSlot,
}

/// One header of a grant: its name (an index: [`IDENTITY_HEADERS`] first, then the
/// route's row filters) and where its value ends in [`Grant::values`] (it starts where the
/// previous one ends).
#[derive(Clone, Copy, Debug)]
struct Span {
    name: u16,
    end: u32,
}

/// The identity headers ([`crate::names::IDENTITY_HEADERS`]), in the order they are sent;
/// the names of a grant's spans index this table, then the route's row filters.
pub static IDENTITY_HEADERS: [HeaderName; 4] = [
    header::X_AUTH_SUBJECT,
    header::X_AUTH_CLIENT_ID,
    header::X_AUTH_ROLES,
    header::X_AUTH_ISSUER,
];
const SUBJECT: usize = 0;
const CLIENT_ID: usize = 1;
const ROLES: usize = 2;
const ISSUER: usize = 3;

impl Grant {
    /// The headers to send to the backend of `route`, the route this grant was decided
    /// on: identity headers, then row filters, in order.
    pub fn headers<'a>(
        &'a self,
        route: &'a Route,
    ) -> impl Iterator<Item = (&'a HeaderName, HeaderValue)> + 'a {
        let mut start = 0;
        self.spans.iter().filter_map(move |s| {
            let (from, to) = (start, s.end as usize);
            start = to;
            let n = s.name as usize;
            let name = match IDENTITY_HEADERS.get(n) {
                Some(h) => h,
                None => &route.row_filters.get(n - IDENTITY_HEADERS.len())?.header,
            };
            // Checked when the grant was made (`HeaderBuf::finish`); the check again
            // costs a scan of a few bytes and keeps this free of `unsafe`.
            let value = HeaderValue::from_maybe_shared(self.values.slice(from..to)).ok()?;
            Some((name, value))
        })
    }
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

/// The header values of one grant, written into one buffer.
struct HeaderBuf {
    buf: Vec<u8>,
    spans: Vec<Span>,
}

impl HeaderBuf {
    fn with_capacity(n: usize) -> Self {
        HeaderBuf {
            buf: Vec::with_capacity(64 * n),
            spans: Vec::with_capacity(n),
        }
    }

    /// Appends the value of header `name` (an index, see [`Span`]); refused with the index
    /// when the buffer outgrows a span's offsets.
    fn push(&mut self, name: usize, value: &str) -> Result<(), usize> {
        self.buf.extend_from_slice(value.as_bytes());
        let end = u32::try_from(self.buf.len()).map_err(|_| name)?;
        let name = u16::try_from(name).map_err(|_| name)?;
        self.spans.push(Span { name, end });
        Ok(())
    }

    /// Copied into allocations of exactly their size (the cache keeps them for minutes),
    /// each value checked as a header value on the shared buffer, without a copy; a value
    /// that is not one is refused with its header's index (never sent empty instead).
    fn finish(self) -> Result<(Bytes, Box<[Span]>), usize> {
        let values = Bytes::copy_from_slice(&self.buf);
        let mut start = 0;
        for s in &self.spans {
            let end = s.end as usize;
            HeaderValue::from_maybe_shared(values.slice(start..end))
                .map_err(|_| s.name as usize)?;
            start = end;
        }
        Ok((values, self.spans.as_slice().into()))
    }
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
    let mut headers = HeaderBuf::with_capacity(4 + route.row_filters.len());
    let invalid = |i: usize| {
        let name = match IDENTITY_HEADERS.get(i) {
            Some(h) => h,
            None => &route.row_filters[i - IDENTITY_HEADERS.len()].header,
        };
        invalid_value(name)
    };
    if let Some(sub) = &id.sub {
        headers.push(SUBJECT, &encode(sub)).map_err(invalid)?;
    }
    if id.is_client {
        if let Some(c) = &id.client_id {
            headers.push(CLIENT_ID, &encode(c)).map_err(invalid)?;
        }
    }
    let joined: Vec<String> = roles.iter().map(|r| encode(r)).collect();
    headers.push(ROLES, &joined.join(",")).map_err(invalid)?;
    // Verbatim: `iss` matched a configured issuer exactly, and config accepts only https
    // URLs there, so a backend can compare it with its IdP's URL as is.
    headers.push(ISSUER, &id.iss).map_err(invalid)?;
    let view = View { id, roles: &roles };
    for (i, f) in route.row_filters.iter().enumerate() {
        if f.except_roles.iter().any(|r| roles.contains(r)) {
            continue;
        }
        // The renderer refuses empty and non-visible-ASCII values; the HeaderValue check
        // in `finish` is a second line, and it denies too (never an empty header instead).
        match f.template.render(&view) {
            Ok(v) => headers
                .push(IDENTITY_HEADERS.len() + i, &v)
                .map_err(invalid)?,
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
            Err(RenderError::Invalid) => return Err(invalid_value(&f.header)),
        }
    }
    let (values, spans) = headers.finish().map_err(invalid)?;
    Ok(Grant {
        subject: id.sub.as_deref().map(Box::from),
        client_id: id.client_id.as_deref().map(Box::from),
        iss: id.iss.as_str().into(),
        issuer: id.issuer.as_str().into(),
        roles: roles.into(),
        values,
        spans,
        exp: id.exp,
        pseudonym: Default::default(),
    })
}

fn invalid_value(header: &HeaderName) -> AuthError {
    AuthError::new(
        DenyReason::MissingClaim,
        format!("the header {header} did not render to a valid header value"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::route::RowFilter;
    use crate::policy::row_filter::Template;
    use serde_json::json;

    fn identity() -> Identity {
        let s = crate::auth::test_settings();
        Identity::from_claims(
            &s,
            "https://idp".into(),
            u64::MAX,
            json!({"sub": "alice", "roles": ["reader", "auditor"], "region": "eu west"}),
        )
    }

    fn route(filter: &str) -> Route {
        Route {
            index: 0,
            name: "orders".into(),
            host: None,
            path_prefix: "/orders".into(),
            methods: None,
            upstream: "orders".into(),
            issuers: None,
            allow_roles: vec!["reader".into()],
            require_scopes: vec![],
            require_mfa: false,
            forward_token: false,
            auth: AuthMode::Required,
            row_filters: vec![RowFilter {
                header: HeaderName::from_static("x-row-filter"),
                template: Template::parse(filter).unwrap(),
                except_roles: vec![],
            }],
            line: 1,
        }
    }

    /// A cached grant holds its header values in one allocation: each value starts where
    /// the one before it ends (a value per allocation, with its name beside it, would
    /// cost ~150 bytes more per header and cached token).
    #[test]
    fn grant_header_values_share_one_buffer() {
        let r = route("region={claims.region}");
        let g = decide(&r, &identity(), &IndexMap::new()).unwrap();
        let headers: Vec<(&HeaderName, HeaderValue)> = g.headers(&r).collect();
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-auth-subject",
                "x-auth-roles",
                "x-auth-issuer",
                "x-row-filter"
            ]
        );
        let values: Vec<&[u8]> = headers.iter().map(|(_, v)| v.as_bytes()).collect();
        assert_eq!(
            values,
            [
                &b"alice"[..],
                b"auditor,reader",
                b"https://idp",
                b"region=eu%20west"
            ]
        );
        for w in values.windows(2) {
            let end = w[0].as_ptr() as usize + w[0].len();
            assert_eq!(
                end,
                w[1].as_ptr() as usize,
                "values are adjacent in one buffer"
            );
        }
        assert_eq!(&*g.roles, ["auditor".to_string(), "reader".to_string()]);
    }

    /// The second line behind the renderer: a value that is no header value is refused
    /// with its header's index, whatever comes before or after it.
    #[test]
    fn header_buffer_refuses_a_value_that_is_no_header_value() {
        let mut b = HeaderBuf::with_capacity(3);
        b.push(SUBJECT, "alice").unwrap();
        b.push(ROLES, "a\r\nX-Auth-Roles: admin").unwrap();
        b.push(ISSUER, "https://idp").unwrap();
        assert_eq!(b.finish().err(), Some(ROLES));
    }

    #[test]
    fn a_row_filter_that_renders_no_value_denies() {
        let e = decide(
            &route("region={claims.nowhere}"),
            &identity(),
            &IndexMap::new(),
        )
        .unwrap_err();
        assert_eq!(e.reason, DenyReason::MissingClaim);
    }
}
