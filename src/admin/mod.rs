//! The admin listener (plain HTTP on loopback): `/healthz`, `/readyz`, `/metrics`.
pub mod metrics;
