//! The delta ADS client: connection lifecycle, backoff, ACK/NACK, readiness and on-demand
//! requests. Decoding and state updates are [`Applier`]'s.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prost_types::value::Kind;
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tracing::{debug, info, warn};

use super::apply::{Applied, Applier};
use super::metrics::{TerminationReason, XdsMetrics};
use super::proto::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use super::transport::{GrpcTransport, Transport};
use super::{ClientConfig, Error, ResourceType};
use crate::state::Writer;

/// First reconnect delay, and the delay after a benign termination.
const INITIAL_BACKOFF: Duration = Duration::from_millis(10);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// Outstanding requests (ACKs, on-demand subscriptions) buffered per stream.
const REQUEST_BUFFER: usize = 64;
/// On-demand requests waiting to reach the client task.
const DEMAND_BUFFER: usize = 256;
/// Names quoted in one "applied" log line.
const LOGGED_NAMES: usize = 20;

/// The xDS client. Build it, take its [`synced`](Client::synced) signal and
/// [`demander`](Client::demander), then [`run`](Client::run) it on the control runtime.
pub struct Client {
    transport: Box<dyn Transport>,
    applier: Applier,
    metrics: Arc<XdsMetrics>,
    node: Node,
    on_demand: bool,
    demand_timeout: Duration,
    /// Types whose first ACK is still awaited before `synced` turns true.
    unsynced: Vec<ResourceType>,
    synced: watch::Sender<bool>,
    demand_tx: mpsc::Sender<Demand>,
    demand_rx: mpsc::Receiver<Demand>,
    /// On-demand names awaiting an answer → their waiters.
    waiters: HashMap<String, Vec<oneshot::Sender<()>>>,
    backoff: Backoff,
}

/// Requests addresses on demand (`XDS_ON_DEMAND`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Demander {
    tx: mpsc::Sender<Demand>,
    timeout: Duration,
}

#[derive(Debug)]
struct Demand {
    name: String,
    done: oneshot::Sender<()>,
}

impl Demander {
    /// Asks the control plane for the address resource named `key` (`network/IP`, a workload
    /// uid, or `namespace/hostname`) and waits, at most the configured timeout, for the answer.
    /// Returns true once a response naming the key (added or removed) has been applied to the
    /// state — look it up again — and false on timeout or when the client is gone.
    pub async fn demand(&self, key: &str) -> bool {
        let (done, answered) = oneshot::channel();
        let ask = async {
            let demand = Demand {
                name: key.to_owned(),
                done,
            };
            self.tx.send(demand).await.is_ok() && answered.await.is_ok()
        };
        tokio::time::timeout(self.timeout, ask)
            .await
            .unwrap_or(false)
    }
}

/// How a stream ended.
enum Ended {
    /// The connection could not be set up.
    Connect(Error),
    /// The server closed the stream cleanly.
    Complete { responses: u64 },
    /// The server (or transport) failed the stream.
    Status {
        status: Box<tonic::Status>,
        responses: u64,
    },
    /// A local failure.
    Local(Error),
}

impl Client {
    /// A client for `config` that applies what it receives to `writer` and counts into
    /// `metrics`.
    pub fn new(
        config: ClientConfig,
        writer: Writer,
        metrics: Arc<XdsMetrics>,
    ) -> Result<Client, Error> {
        let transport = GrpcTransport::new(&config)?;
        Ok(Client::with_transport(
            config,
            writer,
            Box::new(transport),
            metrics,
        ))
    }

    pub(crate) fn with_transport(
        config: ClientConfig,
        writer: Writer,
        transport: Box<dyn Transport>,
        metrics: Arc<XdsMetrics>,
    ) -> Client {
        let (demand_tx, demand_rx) = mpsc::channel(DEMAND_BUFFER);
        let unsynced = ResourceType::ALL
            .into_iter()
            .filter(|k| !(config.on_demand && *k == ResourceType::Address))
            .collect();
        Client {
            transport,
            applier: Applier::new(writer, metrics.clone()),
            metrics,
            node: node(&config),
            on_demand: config.on_demand,
            demand_timeout: config.demand_timeout,
            unsynced,
            synced: watch::channel(false).0,
            demand_tx,
            demand_rx,
            waiters: HashMap::new(),
            backoff: Backoff::new(),
        }
    }

    /// Becomes (and stays) true once the first response of every subscribed type has been
    /// ACKed: the state then holds the control plane's view. On-demand addresses do not count.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    /// The on-demand requester, when the client runs in on-demand mode.
    pub fn demander(&self) -> Option<Demander> {
        self.on_demand.then(|| Demander {
            tx: self.demand_tx.clone(),
            timeout: self.demand_timeout,
        })
    }

    /// The client's counters.
    pub fn metrics(&self) -> Arc<XdsMetrics> {
        self.metrics.clone()
    }

    /// Runs forever: connect, apply and acknowledge responses, reconnect on failure. The
    /// state keeps the last applied generation while disconnected.
    pub async fn run(mut self) {
        loop {
            let ended = self.session().await;
            let (reason, delay) = self.backoff.after(&ended);
            self.metrics.record_termination(reason);
            match &ended {
                Ended::Connect(e) => {
                    warn!(error = %e, retry_in = ?delay, "xDS connection failed")
                }
                Ended::Complete { .. } => info!(retry_in = ?delay, "xDS stream closed by server"),
                Ended::Status { status, .. } if reason == TerminationReason::Reconnect => {
                    info!(code = ?status.code(), message = status.message(), retry_in = ?delay, "xDS stream ended; reconnecting")
                }
                Ended::Status { status, .. } => {
                    warn!(code = ?status.code(), message = status.message(), retry_in = ?delay, "xDS stream failed")
                }
                Ended::Local(e) => warn!(error = %e, retry_in = ?delay, "xDS stream failed"),
            }
            self.pause(delay).await;
        }
    }

    /// Sleeps `delay`, still recording on-demand requests (sent on the next stream).
    async fn pause(&mut self, delay: Duration) {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return,
                Some(d) = self.demand_rx.recv() => { let _ = self.demanded(d); }
            }
        }
    }

    async fn session(&mut self) -> Ended {
        let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
        for req in self.initial_requests() {
            debug!(
                type_url = req.type_url,
                resources = req.initial_resource_versions.len(),
                "sending initial xDS request"
            );
            // The buffer holds more than the two initial requests.
            let _ = tx.try_send(req);
        }
        let mut responses = match self.transport.open(ReceiverStream::new(rx)).await {
            Ok(s) => s,
            Err(Error::Status(status)) => {
                return Ended::Status {
                    status,
                    responses: 0,
                }
            }
            Err(e @ (Error::Connect(_) | Error::Channel(_))) => return Ended::Connect(e),
            Err(e) => return Ended::Local(e),
        };
        info!("xDS stream established");
        let mut received = 0;
        loop {
            let request = tokio::select! {
                Some(d) = self.demand_rx.recv() => self.demanded(d),
                msg = responses.next() => match msg {
                    None => return Ended::Complete { responses: received },
                    Some(Err(status)) => {
                        return Ended::Status { status: Box::new(status), responses: received }
                    }
                    Some(Ok(response)) => {
                        received += 1;
                        Some(self.handle(response))
                    }
                },
            };
            if let Some(request) = request {
                if tx.send(request).await.is_err() {
                    return Ended::Local(Error::RequestStreamClosed);
                }
            }
        }
    }

    /// One initial request per type, Address first: wildcard, or in on-demand mode
    /// "subscribe to nothing" plus the names demanded so far. Each carries the node and the
    /// versions of everything accepted before.
    fn initial_requests(&self) -> Vec<DeltaDiscoveryRequest> {
        ResourceType::ALL
            .into_iter()
            .map(|kind| {
                let versions = self.applier.resource_versions(kind);
                let mut req = DeltaDiscoveryRequest {
                    node: Some(self.node.clone()),
                    type_url: kind.type_url().to_owned(),
                    ..Default::default()
                };
                if self.on_demand && kind == ResourceType::Address {
                    // xDS has no "subscribe to nothing": subscribing to and unsubscribing
                    // from the wildcard in one request means exactly that.
                    req.resource_names_subscribe = std::iter::once("*".to_owned())
                        .chain(versions.keys().cloned())
                        .collect();
                    req.resource_names_unsubscribe = vec!["*".to_owned()];
                }
                req.initial_resource_versions = versions;
                req
            })
            .collect()
    }

    /// Applies a response and returns its ACK/NACK.
    fn handle(&mut self, response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        // Every name only while someone waits for one; else the few the log shows.
        self.applier.limit_answered(match self.waiters.is_empty() {
            true => LOGGED_NAMES,
            false => usize::MAX,
        });
        let applied = self.applier.apply(response);
        log_applied(&applied);
        if !self.waiters.is_empty() {
            for name in &applied.answered {
                if let Some(waiters) = self.waiters.remove(name) {
                    waiters.into_iter().for_each(|w| {
                        let _ = w.send(());
                    });
                }
            }
        }
        if applied.is_ack() {
            if let Some(kind) = applied.kind {
                self.unsynced.retain(|k| *k != kind);
                if self.unsynced.is_empty() && !*self.synced.borrow() {
                    info!("xDS synced: first response of every type acknowledged");
                    self.synced.send_replace(true);
                }
            }
        }
        applied.reply()
    }

    /// Records an on-demand request; returns the subscription to send, if any.
    fn demanded(&mut self, demand: Demand) -> Option<DeltaDiscoveryRequest> {
        // Forget waiters that gave up (timed out).
        self.waiters.retain(|_, w| {
            w.retain(|tx| !tx.is_closed());
            !w.is_empty()
        });
        if self.applier.has(ResourceType::Address, &demand.name) {
            let _ = demand.done.send(());
            return None;
        }
        debug!(name = demand.name, "on-demand xDS request");
        self.applier
            .note_demanded(ResourceType::Address, &demand.name);
        let first = !self.waiters.contains_key(&demand.name);
        self.waiters
            .entry(demand.name.clone())
            .or_default()
            .push(demand.done);
        first.then(|| DeltaDiscoveryRequest {
            type_url: ResourceType::Address.type_url().to_owned(),
            resource_names_subscribe: vec![demand.name],
            ..Default::default()
        })
    }
}

fn log_applied(applied: &Applied) {
    let Some(kind) = applied.kind else {
        warn!(
            type_url = applied.type_url,
            "xDS response of an unknown type; ACKing it"
        );
        return;
    };
    let names: Vec<&str> = applied
        .answered
        .iter()
        .take(LOGGED_NAMES)
        .map(String::as_str)
        .collect();
    debug!(
        ?kind,
        nonce = applied.nonce,
        updated = applied.updated,
        removed = applied.removed,
        rejected = applied.rejected.len(),
        ?names,
        "xDS response applied"
    );
    if let Some(reason) = applied.nack_message() {
        warn!(
            ?kind,
            nonce = applied.nonce,
            error = reason,
            "rejecting xDS resources (NACK)"
        );
    }
}

/// A JSON value as a protobuf `Value` (for `ISTIO_METAJSON_*` node metadata).
fn json_value(v: &serde_json::Value) -> prost_types::Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

fn node(config: &ClientConfig) -> Node {
    use super::proto::envoy::config::core::v3::node::UserAgentVersionType;
    let mut fields: BTreeMap<String, prost_types::Value> = config
        .node_metadata
        .iter()
        .map(|(k, v)| {
            let value = prost_types::Value {
                kind: Some(Kind::StringValue(v.clone())),
            };
            (k.clone(), value)
        })
        .collect();
    for (k, v) in &config.node_metadata_json {
        fields.insert(k.clone(), json_value(v));
    }
    Node {
        id: config.node_id.clone(),
        cluster: String::new(),
        metadata: Some(prost_types::Struct { fields }),
        user_agent_name: "ztun".to_owned(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            crate::VERSION.to_owned(),
        )),
    }
}

/// Capped exponential backoff with jitter: each failure doubles the base delay (10 ms up to
/// 15 s) and waits a random time in [base/2, base]; a stream that delivered responses resets
/// it. Benign terminations reconnect after 10 ms.
pub(crate) struct Backoff {
    base: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            base: INITIAL_BACKOFF,
        }
    }

    /// The termination reason and the delay before reconnecting.
    fn after(&mut self, ended: &Ended) -> (TerminationReason, Duration) {
        match ended {
            Ended::Connect(_) => (TerminationReason::ConnectionError, self.grow()),
            Ended::Complete { responses } => {
                if *responses > 0 {
                    self.reset();
                    (TerminationReason::Complete, INITIAL_BACKOFF)
                } else {
                    // A server that closes at once must not make us spin.
                    (TerminationReason::Complete, self.grow())
                }
            }
            Ended::Status { status, responses } => {
                if *responses > 0 {
                    self.reset();
                }
                if is_benign(status) {
                    (TerminationReason::Reconnect, INITIAL_BACKOFF)
                } else {
                    (TerminationReason::Error, self.grow())
                }
            }
            Ended::Local(_) => (TerminationReason::Error, INITIAL_BACKOFF),
        }
    }

    /// Doubles the base (capped) and returns a jittered delay in [base/2, base].
    pub(crate) fn grow(&mut self) -> Duration {
        self.base = (self.base * 2).min(MAX_BACKOFF);
        let half = self.base / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    fn reset(&mut self) {
        self.base = INITIAL_BACKOFF;
    }
}

/// Terminations that mean "reconnect now" rather than "something is wrong": cancellation,
/// deadline, unknown (e.g. a reset stream), or an HTTP/2 GOAWAY (server restart or
/// connection-age limit).
fn is_benign(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
        Code::Unavailable => caused_by_goaway(status),
        _ => false,
    }
}

fn caused_by_goaway(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_go_away();
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod node_tests {
    use super::*;

    #[test]
    fn json_metadata_keeps_its_structure() {
        let v: serde_json::Value = serde_json::json!({"labels": {"app": "x"}, "ports": [15008, 15021], "on": true, "none": null});
        let p = json_value(&v);
        let Some(Kind::StructValue(s)) = p.kind else {
            panic!("not a struct: {p:?}")
        };
        let Some(Kind::StructValue(labels)) = &s.fields["labels"].kind else {
            panic!("labels")
        };
        assert_eq!(
            labels.fields["app"].kind,
            Some(Kind::StringValue("x".into()))
        );
        let Some(Kind::ListValue(ports)) = &s.fields["ports"].kind else {
            panic!("ports")
        };
        assert_eq!(ports.values[1].kind, Some(Kind::NumberValue(15021.0)));
        assert_eq!(s.fields["on"].kind, Some(Kind::BoolValue(true)));
        assert_eq!(s.fields["none"].kind, Some(Kind::NullValue(0)));
    }
}
