//! The control side: inputs that configure the data plane. The local YAML file and (later) the
//! xDS stream feed `state`; the CA side issues certificates; ZDS hands over pods.
//!
//! Proto types stop here: everything leaves this module as `state::model` types.

pub mod ca;
pub mod grpc;
pub mod local;
pub mod local_watch;
pub mod xds;
pub mod zds;
