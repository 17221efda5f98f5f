//! The public view of workload certificates for `/config_dump` (`certificates`): identity,
//! state, chain with serial and validity, roots. Never a private key.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::tls::WorkloadCert;

/// Dumps `certs` in the shape `istioctl ztunnel-config certificates` reads.
pub fn dump(certs: &[Arc<WorkloadCert>]) -> Value {
    let mut out: Vec<Value> = certs
        .iter()
        .map(|c| {
            let chain: Vec<Value> = c.chain().iter().map(|der| cert_entry(der.as_ref())).collect();
            let roots: Vec<Value> = c.roots().iter().map(|der| cert_entry(der.as_ref())).collect();
            let state = if c.not_after() > SystemTime::now() { "Available" } else { "Unavailable: expired" };
            json!({ "identity": c.identity().to_string(), "state": state, "certChain": chain, "rootCerts": roots })
        })
        .collect();
    out.sort_by(|a, b| a["identity"].as_str().cmp(&b["identity"].as_str()));
    Value::Array(out)
}

fn cert_entry(der: &[u8]) -> Value {
    let pem = pem("CERTIFICATE", der);
    let (serial, from, to) = match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => (
            c.raw_serial_as_string(),
            rfc3339(c.validity().not_before.timestamp()),
            rfc3339(c.validity().not_after.timestamp()),
        ),
        Err(_) => (String::new(), String::new(), String::new()),
    };
    json!({ "pem": base64(pem.as_bytes()), "serialNumber": serial, "validFrom": from, "expirationTime": to })
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// PEM text of one DER object.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Standard base64 with padding.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
