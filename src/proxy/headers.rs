//! Header hygiene: what is removed from the client's request and what gatehouse sets.

use http::HeaderName;
use rand::RngCore;

/// Keeps a client's `X-Request-Id` when it is 1–128 characters of `A-Za-z0-9._-`,
/// otherwise makes a new one (32 hex digits).
pub fn request_id(incoming: Option<&[u8]>) -> String {
    match incoming {
        Some(v) if valid_request_id(v) => String::from_utf8_lossy(v).into_owned(),
        _ => new_request_id(),
    }
}

pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub fn new_request_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Headers the gateway sets on every forwarded request (client copies are replaced).
pub const FORWARDED_HEADERS: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-request-id"];

/// Removes every header in `owned` from the request (all copies).
pub fn strip(req: &mut pingora::http::RequestHeader, owned: &[HeaderName]) {
    for h in owned {
        while req.remove_header(h).is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_kept_only_when_well_formed() {
        assert_eq!(request_id(Some(b"abc-1.2_3")), "abc-1.2_3");
        assert_ne!(request_id(Some(b"bad id")), "bad id");
        assert_ne!(request_id(Some(b"")), "");
        let long = vec![b'a'; 129];
        assert_eq!(request_id(Some(&long)).len(), 32);
        assert_eq!(request_id(Some(&[b'a'; 128])).len(), 128);
        assert_eq!(request_id(None).len(), 32);
    }
}
