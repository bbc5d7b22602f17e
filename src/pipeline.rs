//! The request path before the upstream, as one engine-free function over plain `http`
//! types: [`admit`] takes a request head and says what to forward or which problem to
//! answer. The data plane and `gatehouse explain` both call it ([`route_request`] is the
//! routing half that `explain` shares), so the two cannot disagree.
//!
//! ```text
//! admit(live, head, peer)
//!   request id       kept if well-formed, else generated       proxy/headers.rs
//!   route_request    target form, path normalisation, Host,     policy/route.rs
//!                    first matching route (none → 404)
//!   strip            every header gatehouse owns                proxy/headers.rs
//!   one Authorization header only (two → 401 malformed_token)
//!   decide           public | cache → verify → authorize        gate.rs
//! forward_headers    identity, row filters, X-Forwarded-*, X-Request-Id
//! ```

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{AUTHORIZATION, HOST};
use http::{HeaderMap, HeaderValue};

use crate::auth::{AuthError, DenyReason};
use crate::config::Runtime;
use crate::gate::{Live, Outcome};
use crate::names::header;
use crate::policy::rbac::Caller;
use crate::policy::route::{self, AuthMode, Route};
use crate::proxy::headers;
use crate::proxy::problem::Problem;

/// What [`admit`] decided about one request head.
pub struct Admission {
    /// The request's id: the client's when well-formed, else a new one.
    pub request_id: String,
    /// The route the request reached (None: refused before routing).
    pub route: Option<Arc<Route>>,
    /// The decision on that route (None: refused before deciding).
    pub outcome: Option<Outcome>,
    /// A verified caller that was denied (for the audit line).
    pub caller: Option<Arc<Caller>>,
    /// `Err`: answer this problem; `Ok`: forward the (rewritten) head.
    pub verdict: Result<(), Problem>,
}

/// The routing half of [`admit`], shared with `explain`: checks the request target,
/// normalises the path (rewriting the head's URI so the backend gets what was routed),
/// checks the Host, and finds the first matching route.
pub fn route_request(rt: &Runtime, head: &mut http::request::Parts) -> Result<Arc<Route>, Problem> {
    // Only origin-form (`/path`) and absolute-form (`https://host/path`) targets: for
    // anything else (`x:/admin`, `admin`, `*`) the parsed path is not what a backend
    // would read.
    let absolute = head.uri.scheme().is_some();
    if absolute {
        let ok = matches!(head.uri.scheme_str(), Some("http" | "https"))
            && head.uri.authority().is_some();
        if !ok {
            return Err(Problem::bad_path(
                "the request target must be a path starting with '/'",
            ));
        }
    } else if !head.uri.path().starts_with('/') || head.uri.authority().is_some() {
        return Err(Problem::bad_path(
            "the request target must be a path starting with '/'",
        ));
    }
    let normalized = route::normalize_path(head.uri.path()).map_err(Problem::bad_path)?;
    // Borrowed: the path was already normal (the usual case), nothing to rebuild.
    if let std::borrow::Cow::Owned(path) = normalized {
        // Route and forward the same path: `/%61dmin` goes on as `/admin`.
        let pq = match head.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = head.uri.clone().into_parts();
        let rebuilt = pq.parse().ok().and_then(|p| {
            parts.path_and_query = Some(p);
            http::Uri::from_parts(parts).ok()
        });
        head.uri = rebuilt.ok_or_else(|| Problem::bad_path("the path cannot be normalised"))?;
    }
    let host = host_of(head)?;
    route::find(
        &rt.routes,
        host.as_deref(),
        head.uri.path(),
        head.method.as_str(),
    )
    .cloned()
    .ok_or_else(Problem::not_found)
}

/// The request's host for routing: the Host header, or the URI authority (h2
/// `:authority`, or an absolute-form target), normalised by [`route::normalize_host`].
/// HTTP/1.1 without either, several Host lines, a Host that disagrees with the authority,
/// or a value that is not a valid `host[:port]` is a 400.
fn host_of(head: &http::request::Parts) -> Result<Option<String>, Problem> {
    // No Vec: one Host line, or the first two (two already make the 400).
    let mut lines = head.headers.get_all(HOST).iter().map(|v| v.as_bytes());
    let two: [&[u8]; 2];
    let one: [&[u8]; 1];
    let hosts: &[&[u8]] = match (lines.next(), lines.next()) {
        (None, _) => &[],
        (Some(a), None) => {
            one = [a];
            &one
        }
        (Some(a), Some(b)) => {
            two = [a, b];
            &two
        }
    };
    route::request_host(
        hosts,
        head.uri.authority().map(|a| a.as_str()),
        head.version == http::Version::HTTP_11,
    )
    .map_err(|why| Problem::new(400, "bad_host", "Bad request host", why))
}

/// Runs the request path up to the upstream for one request head: routes it, strips the
/// headers gatehouse owns, and decides. The head is rewritten in place (normalised path,
/// stripped headers); on `Ok` it is ready for [`forward_headers`].
pub async fn admit(live: &Live, head: &mut http::request::Parts) -> Admission {
    let request_id =
        headers::request_id(head.headers.get(header::X_REQUEST_ID).map(|v| v.as_bytes()));
    admit_with_id(live, head, request_id).await
}

/// [`admit`] with the request id already chosen (the data plane chooses it first, so that
/// its span carries the id in every log line the decision causes). Records the route in
/// the current span.
pub async fn admit_with_id(
    live: &Live,
    head: &mut http::request::Parts,
    request_id: String,
) -> Admission {
    let mut a = Admission {
        request_id,
        route: None,
        outcome: None,
        caller: None,
        verdict: Ok(()),
    };
    let route = match route_request(&live.rt, head) {
        Ok(r) => r,
        Err(p) => {
            a.verdict = Err(p);
            return a;
        }
    };
    a.route = Some(route.clone());
    tracing::Span::current().record("route", &*route.name);
    headers::strip(&mut head.headers, &live.rt.owned_headers);
    let mut all = head.headers.get_all(AUTHORIZATION).iter();
    let authz = all.next().map(|v| v.as_bytes());
    // Two Authorization headers: which one a backend reads is anyone's guess, so the one
    // gatehouse verified might not be the one that counts. Refuse.
    let (outcome, caller) = if all.next().is_some() && route.auth == AuthMode::Required {
        let e = AuthError::new(
            DenyReason::MalformedToken,
            "more than one Authorization header",
        );
        (Outcome::Deny(e), None)
    } else {
        live.decide_with_caller(&route, authz).await
    };
    if let Outcome::Deny(e) = &outcome {
        a.verdict = Err(Problem::from_auth(e));
    }
    a.outcome = Some(outcome);
    a.caller = caller;
    a
}

/// Sets what the backend receives on an admitted request: `Authorization` removed unless
/// the route forwards it, the decision's identity and row-filter headers,
/// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Request-Id`, and `Host` from the authority
/// when the client sent none (h2). Returns the client address gatehouse decided on (for
/// logs; see [`forwarded_for`]).
#[allow(clippy::too_many_arguments)]
pub fn forward_headers(
    headers: &mut HeaderMap,
    uri: &http::Uri,
    route: &Route,
    outcome: &Outcome,
    request_id: HeaderValue,
    peer: &Peer,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    if !route.forward_token {
        headers.remove(AUTHORIZATION);
    }
    if let Outcome::Allow(g) = outcome {
        for (name, value) in g.headers(route) {
            headers.insert(name.clone(), value);
        }
    }
    let (chain, client) = forwarded_for(headers, peer, trusted);
    headers.insert(header::X_FORWARDED_FOR, chain);
    headers.insert(header::X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    headers.insert(header::X_REQUEST_ID, request_id);
    if !headers.contains_key(HOST) {
        if let Some(v) = uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(HOST, v);
        }
    }
    client
}

/// The address a connection came from, with its `X-Forwarded-For` text made once (per
/// connection, not per request).
#[derive(Clone, Debug)]
pub struct Peer {
    pub ip: IpAddr,
    value: HeaderValue,
}

impl From<IpAddr> for Peer {
    fn from(ip: IpAddr) -> Self {
        let value = HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid value");
        Peer { ip, value }
    }
}

/// The `X-Forwarded-For` to send and the client's address. From a peer in `trusted`
/// (a load balancer), the received chain is kept and the peer appended, and the client is
/// the right-most address of the chain not in `trusted`; from any other peer the chain is
/// replaced by the peer, which is the client. An entry that is not an IP address ends the
/// walk: the address to its right is the client (a spoofed chain cannot name someone else
/// past a trusted hop).
pub fn forwarded_for(
    headers: &HeaderMap,
    peer: &Peer,
    trusted: &[ipnet::IpNet],
) -> (HeaderValue, IpAddr) {
    let (own, peer) = (|| peer.value.clone(), peer.ip);
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return (own(), peer);
    }
    let received: Vec<&str> = headers
        .get_all(header::X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let mut client = peer;
    for entry in received.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted.iter().any(|n| n.contains(&ip)) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let mut chain = received.join(", ");
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&peer.to_string());
    let value = HeaderValue::from_str(&chain).unwrap_or_else(|_| own());
    (value, client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(target: &str, host: Option<&str>) -> http::request::Parts {
        let mut b = http::Request::builder().uri(target);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_replaced_unless_the_peer_is_trusted() {
        let lb: IpAddr = "10.0.0.5".parse().unwrap();
        let peer = |s: &str| Peer::from(s.parse::<IpAddr>().unwrap());
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // An untrusted peer: its chain is a lie, replaced by the peer.
        let (v, c) = forwarded_for(&xff(&["1.2.3.4"]), &peer("192.0.2.9"), &trusted);
        assert_eq!(
            (v.to_str().unwrap(), c.to_string().as_str()),
            ("192.0.2.9", "192.0.2.9")
        );
        // A trusted load balancer: appended; the client is the right-most untrusted hop.
        let (v, c) = forwarded_for(
            &xff(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]),
            &lb.into(),
            &trusted,
        );
        assert_eq!(v, "6.6.6.6, 198.51.100.7, 10.1.1.1, 10.0.0.5");
        assert_eq!(
            c.to_string(),
            "198.51.100.7",
            "a spoofed left part names no one"
        );
        // Nothing received: the peer alone; every hop trusted: the left-most.
        let (v, c) = forwarded_for(&HeaderMap::new(), &lb.into(), &trusted);
        assert_eq!((v.to_str().unwrap(), c), ("10.0.0.5", lb));
        let (_, c) = forwarded_for(&xff(&["10.9.9.9"]), &lb.into(), &trusted);
        assert_eq!(c.to_string(), "10.9.9.9");
        // Garbage ends the walk at the hop to its right.
        let (_, c) = forwarded_for(&xff(&["203.0.113.1, evil, 10.2.2.2"]), &lb.into(), &trusted);
        assert_eq!(c.to_string(), "10.2.2.2");
    }

    #[test]
    fn host_comes_from_the_header_or_the_authority() {
        assert_eq!(
            host_of(&head("/", Some("a.example"))).unwrap().as_deref(),
            Some("a.example")
        );
        assert_eq!(
            host_of(&head("https://b.example/x", None))
                .unwrap()
                .as_deref(),
            Some("b.example")
        );
        assert_eq!(host_of(&head("/", None)).unwrap_err().status, 400);
        assert_eq!(
            host_of(&head("https://b.example/x", Some("c.example")))
                .unwrap_err()
                .status,
            400
        );
        let mut two = head("/", Some("a.example"));
        two.headers
            .append(HOST, HeaderValue::from_static("b.example"));
        assert_eq!(host_of(&two).unwrap_err().status, 400);
    }
}
