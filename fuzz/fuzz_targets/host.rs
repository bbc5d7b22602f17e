//! Host / :authority normalisation. Invariants for every accepted host: lower case, no
//! trailing dot, no port left, a valid URI authority, and normalising again changes
//! nothing; `request_host` never panics on arbitrary header bytes.
#![no_main]

use gatehouse::policy::route::{normalize_host, request_host};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = request_host(&[data], None, true);
    let _ = request_host(&[data, data], None, true);
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = request_host(&[], Some(s), false);
    let Ok(h) = normalize_host(s) else {
        return;
    };
    assert!(!h.is_empty());
    assert_eq!(h, h.to_ascii_lowercase(), "{h:?}");
    assert!(!h.ends_with('.'), "{h:?}");
    if !h.starts_with('[') {
        assert!(!h.contains(':'), "{h:?}");
    }
    assert!(h.parse::<http::uri::Authority>().is_ok(), "{h:?}");
    assert_eq!(
        normalize_host(&h).as_deref(),
        Ok(h.as_str()),
        "not idempotent"
    );
    assert_eq!(
        request_host(&[h.as_bytes()], Some(s), true),
        Ok(Some(h.clone()))
    );
});
