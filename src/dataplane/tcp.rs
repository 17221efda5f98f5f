//! Plain TCP on the pod's side: where a captured connection was headed, addresses as the
//! mesh state writes them, and the plaintext relay.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::Error;
use crate::ops::access::Meter;
use crate::state::canonical_ip;

/// Bidirectional copy between the client's socket `a` and `b`, with half-close both ways.
/// Plaintext relays count their bytes into `meter` when they end.
pub async fn relay_tcp(mut a: TcpStream, mut b: TcpStream, meter: &Meter) -> Result<(), Error> {
    let (sent, recv) = tokio::io::copy_bidirectional(&mut a, &mut b).await?;
    meter.client_sent(sent);
    meter.client_received(recv);
    Ok(())
}

/// Where a captured connection was headed: `SO_ORIGINAL_DST` for REDIRECT captures, else the
/// local address (TPROXY). `None` if the client connected to the listener port directly.
pub fn original_destination(tcp: &TcpStream, listener_port: u16) -> Option<SocketAddr> {
    let local = tcp.local_addr().ok()?;
    let dst = crate::sys::socket::original_dst(tcp)
        .map(canonical)
        .unwrap_or_else(|| canonical(local));
    (dst.port() != listener_port || dst.ip() != canonical_ip(local.ip())).then_some(dst)
}

/// IPv4-mapped socket addresses as plain IPv4.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(a.ip()), a.port())
}
