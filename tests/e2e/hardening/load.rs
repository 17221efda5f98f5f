//! Floods and churn: H8 (rapid reset), H9 (floods of locally reset streams), H11 (a stream whose window never opens), R2-lite
//! (connection churn, fds and memory return to baseline), S1-lite (many fresh handshakes).
//!
//! Scaled to a 2-core machine: 10 000 HEADERS+RST_STREAM pairs as fast as one client writes
//! (not a sustained 10 k/s), 2 000 churned connections (not a 24 h soak), 200 handshakes.

use std::time::{Duration, Instant};

use http::StatusCode;
use ztun::dataplane::inbound::MAX_PENDING_ACCEPT_RESETS;

use super::client::{self, kind, END_HEADERS, ENHANCE_YOUR_CALM};
use super::Target;
use crate::support::WAIT;

/// H8: one connection sends 10 000 CONNECT HEADERS each followed by RST_STREAM(CANCEL), 100
/// pairs per write. ztun ends that connection with GOAWAY(ENHANCE_YOUR_CALM) once more than
/// its 20 reset streams wait to be accepted, and another tenant's traffic (a → c, and a
/// fresh HBONE client) keeps working meanwhile.
///
/// The work done before the cut is bounded by that limit: one write of 100 pairs is one TLS
/// record, which the server decrypts and hands to h2 at once, so h2 takes its frames in one
/// pass with no accept in between; the 21st reset then triggers the GOAWAY, whose last
/// stream id names the last stream h2 opened: at most 21 streams, ids 1..=41.
#[test]
fn rapid_reset_flood_gets_goaway_and_other_tenants_keep_working() {
    let t = Target::start("hard_h8", &[]);
    let config = client::client_config(&t.cluster, "sa-u");
    let hbone = t.hbone();
    let ok = t.authority(t.recorder.port());
    let flood = t.cluster.lab.pod("u").spawn_async(async move {
        let (mut w, mut r) = client::raw(hbone, config).await?;
        let head = client::connect_block(&ok);
        let writer = tokio::spawn(async move {
            let mut sent = 0u32;
            for chunk in 0..100u32 {
                let mut batch = Vec::new();
                for i in 0..100u32 {
                    let stream = 1 + 2 * (chunk * 100 + i);
                    client::push_frame(&mut batch, kind::HEADERS, END_HEADERS, stream, &head);
                    client::push_frame(
                        &mut batch,
                        kind::RST_STREAM,
                        0,
                        stream,
                        &8u32.to_be_bytes(),
                    );
                }
                if w.raw(&batch).await.is_err() {
                    break;
                }
                sent += 100;
            }
            sent
        });
        // Everything the server sends before its GOAWAY: answers to streams it accepted.
        let (mut answers, mut goaway) = (0u32, None);
        while let Some(f) = r.next().await? {
            match f.kind {
                kind::GOAWAY => {
                    goaway = Some(f);
                    break;
                }
                kind::HEADERS | kind::RST_STREAM if f.stream != 0 => answers += 1,
                _ => {}
            }
        }
        let sent = writer.await?;
        anyhow::Ok((goaway, answers, sent))
    });
    // Another tenant, during the flood.
    let lab = &t.cluster.lab;
    let c = lab.pod("c").ip();
    for _ in 0..5 {
        lab.pod("a")
            .bulk_echo((c, t.echo.port()).into(), 256 * 1024)
            .expect("a -> c during the flood");
    }
    let (goaway, answers, sent) = flood.join().expect("flood task").expect("flood");
    let goaway = goaway.unwrap_or_else(|| {
        panic!("ztun never sent GOAWAY to a rapid-reset peer ({sent} pairs written)")
    });
    eprintln!(
        "rapid reset: GOAWAY code {:?}, last stream {:?}, {:?}, after {answers} answers; {sent} pairs written",
        goaway.error_code(),
        goaway.last_stream(),
        goaway.debug_data()
    );
    assert_eq!(goaway.error_code(), Some(ENHANCE_YOUR_CALM), "GOAWAY code");
    // ztun's limit on remotely reset streams waiting in the accept queue at once
    // (docs/limits.md): stream ids are odd, so 21 streams end at id 41.
    let bound = u32::try_from(2 * (MAX_PENDING_ACCEPT_RESETS + 1) - 1).expect("a small limit");
    let last = goaway
        .last_stream()
        .expect("GOAWAY carries the last stream id");
    assert!(
        last <= bound,
        "h2 opened streams up to {last} before the GOAWAY: more than the {} a limit of \
         {MAX_PENDING_ACCEPT_RESETS} pending resets allows",
        bound.div_ceil(2)
    );
    assert!(
        answers <= bound.div_ceil(2),
        "{answers} streams answered before the GOAWAY"
    );
    t.serves_a_new_client(b"after the flood")
        .expect("a new connection after the flood");
}

/// H9: one connection sends 10 000 malformed request heads (a `connection` header, which
/// HTTP/2 forbids), each of which ztun's HTTP/2 layer resets itself without involving ztun's
/// handler. After 1 024 such local resets (h2's `max_local_error_reset_streams`) the
/// connection gets GOAWAY(ENHANCE_YOUR_CALM); ztun serves a new client afterwards. RSS before
/// and after is printed (not asserted: allocator noise on a shared machine).
#[test]
fn a_flood_of_locally_reset_streams_gets_goaway() {
    let t = Target::start("hard_h9", &[]);
    let config = client::client_config(&t.cluster, "sa-u");
    let hbone = t.hbone();
    let ok = t.authority(t.recorder.port());
    let n2 = t.cluster.ztun("n2");
    let (_, rss_before) = client::fds_and_rss(n2.pid());
    let flood = t.cluster.lab.pod("u").spawn_async(async move {
        let (mut w, mut r) = client::raw(hbone, config).await?;
        let head = client::hpack(&[
            (b":method", b"CONNECT"),
            (b":authority", ok.as_bytes()),
            (b"connection", b"close"),
        ]);
        let writer = tokio::spawn(async move {
            let mut sent = 0u32;
            for chunk in 0..100u32 {
                let mut batch = Vec::new();
                for i in 0..100u32 {
                    let stream = 1 + 2 * (chunk * 100 + i);
                    client::push_frame(&mut batch, kind::HEADERS, END_HEADERS, stream, &head);
                }
                if w.raw(&batch).await.is_err() {
                    break;
                }
                sent += 100;
            }
            sent
        });
        let (mut resets, mut goaway) = (0u32, None);
        while let Some(f) = r.next().await? {
            match f.kind {
                kind::RST_STREAM => resets += 1,
                kind::GOAWAY => {
                    let last = f
                        .payload
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff);
                    goaway = Some((f.error_code(), last));
                    break;
                }
                _ => {}
            }
        }
        let sent = writer.await?;
        anyhow::Ok((goaway, resets, sent))
    });
    let (goaway, resets, sent) = flood.join().expect("flood task").expect("flood");
    let (_, rss_after) = client::fds_and_rss(n2.pid());
    eprintln!(
        "local-reset flood: GOAWAY (code, last stream) {goaway:?}, {resets} RST_STREAM seen, \
         {sent} heads written, RSS {rss_before} -> {rss_after} KiB"
    );
    let (code, last) = goaway.expect("ztun never sent GOAWAY to the flood");
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "GOAWAY code");
    // Stream ids run 1, 3, ... 19 999: none of the malformed heads reached ztun's handler.
    let last = last.expect("GOAWAY carries the last stream id");
    assert!(last < 19_999, "last stream {last} was processed");
    n2.wait_for_log("excessive load generating behavior", WAIT)
        .expect("the cut is the local-reset limit, and it is logged");
    t.serves_a_new_client(b"after the flood")
        .expect("a new connection after the flood");
}

/// H11: on one connection, stream A pushes 16 MiB to the echo server but never reads (its
/// receive window stays closed); stream B on the same connection still echoes 1 MiB.
#[test]
fn a_stream_that_never_opens_its_window_stalls_only_itself() {
    let t = Target::start("hard_h11", &[]);
    with_unread_and_live_streams(&t, |mut s| async move {
        let payload: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        for piece in payload.chunks(64 * 1024) {
            client::echo(&mut s.b_tx, &mut s.b_rx, piece).await?;
        }
        anyhow::Ok(())
    })
    .expect("H11");
}

/// H11, the timeout: with `ZTUN_HBONE_STREAM_STALL_TIMEOUT=2s`, stream A (never read, as
/// above) is reset by n2 once its window has stayed closed for 2 s, and logged as
/// `stream_stalled`; stream B on the same connection echoes before and after.
#[test]
fn a_stalled_stream_is_reset_after_the_stall_timeout() {
    let t = Target::start("hard_h11t", &[("ZTUN_HBONE_STREAM_STALL_TIMEOUT", "2s")]);
    with_unread_and_live_streams(&t, |mut s| async move {
        client::echo(&mut s.b_tx, &mut s.b_rx, b"before the stall timeout").await?;
        // Take what A was sent without ever releasing window: the stream must end with a
        // reset once n2 gives up on it.
        let reset = tokio::time::timeout(WAIT, async {
            loop {
                match s.a_rx.data().await {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Ok(e),
                    None => anyhow::bail!("A ended cleanly instead of being reset"),
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("A was never reset"))??;
        anyhow::ensure!(
            reset.reason() == Some(h2::Reason::CANCEL),
            "A ended with {reset:?}"
        );
        client::echo(&mut s.b_tx, &mut s.b_rx, b"after the stall timeout").await?;
        anyhow::Ok(())
    })
    .expect("H11 timeout");
    let line = t
        .cluster
        .ztun("n2")
        .wait_for_log("reason=\"stream_stalled\"", WAIT)
        .expect("the stall is logged with its reason");
    assert!(line.contains("direction=\"inbound\""), "{line}");
}

/// Two streams to the echo server on one connection from pod u: A, with 16 MiB queued that
/// its reader never takes (h2 sends what A's window allows, the rest waits), and B.
struct UnreadAndLive {
    _h2: h2::client::SendRequest<bytes::Bytes>,
    _a_tx: h2::SendStream<bytes::Bytes>,
    a_rx: h2::RecvStream,
    b_tx: h2::SendStream<bytes::Bytes>,
    b_rx: h2::RecvStream,
}

/// Opens [`UnreadAndLive`] streams on a new connection from pod u and runs `body` on them
/// there; A stays open as long as `body` holds it.
fn with_unread_and_live_streams<F, Fut>(t: &Target, body: F) -> anyhow::Result<()>
where
    F: FnOnce(UnreadAndLive) -> Fut + Send,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let config = client::client_config(&t.cluster, "sa-u");
    let hbone = t.hbone();
    let echo = t.authority(t.echo.port());
    t.cluster.lab.pod("u").block_on(async move {
        let h2 = client::h2(hbone, config).await?;
        let (status, mut a_tx, a_rx) = client::send(&h2, client::connect_request(&echo)).await?;
        anyhow::ensure!(status == StatusCode::OK, "A: {status}");
        let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
        for _ in 0..16 {
            a_tx.reserve_capacity(chunk.len());
            a_tx.send_data(chunk.clone(), false)?;
        }
        let (status, b_tx, b_rx) = client::send(&h2, client::connect_request(&echo)).await?;
        anyhow::ensure!(status == StatusCode::OK, "B: {status}");
        body(UnreadAndLive {
            _h2: h2,
            _a_tx: a_tx,
            a_rx,
            b_tx,
            b_rx,
        })
        .await
    })
}

/// R2-lite: short connections a → c (connect, echo 1 KiB, close) through both ztuns: after a
/// warm-up of 500 (pool, certificates, allocator caches, task and buffer pools reach their
/// working size), 2 000 more leave each ztun's fd count within 32 of its post-warm-up value
/// and its RSS growth under 2 KiB per connection (4 MiB in all; a leak of a single 4 KiB
/// page per connection fails it). Waits for the counts to settle, bounded by a deadline.
#[test]
fn churn_returns_fds_and_memory_to_baseline() {
    const WARM_UP: u32 = 500;
    const CHURN: u64 = 2000;
    const RSS_PER_CONNECTION_KIB: u64 = 2;
    let t = Target::start("hard_r2", &[]);
    let lab = &t.cluster.lab;
    let dst = std::net::SocketAddr::from((lab.pod("c").ip(), t.echo.port()));
    let churn = |n: u64| {
        lab.pod("a")
            .block_on(async move {
                for _ in 0..n {
                    ztun::testkit::lab::bulk_echo(dst, 1024, WAIT).await?;
                }
                anyhow::Ok(())
            })
            .expect("churn")
    };
    let pids: Vec<(String, u32)> = t
        .cluster
        .ztuns
        .iter()
        .map(|(n, p)| (n.clone(), p.pid()))
        .collect();
    let before: Vec<(usize, u64)> = pids.iter().map(|(_, p)| client::fds_and_rss(*p)).collect();
    churn(u64::from(WARM_UP));
    // The warm-up's connections have closed once the fds are back near where they were.
    let settled = |pid: u32, fds0: usize| {
        let deadline = Instant::now() + WAIT;
        loop {
            let (fds, rss) = client::fds_and_rss(pid);
            if fds <= fds0 + 32 {
                return (fds, rss);
            }
            assert!(Instant::now() < deadline, "fds {fds0} -> {fds} after churn");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let baseline: Vec<(usize, u64)> = pids
        .iter()
        .zip(&before)
        .map(|((_, pid), (fds0, _))| settled(*pid, *fds0))
        .collect();
    churn(CHURN);
    let deadline = Instant::now() + WAIT;
    for ((node, pid), (fds0, rss0)) in pids.iter().zip(&baseline) {
        loop {
            let (fds, rss) = client::fds_and_rss(*pid);
            let per_connection = rss.saturating_sub(*rss0) as f64 / CHURN as f64;
            let report = format!(
                "{node}: fds {fds0} -> {fds}, rss {rss0} KiB -> {rss} KiB \
                 ({per_connection:.2} KiB per connection) over {CHURN} connections"
            );
            if fds <= fds0 + 32 && rss <= rss0 + RSS_PER_CONNECTION_KIB * CHURN {
                eprintln!("{report}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{report}: over 32 fds or {RSS_PER_CONNECTION_KIB} KiB per connection"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// S1-lite: 200 fresh mTLS connections (full handshakes, 20 at a time) from 4 identities,
/// one CONNECT each: every one gets its 200.
#[test]
fn many_fresh_handshakes_all_succeed() {
    let t = Target::start("hard_s1", &[]);
    let configs: Vec<_> = ["sa-u", "sa-x", "sa-y", "sa-z"]
        .iter()
        .map(|sa| client::client_config(&t.cluster, sa))
        .collect();
    let hbone = t.hbone();
    let echo = t.authority(t.echo.port());
    let ok = t
        .cluster
        .lab
        .pod("u")
        .block_on(async move {
            let mut ok = 0;
            for round in 0..10 {
                let mut tasks = Vec::new();
                for i in 0..20 {
                    let config = configs[(round + i) % configs.len()].clone();
                    let echo = echo.clone();
                    tasks.push(tokio::spawn(async move {
                        let h2 = client::h2(hbone, config).await?;
                        let (status, _, _) =
                            client::send(&h2, client::connect_request(&echo)).await?;
                        anyhow::Ok(status)
                    }));
                }
                for task in tasks {
                    if task.await?? == StatusCode::OK {
                        ok += 1;
                    }
                }
            }
            anyhow::Ok(ok)
        })
        .expect("S1");
    assert_eq!(ok, 200);
}
