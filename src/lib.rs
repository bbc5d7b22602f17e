//! gatehouse: a TLS-terminating authorization gateway on pingora.
//!
//! See `README.md` for the tour and `docs/ARCHITECTURE.md` for how a request travels.

pub mod admin;
pub mod auth;
pub mod cache;
pub mod config;
pub mod devkit;
pub mod gate;
pub mod policy;
pub mod proxy;
pub mod tls;
