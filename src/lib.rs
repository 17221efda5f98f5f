//! ztun: a per-node zero-trust tunnel for Kubernetes ambient meshes.
//!
//! The tree follows the data flow: `control` (CNI, local config, certificates) writes `state`;
//! `dataplane` reads it to capture, route and tunnel connections (HBONE over mTLS, `tls`);
//! `ops` reports what happened. `app` wires it together; `sys` holds the few syscalls.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod authz;
pub mod cli;
pub mod config;
pub mod control;
pub mod controlplane;
pub mod dataplane;
pub mod dns;
pub mod drain;
#[cfg(any(test, feature = "testing"))]
pub mod fuzz;
pub mod identity;
pub mod ops;
pub mod sockets;
pub mod state;
pub mod sys;

/// Unit tests count the heap (e.g. what an idle connection's relay holds).
#[cfg(test)]
#[global_allocator]
static ALLOC: sys::alloc::CountingAlloc = sys::alloc::CountingAlloc;
pub mod tasks;
#[cfg(any(test, feature = "testing"))]
pub mod testkit;
pub mod tls;
pub mod workers;

/// Version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
