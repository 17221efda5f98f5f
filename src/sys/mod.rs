//! Thin, audited wrappers over the Linux facilities the data plane needs: network namespaces,
//! transparent sockets, original-destination lookup and file-descriptor passing.
//!
//! This is the only module allowed to use `unsafe`; every block carries a `// SAFETY:` note.
//! Nothing here knows about workloads or policy.
#![allow(unsafe_code)]

pub mod alloc;
#[cfg(any(test, feature = "testing"))]
pub mod caps;
pub mod netns;
pub mod socket;

pub use netns::Netns;
