//! Effective limits before and after authentication: the TLS handshake timeout (H12, H13),
//! the header list limit against CONTINUATION floods (H10) and concurrent streams per
//! connection. Values are documented in `docs/limits.md`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{self, kind, END_HEADERS, REFUSED_STREAM};
use super::Target;
use crate::support::{wait_for_line, WAIT};

/// The ClientHello a valid HBONE client would send, as bytes.
fn client_hello(t: &Target) -> Vec<u8> {
    let config = client::client_config(&t.cluster, "sa-u");
    let name = rustls::pki_types::ServerName::IpAddress(t.hbone().ip().into());
    let mut conn = rustls::ClientConnection::new(config, name).expect("client connection");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("ClientHello");
    }
    out
}

/// Connects to `addr`, writes `prefix` and reads until ztun closes the connection (EOF or a
/// reset), failing if it is still open `deadline` after the connect began. Returns the
/// client's address (as ztun logs it) and when the close was seen, from the connect.
async fn closed_by_server(
    addr: SocketAddr,
    prefix: Vec<u8>,
    deadline: Duration,
) -> anyhow::Result<(SocketAddr, Duration)> {
    let started = tokio::time::Instant::now();
    let mut s = ztun::testkit::lab::connect(addr, deadline).await?;
    let local = s.local_addr()?;
    s.write_all(&prefix).await?;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(started + deadline, s.read(&mut buf)).await {
            Err(_) => anyhow::bail!("ztun kept {local} open {deadline:?} after its connect"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok((local, started.elapsed())),
            Ok(Ok(_)) => continue,
        }
    }
}

/// H12 (slowloris) with `ZTUN_HANDSHAKE_TIMEOUT=2s`: a TCP connection that never sends a
/// ClientHello, and one that stops after it, are both closed by ztun at the configured
/// timeout, not at the default (10 s), and ztun logs "hbone handshake timed out" for each
/// of them; then a normal client still gets through.
///
/// Telling 2 s from the default without a timing threshold: ztun starts its timer after our
/// connect began, so a close seen less than the default after that instant cannot come
/// from the default; the wait below the default is only a liveness bound for 2 s (4×).
/// Conversely a close before 2 s would not be the timeout at all. Both checks are
/// inequalities that hold whatever the machine's load.
#[test]
fn slowloris_connections_are_closed_at_the_handshake_timeout() {
    let configured = Duration::from_secs(2);
    let default = ztun::config::Config::from_source(&ztun::config::MapEnv::new())
        .expect("the default configuration")
        .proxy
        .handshake_timeout;
    let deadline = default.saturating_sub(Duration::from_secs(2));
    assert!(
        deadline >= configured * 3,
        "the default handshake timeout {default:?} leaves no room to tell {configured:?} from it"
    );
    let t = Target::start("hard_h12", &[("ZTUN_HANDSHAKE_TIMEOUT", "2s")]);
    let hbone = t.hbone();
    let hello = client_hello(&t);
    let closed = t
        .cluster
        .lab
        .pod("u")
        .block_on(async move {
            let silent = closed_by_server(hbone, Vec::new(), deadline);
            let half = closed_by_server(hbone, hello, deadline);
            let (a, b) = tokio::join!(silent, half);
            anyhow::Ok([
                ("no ClientHello", a.context("no ClientHello")?),
                (
                    "ClientHello then silence",
                    b.context("ClientHello then silence")?,
                ),
            ])
        })
        .expect("H12: the configured handshake timeout closes both");
    let n2 = t.cluster.ztun("n2");
    for (what, (client, after)) in closed {
        eprintln!("{what}: closed {after:?} after the connect");
        assert!(
            after >= configured,
            "{what}: closed after {after:?}, before the {configured:?} timeout: not the timeout"
        );
        // The close is the handshake timeout, for this very connection.
        let peer = format!("peer={client}");
        let line = wait_for_line(n2, 0, &["hbone handshake timed out", &peer])
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        eprintln!("{line}");
    }
    t.cluster
        .lab
        .pod("a")
        .bulk_echo((t.cluster.lab.pod("c").ip(), t.echo.port()).into(), 4096)
        .expect("a -> c after the slowloris peers");
}

/// H13: a close_notify right after the ClientHello aborts the handshake (EOF, a logged
/// failure, no spinning task: the next client is served).
#[test]
fn close_notify_after_client_hello_aborts_the_handshake() {
    let t = Target::start("hard_h13", &[]);
    let mut bytes = client_hello(&t);
    // A plaintext alert record: warning(1) close_notify(0).
    bytes.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00]);
    let hbone = t.hbone();
    t.cluster
        .lab
        .pod("u")
        .block_on(closed_by_server(hbone, bytes, WAIT))
        .expect("H13");
    t.cluster
        .ztun("n2")
        .wait_for_log("hbone handshake failed", WAIT)
        .expect("the aborted handshake is logged");
    t.serves_a_new_client(b"next client")
        .expect("ztun serves the next client");
}

/// H10: a header block that never ends (HEADERS, then 16 KiB CONTINUATION frames without
/// END_HEADERS) is cut once it passes the 64 KiB header-list limit: ztun (h2's CONTINUATION
/// limit, sized from that header-list limit) answers GOAWAY(ENHANCE_YOUR_CALM) naming no
/// stream, then closes, and keeps serving other connections.
///
/// Where the cut comes, by the order of frames on one connection (no clocks): a PING after
/// the 8th CONTINUATION (128 KiB, twice the limit) would make the server answer
/// GOAWAY(PROTOCOL_ERROR) (a frame inside a header block) if it read that far, so the
/// ENHANCE_YOUR_CALM proves it refused the block before; and on another connection the
/// same PING after 3 CONTINUATIONs (48 KiB, under the limit) does get the PROTOCOL_ERROR:
/// a block is not cut early. The writer goes on up to 64 MiB (far more than socket buffers
/// hold) and must fail on the closed connection before the end.
#[test]
fn continuation_flood_is_cut_at_the_header_list_limit() {
    let t = Target::start("hard_h10", &[]);
    let config = client::client_config(&t.cluster, "sa-u");
    let hbone = t.hbone();
    let ok = t.authority(t.echo.port());
    let (under, over) = t
        .cluster
        .lab
        .pod("u")
        .block_on(async move {
            let under = continuation_flood(hbone, config.clone(), &ok, 3, 3).await?;
            let over = continuation_flood(hbone, config, &ok, 8, FLOOD_FRAMES).await?;
            anyhow::Ok((under, over))
        })
        .expect("H10");
    eprintln!("CONTINUATION flood: under the limit: {under}; over it: {over}");
    let codes = |f: &Flood| -> Vec<_> { f.goaways.iter().map(|g| g.error_code()).collect() };
    assert_eq!(
        codes(&under),
        [Some(client::PROTOCOL_ERROR)],
        "48 KiB of headers then a PING: the server must have read on to the PING"
    );
    assert_eq!(
        codes(&over),
        [Some(client::ENHANCE_YOUR_CALM)],
        "the block must be refused at the limit, before the PING after 128 KiB"
    );
    assert_eq!(
        over.goaways[0].last_stream(),
        Some(0),
        "the flooding request was never opened"
    );
    assert!(
        over.heads.is_empty(),
        "the flood got a response: {:?}",
        over.heads
    );
    let (written, error) = &over.writer;
    assert!(
        error.is_some() && *written < FLOOD_FRAMES,
        "the writer sent {written} of {FLOOD_FRAMES} CONTINUATIONs ({error:?}): ztun kept reading"
    );
    t.cluster
        .lab
        .pod("a")
        .bulk_echo((t.cluster.lab.pod("c").ip(), t.echo.port()).into(), 4096)
        .expect("a -> c after the flood");
}

/// CONTINUATION frames the flood writer sends at most: 64 MiB.
const FLOOD_FRAMES: usize = 4096;

/// What a CONTINUATION flood got back.
#[derive(Debug)]
struct Flood {
    /// GOAWAY frames received, in order.
    goaways: Vec<client::Frame>,
    /// HEADERS frames received.
    heads: Vec<client::Frame>,
    /// CONTINUATION frames written, and the write error that stopped the writer.
    writer: (usize, Option<std::io::Error>),
}

impl std::fmt::Display for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for g in &self.goaways {
            write!(
                f,
                "GOAWAY code {:?} last stream {:?} {:?}, ",
                g.error_code(),
                g.last_stream(),
                g.debug_data()
            )?;
        }
        let (written, error) = &self.writer;
        write!(
            f,
            "{} HEADERS, {written} CONTINUATIONs written (writer error: {error:?})",
            self.heads.len()
        )
    }
}

/// On a new connection: a CONNECT HEADERS for `authority` without END_HEADERS, then `frames`
/// CONTINUATIONs of one 16 KiB cookie each (never END_HEADERS) with a PING after the
/// `ping_after`-th; reads every frame until the server closes.
async fn continuation_flood(
    hbone: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    authority: &str,
    ping_after: usize,
    frames: usize,
) -> anyhow::Result<Flood> {
    let (mut w, mut r) = client::raw(hbone, config).await?;
    let first = client::connect_block(authority);
    let writer = tokio::spawn(async move {
        let cookie = client::hpack(&[(b"cookie", &[b'x'; 16 * 1024 - 16][..])]);
        let mut written = 0;
        let sent = tokio::time::timeout(WAIT, async {
            w.frame(kind::HEADERS, 0, 1, &first).await?;
            for i in 0..frames {
                if i == ping_after {
                    w.frame(kind::PING, 0, 0, &[0; 8]).await?;
                }
                w.frame(kind::CONTINUATION, 0, 1, &cookie).await?;
                written += 1;
            }
            if ping_after == frames {
                w.frame(kind::PING, 0, 0, &[0; 8]).await?;
            }
            w.raw(&[]).await
        })
        .await;
        match sent {
            Ok(result) => (written, result.err()),
            Err(_) => (written, Some(std::io::ErrorKind::TimedOut.into())),
        }
    });
    let (mut goaways, mut heads) = (Vec::new(), Vec::new());
    while let Some(f) = r.next().await? {
        match f.kind {
            kind::GOAWAY => goaways.push(f),
            kind::HEADERS => heads.push(f),
            _ => {}
        }
    }
    let writer = writer.await?;
    Ok(Flood {
        goaways,
        heads,
        writer,
    })
}

/// Concurrent streams: 200 open tunnels on one connection are served; the 201st stream
/// opened at once is refused with RST_STREAM(REFUSED_STREAM). Raw frames, because the h2
/// client would politely queue it.
#[test]
fn the_201st_concurrent_stream_is_refused() {
    let t = Target::start("hard_streams", &[]);
    let config = client::client_config(&t.cluster, "sa-u");
    let hbone = t.hbone();
    let ok = t.authority(t.echo.port());
    let (oks, refused) = t
        .cluster
        .lab
        .pod("u")
        .block_on(async move {
            let (mut w, mut r) = client::raw(hbone, config).await?;
            let head = client::connect_block(&ok);
            let mut batch = Vec::new();
            for i in 0..201u32 {
                client::push_frame(&mut batch, kind::HEADERS, END_HEADERS, 1 + 2 * i, &head);
            }
            w.raw(&batch).await?;
            let (mut oks, mut refused) = (0, Vec::new());
            while oks + refused.len() < 201 {
                let Some(f) = r.next().await? else {
                    anyhow::bail!("connection closed after {oks} ok, {refused:?} refused")
                };
                match f.kind {
                    kind::HEADERS if f.status() == Some(200) => oks += 1,
                    kind::HEADERS => anyhow::bail!("stream {} got a non-200 status", f.stream),
                    kind::RST_STREAM => refused.push((f.stream, f.error_code())),
                    kind::GOAWAY => anyhow::bail!("GOAWAY {:?}", f.error_code()),
                    _ => {}
                }
            }
            anyhow::Ok((oks, refused))
        })
        .expect("201 streams");
    assert_eq!(oks, 200, "refused: {refused:?}");
    assert_eq!(refused, vec![(401, Some(REFUSED_STREAM))]);
}

/// Connections per pod (`ZTUN_MAX_CONNECTIONS_PER_POD=3`): pod a holds three tunnelled
/// connections; the fourth is reset at accept (nothing reaches the server), counted under
/// `ztun_connection_failures_total{reason="pod_connection_limit"}` and logged; pod b on the
/// same node is not affected; once a's connections close, a connects again.
#[test]
fn connections_over_the_per_pod_limit_are_reset_and_counted() {
    let t = Target::start("hard_podlimit", &[("ZTUN_MAX_CONNECTIONS_PER_POD", "3")]);
    let lab = &t.cluster.lab;
    let echo: SocketAddr = t.authority(t.echo.port()).parse().unwrap();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let held = lab.pod("a").spawn_async(async move {
        let mut conns = Vec::new();
        for i in 0..3u8 {
            let mut s = ztun::testkit::lab::connect(echo, WAIT).await?;
            s.write_all(&[i]).await?;
            let mut b = [0u8; 1];
            tokio::time::timeout(WAIT, s.read_exact(&mut b)).await??;
            anyhow::ensure!(b[0] == i, "echo mismatch");
            conns.push(s);
        }
        // The fourth: accepted by the kernel, then reset by ztun before anything is relayed
        // (the reset may even beat the connect's completion).
        let refused = match ztun::testkit::lab::connect(echo, WAIT).await {
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(mut fourth) => {
                let _ = fourth.write_all(b"x").await;
                let mut b = [0u8; 1];
                matches!(
                    tokio::time::timeout(WAIT, fourth.read(&mut b)).await,
                    Ok(Ok(0)) | Ok(Err(_))
                )
            }
        };
        let _ = held_tx.send(refused);
        let _ = release_rx.await;
        drop(conns);
        anyhow::Ok(())
    });
    let refused = held_rx
        .recv_timeout(WAIT * 2)
        .expect("pod a opened its connections");
    assert!(refused, "the fourth connection of pod a was relayed");
    let n1 = t.cluster.ztun("n1");
    n1.wait_for_log("pod connection limit reached", WAIT)
        .expect("the refusal is logged");
    // Another pod on the node has its own budget.
    lab.pod("b")
        .bulk_echo(echo, 4096)
        .expect("pod b is not limited by pod a");
    let metrics = crate::ops::scrape(lab.node("n1").netns());
    let refused = crate::ops::sample(
        &metrics,
        "ztun_connection_failures_total",
        &[
            ("direction", "outbound"),
            ("reason", "pod_connection_limit"),
        ],
    );
    assert!(refused.unwrap_or(0.0) >= 1.0, "{metrics}");
    // Closing a's connections frees its slots (ztun notices the closes asynchronously).
    let _ = release_tx.send(());
    held.join()
        .expect("pod a's task")
        .expect("pod a's connections");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match lab.pod("a").bulk_echo(echo, 4096) {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("pod a never got a slot back: {e:#}")
            }
            Err(_) => continue,
        }
    }
}

/// Idle tunnels (`ZTUN_HBONE_IDLE_TIMEOUT=1s`): the HBONE connection pod b's pool opened to
/// c is closed by c's ztun once it has carried no stream for one to two periods, while pod
/// a's connection, whose stream stays open and quiet, is kept; b's next connection dials a
/// new tunnel and works.
#[test]
fn idle_hbone_connections_are_closed_and_busy_ones_are_kept() {
    let t = Target::start("hard_idle", &[("ZTUN_HBONE_IDLE_TIMEOUT", "1s")]);
    let lab = &t.cluster.lab;
    let echo: SocketAddr = t.authority(t.echo.port()).parse().unwrap();
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (check_tx, check_rx) = tokio::sync::oneshot::channel::<()>();
    let quiet = lab.pod("a").spawn_async(async move {
        let mut s = ztun::testkit::lab::connect(echo, WAIT).await?;
        s.write_all(b"1").await?;
        let mut b = [0u8; 1];
        tokio::time::timeout(WAIT, s.read_exact(&mut b)).await??;
        let _ = opened_tx.send(());
        let _ = check_rx.await;
        s.write_all(b"2").await?;
        tokio::time::timeout(WAIT, s.read_exact(&mut b)).await??;
        anyhow::ensure!(&b == b"2", "echo mismatch");
        anyhow::Ok(())
    });
    opened_rx
        .recv_timeout(WAIT)
        .expect("pod a's tunnel is open");
    let n2 = t.cluster.ztun("n2");
    let b_ip = lab.pod("b").ip().to_string();
    let cursor = n2.log_cursor();
    lab.pod("b").bulk_echo(echo, 4096).expect("pod b");
    let line = n2
        .wait_for_log_after(cursor, "hbone connection idle, closing", WAIT)
        .expect("b's idle tunnel is closed");
    assert!(line.contains(&b_ip), "{line}");
    let _ = check_tx.send(());
    quiet
        .join()
        .expect("pod a's task")
        .expect("pod a's quiet tunnel outlived b's idle one");
    lab.pod("b")
        .bulk_echo(echo, 4096)
        .expect("b dials a new tunnel after the idle close");
}
