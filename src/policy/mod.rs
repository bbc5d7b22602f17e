//! Policy: which route a request takes, who may use it, and what the backend is told.
//!
//! Plain functions over the route and role types config validation builds; the proxy,
//! `explain` and `matrix` all call the same code. Policy reads no config module: config
//! depends on policy, not the reverse (docs/ARCHITECTURE.md, "Layers").

pub mod rbac;
pub mod route;
pub mod row_filter;
