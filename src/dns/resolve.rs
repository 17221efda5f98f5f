//! Resolution of hostname-only workloads (DNS-resolved ServiceEntry endpoints) when a
//! connection is routed to one: an A query (and an AAAA query when IPv6 is enabled, in
//! parallel) to the nameservers of ztun's resolv.conf, sent from ztun's own network namespace
//! as ztunnel does (the pod's resolver and DNS proxy play no part), answers cached for their
//! TTL.
//!
//! Bounded: at most [`CACHE_CAPACITY`] hostnames are cached (expired entries leave first,
//! then those expiring soonest), TTLs are capped at [`MAX_TTL`], each answer keeps at most
//! [`MAX_ADDRESSES`] addresses per family, and concurrent connections to one hostname share
//! one lookup. Failures are not cached: the next connection asks again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::forward::{self, ForwardError, Upstreams};
use super::Transport;
use super::{Resolution, ResolveError, ResolveHost};
use crate::sockets::Sockets;
use crate::state::model::Strng;

/// Hostnames cached at most (ztunnel's resolver cache holds as many).
pub const CACHE_CAPACITY: usize = 4096;
/// Longest time an answer is trusted, whatever its TTL.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Addresses kept per family from one answer.
pub const MAX_ADDRESSES: usize = 32;

/// The result of one lookup, as handed to every connection waiting for it.
type Answer = Result<Arc<[IpAddr]>, ResolveError>;

/// Resolves hostname-only workloads for every pod of this process.
pub struct HostResolver {
    /// Sockets in ztun's own namespace.
    sockets: Sockets,
    upstreams: Upstreams,
    /// Also ask for AAAA records (`IPV6_ENABLED`).
    ipv6: bool,
    /// Held only to read or update the map, never across a lookup.
    cache: Mutex<HostCache>,
    /// Lookups under way by hostname; later callers wait for the first one's answer. Held
    /// only to read or update the map.
    in_flight: Mutex<HashMap<Strng, watch::Receiver<Option<Answer>>>>,
}

impl HostResolver {
    /// A resolver asking `upstreams` over `sockets` (ztun's own namespace).
    pub fn new(sockets: Sockets, upstreams: Upstreams, ipv6: bool) -> HostResolver {
        HostResolver {
            sockets,
            upstreams,
            ipv6,
            cache: Mutex::new(HostCache::new(CACHE_CAPACITY)),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The addresses of `hostname`: from the cache while they are fresh, else from the
    /// upstreams (one lookup at a time per hostname, shared by every caller).
    pub async fn lookup(&self, hostname: &Strng) -> Answer {
        loop {
            let cached = self.cache.lock().get(hostname, Instant::now());
            if let Some(addrs) = cached {
                return Ok(addrs);
            }
            let (mut rx, leader) = {
                let mut in_flight = self.in_flight.lock();
                match in_flight.get(hostname) {
                    Some(rx) => (rx.clone(), None),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        in_flight.insert(hostname.clone(), rx.clone());
                        (rx, Some(tx))
                    }
                }
            };
            if let Some(tx) = leader {
                // Unregisters the lookup however this future ends (done, or dropped with its
                // connection: then the waiters start their own).
                let _registered = InFlight {
                    map: &self.in_flight,
                    hostname,
                    rx,
                };
                let answer = match self.query(hostname).await {
                    Ok((addrs, ttl)) => {
                        self.cache.lock().insert(
                            hostname.clone(),
                            addrs.clone(),
                            ttl,
                            Instant::now(),
                        );
                        Ok(addrs)
                    }
                    Err(e) => Err(e),
                };
                let _ = tx.send(Some(answer.clone()));
                return answer;
            }
            let answer = match rx.wait_for(Option::is_some).await {
                Ok(done) => done.clone(),
                Err(_) => None,
            };
            if let Some(answer) = answer {
                return answer;
            }
            // The lookup we waited for was abandoned: try again.
        }
    }

    /// Asks the upstreams for A (and AAAA) records of `hostname`.
    async fn query(&self, hostname: &str) -> Result<(Arc<[IpAddr]>, Duration), ResolveError> {
        let mut name = Name::from_ascii(hostname).map_err(|_| ResolveError::BadName)?;
        name.set_fqdn(true);
        let v4 = self.query_type(&name, RecordType::A);
        let found = if self.ipv6 {
            let (v4, v6) = tokio::join!(v4, self.query_type(&name, RecordType::AAAA));
            vec![v4, v6]
        } else {
            vec![v4.await]
        };
        merge(found)
    }

    async fn query_type(&self, name: &Name, rtype: RecordType) -> Result<Records, ResolveError> {
        let id: u16 = rand::random();
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(name.clone(), rtype));
        let query = m.to_vec().map_err(|_| ResolveError::BadName)?;
        let udp = forward::forward(&self.sockets, &self.upstreams, &query, id, Transport::Udp)
            .await
            .map_err(unreachable)?;
        let truncated = Message::from_vec(&udp).is_ok_and(|m| m.truncated());
        let answer = if truncated {
            forward::forward(&self.sockets, &self.upstreams, &query, id, Transport::Tcp)
                .await
                .map_err(unreachable)?
        } else {
            udp
        };
        records(&answer, rtype)
    }
}

impl ResolveHost for HostResolver {
    fn resolve(&self, hostname: Strng) -> Resolution<'_> {
        Box::pin(async move { self.lookup(&hostname).await })
    }
}

/// Removes a lookup from the in-flight map when its leader finishes or is dropped.
struct InFlight<'a> {
    map: &'a Mutex<HashMap<Strng, watch::Receiver<Option<Answer>>>>,
    hostname: &'a Strng,
    rx: watch::Receiver<Option<Answer>>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock();
        if map
            .get(self.hostname)
            .is_some_and(|rx| rx.same_channel(&self.rx))
        {
            map.remove(self.hostname);
        }
    }
}

/// The addresses of one family from one answer, and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    /// A or AAAA addresses, in answer order (possibly none: NOERROR without data).
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL in the answer section, capped at [`MAX_TTL`].
    pub ttl: Duration,
}

/// Reads an upstream's answer to an `rtype` query: its addresses of that type (at most
/// [`MAX_ADDRESSES`]) and the smallest TTL of the answer section (CNAMEs included).
pub fn records(answer: &[u8], rtype: RecordType) -> Result<Records, ResolveError> {
    let m = Message::from_vec(answer).map_err(|_| ResolveError::Rcode("malformed answer"))?;
    if m.response_code() != ResponseCode::NoError {
        return Err(ResolveError::Rcode(m.response_code().to_str()));
    }
    let mut ttl = MAX_TTL;
    let mut addrs = Vec::new();
    for r in m.answers() {
        ttl = ttl.min(Duration::from_secs(u64::from(r.ttl())));
        let ip = match (r.data(), rtype) {
            (RData::A(a), RecordType::A) => IpAddr::V4(a.0),
            (RData::AAAA(a), RecordType::AAAA) => IpAddr::V6(a.0),
            _ => continue,
        };
        if addrs.len() < MAX_ADDRESSES && !addrs.contains(&ip) {
            addrs.push(ip);
        }
    }
    Ok(Records { addrs, ttl })
}

/// Joins the per-family results: every address found, the smallest TTL of the families that
/// answered; an error only when no family gave an address (the first family's error first).
fn merge(
    found: Vec<Result<Records, ResolveError>>,
) -> Result<(Arc<[IpAddr]>, Duration), ResolveError> {
    let mut addrs = Vec::new();
    let mut ttl = MAX_TTL;
    let mut error = None;
    for f in found {
        match f {
            Ok(r) => {
                if !r.addrs.is_empty() {
                    ttl = ttl.min(r.ttl);
                }
                addrs.extend(r.addrs);
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    if addrs.is_empty() {
        return Err(error.unwrap_or(ResolveError::NoAddress));
    }
    Ok((addrs.into(), ttl))
}

fn unreachable(e: ForwardError) -> ResolveError {
    match e {
        ForwardError::NoUpstream => ResolveError::NoUpstream,
        ForwardError::Upstream { upstream, source } => ResolveError::Unreachable {
            upstream,
            source: Arc::new(source),
        },
    }
}

/// Resolved hostnames with their expiry, bounded in size.
#[derive(Debug)]
pub struct HostCache {
    entries: HashMap<Strng, Cached>,
    capacity: usize,
}

#[derive(Debug)]
struct Cached {
    addrs: Arc<[IpAddr]>,
    expires: Instant,
}

impl HostCache {
    /// An empty cache holding at most `capacity` hostnames.
    pub fn new(capacity: usize) -> HostCache {
        HostCache {
            entries: HashMap::new(),
            capacity,
        }
    }

    /// The addresses of `hostname` if cached and not expired at `now`.
    pub fn get(&self, hostname: &str, now: Instant) -> Option<Arc<[IpAddr]>> {
        self.entries
            .get(hostname)
            .filter(|c| c.expires > now)
            .map(|c| c.addrs.clone())
    }

    /// Caches `addrs` for `hostname` until `now + ttl` (capped at [`MAX_TTL`]; a zero TTL
    /// caches nothing). When full, expired entries are dropped, then the one expiring soonest.
    pub fn insert(&mut self, hostname: Strng, addrs: Arc<[IpAddr]>, ttl: Duration, now: Instant) {
        let ttl = ttl.min(MAX_TTL);
        if ttl.is_zero() || self.capacity == 0 {
            self.entries.remove(&hostname);
            return;
        }
        if !self.entries.contains_key(&hostname) && self.entries.len() >= self.capacity {
            self.entries.retain(|_, c| c.expires > now);
            if self.entries.len() >= self.capacity {
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, c)| c.expires)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(
            hostname,
            Cached {
                addrs,
                expires: now + ttl,
            },
        );
    }

    /// Hostnames held (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::Record;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, UdpSocket};
    use tokio::sync::{Notify, Semaphore};

    use super::*;

    fn addrs(list: &[&str]) -> Arc<[IpAddr]> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn cache_entries_expire_with_their_capped_ttl() {
        let mut c = HostCache::new(8);
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        c.insert("a.example".into(), addrs(&["192.0.2.1"]), secs(10), t0);
        assert_eq!(c.get("a.example", t0), Some(addrs(&["192.0.2.1"])));
        assert_eq!(
            c.get("a.example", t0 + secs(9)),
            Some(addrs(&["192.0.2.1"]))
        );
        assert_eq!(c.get("a.example", t0 + secs(10)), None, "expired");
        assert_eq!(c.get("b.example", t0), None);
        // A zero TTL caches nothing (and forgets an older answer).
        c.insert("a.example".into(), addrs(&["192.0.2.2"]), secs(0), t0);
        assert_eq!(c.get("a.example", t0), None);
        // A day-long TTL is trusted for MAX_TTL only.
        c.insert(
            "long.example".into(),
            addrs(&["192.0.2.3"]),
            secs(86_400),
            t0,
        );
        assert!(c.get("long.example", t0 + MAX_TTL - secs(1)).is_some());
        assert!(c.get("long.example", t0 + MAX_TTL).is_none());
    }

    #[test]
    fn a_full_cache_drops_expired_entries_then_the_soonest_to_expire() {
        let secs = Duration::from_secs;
        let t0 = Instant::now();
        let mut c = HostCache::new(3);
        c.insert("short".into(), addrs(&["192.0.2.1"]), secs(5), t0);
        c.insert("mid".into(), addrs(&["192.0.2.2"]), secs(50), t0);
        c.insert("long".into(), addrs(&["192.0.2.3"]), secs(500), t0);
        // Refreshing a cached name never evicts another.
        c.insert("mid".into(), addrs(&["192.0.2.4"]), secs(60), t0);
        assert_eq!(c.len(), 3);
        // Full, nothing expired: the soonest to expire goes.
        c.insert("new".into(), addrs(&["192.0.2.5"]), secs(100), t0);
        assert_eq!(c.len(), 3);
        assert!(c.get("short", t0).is_none());
        assert!(c.get("mid", t0).is_some() && c.get("new", t0).is_some());
        // Later, "mid" has expired: it goes, however soon the others expire.
        c.insert(
            "later".into(),
            addrs(&["192.0.2.6"]),
            secs(1),
            t0 + secs(70),
        );
        assert_eq!(c.len(), 3);
        for live in ["long", "new", "later"] {
            assert!(c.get(live, t0 + secs(70)).is_some(), "{live}");
        }
        // Capacity 0 holds nothing.
        let mut none = HostCache::new(0);
        none.insert("x".into(), addrs(&["192.0.2.1"]), secs(5), t0);
        assert!(none.is_empty());
    }

    fn answer(rcode: ResponseCode, records: Vec<Record>) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7)
            .set_message_type(MessageType::Response)
            .set_response_code(rcode);
        m.add_answers(records);
        m.to_vec().unwrap()
    }

    #[test]
    fn answers_give_addresses_of_the_asked_type_and_the_smallest_ttl() {
        let name = Name::from_ascii("svc.example.").unwrap();
        let target = Name::from_ascii("real.example.").unwrap();
        let raw = answer(
            ResponseCode::NoError,
            vec![
                Record::from_rdata(name, 30, RData::CNAME(CNAME(target.clone()))),
                Record::from_rdata(target.clone(), 60, RData::A(A([192, 0, 2, 1].into()))),
                Record::from_rdata(target.clone(), 90, RData::A(A([192, 0, 2, 1].into()))),
                Record::from_rdata(target.clone(), 60, RData::A(A([192, 0, 2, 2].into()))),
                Record::from_rdata(
                    target,
                    60,
                    RData::AAAA(AAAA("2001:db8::1".parse().unwrap())),
                ),
            ],
        );
        assert_eq!(
            records(&raw, RecordType::A).unwrap(),
            Records {
                addrs: vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()],
                ttl: Duration::from_secs(30),
            }
        );
        assert_eq!(
            records(&raw, RecordType::AAAA).unwrap().addrs,
            vec!["2001:db8::1".parse::<IpAddr>().unwrap()]
        );
        // No data: NOERROR, nothing, capped TTL.
        let empty = records(&answer(ResponseCode::NoError, vec![]), RecordType::A).unwrap();
        assert_eq!((empty.addrs.len(), empty.ttl), (0, MAX_TTL));
        assert!(matches!(
            records(&answer(ResponseCode::NXDomain, vec![]), RecordType::A),
            Err(ResolveError::Rcode(_))
        ));
        assert!(records(b"\x00\x07garbage", RecordType::A).is_err());
        // Huge answers keep a bounded number of addresses.
        let many: Vec<Record> = (0..=255u8)
            .map(|i| {
                Record::from_rdata(
                    Name::from_ascii("svc.example.").unwrap(),
                    60,
                    RData::A(A([10, 0, 0, i].into())),
                )
            })
            .collect();
        let raw = answer(ResponseCode::NoError, many);
        assert_eq!(
            records(&raw, RecordType::A).unwrap().addrs.len(),
            MAX_ADDRESSES
        );
    }

    #[test]
    fn families_merge_and_fail_only_when_none_has_an_address() {
        let v4 = || {
            Ok(Records {
                addrs: vec!["192.0.2.1".parse().unwrap()],
                ttl: Duration::from_secs(60),
            })
        };
        let v6_empty = || {
            Ok(Records {
                addrs: Vec::new(),
                ttl: Duration::from_secs(5),
            })
        };
        // The empty family's TTL does not shorten the other's.
        assert_eq!(
            merge(vec![v4(), v6_empty()]).unwrap(),
            (addrs(&["192.0.2.1"]), Duration::from_secs(60))
        );
        assert!(merge(vec![v4(), Err(ResolveError::Rcode("SERVFAIL"))]).is_ok());
        assert!(matches!(
            merge(vec![v6_empty(), v6_empty()]),
            Err(ResolveError::NoAddress)
        ));
        assert!(matches!(
            merge(vec![Err(ResolveError::NoUpstream), v6_empty()]),
            Err(ResolveError::NoUpstream)
        ));
    }

    /// An upstream on loopback (UDP and TCP on one port): `svc.example` has one address per
    /// family, `big.example` is truncated over UDP and answered over TCP, the rest is
    /// NXDOMAIN. UDP answers wait for a permit from `gate`.
    struct Upstream {
        addr: SocketAddr,
        queries: Arc<AtomicUsize>,
        arrived: Arc<Notify>,
        gate: Arc<Semaphore>,
    }

    async fn upstream() -> Upstream {
        let (udp, tcp) = loop {
            let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = tcp.local_addr().unwrap().port();
            if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let u = Upstream {
            addr: udp.local_addr().unwrap(),
            queries: Arc::new(AtomicUsize::new(0)),
            arrived: Arc::new(Notify::new()),
            gate: Arc::new(Semaphore::new(0)),
        };
        let respond = |raw: &[u8], over_tcp: bool| -> Vec<u8> {
            let q = Message::from_vec(raw).unwrap();
            let query = q.queries()[0].clone();
            let mut m = Message::new();
            m.set_id(q.id()).set_message_type(MessageType::Response);
            m.add_query(query.clone());
            let name = query.name().to_ascii();
            match (name.as_str(), query.query_type()) {
                ("svc.example.", RecordType::A) => {
                    m.add_answer(Record::from_rdata(
                        query.name().clone(),
                        60,
                        RData::A(A([192, 0, 2, 1].into())),
                    ));
                }
                ("svc.example.", RecordType::AAAA) => {
                    m.add_answer(Record::from_rdata(
                        query.name().clone(),
                        60,
                        RData::AAAA(AAAA("2001:db8::1".parse().unwrap())),
                    ));
                }
                ("big.example.", RecordType::A) if over_tcp => {
                    m.add_answer(Record::from_rdata(
                        query.name().clone(),
                        60,
                        RData::A(A([192, 0, 2, 9].into())),
                    ));
                }
                ("big.example.", _) => {
                    m.set_truncated(true);
                }
                _ => {
                    m.set_response_code(ResponseCode::NXDomain);
                }
            }
            m.to_vec().unwrap()
        };
        let (queries, arrived, gate) = (u.queries.clone(), u.arrived.clone(), u.gate.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                queries.fetch_add(1, Ordering::SeqCst);
                arrived.notify_one();
                gate.acquire().await.unwrap().forget();
                let _ = udp.send_to(&respond(&buf[..n], false), peer).await;
            }
        });
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let len = s.read_u16().await.unwrap() as usize;
                let mut buf = vec![0u8; len];
                s.read_exact(&mut buf).await.unwrap();
                let out = respond(&buf, true);
                s.write_all(&(out.len() as u16).to_be_bytes())
                    .await
                    .unwrap();
                s.write_all(&out).await.unwrap();
            }
        });
        u
    }

    fn resolver(upstream: SocketAddr, ipv6: bool) -> Arc<HostResolver> {
        Arc::new(HostResolver::new(
            Sockets::for_tests(),
            Upstreams::new(vec![upstream]),
            ipv6,
        ))
    }

    /// Ten connections to one cold hostname cost one query; the next one is served from the
    /// cache.
    #[tokio::test]
    async fn concurrent_lookups_share_one_query_and_answers_are_cached() {
        let up = upstream().await;
        let r = resolver(up.addr, false);
        let host: Strng = "svc.example".into();
        let mut lookups = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (r, host) = (r.clone(), host.clone());
            lookups.spawn(async move { r.lookup(&host).await });
        }
        // On this single-threaded runtime every lookup has run up to its first wait before
        // the upstream can see the leader's datagram.
        up.arrived.notified().await;
        up.gate.add_permits(100);
        while let Some(res) = lookups.join_next().await {
            assert_eq!(res.unwrap().unwrap(), addrs(&["192.0.2.1"]));
        }
        assert_eq!(up.queries.load(Ordering::SeqCst), 1);
        assert_eq!(r.lookup(&host).await.unwrap(), addrs(&["192.0.2.1"]));
        assert_eq!(
            up.queries.load(Ordering::SeqCst),
            1,
            "served from the cache"
        );
        assert!(r.in_flight.lock().is_empty());
    }

    #[tokio::test]
    async fn both_families_truncation_and_failures() {
        let up = upstream().await;
        up.gate.add_permits(1000);
        let r = resolver(up.addr, true);
        let mut got = r.lookup(&"svc.example".into()).await.unwrap().to_vec();
        got.sort();
        assert_eq!(got, addrs(&["192.0.2.1", "2001:db8::1"]).to_vec());
        // Truncated over UDP: asked again over TCP.
        let r4 = resolver(up.addr, false);
        assert_eq!(
            r4.lookup(&"big.example".into()).await.unwrap(),
            addrs(&["192.0.2.9"])
        );
        // NXDOMAIN is an error and is not cached.
        let before = up.queries.load(Ordering::SeqCst);
        for _ in 0..2 {
            assert!(matches!(
                r4.lookup(&"missing.example".into()).await,
                Err(ResolveError::Rcode(_))
            ));
        }
        assert_eq!(up.queries.load(Ordering::SeqCst), before + 2);
        assert!(matches!(
            r4.lookup(&"bad name!".into()).await,
            Err(ResolveError::BadName)
        ));
        // No upstream at all.
        let none = HostResolver::new(
            resolver(up.addr, false).sockets.clone(),
            Upstreams::default(),
            false,
        );
        assert!(matches!(
            none.lookup(&"svc.example".into()).await,
            Err(ResolveError::NoUpstream)
        ));
    }
}
