//! The JWKS document parser: what an issuer (or whoever answers in its place) sends.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(set) = gatehouse::auth::jwks::parse_jwks("fuzz", data) else {
        return;
    };
    for k in &set.keys {
        // A key that states its own alg is only kept when that alg fits its type.
        if let Some(a) = k.alg {
            assert!(k.kind.fits(a), "{k:?}");
            assert!(k.fits(a));
        }
        if let Some(kid) = &k.kid {
            assert!(set.by_kid(kid).count() >= 1);
        }
    }
});
