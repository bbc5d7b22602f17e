//! Tests of the JWKS key store.
