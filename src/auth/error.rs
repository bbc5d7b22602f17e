//! The one error type of authentication: a fixed [`DenyReason`] plus a client-safe detail.
//!
//! `DenyReason` doubles as the `reason` metric label and the audit `reason`, so it is a
//! closed list (docs/reference.md, "Deny reasons") and never carries request data. The mapping to HTTP status
//! and `WWW-Authenticate` lives here, once, so the proxy, `explain` and tests agree.

use std::fmt;

/// Why a request was denied. Labels are the documented snake_case names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    MissingToken,
    MalformedToken,
    BadSignature,
    UnknownKey,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    DisallowedAlgorithm,
    InsufficientRole,
    InsufficientScope,
    MfaRequired,
    MissingClaim,
    IntrospectionInactive,
    IssuerUnavailable,
}

impl DenyReason {
    /// Every reason, in documented order (for pre-registering metric label sets and for tests).
    pub const ALL: [DenyReason; 15] = [
        DenyReason::MissingToken,
        DenyReason::MalformedToken,
        DenyReason::BadSignature,
        DenyReason::UnknownKey,
        DenyReason::Expired,
        DenyReason::NotYetValid,
        DenyReason::WrongIssuer,
        DenyReason::WrongAudience,
        DenyReason::DisallowedAlgorithm,
        DenyReason::InsufficientRole,
        DenyReason::InsufficientScope,
        DenyReason::MfaRequired,
        DenyReason::MissingClaim,
        DenyReason::IntrospectionInactive,
        DenyReason::IssuerUnavailable,
    ];

    /// The label (`missing_token`, ...), used in metrics, audit lines and problem bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::MissingToken => "missing_token",
            DenyReason::MalformedToken => "malformed_token",
            DenyReason::BadSignature => "bad_signature",
            DenyReason::UnknownKey => "unknown_key",
            DenyReason::Expired => "expired",
            DenyReason::NotYetValid => "not_yet_valid",
            DenyReason::WrongIssuer => "wrong_issuer",
            DenyReason::WrongAudience => "wrong_audience",
            DenyReason::DisallowedAlgorithm => "disallowed_algorithm",
            DenyReason::InsufficientRole => "insufficient_role",
            DenyReason::InsufficientScope => "insufficient_scope",
            DenyReason::MfaRequired => "mfa_required",
            DenyReason::MissingClaim => "missing_claim",
            DenyReason::IntrospectionInactive => "introspection_inactive",
            DenyReason::IssuerUnavailable => "issuer_unavailable",
        }
    }

    /// HTTP status of the denial: 401 when the token itself is missing or not acceptable,
    /// 403 when the token is fine but does not grant enough, 503 when the issuer's keys were
    /// never loaded (the caller may retry; the proxy adds `Retry-After`).
    pub fn status(self) -> u16 {
        match self {
            DenyReason::InsufficientRole
            | DenyReason::InsufficientScope
            | DenyReason::MfaRequired
            | DenyReason::MissingClaim => 403,
            DenyReason::IssuerUnavailable => 503,
            _ => 401,
        }
    }

    /// The `WWW-Authenticate` value for this denial (docs/reference.md), or `None` when
    /// the response carries none (503).
    ///
    /// `detail` goes into `error_description` for 401 `invalid_token`; it is sanitised to
    /// printable ASCII without quotes or backslashes so it cannot break the header or
    /// inject another one (RFC 6750 section 3 restricts the value to %x20-21 / %x23-5B /
    /// %x5D-7E).
    pub fn www_authenticate(self, detail: &str) -> Option<String> {
        match self {
            DenyReason::MissingToken => Some(r#"Bearer realm="gatehouse""#.to_string()),
            DenyReason::IssuerUnavailable => None,
            r if r.status() == 403 => {
                Some(r#"Bearer realm="gatehouse", error="insufficient_scope""#.to_string())
            }
            _ => Some(format!(
                r#"Bearer realm="gatehouse", error="invalid_token", error_description="{}""#,
                sanitize_description(detail)
            )),
        }
    }
}

/// Keeps only the characters RFC 6750 allows inside `error_description` and bounds the
/// length, so a detail can never split or extend the header.
fn sanitize_description(detail: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::with_capacity(detail.len().min(MAX));
    for c in detail.chars() {
        if out.len() >= MAX {
            break;
        }
        match c {
            '"' => out.push('\''),
            '\\' => out.push('/'),
            ' '..='~' => out.push(c),
            // CR, LF, other controls and non-ASCII become a space: visible, harmless.
            _ => out.push(' '),
        }
    }
    out
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A denial. `detail` is safe to show the client and to log: it never contains the token
/// or any part of it (nor claim values copied from an unverified token).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{reason}: {detail}")]
pub struct AuthError {
    pub reason: DenyReason,
    pub detail: String,
}

impl AuthError {
    pub fn new(reason: DenyReason, detail: impl Into<String>) -> Self {
        AuthError {
            reason,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_spec_list() {
        let labels: Vec<&str> = DenyReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "missing_token",
                "malformed_token",
                "bad_signature",
                "unknown_key",
                "expired",
                "not_yet_valid",
                "wrong_issuer",
                "wrong_audience",
                "disallowed_algorithm",
                "insufficient_role",
                "insufficient_scope",
                "mfa_required",
                "missing_claim",
                "introspection_inactive",
                "issuer_unavailable",
            ]
        );
        assert_eq!(DenyReason::Expired.to_string(), "expired");
    }

    #[test]
    fn statuses() {
        for r in DenyReason::ALL {
            let want = match r {
                DenyReason::InsufficientRole
                | DenyReason::InsufficientScope
                | DenyReason::MfaRequired
                | DenyReason::MissingClaim => 403,
                DenyReason::IssuerUnavailable => 503,
                _ => 401,
            };
            assert_eq!(r.status(), want, "{r}");
        }
    }

    #[test]
    fn www_authenticate_values() {
        assert_eq!(
            DenyReason::MissingToken.www_authenticate("x").unwrap(),
            r#"Bearer realm="gatehouse""#
        );
        assert_eq!(
            DenyReason::Expired
                .www_authenticate("token expired")
                .unwrap(),
            r#"Bearer realm="gatehouse", error="invalid_token", error_description="token expired""#
        );
        assert_eq!(
            DenyReason::MfaRequired.www_authenticate("").unwrap(),
            r#"Bearer realm="gatehouse", error="insufficient_scope""#
        );
        assert_eq!(DenyReason::IssuerUnavailable.www_authenticate("x"), None);
    }

    #[test]
    fn description_cannot_break_the_header() {
        let v = DenyReason::BadSignature
            .www_authenticate("a\"b\\c\r\nSet-Cookie: x=1 é")
            .unwrap();
        assert!(!v.contains('\r') && !v.contains('\n') && !v.contains('\\'));
        assert!(v.is_ascii());
        assert_eq!(v.matches('"').count(), 6, "{v}");
        let long = "x".repeat(10_000);
        assert!(DenyReason::Expired.www_authenticate(&long).unwrap().len() < 400);
        let e = AuthError::new(DenyReason::Expired, "token expired");
        assert_eq!(e.to_string(), "expired: token expired");
    }
}
