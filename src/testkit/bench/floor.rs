//! The floor of the tunnelled path: what two relays cost with no TLS at all (kernel copies and
//! TCP only: `ztun-lab relay`, blocking reads and writes through a 64 KiB buffer), and what
//! AES-GCM costs per GB at a full TLS record with the crypto provider ztun uses (rustls's
//! aws-lc-rs provider, the record layer's own encrypter and decrypter).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::resource::{getrusage, UsageWho};
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, OutboundChunks, OutboundPlainMessage,
};
use rustls::{ContentType, ProtocolVersion};

/// The largest TLS plaintext record (what bulk transfer fills).
pub const RECORD: usize = 16 * 1024;
/// The cipher suite both tunnels prefer and negotiate with each other.
pub const SUITE: &str = "TLS13_AES_256_GCM_SHA384";

/// Relays every connection accepted on `listen` to `to` until killed: two threads per
/// connection, each a read/write loop through its own 64 KiB buffer.
pub fn relay(listen: SocketAddr, to: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    println!("relaying {listen} -> {to}");
    relay_from(listener, to)
}

fn relay_from(listener: TcpListener, to: SocketAddr) -> anyhow::Result<()> {
    loop {
        let (client, _) = listener.accept()?;
        let upstream = TcpStream::connect_timeout(&to, Duration::from_secs(10))
            .with_context(|| format!("connect {to}"))?;
        for s in [&client, &upstream] {
            s.set_nodelay(true)?;
        }
        let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
        std::thread::spawn(move || pump(client, upstream));
        std::thread::spawn(move || pump(u2, c2));
    }
}

/// The same relay on one thread's event loop (a current-thread tokio runtime: epoll, one task
/// per connection copying both ways, no TLS): what an event-loop proxy pays per hop on top of
/// the blocking relay, with nothing of a tunnel's own work.
pub fn relay_event_loop(listen: SocketAddr, to: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    println!("relaying {listen} -> {to} (event loop)");
    relay_event_loop_from(listener, to)
}

fn relay_event_loop_from(listener: TcpListener, to: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let (mut client, _) = listener.accept().await?;
            tokio::spawn(async move {
                let Ok(mut upstream) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                for s in [&client, &upstream] {
                    let _ = s.set_nodelay(true);
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    })
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// CPU seconds of this thread so far (user + system).
fn thread_cpu() -> anyhow::Result<f64> {
    let u = getrusage(UsageWho::RUSAGE_THREAD)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(secs(u.user_time()) + secs(u.system_time()))
}

/// AES-256-GCM through rustls's aws-lc-rs record layer, `bytes` of plaintext in records of
/// [`RECORD`] bytes: (CPU seconds per GB to seal, CPU seconds per GB to open), this thread's
/// CPU time. Opening includes copying each ciphertext into the buffer it is decrypted in
/// (as a receiver's read does); that copy is measured alone and subtracted.
pub fn aes_gcm_seconds_per_gb(bytes: u64) -> anyhow::Result<(f64, f64)> {
    let suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384
        .tls13()
        .with_context(|| format!("{SUITE} is not a TLS 1.3 suite"))?;
    let key = || AeadKey::from([7u8; 32]);
    let iv = || Iv::from([9u8; 12]);
    let mut enc = suite.aead_alg.encrypter(key(), iv());
    let mut dec = suite.aead_alg.decrypter(key(), iv());
    let plain = vec![0x5au8; RECORD];
    let records = bytes.div_ceil(RECORD as u64).max(1);
    let gb = (records * RECORD as u64) as f64 / 1e9;

    let seal = |enc: &mut Box<dyn rustls::crypto::cipher::MessageEncrypter>, seq: u64| {
        let msg = OutboundPlainMessage {
            typ: ContentType::ApplicationData,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(&plain),
        };
        enc.encrypt(msg, seq)
            .map(|m| m.encode())
            .map_err(|e| anyhow::anyhow!("seal: {e}"))
    };
    let start = thread_cpu()?;
    let mut sink = 0u8;
    for seq in 0..records {
        sink ^= seal(&mut enc, seq)?[5];
    }
    let sealing = thread_cpu()? - start;

    // A ring of distinct ciphertexts, each opened with its own sequence number (from a fresh
    // encrypter: aws-lc's TLS sealing key refuses a sequence number it has passed).
    const RING: u64 = 64;
    let mut enc = suite.aead_alg.encrypter(key(), iv());
    let ring: Vec<Vec<u8>> = (0..RING)
        .map(|seq| seal(&mut enc, seq))
        .collect::<anyhow::Result<_>>()?;
    let mut work = vec![0u8; ring[0].len()];
    let start = thread_cpu()?;
    for k in 0..records {
        work.copy_from_slice(&ring[(k % RING) as usize]);
        sink ^= work[7];
    }
    let copying = thread_cpu()? - start;
    let start = thread_cpu()?;
    for k in 0..records {
        let seq = k % RING;
        work.copy_from_slice(&ring[seq as usize]);
        let msg = InboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            &mut work[5..],
        );
        let plain = dec
            .decrypt(msg, seq)
            .map_err(|e| anyhow::anyhow!("open: {e}"))?;
        sink ^= plain.payload.first().copied().unwrap_or(0);
    }
    let opening = (thread_cpu()? - start - copying).max(0.0);
    std::hint::black_box(sink);
    Ok((sealing / gb, opening / gb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_gcm_cost_is_measured_through_a_real_round_trip() {
        // A few records: the decrypter only succeeds if sealing produced valid records, so
        // this proves the measured loop does real AEAD work (no timing is asserted).
        let (seal, open) = aes_gcm_seconds_per_gb(8 * RECORD as u64).unwrap();
        assert!(seal >= 0.0 && open >= 0.0);
    }

    /// An echo server on loopback for one connection: echoes until the client half-closes,
    /// then half-closes too.
    fn echo_once() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            pump(s.try_clone().unwrap(), s);
        });
        addr
    }

    /// Through `relay`'s listener: a stream larger than any buffer on the way comes back byte
    /// for byte, and the half-close crosses both ways (the read ends).
    fn relays_both_ways(start: fn(TcpListener, SocketAddr) -> anyhow::Result<()>) {
        let echo = echo_once();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = listener.local_addr().unwrap();
        // The relay serves until the test process ends.
        std::thread::spawn(move || start(listener, echo));
        let mut client = TcpStream::connect(relay).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut writer = client.try_clone().unwrap();
        let payload = sent.clone();
        let send = std::thread::spawn(move || {
            writer.write_all(&payload).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        client.read_to_end(&mut back).unwrap();
        send.join().unwrap();
        assert_eq!(back.len(), sent.len());
        assert!(
            back == sent,
            "the relayed stream differs from what was sent"
        );
    }

    #[test]
    fn the_blocking_relay_relays_both_ways_and_the_half_close() {
        relays_both_ways(relay_from);
    }

    #[test]
    fn the_event_loop_relay_relays_both_ways_and_the_half_close() {
        relays_both_ways(relay_event_loop_from);
    }
}
