//! Request path normalisation. Invariants for every accepted path: it starts with '/',
//! holds no '//' and no dot segment, and normalising it again changes nothing.
#![no_main]

use gatehouse::policy::route::normalize_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = normalize_path(s) else {
        return;
    };
    assert!(p.starts_with('/'), "{p:?}");
    assert!(!p.contains("//"), "{p:?}");
    assert!(!p.split('/').any(|seg| seg == "." || seg == ".."), "{p:?}");
    assert!(!p.contains('\\'), "{p:?}");
    let again = normalize_path(&p).map(|c| c.into_owned());
    assert_eq!(again.as_deref(), Ok(&*p), "not idempotent");
});
