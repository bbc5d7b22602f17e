//! Policy: which route a request takes, who may use it, and what the backend is told.
//!
//! Plain functions over the validated config; the proxy, `explain` and `matrix` all call
//! the same code.

pub mod matrix;
pub mod rbac;
pub mod route;
pub mod row_filter;
