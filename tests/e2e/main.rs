//! End-to-end tests: real `ztun` processes in a cluster made of network namespaces
//! (`ztun::testkit::lab`). They need root; without it they fail with a clear message.

mod certs;
mod claims;
mod crl;
mod dataplane;
mod dns;
mod hardening;
mod ipv6;
mod lab;
mod lifecycle;
mod multinetwork;
mod ops;
mod policy;
mod routing;
mod support;
mod xds;
