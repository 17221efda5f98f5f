//! PROXY protocol v2 headers for application tunnels (compat.md §2.6): command PROXY over
//! STREAM, the original client as source, the HBONE target as destination, and TLV `0xD0`
//! carrying the client's SPIFFE identity when it presented one.

use std::net::{IpAddr, SocketAddr};

use crate::identity::Identity;

/// The v2 signature.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
/// AF_INET + STREAM.
const TCP4: u8 = 0x11;
/// AF_INET6 + STREAM.
const TCP6: u8 = 0x21;
/// TLV type of the source identity.
pub const TLV_SOURCE_IDENTITY: u8 = 0xD0;

/// The header announcing `src` → `dst` (and `identity`, if any). Mixed address families are
/// sent as IPv6, with IPv4 addresses mapped.
pub fn header(src: SocketAddr, dst: SocketAddr, identity: Option<&Identity>) -> Vec<u8> {
    let id = identity.map(ToString::to_string);
    let tlv_len = id.as_ref().map_or(0, |s| 3 + s.len());
    let (family, addrs) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut a = Vec::with_capacity(12);
            a.extend_from_slice(&s.octets());
            a.extend_from_slice(&d.octets());
            (TCP4, a)
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            let mut a = Vec::with_capacity(36);
            a.extend_from_slice(&v6(s).octets());
            a.extend_from_slice(&v6(d).octets());
            (TCP6, a)
        }
    };
    let body = addrs.len() + 4 + tlv_len;
    let mut out = Vec::with_capacity(16 + body);
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_PROXY);
    out.push(family);
    // An identity is at most a few hundred bytes (parts are ≤ 253 bytes each).
    out.extend_from_slice(&u16::try_from(body).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&addrs);
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    if let Some(id) = id {
        out.push(TLV_SOURCE_IDENTITY);
        out.extend_from_slice(&u16::try_from(id.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// A parsed header, as a receiving application sees it (used by tests and the testkit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Original client.
    pub src: SocketAddr,
    /// Original target.
    pub dst: SocketAddr,
    /// TLVs in order: (type, value).
    pub tlvs: Vec<(u8, Vec<u8>)>,
    /// Total header length in bytes.
    pub len: usize,
}

/// Parses a v2 PROXY/STREAM header at the start of `buf`; `None` if incomplete or invalid.
pub fn parse(buf: &[u8]) -> Option<Parsed> {
    if buf.len() < 16 || buf[..12] != SIGNATURE || buf[12] != VERSION_PROXY {
        return None;
    }
    let family = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let rest = buf.get(16..16 + body)?;
    let (src_ip, dst_ip, at): (IpAddr, IpAddr, usize) = match family {
        TCP4 if rest.len() >= 12 => (
            <[u8; 4]>::try_from(&rest[0..4]).ok()?.into(),
            <[u8; 4]>::try_from(&rest[4..8]).ok()?.into(),
            8,
        ),
        TCP6 if rest.len() >= 36 => (
            <[u8; 16]>::try_from(&rest[0..16]).ok()?.into(),
            <[u8; 16]>::try_from(&rest[16..32]).ok()?.into(),
            32,
        ),
        _ => return None,
    };
    let src_port = u16::from_be_bytes([rest[at], rest[at + 1]]);
    let dst_port = u16::from_be_bytes([rest[at + 2], rest[at + 3]]);
    let mut tlvs = Vec::new();
    let mut t = &rest[at + 4..];
    while !t.is_empty() {
        let (&kind, more) = t.split_first()?;
        let len = usize::from(u16::from_be_bytes([*more.first()?, *more.get(1)?]));
        let value = more.get(2..2 + len)?;
        tlvs.push((kind, value.to_vec()));
        t = &more[2 + len..];
    }
    Some(Parsed {
        src: SocketAddr::new(src_ip, src_port),
        dst: SocketAddr::new(dst_ip, dst_port),
        tlvs,
        len: 16 + body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_with_identity_round_trips() {
        let id: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let h = header(
            "10.0.1.11:40000".parse().unwrap(),
            "10.96.0.1:80".parse().unwrap(),
            Some(&id),
        );
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        let body = 12 + 3 + id.to_string().len();
        assert_eq!(u16::from_be_bytes([h[14], h[15]]) as usize, body);
        assert_eq!(&h[16..20], &[10, 0, 1, 11]);
        assert_eq!(&h[20..24], &[10, 96, 0, 1]);
        assert_eq!(&h[24..26], &40000u16.to_be_bytes());
        assert_eq!(&h[26..28], &80u16.to_be_bytes());
        assert_eq!(h[28], 0xD0);
        let p = parse(&h).unwrap();
        assert_eq!(p.src.to_string(), "10.0.1.11:40000");
        assert_eq!(p.dst.to_string(), "10.96.0.1:80");
        assert_eq!(
            p.tlvs,
            vec![(0xD0, b"spiffe://cluster.local/ns/a/sa/b".to_vec())]
        );
        assert_eq!(p.len, h.len());
    }

    #[test]
    fn ipv6_and_mixed_families() {
        let h = header(
            "[fd00::1]:1".parse().unwrap(),
            "[fd00::2]:2".parse().unwrap(),
            None,
        );
        assert_eq!(h[13], 0x21);
        assert_eq!(h.len(), 16 + 36);
        let h = header(
            "10.0.0.1:1".parse().unwrap(),
            "[fd00::2]:2".parse().unwrap(),
            None,
        );
        let p = parse(&h).unwrap();
        assert_eq!(p.src.ip(), "::ffff:10.0.0.1".parse::<IpAddr>().unwrap());
        assert!(p.tlvs.is_empty());
    }

    #[test]
    fn parse_rejects_junk() {
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").is_none());
        let mut h = header(
            "10.0.0.1:1".parse().unwrap(),
            "10.0.0.2:2".parse().unwrap(),
            None,
        );
        h.truncate(20);
        assert!(parse(&h).is_none());
    }
}
