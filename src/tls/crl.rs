//! Certificate revocation lists (`CRL_PATH`): checked in every HBONE handshake, both ways, and
//! against the tunnels already open whenever the file changes.
//!
//! The file holds PEM `X509 CRL` blocks, one DER CRL, or nothing (an empty file revokes
//! nothing). webpki checks the whole peer chain, leaf and intermediates, against the CRLs in
//! force. A CA without a CRL revokes nothing (unknown status is allowed, as in ztunnel); a CRL
//! past its nextUpdate, or one that names a CA without that CA's signature, fails the
//! handshakes it covers: both fail closed.
//!
//! Every established HBONE connection is tracked with the chain its peer presented. A reload
//! re-checks them all at the time each was established (so a certificate that expired since
//! is not mistaken for a revoked one) and signals those that no longer verify; their owners
//! close them. A reload that does not parse, or a file that went away, keeps the CRLs in force.
//! With `CRL_PATH` unset, [`Revocation`] is disabled and costs nothing per connection.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, TrustAnchor, UnixTime};
use tokio::sync::watch;
use webpki::{BorrowedCertRevocationList, CertRevocationList};

use super::chain::{check_path, Algs, Usage};

/// Largest CRL file read (bounds memory on a bad mount).
const MAX_FILE: u64 = 16 << 20;

/// Why a CRL file was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    /// The file could not be read.
    #[error("reading {path}: {reason}")]
    Read {
        /// The file.
        path: Arc<str>,
        /// The I/O error.
        reason: Arc<str>,
    },
    /// Larger than [`MAX_FILE`].
    #[error("CRL file is {0} bytes, over the 16 MiB limit")]
    TooLarge(u64),
    /// PEM that does not parse, or holds no `X509 CRL` block.
    #[error("PEM: {0}")]
    Pem(Arc<str>),
    /// A CRL webpki does not accept (the n-th of the file, from 1).
    #[error("CRL {index}: {reason}")]
    Invalid {
        /// Position in the file, from 1.
        index: usize,
        /// webpki's reason.
        reason: Arc<str>,
    },
}

/// Parsed CRLs and what the dump shows of them.
pub struct Parsed {
    crls: Vec<CertRevocationList<'static>>,
    /// Revoked serial numbers (hex), in file order.
    serials: Vec<String>,
}

impl Parsed {
    /// How many CRLs.
    pub fn len(&self) -> usize {
        self.crls.len()
    }

    /// Whether there are none (an empty file).
    pub fn is_empty(&self) -> bool {
        self.crls.is_empty()
    }

    /// The revoked serial numbers, lowercase hex.
    pub fn serials(&self) -> &[String] {
        &self.serials
    }

    /// Whether a TLS client's chain validates to `roots` at `now` with these CRLs (the
    /// server-side check of a handshake).
    pub fn check_client_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        roots: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), webpki::Error> {
        let anchors = roots
            .iter()
            .map(webpki::anchor_from_trusted_cert)
            .collect::<Result<Vec<_>, _>>()?;
        let crls: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        check_path(
            verification_algs(),
            &anchors,
            end_entity,
            intermediates,
            now,
            Usage::Client,
            &crls,
        )
    }
}

/// Parses a CRL file: PEM with one or more `X509 CRL` blocks, a single DER CRL, or only white
/// space (no CRL). Public so the fuzz harness drives the same code.
pub fn parse_crls(bytes: &[u8]) -> Result<Parsed, CrlError> {
    let ders: Vec<CertificateRevocationListDer<'static>> =
        if bytes.iter().all(u8::is_ascii_whitespace) {
            Vec::new()
        } else if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            let ders = CertificateRevocationListDer::pem_slice_iter(bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CrlError::Pem(e.to_string().into()))?;
            if ders.is_empty() {
                return Err(CrlError::Pem("no X509 CRL block".into()));
            }
            ders
        } else {
            vec![CertificateRevocationListDer::from(bytes.to_vec())]
        };
    let mut parsed = Parsed {
        crls: Vec::with_capacity(ders.len()),
        serials: Vec::new(),
    };
    for (i, der) in ders.iter().enumerate() {
        let invalid = |e: webpki::Error| CrlError::Invalid {
            index: i + 1,
            reason: format!("{e:?}").into(),
        };
        let borrowed = BorrowedCertRevocationList::from_der(der).map_err(invalid)?;
        for revoked in &borrowed {
            let revoked = revoked.map_err(invalid)?;
            parsed.serials.push(hex(revoked.serial_number));
        }
        parsed.crls.push(CertRevocationList::Owned(
            borrowed.to_owned().map_err(invalid)?,
        ));
    }
    Ok(parsed)
}

/// Which end of the handshake ztun was: the reporter of its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// ztun dialled (outbound): it checked the server's chain. Reporter `source`.
    Client,
    /// ztun accepted (inbound): it checked the client's chain. Reporter `destination`.
    Server,
}

impl Side {
    fn usage(self) -> Usage {
        match self {
            Side::Client => Usage::Server,
            Side::Server => Usage::Client,
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Server => 1,
        }
    }
}

/// The peer's chain no longer verifies against the CRLs in force.
#[derive(Debug, Clone, thiserror::Error)]
#[error("peer certificate revoked: {0}")]
pub struct RevokedError(Arc<str>);

/// The revocation lists in force and the connections they cover. Cheap to clone; the default
/// is disabled (no CRL checking at all).
#[derive(Clone, Default)]
pub struct Revocation {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    path: PathBuf,
    current: ArcSwap<CrlSet>,
    /// The file as last examined, parsed or not: an unchanged file is not read again, so a
    /// bad file is reported once.
    examined: Mutex<Option<Stamp>>,
    // Short sections only (insert, remove, one pass of checks); never held across `.await`.
    tracked: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Handshakes refused and connections closed, by [`Side::index`].
    rejections: [AtomicU64; 2],
}

struct CrlSet {
    parsed: Parsed,
    generation: u64,
}

/// What changes when the file does: size, modification time, inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp(u64, Option<SystemTime>, u64);

struct Entry {
    side: Side,
    chain: Vec<CertificateDer<'static>>,
    anchors: Arc<[TrustAnchor<'static>]>,
    established: UnixTime,
    revoked: watch::Sender<bool>,
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            None => f.write_str("Revocation(disabled)"),
            Some(i) => write!(f, "Revocation({})", i.path.display()),
        }
    }
}

impl Revocation {
    /// No CRL checking.
    pub fn disabled() -> Self {
        Revocation::default()
    }

    /// Checking against the CRLs in `path`, which must exist and parse.
    pub fn load(path: &Path) -> Result<Self, CrlError> {
        let (parsed, stamp) = read(path)?;
        Ok(Revocation {
            inner: Some(Arc::new(Inner {
                path: path.to_path_buf(),
                current: ArcSwap::from_pointee(CrlSet {
                    parsed,
                    generation: 1,
                }),
                examined: Mutex::new(Some(stamp)),
                tracked: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                reloads_ok: AtomicU64::new(0),
                reloads_failed: AtomicU64::new(0),
                rejections: Default::default(),
            })),
        })
    }

    /// Whether CRLs are checked at all.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The generation of the CRLs in force (0 when disabled). Read it before a handshake and
    /// hand it to [`Revocation::track`], which re-checks if a reload came in between.
    pub fn generation(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.current.load().generation)
    }

    /// Checks a chain with the CRLs in force (the verifiers' entry point): `Ok` when disabled.
    pub(super) fn check(
        &self,
        side: Side,
        algs: &Algs,
        anchors: &[TrustAnchor<'_>],
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), webpki::Error> {
        let set = self.inner.as_ref().map(|i| i.current.load_full());
        let crls: Vec<&CertRevocationList<'_>> =
            set.iter().flat_map(|s| s.parsed.crls.iter()).collect();
        let res = check_path(
            algs,
            anchors,
            end_entity,
            intermediates,
            now,
            side.usage(),
            &crls,
        );
        if let (Err(e), Some(inner)) = (&res, &self.inner) {
            if is_revocation_error(e) {
                inner.rejections[side.index()].fetch_add(1, Ordering::Relaxed);
            }
        }
        res
    }

    /// Tracks an established connection whose peer presented `peer_chain` (leaf first),
    /// verified against `anchors` at generation `seen`. `Ok(None)` when disabled; an error
    /// when a reload since `seen` revokes it (the caller closes it at once).
    pub fn track(
        &self,
        side: Side,
        peer_chain: &[CertificateDer<'_>],
        anchors: &Arc<[TrustAnchor<'static>]>,
        seen: u64,
    ) -> Result<Option<Tracked>, RevokedError> {
        let Some(inner) = &self.inner else {
            return Ok(None);
        };
        let (tx, rx) = watch::channel(false);
        let entry = Entry {
            side,
            chain: peer_chain.iter().map(|c| c.clone().into_owned()).collect(),
            anchors: anchors.clone(),
            established: UnixTime::now(),
            revoked: tx,
        };
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut tracked = inner.tracked.lock();
        // Concurrency note: a reload swaps the set, then checks every entry under this lock.
        // Either it saw this entry, or the swap happened before the load below: no gap.
        let set = inner.current.load();
        if set.generation != seen {
            if let Err(e) = inner.recheck(&set, &entry) {
                inner.rejections[side.index()].fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
        tracked.insert(id, entry);
        drop(tracked);
        Ok(Some(Tracked {
            inner: inner.clone(),
            id,
            signal: RevokedSignal(Some(rx)),
        }))
    }

    /// Re-reads the file if it changed; on a new set, re-checks every tracked connection and
    /// returns how many it revoked (`None`: unchanged, or disabled). A file that is gone or
    /// does not parse keeps the set in force and is reported once as an error.
    pub fn reload(&self) -> Result<Option<usize>, CrlError> {
        let Some(inner) = &self.inner else {
            return Ok(None);
        };
        let stamp = stat(&inner.path).ok();
        {
            let mut examined = inner.examined.lock();
            // Unchanged, or still missing: already dealt with.
            if *examined == stamp {
                return Ok(None);
            }
            *examined = stamp;
        }
        let (parsed, _) = match read(&inner.path) {
            Ok(r) => r,
            Err(e) => {
                inner.reloads_failed.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let old = inner.current.load_full();
        inner.reloads_ok.fetch_add(1, Ordering::Relaxed);
        let set = Arc::new(CrlSet {
            parsed,
            generation: old.generation + 1,
        });
        inner.current.store(set.clone());
        let tracked = inner.tracked.lock();
        let mut revoked = 0;
        for entry in tracked.values() {
            if *entry.revoked.borrow() {
                continue;
            }
            if let Err(e) = inner.recheck(&set, entry) {
                revoked += 1;
                inner.rejections[entry.side.index()].fetch_add(1, Ordering::Relaxed);
                let peer = entry
                    .chain
                    .first()
                    .and_then(|c| super::chain::identity_of(c).ok());
                tracing::warn!(peer = ?peer.map(|p| p.to_string()), side = ?entry.side, error = %e, "peer certificate revoked, closing its connection");
                let _ = entry.revoked.send(true);
            }
        }
        Ok(Some(revoked))
    }

    /// Polls the file every `interval` until the process ends, reloading on change.
    pub async fn watch(self, interval: Duration) {
        let Some(inner) = &self.inner else {
            return;
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.reload() {
                Ok(None) => {}
                Ok(Some(revoked)) => {
                    let set = inner.current.load();
                    tracing::info!(path = %inner.path.display(), crls = set.parsed.len(), revoked_serials = set.parsed.serials.len(), closed_connections = revoked, "CRLs reloaded");
                }
                Err(e) => {
                    tracing::warn!(path = %inner.path.display(), error = %e, "CRL reload failed; the CRLs in force stay")
                }
            }
        }
    }

    /// The `crl` section of the config dump (`null` when disabled).
    pub fn dump(&self) -> serde_json::Value {
        let Some(inner) = &self.inner else {
            return serde_json::Value::Null;
        };
        let set = inner.current.load();
        serde_json::json!({
            "path": inner.path.display().to_string(),
            "generation": set.generation,
            "crls": set.parsed.len(),
            "revokedSerials": set.parsed.serials,
            "reloads": {
                "ok": inner.reloads_ok.load(Ordering::Relaxed),
                "failed": inner.reloads_failed.load(Ordering::Relaxed),
            },
            "trackedConnections": inner.tracked.lock().len(),
            "rejections": {
                "source": inner.rejections[0].load(Ordering::Relaxed),
                "destination": inner.rejections[1].load(Ordering::Relaxed),
            },
        })
    }

    /// Registers the CRL families in `registry`, read from this checker at each scrape
    /// (nothing when checking is disabled). No `istio_crl_untracked_connections_total`: every
    /// connection is tracked here (the chain is kept as presented, nothing to parse or fetch
    /// that could fail), and ztunnel shows that family only once it counts one.
    pub fn register_metrics(&self, registry: &mut Registry) {
        if let Some(inner) = &self.inner {
            registry.register_collector(Box::new(CrlMetrics(inner.clone())));
        }
    }
}

/// The CRL families, read at scrape time from the checker's counters and state.
struct CrlMetrics(Arc<Inner>);

impl std::fmt::Debug for CrlMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlMetrics").finish_non_exhaustive()
    }
}

impl Collector for CrlMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let inner = &self.0;
        // As ztunnel's prometheus-client family: written once it has a series, and a
        // side's series once that side refused a revoked peer.
        let rejections: Vec<(&str, u64)> =
            [(Side::Client, "source"), (Side::Server, "destination")]
                .into_iter()
                .map(|(side, reporter)| {
                    (
                        reporter,
                        inner.rejections[side.index()].load(Ordering::Relaxed),
                    )
                })
                .filter(|&(_, n)| n > 0)
                .collect();
        if !rejections.is_empty() {
            let mut family = encoder.encode_descriptor(
                "istio_crl_policy_rejections",
                "Handshakes refused and connections closed because a peer certificate is revoked (unstable).",
                None,
                MetricType::Counter,
            )?;
            for (reporter, n) in rejections {
                ConstCounter::new(n).encode(family.encode_family(&[("reporter", reporter)])?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "ztun_crl_reloads",
                "CRL file reloads.",
                None,
                MetricType::Counter,
            )?;
            for (result, n) in [("ok", &inner.reloads_ok), ("error", &inner.reloads_failed)] {
                let n = n.load(Ordering::Relaxed);
                ConstCounter::new(n).encode(family.encode_family(&[("result", result)])?)?;
            }
        }
        let crls = ConstGauge::new(inner.current.load().parsed.len() as i64);
        crls.encode(encoder.encode_descriptor(
            "ztun_crls",
            "CRLs in force.",
            None,
            MetricType::Gauge,
        )?)?;
        let tracked = ConstGauge::new(inner.tracked.lock().len() as i64);
        tracked.encode(encoder.encode_descriptor(
            "ztun_crl_tracked_connections",
            "HBONE connections re-checked on every CRL reload.",
            None,
            MetricType::Gauge,
        )?)
    }
}

impl Inner {
    fn recheck(&self, set: &CrlSet, entry: &Entry) -> Result<(), RevokedError> {
        let (leaf, intermediates) = entry
            .chain
            .split_first()
            .ok_or_else(|| RevokedError("no peer certificate".into()))?;
        let crls: Vec<&CertRevocationList<'_>> = set.parsed.crls.iter().collect();
        check_path(
            verification_algs(),
            &entry.anchors,
            leaf,
            intermediates,
            entry.established,
            entry.side.usage(),
            &crls,
        )
        .map_err(|e| RevokedError(format!("{e:?}").into()))
    }
}

/// A tracked connection: [`Tracked::revoked`] completes once a reload revokes its peer.
/// Dropping it stops the tracking.
pub struct Tracked {
    inner: Arc<Inner>,
    id: u64,
    signal: RevokedSignal,
}

impl Tracked {
    /// Completes when the peer's certificate is revoked.
    pub async fn revoked(&mut self) {
        self.signal.revoked().await
    }

    /// A signal for the streams of this connection, to log why they end.
    pub fn signal(&self) -> RevokedSignal {
        self.signal.clone()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.inner.tracked.lock().remove(&self.id);
    }
}

/// A clonable wait for one connection's revocation; never completes for an untracked one.
#[derive(Clone, Default)]
pub struct RevokedSignal(Option<watch::Receiver<bool>>);

impl RevokedSignal {
    /// The signal of an untracked connection (CRLs disabled).
    pub fn never() -> Self {
        RevokedSignal(None)
    }

    /// Completes when the connection's peer is revoked; pending forever otherwise.
    pub async fn revoked(&mut self) {
        let mut wait = self.clone().into_wait();
        std::future::poll_fn(|cx| wait.poll(cx)).await
    }

    /// The wait for this signal as a value a relay polls in place ([`RevokedWait::poll`]),
    /// instead of an awaited future that borrows the signal. An untracked connection's wait is
    /// one empty word pair; only a tracked one's state is boxed, so the futures of connections
    /// without CRL checking stay small.
    pub fn into_wait(self) -> RevokedWait {
        RevokedWait(self.0.map(|mut rx| {
            let wait: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                if rx.wait_for(|r| *r).await.is_err() {
                    // The tracker is gone without revoking: never fires.
                    std::future::pending::<()>().await;
                }
            });
            wait
        }))
    }
}

/// A [`RevokedSignal`] being waited for; see [`RevokedSignal::into_wait`].
pub struct RevokedWait(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl RevokedWait {
    /// Ready once the connection's peer is revoked; pending forever for an untracked
    /// connection.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(wait) => wait.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// Errors that come from the CRLs rather than from the chain itself.
fn is_revocation_error(e: &webpki::Error) -> bool {
    use webpki::Error as E;
    matches!(
        e,
        E::CertRevoked
            | E::CrlExpired { .. }
            | E::InvalidCrlSignatureForPublicKey
            | E::IssuerNotCrlSigner
            | E::UnknownRevocationStatus
            | E::UnsupportedCrlVersion
            | E::UnsupportedDeltaCrl
            | E::UnsupportedIndirectCrl
            | E::UnsupportedRevocationReason
            | E::UnsupportedRevocationReasonsPartitioning
            | E::UnsupportedCrlIssuingDistributionPoint
    )
}

fn verification_algs() -> &'static Algs {
    static ALGS: std::sync::OnceLock<&'static Algs> = std::sync::OnceLock::new();
    ALGS.get_or_init(|| {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .all
    })
}

fn stat(path: &Path) -> Result<Stamp, CrlError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| read_error(path, e))?;
    Ok(Stamp(m.len(), m.modified().ok(), m.ino()))
}

fn read(path: &Path) -> Result<(Parsed, Stamp), CrlError> {
    let stamp = stat(path)?;
    if stamp.0 > MAX_FILE {
        return Err(CrlError::TooLarge(stamp.0));
    }
    let bytes = std::fs::read(path).map_err(|e| read_error(path, e))?;
    Ok((parse_crls(&bytes)?, stamp))
}

fn read_error(path: &Path, e: std::io::Error) -> CrlError {
    CrlError::Read {
        path: path.display().to_string().into(),
        reason: e.to_string().into(),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests;
