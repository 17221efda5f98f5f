//! Operations: access logs (and, as they land, metrics, admin and readiness).

pub mod access;
pub mod logging;
