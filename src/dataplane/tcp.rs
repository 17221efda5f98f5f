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
    let redirected = crate::sys::socket::original_dst(tcp).map(canonical);
    // A REDIRECT capture to another port needs no local address (one syscall per connection).
    if let Some(dst) = redirected.filter(|d| d.port() != listener_port) {
        return Some(dst);
    }
    let local = canonical(tcp.local_addr().ok()?);
    let dst = redirected.unwrap_or(local);
    (dst.port() != listener_port || dst.ip() != local.ip()).then_some(dst)
}

/// IPv4-mapped socket addresses as plain IPv4.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(a.ip()), a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a REDIRECT (no `SO_ORIGINAL_DST`) the local address is where the connection
    /// was headed (a TPROXY capture), unless that is the capture listener itself: a client
    /// that dialled the listener port directly has no destination.
    #[tokio::test]
    async fn without_a_redirect_the_local_address_is_the_destination_unless_it_is_the_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert_eq!(original_destination(&accepted, port), None);
        assert_eq!(
            original_destination(&accepted, port.wrapping_add(1)),
            Some(SocketAddr::from(([127, 0, 0, 1], port)))
        );
    }
}
