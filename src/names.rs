//! The names gatehouse owns, in one table: the headers it sets on a forwarded request, the
//! headers it strips from every client request, and the decision words of audit lines,
//! metrics, debug logs and `explain`. Config validation, the proxy, the pipeline, policy,
//! audit and explain read them from here; docs/reference.md lists them for users.
//!
//! Header names are lower case (as `HeaderName` keeps them). Each header the gateway sets
//! has a `&str` (for lists and comparisons) and a [`HeaderName`] (for inserting without a
//! parse per request).

use std::fmt;

use http::HeaderName;

/// The authenticated subject (`sub`), percent-encoded.
pub const X_AUTH_SUBJECT: &str = "x-auth-subject";
/// The client ID of a client-credentials token, percent-encoded.
pub const X_AUTH_CLIENT_ID: &str = "x-auth-client-id";
/// The caller's roles, sorted, comma-separated, each percent-encoded.
pub const X_AUTH_ROLES: &str = "x-auth-roles";
/// The token's `iss`, verbatim.
pub const X_AUTH_ISSUER: &str = "x-auth-issuer";
/// The client's address chain.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
/// Always `https`.
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
/// The client's request ID if well formed, else a generated one.
pub const X_REQUEST_ID: &str = "x-request-id";

/// The same headers as [`HeaderName`]s.
pub mod header {
    use super::*;

    pub const X_AUTH_SUBJECT: HeaderName = HeaderName::from_static(super::X_AUTH_SUBJECT);
    pub const X_AUTH_CLIENT_ID: HeaderName = HeaderName::from_static(super::X_AUTH_CLIENT_ID);
    pub const X_AUTH_ROLES: HeaderName = HeaderName::from_static(super::X_AUTH_ROLES);
    pub const X_AUTH_ISSUER: HeaderName = HeaderName::from_static(super::X_AUTH_ISSUER);
    pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static(super::X_FORWARDED_FOR);
    pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static(super::X_FORWARDED_PROTO);
    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static(super::X_REQUEST_ID);
}

/// Identity headers gatehouse sets on an allowed request; client copies are always
/// removed.
pub const IDENTITY_HEADERS: [&str; 4] = [
    X_AUTH_SUBJECT,
    X_AUTH_CLIENT_ID,
    X_AUTH_ROLES,
    X_AUTH_ISSUER,
];

/// Hop-by-hop headers (RFC 9110 section 7.6.1, and the h2c and proxy spellings): they
/// describe one connection, are never relayed and cannot be a row-filter header.
pub const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "http2-settings",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers the gateway sets on every forwarded request (client copies are replaced).
pub const FORWARDED_HEADERS: [&str; 3] = [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID];

/// Headers removed from every client request besides the config's owned ones: a backend
/// may trust them for the method (method-override middleware would run an authorized
/// GET as a DELETE), the URL (`X-Original-URL` / `X-Rewrite-URL` make IIS, Symfony or
/// Zend serve another path than the one gatehouse routed), the client's address and
/// host, or the client certificate a TLS terminator verified (nginx, Envoy, Traefik,
/// Azure spellings), and only gatehouse may say those things.
pub const ALWAYS_STRIPPED: [&str; 24] = [
    // Method overrides.
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    // URL overrides.
    "x-original-url",
    "x-rewrite-url",
    // Client address and host.
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    // Client certificate, as terminating proxies pass it on.
    "x-forwarded-client-cert",
    "x-client-cert",
    "x-ssl-client-cert",
    "x-ssl-client-dn",
    "x-ssl-client-cn",
    "x-ssl-client-s-dn",
    "x-ssl-client-i-dn",
    "x-ssl-client-verify",
    "x-client-verify",
    "x-client-dn",
    "x-client-cn",
    "ssl-client-cert",
    "x-forwarded-tls-client-cert",
    "x-forwarded-tls-client-cert-info",
    "x-arr-clientcert",
];

/// What happened to a request: the `decision` of audit lines, the `decision` label of
/// `gatehouse_auth_decisions_total`, the debug line that ends a request and `explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// A token was checked and the route's rules admit the caller.
    Allow,
    /// Refused: no or a bad token, or the route's rules refuse the caller.
    Deny,
    /// A route with `auth = "none"`: no token is looked at.
    Public,
}

impl Decision {
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Public => "public",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_and_strings_agree() {
        for (name, s) in [
            (header::X_AUTH_SUBJECT, X_AUTH_SUBJECT),
            (header::X_AUTH_CLIENT_ID, X_AUTH_CLIENT_ID),
            (header::X_AUTH_ROLES, X_AUTH_ROLES),
            (header::X_AUTH_ISSUER, X_AUTH_ISSUER),
            (header::X_FORWARDED_FOR, X_FORWARDED_FOR),
            (header::X_FORWARDED_PROTO, X_FORWARDED_PROTO),
            (header::X_REQUEST_ID, X_REQUEST_ID),
        ] {
            assert_eq!(name.as_str(), s);
        }
    }

    #[test]
    fn decisions_serialise_as_their_words() {
        for d in [Decision::Allow, Decision::Deny, Decision::Public] {
            assert_eq!(
                serde_json::to_value(d).unwrap(),
                serde_json::json!(d.as_str())
            );
            assert_eq!(d.to_string(), d.as_str());
        }
    }
}
