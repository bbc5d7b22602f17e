//! Development kit: PKI, embedded OIDC issuer, mTLS echo backend (demo, certs, tests).
//!
//! Everything here runs in-process on loopback sockets so that `gatehouse demo`,
//! `gatehouse certs` and the integration tests need no external services:
//! - [`pki`]: a throwaway CA and the gateway / backend / client certificates;
//! - [`keys`]: JWT signing keys, their JWKs, and token forgery helpers for attack tests;
//! - [`issuer`]: an HTTPS OIDC issuer (discovery, JWKS, client-credentials token
//!   endpoint, introspection) with knobs for rotation and outages;
//! - [`echo`]: an HTTPS backend that requires a client certificate and echoes requests.

pub mod echo;
pub mod issuer;
pub mod keys;
pub mod pki;
mod serve;

pub use echo::{EchoBackend, EchoOptions};
pub use issuer::{IssuerOptions, MockIssuer};
pub use keys::{forge_token, jwks, KeyAlg, SigningKey};
pub use pki::{CertPair, DevPki};
