//! Effective limits before and after authentication: the TLS handshake timeout (H12, H13),
//! the header list limit against CONTINUATION floods (H10) and concurrent streams per
//! connection. Values are documented in `docs/limits.md`.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{self, kind, END_HEADERS, REFUSED_STREAM};
use super::Target;
use crate::support::{wait_for_nth_log, WAIT};

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

/// Writes `prefix` to `addr` and reads until EOF or a reset (either way: ztun closed it).
async fn closed_by_server(addr: SocketAddr, prefix: Vec<u8>) -> anyhow::Result<()> {
    let mut s = ztun::testkit::lab::connect(addr, WAIT).await?;
    s.write_all(&prefix).await?;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Err(_) => anyhow::bail!("ztun kept the connection open past the deadline"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// H12 (slowloris) with `ZTUN_HANDSHAKE_TIMEOUT=2s`: a TCP connection that never sends a
/// ClientHello, and one that stops after it, are both closed by ztun (EOF seen by the
/// client, "timed out" logged twice); then a normal client still gets through.
#[test]
fn slowloris_connections_are_closed_at_the_handshake_timeout() {
    let t = Target::start("hard_h12", &[("ZTUN_HANDSHAKE_TIMEOUT", "2s")]);
    let hbone = t.hbone();
    let hello = client_hello(&t);
    t.cluster
        .lab
        .pod("u")
        .block_on(async move {
            let silent = closed_by_server(hbone, Vec::new());
            let half = closed_by_server(hbone, hello);
            let (a, b) = tokio::join!(silent, half);
            a.map_err(|e| e.context("no ClientHello"))?;
            b.map_err(|e| e.context("ClientHello then silence"))
        })
        .expect("H12");
    wait_for_nth_log(t.cluster.ztun("n2"), "hbone handshake timed out", 2);
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
        .block_on(closed_by_server(hbone, bytes))
        .expect("H13");
    t.cluster
        .ztun("n2")
        .wait_for_log("hbone handshake failed", WAIT)
        .expect("the aborted handshake is logged");
    t.serves_a_new_client(b"next client")
        .expect("ztun serves the next client");
}

/// H10: 1 MiB of headers in CONTINUATION frames (16 KiB each, never END_HEADERS) is cut off
/// at the 64 KiB header-list limit: the server answers with a GOAWAY, a reset or a close
/// (never a 200) long before the flood is through, and keeps serving other connections.
#[test]
fn continuation_flood_is_cut_at_the_header_list_limit() {
    let t = Target::start("hard_h10", &[]);
    let config = client::client_config(&t.cluster, "sa-u");
    let hbone = t.hbone();
    let ok = t.authority(t.echo.port());
    let outcome = t
        .cluster
        .lab
        .pod("u")
        .block_on(async move {
            let (mut w, mut r) = client::raw(hbone, config).await?;
            let first = client::connect_block(&ok);
            let writer = tokio::spawn(async move {
                w.frame(kind::HEADERS, 0, 1, &first).await?;
                let cookie = client::hpack(&[(b"cookie", &[b'x'; 16 * 1024 - 16][..])]);
                for _ in 0..64 {
                    w.frame(kind::CONTINUATION, 0, 1, &cookie).await?;
                }
                anyhow::Ok(())
            });
            let outcome = loop {
                match r.next().await? {
                    None => break "closed".to_string(),
                    Some(f) if f.kind == kind::GOAWAY => {
                        break format!("goaway {:?}", f.error_code())
                    }
                    Some(f) if f.kind == kind::RST_STREAM => {
                        break format!("reset {:?}", f.error_code())
                    }
                    Some(f) if f.kind == kind::HEADERS => {
                        anyhow::ensure!(f.indexed_status() != Some(200), "the flood got a 200");
                        break "refused with a status".to_string();
                    }
                    Some(_) => continue,
                }
            };
            // The writer either finished (the server read and discarded) or failed on the
            // closed connection; both are fine.
            let _ = writer.await;
            anyhow::Ok(outcome)
        })
        .expect("H10");
    eprintln!("CONTINUATION flood outcome: {outcome}");
    t.cluster
        .lab
        .pod("a")
        .bulk_echo((t.cluster.lab.pod("c").ip(), t.echo.port()).into(), 4096)
        .expect("a -> c after the flood");
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
                    kind::HEADERS if f.indexed_status() == Some(200) => oks += 1,
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
