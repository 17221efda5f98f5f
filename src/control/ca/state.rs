//! Where an identity's certificate stands, as the store publishes it and the dump shows it,
//! and how certificate times are written.

use std::sync::Arc;
use std::time::SystemTime;

use crate::tls::WorkloadCert;

/// Where an identity's certificate stands.
#[derive(Debug, Clone)]
pub enum CertState {
    /// Asked for; no certificate and no failure yet.
    Initializing,
    /// A valid certificate is held (its renewal may be failing and being retried).
    Available(Arc<WorkloadCert>),
    /// No usable certificate: why the last attempt failed, or that the certificate expired.
    Unavailable(Arc<str>),
}

/// RFC 3339 UTC time with second precision.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let Ok(dt) = time::OffsetDateTime::from_unix_timestamp(secs) else {
        return format!("@{secs}");
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}
