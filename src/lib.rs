//! gatehouse: a TLS-terminating authorization gateway on hyper and rustls.
//!
//! See `README.md` for the tour and `docs/ARCHITECTURE.md` for how a request travels.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod config;
pub mod demo;
pub mod devkit;
pub mod explain;
pub mod files;
pub mod gate;
pub mod logging;
pub mod matrix;
pub mod memory;
pub mod names;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod watch;
