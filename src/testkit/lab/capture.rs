//! Packet captures with `tcpdump` inside a namespace, and a minimal pcap reader: enough to
//! assert that a plaintext marker never crossed a link and which TCP ports were used.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};

use super::netns::Netns;
use super::process::Process;

/// How long tcpdump may take to start listening or to exit.
const TCPDUMP_DEADLINE: Duration = Duration::from_secs(15);

/// A running `tcpdump -w` on one interface.
#[derive(Debug)]
pub struct Capture {
    process: Process,
    file: PathBuf,
}

impl Capture {
    /// Starts tcpdump on `iface` inside `netns`, writing every full packet to `file`, and
    /// returns once tcpdump reports it is listening (so no later packet is missed).
    pub fn start(netns: &Netns, iface: &str, file: &Path) -> anyhow::Result<Capture> {
        let mut cmd = netns.command("tcpdump");
        // -Z root: Debian's tcpdump otherwise drops privileges before creating the file.
        cmd.args([
            "-i",
            iface,
            "-n",
            "-s",
            "0",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-w",
        ])
        .arg(file);
        let label = format!("tcpdump {}:{iface}", netns.name());
        let process = Process::spawn(&label, cmd)?;
        process.wait_for_log("listening on", TCPDUMP_DEADLINE)?;
        Ok(Capture {
            process,
            file: file.to_path_buf(),
        })
    }

    /// The pcap file being written.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Stops tcpdump (letting it flush) and returns what it captured.
    pub fn stop(self) -> anyhow::Result<Pcap> {
        // On SIGINT tcpdump drops what is still in its kernel ring buffer, so first let it
        // catch up: wait until the file (written per packet, -U) has stopped growing.
        let size = || std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0);
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let mut last = size();
        let mut stable_for = 0;
        while stable_for < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = size();
            stable_for = if now == last { stable_for + 1 } else { 0 };
            last = now;
        }
        self.process.signal(nix::sys::signal::Signal::SIGINT)?;
        self.process.wait_exit(TCPDUMP_DEADLINE)?;
        let bytes = std::fs::read(&self.file)
            .with_context(|| format!("read capture {}", self.file.display()))?;
        Ok(Pcap { bytes })
    }
}

/// The contents of a pcap file (classic format, either byte order, µs or ns timestamps).
#[derive(Debug, Clone)]
pub struct Pcap {
    bytes: Vec<u8>,
}

/// One TCP segment seen in a capture (IPv4, or IPv6 without extension headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// TCP payload length as it was on the wire.
    pub payload_len: usize,
}

impl TcpSegment {
    /// Whether `port` is its source or its destination port.
    pub fn has_port(&self, port: u16) -> bool {
        self.src.port() == port || self.dst.port() == port
    }
}

impl Pcap {
    /// Wraps raw pcap file bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Pcap {
        Pcap { bytes }
    }

    /// The raw pcap file.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The raw pcap file, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Whether `needle` occurs anywhere in the capture. A marker split across two segments
    /// is not found, so keep markers short relative to the segment size.
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.bytes.windows(needle.len()).any(|w| w == needle)
    }

    /// The captured frames, each starting at the link-layer header, with the link type.
    pub fn frames(&self) -> anyhow::Result<(u32, Vec<&[u8]>)> {
        let b = &self.bytes;
        if b.len() < 24 {
            bail!("pcap too short ({} bytes)", b.len());
        }
        let magic = [b[0], b[1], b[2], b[3]];
        let little = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
            [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
            _ => bail!("not a pcap file (magic {magic:02x?})"),
        };
        let u32_at = |at: usize| {
            let word = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            if little {
                u32::from_le_bytes(word)
            } else {
                u32::from_be_bytes(word)
            }
        };
        let link_type = u32_at(20);
        let mut frames = Vec::new();
        let mut at = 24;
        while at + 16 <= b.len() {
            let len = u32_at(at + 8) as usize;
            let start = at + 16;
            // A record cut short (tcpdump killed mid-write) ends the capture.
            let Some(frame) = b.get(start..start + len) else {
                break;
            };
            frames.push(frame);
            at = start + len;
        }
        Ok((link_type, frames))
    }

    /// Every TCP segment in the capture, over IPv4 or IPv6.
    pub fn tcp_segments(&self) -> anyhow::Result<Vec<TcpSegment>> {
        let (link_type, frames) = self.frames()?;
        Ok(frames
            .into_iter()
            .filter_map(|f| parse_tcp(link_type, f))
            .collect())
    }

    /// Whether any TCP segment had `port` as its source or destination port.
    pub fn saw_tcp_port(&self, port: u16) -> anyhow::Result<bool> {
        Ok(self.tcp_segments()?.iter().any(|s| s.has_port(port)))
    }

    /// The TCP segments for which `allowed` is false: for a link that must carry nothing but
    /// `allowed` traffic, what it carried besides (empty when it carried nothing else).
    pub fn tcp_segments_not_matching(
        &self,
        allowed: impl Fn(&TcpSegment) -> bool,
    ) -> anyhow::Result<Vec<TcpSegment>> {
        Ok(self
            .tcp_segments()?
            .into_iter()
            .filter(|s| !allowed(s))
            .collect())
    }
}

/// Extracts the IP/TCP header facts of one frame, if it is TCP over IPv4 or over IPv6 (with
/// TCP as the first next header).
fn parse_tcp(link_type: u32, frame: &[u8]) -> Option<TcpSegment> {
    const IPV4: [u8; 2] = [0x08, 0x00];
    const IPV6: [u8; 2] = [0x86, 0xdd];
    let is_ip = |ethertype: &[u8]| ethertype == IPV4 || ethertype == IPV6;
    let ip = match link_type {
        // Ethernet, possibly with one 802.1Q tag.
        1 => match frame.get(12..14)? {
            t if is_ip(t) => frame.get(14..)?,
            [0x81, 0x00] if is_ip(frame.get(16..18)?) => frame.get(18..)?,
            _ => return None,
        },
        // Linux cooked capture v1 and v2.
        113 if is_ip(frame.get(14..16)?) => frame.get(16..)?,
        276 if is_ip(frame.get(0..2)?) => frame.get(20..)?,
        // Raw IP.
        101 | 12 => frame,
        _ => return None,
    };
    // (source IP, destination IP, header length, IP payload length incl. TCP header)
    let (src_ip, dst_ip, header, ip_payload) = match ip.first()? >> 4 {
        4 if *ip.get(9)? == 6 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(*ip.get(16)?, ip[17], ip[18], ip[19]);
            (src.into(), dst.into(), ihl, total.saturating_sub(ihl))
        }
        6 if *ip.get(6)? == 6 => {
            let payload = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (
                Ipv6Addr::from(src).into(),
                Ipv6Addr::from(dst).into(),
                40,
                payload,
            )
        }
        _ => return None,
    };
    let tcp = ip.get(header..)?;
    let src_port = u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]);
    let dst_port = u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]);
    let tcp_header = usize::from(tcp.get(12)? >> 4) * 4;
    Some(TcpSegment {
        src: SocketAddr::new(src_ip, src_port),
        dst: SocketAddr::new(dst_ip, dst_port),
        payload_len: ip_payload.saturating_sub(tcp_header),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian pcap with one Ethernet/IPv4/TCP frame 10.0.1.11:40000 → 10.0.2.11:15008
    /// carrying 4 payload bytes.
    fn sample() -> Vec<u8> {
        let ip = vec![
            0x45, 0, 0, 44, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 1, 11, 10, 0, 2, 11,
        ];
        pcap_of([0x08, 0x00], ip)
    }

    /// The same segment over IPv6, fd00:0:1::11 → fd00:0:2::11.
    fn sample_v6() -> Vec<u8> {
        let mut ip = vec![0x60, 0, 0, 0, 0, 24, 6, 64];
        ip.extend_from_slice(&"fd00:0:1::11".parse::<Ipv6Addr>().unwrap().octets());
        ip.extend_from_slice(&"fd00:0:2::11".parse::<Ipv6Addr>().unwrap().octets());
        pcap_of([0x86, 0xdd], ip)
    }

    /// A pcap of one Ethernet frame: `ip` header, a TCP header 40000 → 15008, `ABCD`.
    fn pcap_of(ethertype: [u8; 2], mut ip: Vec<u8>) -> Vec<u8> {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&ethertype);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&15008u16.to_be_bytes());
        tcp[12] = 5 << 4;
        ip.append(&mut tcp);
        ip.extend_from_slice(b"ABCD");
        frame.append(&mut ip);

        let mut pcap = Vec::new();
        pcap.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
        pcap.extend_from_slice(&[2, 0, 4, 0]);
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&65535u32.to_le_bytes());
        pcap.extend_from_slice(&1u32.to_le_bytes());
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&frame);
        pcap
    }

    #[test]
    fn reads_tcp_ports_and_payload_length() {
        let pcap = Pcap::from_bytes(sample());
        let segments = pcap.tcp_segments().unwrap();
        assert_eq!(
            segments,
            vec![TcpSegment {
                src: "10.0.1.11:40000".parse().unwrap(),
                dst: "10.0.2.11:15008".parse().unwrap(),
                payload_len: 4,
            }]
        );
        assert!(pcap.saw_tcp_port(15008).unwrap());
        assert!(!pcap.saw_tcp_port(15001).unwrap());
        assert!(pcap.contains(b"ABCD"));
        assert!(!pcap.contains(b"ABCE"));
    }

    #[test]
    fn reads_ipv6_tcp_segments() {
        let segments = Pcap::from_bytes(sample_v6()).tcp_segments().unwrap();
        assert_eq!(
            segments,
            vec![TcpSegment {
                src: "[fd00:0:1::11]:40000".parse().unwrap(),
                dst: "[fd00:0:2::11]:15008".parse().unwrap(),
                payload_len: 4,
            }]
        );
    }

    #[test]
    fn lists_the_segments_not_matching() {
        let pcap = Pcap::from_bytes(sample());
        let hbone = |s: &TcpSegment| s.has_port(15008);
        assert!(pcap.tcp_segments_not_matching(hbone).unwrap().is_empty());
        let stray = pcap
            .tcp_segments_not_matching(|s| s.dst.port() == 15001)
            .unwrap();
        assert_eq!(stray, pcap.tcp_segments().unwrap());
    }

    #[test]
    fn rejects_non_pcap_bytes() {
        assert!(Pcap::from_bytes(vec![0; 40]).frames().is_err());
    }
}
