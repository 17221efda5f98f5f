//! Generated wire types for delta ADS (`proto/envoy/...`, `proto/google/rpc/status.proto`) and
//! the two resource types (`proto/workload.proto`, `proto/authorization.proto`).
//!
//! Only `control/` and the built-in control plane (`controlplane/`) use these; everything else
//! sees `state::model` types.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `envoy.*` packages.
pub mod envoy {
    /// `envoy.config.*`.
    pub mod config {
        /// `envoy.config.core.*`.
        pub mod core {
            /// `envoy.config.core.v3`: the `Node` a client describes itself with.
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
    /// `envoy.service.*`.
    pub mod service {
        /// `envoy.service.discovery.*`.
        pub mod discovery {
            /// `envoy.service.discovery.v3`: delta ADS messages and service.
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }
}

/// `google.rpc`: the status carried in a NACK.
pub mod google {
    /// `google.rpc`.
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// `istio.*` packages.
pub mod istio {
    /// `istio.workload`: Address, Workload, Service.
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));
    }
    /// `istio.security`: Authorization.
    pub mod security {
        include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
    }
}

pub use envoy::config::core::v3::Node;
pub use envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
pub use google::rpc::Status;
