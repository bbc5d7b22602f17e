//! Responses the gateway makes itself: RFC 9457 `application/problem+json` with RFC 6750
//! `WWW-Authenticate` where the SPEC asks for it. Bodies never echo the token.

use serde_json::json;

use crate::auth::{AuthError, DenyReason};

/// A response the gateway answers itself.
#[derive(Clone, Debug)]
pub struct Problem {
    pub status: u16,
    /// Short machine name, the last part of the `type` URI.
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub www_authenticate: Option<String>,
    pub retry_after: Option<u32>,
    pub location: Option<String>,
}

impl Problem {
    pub fn new(
        status: u16,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            status,
            kind,
            title,
            detail: detail.into(),
            www_authenticate: None,
            retry_after: None,
            location: None,
        }
    }

    pub fn not_found() -> Self {
        Problem::new(
            404,
            "no_route",
            "No route",
            "no route matches this host, path and method",
        )
    }

    pub fn bad_path(why: &str) -> Self {
        Problem::new(400, "bad_path", "Bad request path", why.to_string())
    }

    /// A request gatehouse cannot read or refuses to interpret (400).
    pub fn bad_request(why: &str) -> Self {
        Problem::new(400, "bad_request", "Bad request", why.to_string())
    }

    /// The gateway failed (a bug, never the client's fault).
    pub fn internal(why: &str) -> Self {
        Problem::new(500, "internal", "Internal error", why.to_string())
    }

    pub fn bad_gateway(detail: impl Into<String>) -> Self {
        Problem::new(502, "upstream_failed", "Bad gateway", detail)
    }

    pub fn gateway_timeout(detail: impl Into<String>) -> Self {
        Problem::new(504, "upstream_timeout", "Gateway timeout", detail)
    }

    /// The one mapping from an authentication or authorization failure to a response.
    pub fn from_auth(e: &AuthError) -> Self {
        let status = e.reason.status();
        let title = match status {
            401 => "Unauthorized",
            403 => "Forbidden",
            503 => "Service unavailable",
            _ => "Denied",
        };
        // A 403 goes to a caller with a valid token: say what kind of thing is missing,
        // not which roles, scopes or claims the policy wants (that is for the operator's
        // `gatehouse explain`, the audit log and the metrics).
        let detail = match e.reason {
            DenyReason::InsufficientRole => {
                "the caller does not hold a role this route requires".to_string()
            }
            DenyReason::InsufficientScope => {
                "the token lacks a scope this route requires".to_string()
            }
            DenyReason::MfaRequired => "this route requires a multi-factor login".to_string(),
            DenyReason::MissingClaim => "the token lacks a claim this route needs".to_string(),
            _ => e.detail.clone(),
        };
        Problem {
            status,
            kind: e.reason.as_str(),
            title,
            detail,
            www_authenticate: e.reason.www_authenticate(&e.detail),
            retry_after: (e.reason == DenyReason::IssuerUnavailable).then_some(10),
            location: None,
        }
    }

    /// The `type` URI.
    pub fn type_uri(&self) -> String {
        format!("urn:gatehouse:problem:{}", self.kind)
    }

    /// The JSON body.
    pub fn body(&self, request_id: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "type": self.type_uri(),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "request_id": request_id,
        }))
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_token_is_a_bare_bearer_challenge() {
        let p = Problem::from_auth(&AuthError::new(DenyReason::MissingToken, "no token"));
        assert_eq!(p.status, 401);
        assert_eq!(
            p.www_authenticate.as_deref(),
            Some("Bearer realm=\"gatehouse\"")
        );
        let body: serde_json::Value = serde_json::from_slice(&p.body("r1")).unwrap();
        assert_eq!(body["status"], 401);
        assert_eq!(body["request_id"], "r1");
        assert_eq!(body["type"], "urn:gatehouse:problem:missing_token");
    }

    #[test]
    fn forbidden_says_insufficient_scope() {
        let p = Problem::from_auth(&AuthError::new(DenyReason::InsufficientRole, "x"));
        assert_eq!(p.status, 403);
        assert!(p
            .www_authenticate
            .unwrap()
            .contains("error=\"insufficient_scope\""));
    }

    #[test]
    fn forbidden_detail_does_not_spell_out_the_policy() {
        let e = AuthError::new(
            DenyReason::InsufficientRole,
            "route r needs one of the roles: admin",
        );
        let p = Problem::from_auth(&e);
        assert!(!p.detail.contains("admin"), "{}", p.detail);
        let e = AuthError::new(
            DenyReason::MissingClaim,
            "the row filter x-row-filter needs claim region",
        );
        assert!(!Problem::from_auth(&e).detail.contains("region"));
    }

    #[test]
    fn issuer_unavailable_has_retry_after() {
        let p = Problem::from_auth(&AuthError::new(DenyReason::IssuerUnavailable, "x"));
        assert_eq!(p.status, 503);
        assert!(p.retry_after.is_some());
    }
}
