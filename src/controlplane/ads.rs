//! The delta ADS server: one task per stream, pushing only what each client lacks.
//!
//! A stream opens only for a caller with a bearer token of the `--tokens` file
//! ([`super::auth`]); anyone else gets `UNAUTHENTICATED` and no resource.
//!
//! Per stream and type the session tracks the subscription (wildcard, or explicit names for
//! on-demand clients) and what the client has (`name → version`, seeded from
//! `initial_resource_versions`; once a wildcard subscription is pushed, simply "this
//! generation", shared with every other client). A response goes out when a subscription starts (even if
//! empty, so clients can tell they are synced), when a client subscribes to more names, and
//! when the mesh changes; it carries exactly the resources whose version differs and the
//! removals of names the client has that no longer exist. NACKs are logged; the server does
//! not resend (a fixed resource arrives with the next change). Responses are framed from the
//! generation's shared encodings and written in chunks ([`super::wire`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Semaphore};
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use super::auth::Tokens;
use super::store::MeshResources;
use super::wire::{self, Response, ResponseBody};
use crate::control::xds::proto::DeltaDiscoveryRequest;
use crate::control::xds::ResourceType;

/// Responses buffered per stream before the session waits for the client to read.
const RESPONSE_BUFFER: usize = 16;
/// The wildcard resource name.
const WILDCARD: &str = "*";

/// The ADS service. Cheap to clone; every stream reads the same mesh generations.
#[derive(Clone)]
pub struct Ads {
    mesh: watch::Receiver<Arc<MeshResources>>,
    auth: XdsAuth,
    clients: Arc<AtomicUsize>,
    /// Turns true when the server shuts down: every stream ends (clients reconnect).
    stopping: watch::Sender<bool>,
    /// Full scans allowed at once (see [`push_rescanning`]).
    pub(crate) scans: Arc<Semaphore>,
}

/// Who may open a stream.
#[derive(Clone)]
pub enum XdsAuth {
    /// Callers whose bearer token is in the tokens file (the CA's; with no file, nobody).
    Tokens(Arc<Tokens>),
    /// Anyone who completes the TLS handshake receives the whole mesh
    /// (`--dangerous-unauthenticated-xds`).
    DangerousUnauthenticated,
}

/// The remote address of a connection, put in request extensions by the TLS acceptor.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Ads {
    /// Serves the generations published on `mesh` to the callers `auth` lets in.
    pub fn new(mesh: watch::Receiver<Arc<MeshResources>>, auth: XdsAuth) -> Ads {
        Ads {
            mesh,
            auth,
            clients: Arc::new(AtomicUsize::new(0)),
            stopping: watch::channel(false).0,
            scans: Arc::new(Semaphore::new(scan_permits())),
        }
    }

    /// Ends every open stream (cleanly: clients see the end of the stream and reconnect),
    /// so a graceful server shutdown does not wait for clients that never hang up.
    pub fn stop_streams(&self) {
        self.stopping.send_replace(true);
    }

    /// Streams currently open.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Opens a `DeltaAggregatedResources` stream from a caller with these request headers:
    /// the body of its response, or why it is refused (nothing else is sent then).
    pub fn open(
        &self,
        headers: &http::HeaderMap,
        peer: Option<PeerAddr>,
        requests: Streaming<DeltaDiscoveryRequest>,
    ) -> Result<ResponseBody, Status> {
        let peer = peer.map_or_else(|| "unknown".to_owned(), |p| p.0.to_string());
        // Before anything is sent: an unauthenticated caller gets a status, not a stream.
        let authenticated = match &self.auth {
            XdsAuth::Tokens(tokens) => match tokens.authenticate_request(headers) {
                Ok(node) => Some(node),
                Err(refusal) => {
                    warn!(peer, reason = %refusal, "xDS stream refused");
                    return Err(refusal.status());
                }
            },
            XdsAuth::DangerousUnauthenticated => None,
        };
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let session = Session {
            peer,
            authenticated,
            node: String::new(),
            mesh: self.mesh.clone(),
            tx,
            subscriptions: [None, None],
            nonce: 0,
            generation: 0,
            stopping: self.stopping.subscribe(),
            scans: self.scans.clone(),
        };
        let clients = self.clients.clone();
        tokio::spawn(async move {
            clients.fetch_add(1, Ordering::Relaxed);
            session.run(requests, &clients).await;
            clients.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(ResponseBody::new(rx))
    }
}

/// One client's stream.
struct Session {
    peer: String,
    /// The node whose bearer token opened the stream (`None` without authentication).
    authenticated: Option<Arc<str>>,
    /// The node id the client sent (empty until its first request).
    node: String,
    mesh: watch::Receiver<Arc<MeshResources>>,
    tx: mpsc::Sender<Result<Response, Status>>,
    subscriptions: [Option<Subscription>; 2],
    nonce: u64,
    /// The mesh generation the subscriptions were last brought up to date with.
    generation: u64,
    stopping: watch::Receiver<bool>,
    scans: Arc<Semaphore>,
}

/// One type's subscription on a stream.
#[derive(Debug, Default)]
pub(crate) struct Subscription {
    /// Every resource of the type.
    pub(crate) wildcard: bool,
    /// Explicitly requested names or aliases (on-demand clients).
    pub(crate) names: HashSet<String>,
    /// What the client has: resource name → version, unless `in_sync`. Names and versions of
    /// resources in the mesh are the generation's own (shared, not copied per client).
    pub(crate) sent: HashMap<Arc<str>, Arc<str>>,
    /// A wildcard subscription after a push: the client has exactly this generation's
    /// resources of the type, and `sent` is empty. A synced client costs no memory per
    /// resource (the generation is shared with every other client and the server).
    pub(crate) in_sync: Option<Arc<MeshResources>>,
    /// Requested aliases answered with a resource (their removal is reported when they
    /// stop resolving).
    pub(crate) aliases: HashSet<String>,
}

/// The resources and removals one response carries.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Push {
    /// Encoded `Resource` messages (the mesh's shared bytes, or a copy with an alias added).
    pub(crate) resources: Vec<Bytes>,
    pub(crate) removed: Vec<String>,
}

impl Subscription {
    /// The subscription a stream's first request of a type opens. An empty subscribe list
    /// (legacy) or `*` means wildcard; `*` in the unsubscribe list cancels it ("subscribe to
    /// nothing", what on-demand clients send). The client's initial versions are what it has;
    /// for a non-wildcard subscription their names stay subscribed.
    pub(crate) fn open(req: &DeltaDiscoveryRequest) -> Subscription {
        let mut sub = Subscription {
            wildcard: req.resource_names_subscribe.is_empty(),
            ..Default::default()
        };
        sub.change(req);
        sub.sent = req
            .initial_resource_versions
            .iter()
            .map(|(k, v)| (Arc::from(k.as_str()), Arc::from(v.as_str())))
            .collect();
        if !sub.wildcard {
            sub.names
                .extend(req.initial_resource_versions.keys().cloned());
        }
        sub
    }

    /// Applies a request's subscribe/unsubscribe lists; returns the names newly subscribed.
    pub(crate) fn change(&mut self, req: &DeltaDiscoveryRequest) -> Vec<String> {
        let mut added = Vec::new();
        for name in &req.resource_names_subscribe {
            if name == WILDCARD {
                self.wildcard = true;
            } else {
                // Subscribing again to a name asks for the resource again.
                self.names.insert(name.clone());
                added.push(name.clone());
            }
        }
        let mut dropped: HashSet<&str> = HashSet::new();
        for name in &req.resource_names_unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
            } else {
                self.names.remove(name);
                dropped.insert(name);
            }
        }
        // One pass, not one per unsubscribed name: a request may name millions.
        if !dropped.is_empty() {
            added.retain(|n| !dropped.contains(n.as_str()));
        }
        added
    }

    /// Brings the client up to date with `mesh`. `since` (the mesh's own delta, valid when the
    /// client was in sync with the previous generation) limits the wildcard scan to the
    /// changed names; `forced` names are sent even if the client has them.
    pub(crate) fn push(
        &mut self,
        kind: ResourceType,
        mesh: &Arc<MeshResources>,
        since: Option<&super::store::Delta>,
        forced: &[String],
    ) -> Push {
        let mut push = Push::default();
        if self.wildcard {
            self.push_wildcard(kind, mesh, since, &mut push);
        } else if let Some(had) = self.in_sync.take() {
            // The wildcard was cancelled: what the client has is tracked by name again.
            self.sent = had
                .resources(kind)
                .iter()
                .map(|(name, e)| (name.clone(), e.version.clone()))
                .collect();
        }
        // Names already answered in this push (two keys may resolve to one resource).
        let mut answered: HashSet<Arc<str>> = HashSet::new();
        // Explicit names (aliases resolve to the resource they name).
        let names: Vec<String> = self.names.iter().cloned().collect();
        let forced: HashSet<&str> = forced.iter().map(String::as_str).collect();
        for key in names {
            let force = forced.contains(key.as_str());
            match mesh.resolve(kind, &key) {
                Some(name) => {
                    let alias = (*name != *key).then_some(key.as_str());
                    if alias.is_some() {
                        // What the client has is recorded under the resource's own name.
                        self.sent.remove(key.as_str());
                        self.aliases.insert(key.clone());
                    }
                    // A wildcard subscription has every resource already.
                    if !(self.wildcard || answered.contains(&name)) || force {
                        self.sync_one(kind, mesh, &name, alias, force, &mut push);
                    }
                    answered.insert(name);
                }
                None => {
                    // Tell the client the key does not exist (once, or when asked again).
                    let had = self.sent.remove(key.as_str()).is_some() | self.aliases.remove(&key);
                    if force || had {
                        push.removed.push(key);
                    }
                }
            }
        }
        // Removed resources an explicit name used to resolve to.
        if !self.wildcard {
            let gone: Vec<Arc<str>> = self
                .sent
                .keys()
                .filter(|n| mesh.resolve(kind, n).is_none())
                .cloned()
                .collect();
            for name in gone {
                self.sent.remove(&name);
                push.removed.push(name.to_string());
            }
        }
        push.removed.sort();
        push.removed.dedup();
        push
    }

    /// The wildcard part of [`Subscription::push`]: every resource whose version differs from
    /// what the client has, and the removal of what it has that is gone (with `since`, of the
    /// changed names only). Afterwards the client has exactly `mesh`.
    fn push_wildcard(
        &mut self,
        kind: ResourceType,
        mesh: &Arc<MeshResources>,
        since: Option<&super::store::Delta>,
        push: &mut Push,
    ) {
        let before = self.in_sync.take();
        let sent = std::mem::take(&mut self.sent);
        let have = |name: &str| -> Option<&Arc<str>> {
            match &before {
                Some(had) => had.get(kind, name).map(|e| &e.version),
                None => sent.get(name),
            }
        };
        let check = |name: &str, push: &mut Push| match mesh.get(kind, name) {
            Some(entry) => {
                if have(name) != Some(&entry.version) {
                    push.resources.push(entry.encoded.clone());
                }
            }
            None => {
                if have(name).is_some() {
                    push.removed.push(name.to_owned());
                }
            }
        };
        // The mesh's delta is only valid if the client had the previous generation.
        let in_step = before
            .as_ref()
            .is_some_and(|had| had.generation() + 1 == mesh.generation());
        match since.filter(|_| in_step) {
            Some(delta) => {
                for name in delta.updated.iter().chain(&delta.removed) {
                    check(name, push);
                }
            }
            None => {
                // Each entry as the scan meets it: no lookup of a name in the map it came from.
                for (name, entry) in mesh.resources(kind) {
                    if have(name) != Some(&entry.version) {
                        push.resources.push(entry.encoded.clone());
                    }
                }
                let had: Box<dyn Iterator<Item = &Arc<str>>> = match &before {
                    Some(had) => Box::new(had.resources(kind).keys()),
                    None => Box::new(sent.keys()),
                };
                for name in had {
                    if mesh.get(kind, name).is_none() {
                        push.removed.push(name.to_string());
                    }
                }
            }
        }
        self.in_sync = Some(mesh.clone());
    }

    /// Adds `name` to the push if the client lacks its current version (or `force`), or its
    /// removal if it no longer exists and the client has it. (With `in_sync`, the client
    /// already has every resource of the mesh: nothing to record.)
    fn sync_one(
        &mut self,
        kind: ResourceType,
        mesh: &MeshResources,
        name: &str,
        alias: Option<&str>,
        force: bool,
        push: &mut Push,
    ) {
        let tracked = self.in_sync.is_none();
        match mesh.get_named(kind, name) {
            Some((name, entry)) => {
                if force || (tracked && self.sent.get(name) != Some(&entry.version)) {
                    if tracked {
                        self.sent.insert(name.clone(), entry.version.clone());
                    }
                    push.resources.push(match alias {
                        Some(alias) => wire::with_alias(&entry.encoded, alias),
                        None => entry.encoded.clone(),
                    });
                }
            }
            None => {
                if self.sent.remove(name).is_some() {
                    push.removed.push(name.to_owned());
                }
            }
        }
    }
}

impl Session {
    async fn run(mut self, mut requests: Streaming<DeltaDiscoveryRequest>, clients: &AtomicUsize) {
        loop {
            let ok = tokio::select! {
                req = requests.message() => match req {
                    Ok(Some(req)) => self.request(req).await,
                    Ok(None) => break,
                    Err(status) => {
                        debug!(peer = self.peer, node = self.node, code = ?status.code(), "xDS request stream failed");
                        break;
                    }
                },
                changed = self.mesh.changed() => match changed {
                    Ok(()) => self.mesh_changed().await,
                    Err(_) => break,
                },
                _ = self.tx.closed() => break,
                _ = stopped(&mut self.stopping) => break,
            };
            if !ok {
                break;
            }
        }
        info!(
            peer = self.peer,
            node = self.node,
            clients = clients.load(Ordering::Relaxed).saturating_sub(1),
            "xDS client disconnected"
        );
    }

    /// Handles one request; false when the client is gone.
    async fn request(&mut self, req: DeltaDiscoveryRequest) -> bool {
        if let Some(node) = &req.node {
            if self.node.is_empty() {
                self.node = node.id.clone();
                info!(
                    peer = self.peer,
                    node = self.node,
                    token_node = self.authenticated.as_deref(),
                    "xDS client connected"
                );
            }
        }
        let Some(kind) = ResourceType::from_type_url(&req.type_url) else {
            warn!(
                peer = self.peer,
                node = self.node,
                type_url = req.type_url,
                "request for an unknown type; ignoring"
            );
            return true;
        };
        if !req.response_nonce.is_empty() {
            match &req.error_detail {
                Some(e) => warn!(
                    peer = self.peer,
                    node = self.node,
                    ?kind,
                    nonce = req.response_nonce,
                    error = e.message,
                    "client NACKed"
                ),
                None => debug!(
                    peer = self.peer,
                    node = self.node,
                    ?kind,
                    nonce = req.response_nonce,
                    "client ACKed"
                ),
            }
        }
        let mesh = self.mesh.borrow_and_update().clone();
        // A mesh change seen here is pushed to every type below, not only this one.
        if self.generation != mesh.generation()
            && self.generation != 0
            && !self.mesh_push(&mesh).await
        {
            return false;
        }
        self.generation = mesh.generation();
        let slot = &mut self.subscriptions[kind as usize];
        let (push, opened) = match slot {
            None => {
                let sub = slot.insert(Subscription::open(&req));
                debug!(
                    peer = self.peer,
                    ?kind,
                    wildcard = sub.wildcard,
                    names = sub.names.len(),
                    known = sub.sent.len(),
                    "subscription opened"
                );
                let gone = left(&self.tx, &mut self.stopping);
                let Some(push) =
                    push_rescanning(sub, kind, &mesh, Vec::new(), &self.scans, gone).await
                else {
                    return false;
                };
                (push, true)
            }
            Some(sub) => {
                let added = sub.change(&req);
                if added.is_empty() {
                    return true;
                }
                let gone = left(&self.tx, &mut self.stopping);
                let Some(push) = push_rescanning(sub, kind, &mesh, added, &self.scans, gone).await
                else {
                    return false;
                };
                (push, false)
            }
        };
        // A new subscription is always answered, even with nothing, so the client knows it
        // has everything.
        if opened || !push.resources.is_empty() || !push.removed.is_empty() {
            return self.send(kind, &mesh, push).await;
        }
        true
    }

    async fn mesh_changed(&mut self) -> bool {
        let mesh = self.mesh.borrow_and_update().clone();
        self.mesh_push(&mesh).await
    }

    /// Pushes what changed in `mesh` to every open subscription.
    async fn mesh_push(&mut self, mesh: &Arc<MeshResources>) -> bool {
        let in_step = self.generation + 1 == mesh.generation();
        self.generation = mesh.generation();
        for kind in ResourceType::ALL {
            let Some(sub) = &mut self.subscriptions[kind as usize] else {
                continue;
            };
            let push = match mesh.delta(kind).filter(|_| in_step) {
                Some(since) => sub.push(kind, mesh, Some(since), &[]),
                None => {
                    let gone = left(&self.tx, &mut self.stopping);
                    match push_rescanning(sub, kind, mesh, Vec::new(), &self.scans, gone).await {
                        Some(push) => push,
                        None => return false,
                    }
                }
            };
            if (!push.resources.is_empty() || !push.removed.is_empty())
                && !self.send(kind, mesh, push).await
            {
                return false;
            }
        }
        true
    }

    async fn send(&mut self, kind: ResourceType, mesh: &MeshResources, push: Push) -> bool {
        self.nonce += 1;
        debug!(
            peer = self.peer,
            node = self.node,
            ?kind,
            nonce = self.nonce,
            resources = push.resources.len(),
            removed = push.removed.len(),
            "xDS push"
        );
        let response = Response::new(
            &mesh.generation().to_string(),
            kind.type_url(),
            &self.nonce.to_string(),
            &push.removed,
            push.resources,
        );
        // A response too large for gRPC ends the stream with that status.
        let failed = response.is_err();
        self.tx.send(response).await.is_ok() && !failed
    }
}

/// Full scans at once: half the CPUs (at least one), so the runtime's workers keep the
/// other half for the connections.
fn scan_permits() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// [`Subscription::push`] without the mesh's own delta: for a wildcard subscription a scan of
/// every resource, taking each one the client lacks (all 60 000 for a new client of a
/// 50 000-workload mesh; a reference to the shared encoding each, but still a pass over the
/// whole mesh). Such scans run on the blocking pool, a few at a time
/// (`scans`): run on the runtime, a hundred clients subscribing at once kept its workers busy
/// for seconds, the connections' tasks went unpolled, HTTP/2 keepalive answers were not read
/// in time and clients were dropped in the middle of their first response; run on the
/// blocking pool without a bound, a hundred scanning threads left the workers a fiftieth of
/// the CPU. Explicit names (on-demand clients) are few and stay on the runtime.
async fn push_rescanning(
    sub: &mut Subscription,
    kind: ResourceType,
    mesh: &Arc<MeshResources>,
    forced: Vec<String>,
    scans: &Arc<Semaphore>,
    gone: impl std::future::Future<Output = ()>,
) -> Option<Push> {
    if !sub.wildcard {
        return Some(sub.push(kind, mesh, None, &forced));
    }
    // A client that leaves (or a server that stops) while waiting for a permit is let go:
    // its scan would be for nobody, and every client queued behind it would wait for it.
    let permit = tokio::select! {
        permit = scans.clone().acquire_owned() => permit,
        () = gone => return None,
    };
    let Ok(permit) = permit else {
        // Closed: never happens (the semaphore is never closed).
        return Some(sub.push(kind, mesh, None, &forced));
    };
    let mut owned = std::mem::take(sub);
    let mesh = mesh.clone();
    let scan = tokio::task::spawn_blocking(move || {
        let push = owned.push(kind, &mesh, None, &forced);
        drop(permit);
        (owned, push)
    });
    match scan.await {
        Ok((owned, push)) => {
            *sub = owned;
            Some(push)
        }
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: the runtime is shutting down, and the stream with it.
        Err(_) => None,
    }
}

/// Completes when the client is gone (its response stream dropped) or the server stops.
async fn left(tx: &mpsc::Sender<Result<Response, Status>>, stopping: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tx.closed() => {}
        () = stopped(stopping) => {}
    }
}

async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // An error means the server is gone: stop too.
    let _ = stopping.wait_for(|s| *s).await;
}
