//! What HBONE's TLS accepts on 15008, from a client in pod `u` holding a valid mesh
//! certificate: TLS 1.3 with AES-GCM only, no session resumption, and with
//! `COMPLIANCE_POLICY=pqc` the X25519MLKEM768 key exchange only; ALPN `h2` only, and ztun's
//! own HBONE client offers `h2` without SNI.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider, kx_group};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::{CipherSuite, NamedGroup, ProtocolVersion};

use ztun::identity::Identity;
use ztun::testkit::hbone_server::{HboneServer, Hello, Hellos};

use super::client::{self, client_with};
use super::{Target, HBONE};

/// What a handshake negotiated, or why it failed.
#[derive(Debug)]
struct Negotiated {
    version: Option<ProtocolVersion>,
    suite: Option<CipherSuite>,
    group: Option<NamedGroup>,
    resumed: bool,
    alpn: Option<Vec<u8>>,
}

/// Handshakes with c's HBONE listener, then reads until the server's HTTP/2 SETTINGS: a TLS
/// 1.3 server sends its session tickets after the client's Finished, before any application
/// data, so by then the client has processed every ticket the server offered.
fn handshake(t: &Target, config: Arc<rustls::ClientConfig>) -> anyhow::Result<Negotiated> {
    let hbone = t.hbone();
    t.cluster.lab.pod("u").block_on(async move {
        let s = client::tls(hbone, config).await?;
        let (_, conn) = s.get_ref();
        let n = Negotiated {
            version: conn.protocol_version(),
            suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
            group: conn.negotiated_key_exchange_group().map(|g| g.name()),
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        };
        client::raw_over(s).await?;
        Ok(n)
    })
}

/// rustls's in-memory session store, counting the TLS 1.3 tickets the server issued.
#[derive(Debug)]
struct TicketCounter {
    inner: ClientSessionMemoryCache,
    tickets: AtomicUsize,
}

impl TicketCounter {
    fn new() -> Arc<TicketCounter> {
        Arc::new(TicketCounter {
            inner: ClientSessionMemoryCache::new(64),
            tickets: AtomicUsize::new(0),
        })
    }

    fn tickets(&self) -> usize {
        self.tickets.load(Ordering::SeqCst)
    }
}

impl ClientSessionStore for TicketCounter {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(server_name, value)
    }

    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets.fetch_add(1, Ordering::SeqCst);
        self.inner.insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(server_name)
    }
}

fn provider(f: impl FnOnce(&mut CryptoProvider)) -> CryptoProvider {
    let mut p = default_provider();
    f(&mut p);
    p
}

#[test]
fn hbone_speaks_tls13_aes_gcm_only_and_never_resumes() {
    let t = Target::start("hard_tls", &[]);
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    // A client offering TLS 1.2 only is refused with a protocol_version alert (openssl: this
    // build of rustls speaks no TLS 1.2).
    let connect = t.hbone().to_string();
    let err = t
        .cluster
        .lab
        .pod("u")
        .netns()
        .exec(
            "openssl",
            &["s_client", "-connect", &connect, "-tls1_2", "-brief"],
            Some(b""),
        )
        .expect_err("TLS 1.2 accepted");
    assert!(
        format!("{err:#}").contains("alert protocol version"),
        "{err:#}"
    );
    // A client offering ChaCha20-Poly1305 only is refused.
    let chacha = client_with(
        &t.cluster,
        "sa-u",
        provider(|p| p.cipher_suites = vec![cipher_suite::TLS13_CHACHA20_POLY1305_SHA256]),
        tls13,
    );
    handshake(&t, chacha).expect_err("ChaCha20 accepted");
    // A client offering everything gets TLS 1.3 AES-GCM; asked to resume, it never is: the
    // server issues no ticket (a stateful or stateless one would reach the client's store
    // before the server's SETTINGS), and repeat handshakes are full ones.
    let store = TicketCounter::new();
    let mut full = (*client_with(&t.cluster, "sa-u", default_provider(), tls13)).clone();
    full.resumption = Resumption::store(store.clone());
    let full = Arc::new(full);
    for round in 0..3 {
        let n = handshake(&t, full.clone()).expect("a valid client");
        assert_eq!(n.version, Some(ProtocolVersion::TLSv1_3), "{n:?}");
        assert!(
            matches!(
                n.suite,
                Some(CipherSuite::TLS13_AES_256_GCM_SHA384 | CipherSuite::TLS13_AES_128_GCM_SHA256)
            ),
            "{n:?}"
        );
        assert!(!n.resumed, "round {round}: session resumed: {n:?}");
        assert_eq!(
            store.tickets(),
            0,
            "round {round}: the server issued tickets"
        );
    }
    // Without a compliance policy, classic key exchanges are accepted too.
    let x25519 = client_with(
        &t.cluster,
        "sa-u",
        provider(|p| p.kx_groups = vec![kx_group::X25519]),
        tls13,
    );
    let n = handshake(&t, x25519).expect("X25519 without COMPLIANCE_POLICY");
    assert_eq!(n.group, Some(NamedGroup::X25519));
}

/// `COMPLIANCE_POLICY=pqc`: only the X25519MLKEM768 hybrid is accepted on 15008, and the mesh
/// still works end to end between two ztuns under the policy.
#[test]
fn pqc_compliance_accepts_only_the_mlkem_hybrid() {
    let t = Target::start("hard_pqc", &[("COMPLIANCE_POLICY", "pqc")]);
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    for (name, group) in [
        ("X25519", kx_group::X25519),
        ("P-256", kx_group::SECP256R1),
        ("P-384", kx_group::SECP384R1),
    ] {
        let classic = client_with(
            &t.cluster,
            "sa-u",
            provider(|p| p.kx_groups = vec![group]),
            tls13,
        );
        handshake(&t, classic).expect_err(&format!("{name} accepted under pqc"));
    }
    let hybrid = client_with(&t.cluster, "sa-u", default_provider(), tls13);
    let n = handshake(&t, hybrid).expect("X25519MLKEM768 under pqc");
    assert_eq!(n.group, Some(NamedGroup::X25519MLKEM768), "{n:?}");
    // a (n1) → c (n2) through both ztuns.
    let lab = &t.cluster.lab;
    let dst = std::net::SocketAddr::from((lab.pod("c").ip(), t.echo.port()));
    lab.pod("a")
        .bulk_echo(dst, 64 * 1024)
        .expect("a → c under pqc");
}

/// ALPN is `h2` both ways, and ztun's client sends no SNI (as ztunnel: server and client
/// configured with `h2` only, SNI disabled). On 15008, a client offering only `http/1.1` is
/// refused with a `no_application_protocol` alert and one offering `h2` gets it. Pod `u` is
/// made an HBONE workload served by a test HBONE server that records the ClientHellos: the
/// ones n1's ztun sends for a → u offer exactly `h2` and no server name.
#[test]
fn hbone_alpn_is_h2_only_and_ztuns_client_sends_no_sni() {
    let t = Target::start_mesh("hard_alpn", &[], |m| {
        m.edit_workload("u", |w| {
            w.insert("protocol".into(), serde_json::json!("HBONE"));
        })
    });
    let mut http11 = (*client::client_config(&t.cluster, "sa-u")).clone();
    http11.alpn_protocols = vec![b"http/1.1".to_vec()];
    let err = handshake(&t, Arc::new(http11)).expect_err("http/1.1 accepted");
    assert!(
        format!("{err:#}").contains("NoApplicationProtocol"),
        "{err:#}"
    );
    let n = handshake(&t, client::client_config(&t.cluster, "sa-u")).expect("h2");
    assert_eq!(n.alpn.as_deref(), Some(&b"h2"[..]), "{n:?}");

    let lab = &t.cluster.lab;
    let u_echo = lab.pod("u").spawn_echo_server(8080).expect("echo in u");
    let u_id: Identity = "spiffe://cluster.local/ns/default/sa/sa-u"
        .parse()
        .expect("identity");
    let hellos = Hellos::default();
    let (_, _server) = HboneServer::spawn_recording(
        "hello-recorder",
        lab.pod("u").netns(),
        HBONE,
        &t.cluster.ca_dir,
        &u_id,
        hellos.clone(),
        |req, _, _| {
            req.uri()
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or(http::StatusCode::BAD_REQUEST)
        },
    )
    .expect("HBONE server in u");
    let dst = std::net::SocketAddr::from((lab.pod("u").ip(), u_echo.port()));
    lab.pod("a").bulk_echo(dst, 1024).expect("a → u over HBONE");
    let hellos = hellos.lock().clone();
    assert!(!hellos.is_empty(), "ztun never dialled u's HBONE port");
    for h in hellos {
        assert_eq!(
            h,
            Hello {
                server_name: None,
                alpn: vec![b"h2".to_vec()],
            }
        );
    }
}
