//! Effective limits before and after authentication: the TLS handshake timeout (H12, H13),
//! the header list limit against CONTINUATION floods (H10) and concurrent streams per
//! connection. Values are documented in `docs/limits.md`.

use std::net::SocketAddr;

use http::StatusCode;
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
    let config = client::client_config(&t.cluster, "sa-u");
    let echo = t.authority(t.echo.port());
    t.cluster
        .lab
        .pod("u")
        .block_on(async move {
            let h2 = client::h2(hbone, config).await?;
            let (status, mut tx, mut rx) =
                client::send(&h2, client::connect_request(&echo)).await?;
            anyhow::ensure!(status == StatusCode::OK, "{status}");
            client::echo(&mut tx, &mut rx, b"next client").await
        })
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
