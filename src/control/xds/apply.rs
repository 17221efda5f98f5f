//! Applying one delta response to the mesh state: decode → validate → one snapshot.
//!
//! Synchronous and I/O-free, so it is the unit the tests and the scale benchmark drive. Each
//! response becomes at most one published generation: readers never see half a response.
//! A resource that fails to decode or validate is rejected alone (and NACKed by name); its
//! previous accepted version, if any, stays in force. Removals are by resource name.
//!
//! Services and workloads may arrive in any order: workloads carry their own service
//! memberships, and the snapshot derives endpoints from them, so a workload that names a
//! not-yet-known service becomes its endpoint as soon as the service arrives.

use std::collections::BTreeMap;

// foldhash (hashbrown's default hasher) instead of std's SipHash: the names of a full mesh
// are hashed on every response, and SipHash was the largest single cost of applying one.
use hashbrown::HashMap;
use std::sync::Arc;

use prost::Message;

use super::metrics::XdsMetrics;
use super::proto::istio::{security as sec, workload as wl};
use super::proto::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource, Status};
use super::translate::{self, AddressResource, TranslateError};
use super::ResourceType;
use crate::state::model::Strng;
use crate::state::{SharedStrings, SnapshotBuilder, Writer};

/// Resources in one response from which the heap's free pages are handed back afterwards
/// (a first push of a large mesh leaves tens of MB of decoded messages freed but resident).
const TRIM_AFTER: usize = 1000;

/// gRPC `INVALID_ARGUMENT`, the code a NACK carries.
const INVALID_ARGUMENT: i32 = 3;

/// The client-side xDS cache: which resources were accepted (name → version and state key),
/// and the state writer they are applied to.
pub struct Applier {
    writer: Writer,
    known: [HashMap<Strng, Known>; 2],
    metrics: Arc<XdsMetrics>,
    /// At most this many names go into [`Applied::answered`].
    answered_limit: usize,
    /// The last address resource decoded: the next one is decoded into it, reusing its
    /// strings' buffers ([`decode_reusing`]).
    scratch: wl::Address,
}

/// An accepted (or demanded) resource.
#[derive(Debug, Clone)]
struct Known {
    /// Its version; empty for an on-demand name requested but not received yet.
    version: Strng,
    /// Where it lives in the state, if it was received.
    key: Option<StateKey>,
}

/// The state key of an accepted resource (names and keys usually match, but the state is
/// keyed by content, so a server that names resources differently still removes correctly).
#[derive(Debug, Clone, PartialEq, Eq)]
enum StateKey {
    Workload(Strng),
    Service(Strng),
    Policy(Strng),
}

/// What applying one response did, and the reply it calls for.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The response's type URL.
    pub type_url: String,
    /// The response's nonce.
    pub nonce: String,
    /// The resource type, or `None` for a type this client does not handle (ACKed anyway).
    pub kind: Option<ResourceType>,
    /// Resources added or updated.
    pub updated: usize,
    /// Names removed.
    pub removed: usize,
    /// Resources rejected, in response order.
    pub rejected: Vec<Rejection>,
    /// Every name and alias the response mentioned (added, updated or removed): what
    /// on-demand waiters are woken by. Only the first ones when the applier was told so
    /// ([`Applier::limit_answered`]).
    pub answered: Vec<String>,
}

impl Applied {
    /// Whether the reply is an ACK (nothing rejected).
    pub fn is_ack(&self) -> bool {
        self.rejected.is_empty()
    }

    /// The NACK reason: `"<name>: <reason>"` per rejected resource, joined with `"; "`.
    pub fn nack_message(&self) -> Option<String> {
        if self.rejected.is_empty() {
            return None;
        }
        let parts: Vec<String> = self.rejected.iter().map(ToString::to_string).collect();
        Some(parts.join("; "))
    }

    /// The ACK or NACK to send: type URL and nonce, plus `error_detail` when NACKing.
    pub fn reply(&self) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: self.type_url.clone(),
            response_nonce: self.nonce.clone(),
            error_detail: self.nack_message().map(|message| Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }
}

/// A rejected resource: its name and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct Rejection {
    /// The resource name.
    pub name: String,
    /// Why it was rejected.
    pub reason: RejectReason,
}

/// Why a resource was rejected.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RejectReason {
    /// The resource entry carries no payload.
    #[error("resource has no payload")]
    MissingPayload,
    /// The payload is of another type than the response.
    #[error("payload type {0:?} does not match the response type")]
    WrongType(String),
    /// The payload is not a valid protobuf message of the type.
    #[error("decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The payload decodes but does not validate.
    #[error("{0}")]
    Invalid(#[from] TranslateError),
}

/// A decoded, validated resource.
// One value lives at a time and moves straight into the snapshot builder: boxing the larger
// variant would only add an allocation per resource.
#[allow(clippy::large_enum_variant)]
enum Item {
    Address(AddressResource),
    Policy(crate::state::model::Policy),
}

impl Applier {
    /// An empty cache writing to `writer`.
    pub fn new(writer: Writer, metrics: Arc<XdsMetrics>) -> Applier {
        Applier {
            writer,
            known: [HashMap::default(), HashMap::default()],
            metrics,
            answered_limit: usize::MAX,
            scratch: wl::Address::default(),
        }
    }

    /// Lists at most `limit` names in each [`Applied::answered`] from now on (`usize::MAX`,
    /// the default, lists them all). A client with nobody waiting for names needs only a few
    /// for its log, and a first push of a large mesh would otherwise copy every name once
    /// more.
    pub fn limit_answered(&mut self, limit: usize) {
        self.answered_limit = limit;
    }

    /// Applies one response: decodes and validates every resource, applies removals and the
    /// valid resources to one new snapshot, publishes it (if anything changed) and returns
    /// what happened. Unknown types change nothing and are ACKed.
    pub fn apply(&mut self, response: DeltaDiscoveryResponse) -> Applied {
        let kind = ResourceType::from_type_url(&response.type_url);
        let mut applied = Applied {
            kind,
            updated: 0,
            removed: 0,
            rejected: Vec::new(),
            answered: Vec::new(),
            type_url: String::new(),
            nonce: String::new(),
        };
        if let Some(kind) = kind {
            // As ztunnel: the resources' payload bytes, not the whole encoded response.
            let payload: usize = response
                .resources
                .iter()
                .filter_map(|r| r.resource.as_ref())
                .map(|any| any.value.len())
                .sum();
            self.metrics.record_message(kind, payload);
            let mut builder = self.writer.builder();
            let reserved = kind == ResourceType::Address && {
                let (workloads, services) = address_kinds(&response.resources);
                builder.reserve(workloads, services);
                true
            };
            // The first push sized once instead of doubling (and rehashing every name) on the
            // way. Not for a delta: most of its names may already be known.
            let known = &mut self.known[kind.index()];
            if known.is_empty() {
                known.reserve(response.resources.len());
            }
            let mut changed = false;
            for name in &response.removed_resources {
                changed |= self.remove(kind, &mut builder, name);
                applied.removed += 1;
                if applied.answered.len() < self.answered_limit {
                    applied.answered.push(name.clone());
                }
            }
            for resource in response.resources {
                if applied.answered.len() < self.answered_limit {
                    applied.answered.push(resource.name.clone());
                    applied.answered.extend(resource.aliases.iter().cloned());
                }
                match self.decode(kind, &response.type_url, &resource) {
                    Ok(item) => {
                        self.insert(kind, &mut builder, resource, item);
                        applied.updated += 1;
                        changed = true;
                    }
                    Err(reason) => applied.rejected.push(Rejection {
                        name: resource.name,
                        reason,
                    }),
                }
            }
            self.metrics.record_rejected(applied.rejected.len());
            let known = &mut self.known[kind.index()];
            if known.len() * 2 < known.capacity() {
                // Give back what a burst of resources grew the cache to.
                known.shrink_to_fit();
            }
            if reserved && applied.rejected.len() > applied.updated {
                // Counted before checking: most of what the tables were sized for was
                // rejected; they are not published that large.
                builder.shrink_reserved();
            }
            if !changed && !applied.rejected.is_empty() {
                // Rejected resources shared their strings as they were translated; nobody
                // holds them now (dropped amortized, as after a publish).
                drop(builder);
                crate::state::release_unused_strings();
            } else if changed {
                self.writer.publish(builder);
                if applied.updated + applied.removed >= TRIM_AFTER {
                    crate::sys::alloc::release_free_memory();
                }
            }
        }
        applied.type_url = response.type_url;
        applied.nonce = response.nonce;
        applied
    }

    /// `name → version` of every accepted resource of `kind` (and, with an empty version,
    /// every on-demand name requested but not answered yet): the `initial_resource_versions`
    /// of a reconnect.
    pub fn resource_versions(&self, kind: ResourceType) -> BTreeMap<String, String> {
        self.known[kind.index()]
            .iter()
            .map(|(name, k)| (name.to_string(), k.version.to_string()))
            .collect()
    }

    /// Whether a resource of `kind` with this name has been accepted.
    pub fn has(&self, kind: ResourceType, name: &str) -> bool {
        self.known[kind.index()]
            .get(name)
            .is_some_and(|k| k.key.is_some())
    }

    /// Records an on-demand name as requested, so a reconnect asks for it again.
    pub fn note_demanded(&mut self, kind: ResourceType, name: &str) {
        self.known[kind.index()]
            .entry(name.into())
            .or_insert_with(|| Known {
                version: "".into(),
                key: None,
            });
    }

    fn decode(
        &mut self,
        kind: ResourceType,
        type_url: &str,
        resource: &Resource,
    ) -> Result<Item, RejectReason> {
        let any = resource
            .resource
            .as_ref()
            .ok_or(RejectReason::MissingPayload)?;
        if !any.type_url.is_empty() && any.type_url != type_url {
            return Err(RejectReason::WrongType(any.type_url.clone()));
        }
        let translated = match kind {
            ResourceType::Address => {
                let decoded = decode_reusing(&mut self.scratch, &any.value);
                let translated = decoded.map(|()| {
                    // Locked for this one resource; released before the insert (which locks
                    // it).
                    let mut strings = SharedStrings::lock();
                    translate::translate_shared_address(&self.scratch, &mut strings)
                });
                if any.value.len() > SCRATCH_KEPT {
                    // Not kept as large as an outsized resource made it, decoded or not.
                    self.scratch = wl::Address::default();
                }
                translated?.map(|t| (Item::Address(t.value), t.unknown_enums))
            }
            ResourceType::Authorization => {
                let msg = sec::Authorization::decode(any.value.as_slice())?;
                translate::translate_policy(msg).map(|t| (Item::Policy(t.value), t.unknown_enums))
            }
        };
        match translated {
            Ok((item, unknown)) => {
                self.metrics.record_unknown_enums(unknown);
                Ok(item)
            }
            Err((e, unknown)) => {
                self.metrics.record_unknown_enums(unknown);
                Err(e.into())
            }
        }
    }

    fn insert(
        &mut self,
        kind: ResourceType,
        builder: &mut SnapshotBuilder,
        resource: Resource,
        item: Item,
    ) {
        let key = match item {
            Item::Address(AddressResource::Workload(w)) => {
                let key = StateKey::Workload(w.uid.clone());
                builder.insert_shared_workload(w);
                key
            }
            Item::Address(AddressResource::Service(s)) => {
                let key = StateKey::Service(s.key().into());
                builder.insert_shared_service(s);
                key
            }
            Item::Policy(p) => {
                let key = StateKey::Policy(p.key().into());
                builder.insert_policy(p);
                key
            }
        };
        // The resource name is usually the state key: share that string rather than copy it.
        let name = match &key {
            StateKey::Workload(k) | StateKey::Service(k) | StateKey::Policy(k)
                if **k == *resource.name =>
            {
                k.clone()
            }
            _ => Strng::from(resource.name),
        };
        let known = &mut self.known[kind.index()];
        // Same name, different content key (e.g. a workload whose uid changed): drop the old.
        if let Some(Known { key: Some(old), .. }) = known.get(&name) {
            if *old != key {
                remove_key(builder, old);
            }
        }
        known.insert(
            name,
            Known {
                version: resource.version.into(),
                key: Some(key),
            },
        );
    }

    fn remove(&mut self, kind: ResourceType, builder: &mut SnapshotBuilder, name: &str) -> bool {
        match self.known[kind.index()].remove(name) {
            Some(Known { key: Some(key), .. }) => remove_key(builder, &key),
            // Not received through this client (e.g. from the local file): the name is the key.
            _ => match kind {
                ResourceType::Address => builder.remove_address(name),
                ResourceType::Authorization => builder.remove_policy(name),
            },
        }
    }
}

/// How many of `resources` are workloads and how many services, told from the first byte of
/// each payload (the tag of `Address.workload`, field 1, or `Address.service`, field 2, both
/// length-delimited) without decoding them. Only sizes tables: a payload that turns out
/// otherwise is decoded (or rejected) as usual.
fn address_kinds(resources: &[Resource]) -> (usize, usize) {
    const WORKLOAD_TAG: u8 = 1 << 3 | 2;
    const SERVICE_TAG: u8 = 2 << 3 | 2;
    let mut kinds = (0, 0);
    for r in resources {
        match r.resource.as_ref().and_then(|any| any.value.first()) {
            Some(&WORKLOAD_TAG) => kinds.0 += 1,
            Some(&SERVICE_TAG) => kinds.1 += 1,
            _ => {}
        }
    }
    kinds
}

/// The largest encoded resource whose buffers [`Applier::scratch`] keeps for the next one
/// (a workload is typically a few hundred bytes). Decoded, a payload can take a few times its
/// encoded size (an empty list element is 2 bytes on the wire and 24 in a `Vec<String>`), so
/// what is kept stays within a small multiple of this.
const SCRATCH_KEPT: usize = 4 * 1024;

/// Decodes `bytes` into `msg` as `wl::Address::decode` would, but into the buffers of the
/// resource `msg` held: a first push of 50 000 workloads would otherwise allocate (and free)
/// each of a workload's dozen strings once more before they are shared.
pub(crate) fn decode_reusing(
    msg: &mut wl::Address,
    bytes: &[u8],
) -> Result<(), prost::DecodeError> {
    use wl::address::Type;
    // Cleared, a variant's fields keep their capacity, and prost merges a field of the same
    // variant into the value already there: the same as merging into a new default one.
    match &mut msg.r#type {
        Some(Type::Workload(w)) => w.clear(),
        Some(Type::Service(s)) => s.clear(),
        None => {}
    }
    if !names_a_type(bytes) {
        // Nothing to merge into the variant: a fresh decode has none.
        msg.r#type = None;
    }
    // A merge that fails halfway leaves a partial message: the next call clears it.
    msg.merge(bytes)
}

/// Whether the encoded `Address` has a `workload` (1) or `service` (2) field at its top
/// level. A malformed message answers either way: its merge fails regardless.
fn names_a_type(mut bytes: &[u8]) -> bool {
    use prost::encoding::{decode_key, skip_field, DecodeContext};
    while !bytes.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut bytes) else {
            return false;
        };
        if tag == 1 || tag == 2 {
            return true;
        }
        if skip_field(wire_type, tag, &mut bytes, DecodeContext::default()).is_err() {
            return false;
        }
    }
    false
}

fn remove_key(builder: &mut SnapshotBuilder, key: &StateKey) -> bool {
    match key {
        // `remove_address` tries workload uids first, then service keys.
        StateKey::Workload(uid) => builder.remove_address(uid),
        StateKey::Service(k) => builder.remove_address(k),
        StateKey::Policy(k) => builder.remove_policy(k),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::super::ADDRESS_TYPE as ADDRESS;
    use super::*;

    fn applier() -> (Applier, crate::state::Reader) {
        let (writer, reader) = crate::state::new();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(XdsMetrics::new(&mut registry));
        (Applier::new(writer, metrics), reader)
    }

    fn workload_resource(w: wl::Workload) -> Resource {
        let name = w.uid.clone();
        let value = wl::Address {
            r#type: Some(wl::address::Type::Workload(w)),
        }
        .encode_to_vec();
        Resource {
            name,
            version: "1".into(),
            resource: Some(prost_types::Any {
                type_url: super::super::ADDRESS_TYPE.into(),
                value,
            }),
            ..Default::default()
        }
    }

    /// A workload whose namespace and service account are shared while it is translated,
    /// then rejected for its waypoint (no destination).
    fn rejected_workload(i: usize, tag: &str) -> Resource {
        workload_resource(wl::Workload {
            uid: format!("c//Pod/{tag}-ns-{i}/p"),
            name: "p".into(),
            namespace: format!("{tag}-ns-{i}"),
            service_account: format!("{tag}-sa-{i}"),
            waypoint: Some(wl::GatewayAddress::default()),
            ..Default::default()
        })
    }

    fn address_response(resources: Vec<Resource>) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: super::super::ADDRESS_TYPE.into(),
            nonce: "n1".into(),
            resources,
            ..Default::default()
        }
    }

    #[test]
    fn rejected_resources_leave_no_shared_strings_behind() {
        let (mut applier, _reader) = applier();
        let n = 2_000;
        let resources = (0..n).map(|i| rejected_workload(i, "refused")).collect();
        let applied = applier.apply(address_response(resources));
        assert_eq!(applied.rejected.len(), n);
        assert!(applied.rejected[0].reason.to_string().contains("waypoint"));
        let kept: Vec<usize> = (0..n)
            .filter(|i| {
                crate::state::is_shared_string(&format!("refused-ns-{i}"))
                    || crate::state::is_shared_string(&format!("refused-sa-{i}"))
            })
            .collect();
        assert!(
            kept.is_empty(),
            "{} of {n} rejected workloads' strings still shared",
            kept.len()
        );
    }

    #[test]
    fn a_first_response_mostly_rejected_is_not_published_at_its_counted_size() {
        let (mut applier, reader) = applier();
        let n = 40_000;
        let mut resources: Vec<Resource> =
            (0..n).map(|i| rejected_workload(i, "oversized")).collect();
        resources.push(workload_resource(wl::Workload {
            uid: "c//Pod/ns/good".into(),
            name: "good".into(),
            namespace: "ns".into(),
            ..Default::default()
        }));
        let applied = applier.apply(address_response(resources));
        assert_eq!((applied.updated, applied.rejected.len()), (1, n));
        let snap = reader.load_full();
        assert!(snap.workload_by_uid("c//Pod/ns/good").is_some());
        // One workload: the smallest tables, far below the 30 000 slots reserved for 40 000.
        assert!(
            snap.table_buckets() < 4_096,
            "published tables hold {} buckets for one workload",
            snap.table_buckets()
        );
    }

    #[test]
    fn answered_names_are_all_listed_unless_limited() {
        let resources = |n: usize| {
            (0..n)
                .map(|i| {
                    workload_resource(wl::Workload {
                        uid: format!("c//Pod/ns/p-{i}"),
                        name: format!("p-{i}"),
                        namespace: "ns".into(),
                        ..Default::default()
                    })
                })
                .collect::<Vec<_>>()
        };
        let (mut applier, reader) = applier();
        let all = applier.apply(address_response(resources(50)));
        assert_eq!(all.answered.len(), 50);
        applier.limit_answered(3);
        let mut response = address_response(resources(100));
        response.removed_resources = vec!["c//Pod/ns/p-0".into()];
        let few = applier.apply(response);
        assert_eq!(
            few.answered,
            ["c//Pod/ns/p-0", "c//Pod/ns/p-0", "c//Pod/ns/p-1"],
            "the first names, in response order"
        );
        // Only the list is shorter: everything was applied.
        assert_eq!((few.updated, few.removed), (100, 1));
        assert_eq!(reader.load().workload_count(), 100);
    }

    #[test]
    fn address_kinds_are_told_from_the_payloads_first_byte() {
        let resource = |value: Vec<u8>| Resource {
            resource: Some(prost_types::Any {
                type_url: String::new(),
                value,
            }),
            ..Default::default()
        };
        let address = |t| wl::Address { r#type: Some(t) }.encode_to_vec();
        let workload = wl::Workload {
            uid: "c//Pod/ns/a".into(),
            ..Default::default()
        };
        let resources = vec![
            resource(address(wl::address::Type::Workload(workload.clone()))),
            resource(address(wl::address::Type::Service(wl::Service::default()))),
            resource(address(wl::address::Type::Workload(workload))),
            resource(b"not an address".to_vec()),
            Resource::default(),
        ];
        assert_eq!(address_kinds(&resources), (2, 1));
    }

    /// The scratch message keeps no buffer an outsized resource grew, whether that resource
    /// decoded or failed halfway (a megabyte uid, then a field cut short).
    #[test]
    fn an_outsized_resource_leaves_no_buffers_behind_decoded_or_not() {
        let big = wl::Workload {
            uid: "u".repeat(1 << 20),
            ..Default::default()
        }
        .encode_to_vec();
        // `name` (field 2) announcing 5 bytes with 1 left: fails after the uid is read.
        let broken = [big.clone(), vec![2 << 3 | 2, 5, b'x']].concat();
        let small = wl::Workload {
            uid: "small".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let (mut applier, _reader) = applier();
        // Each after a small workload, which leaves the scratch holding a workload to merge
        // into.
        for (inner, accepted) in [
            (small.clone(), true),
            (broken, false),
            (small, true),
            (big, true),
        ] {
            let mut value = vec![1 << 3 | 2];
            prost::encoding::encode_varint(inner.len() as u64, &mut value);
            value.extend(inner);
            let applied = applier.apply(address_response(vec![Resource {
                name: "big".into(),
                resource: Some(prost_types::Any {
                    type_url: ADDRESS.into(),
                    value,
                }),
                ..Default::default()
            }]));
            assert_eq!(applied.is_ack(), accepted, "{:?}", applied.nack_message());
            if let Some(wl::address::Type::Workload(w)) = &applier.scratch.r#type {
                assert!(
                    w.uid.capacity() <= SCRATCH_KEPT,
                    "{} B kept (accepted: {accepted})",
                    w.uid.capacity()
                );
            }
        }
    }

    /// Each resource is decoded into the message of the one before (`decode_reusing`); the
    /// result must be what a fresh decode gives, whatever came before: a larger workload, a
    /// service, nothing, a message that failed halfway.
    #[test]
    fn a_resource_decoded_into_the_one_before_is_what_a_fresh_decode_gives() {
        use wl::address::Type;
        let field = |n: u8, body: Vec<u8>| {
            let mut out = vec![n << 3 | 2, body.len() as u8];
            out.extend(body);
            out
        };
        let big = wl::Workload {
            uid: "c//Pod/ns/big".into(),
            name: "big".into(),
            namespace: "ns".into(),
            node: "node-1".into(),
            workload_name: "big-deploy".into(),
            addresses: vec![vec![10, 0, 0, 1], vec![10, 0, 0, 2]],
            services: [("ns/a.ns.svc".to_string(), wl::PortList::default())].into(),
            authorization_policies: vec!["ns/p".into()],
            locality: Some(wl::Locality {
                region: "r".into(),
                ..Default::default()
            }),
            capacity: Some(2),
            ..Default::default()
        };
        let small = wl::Workload {
            uid: "c//Pod/ns/small".into(),
            ..Default::default()
        };
        let service = wl::Service {
            name: "a".into(),
            namespace: "ns".into(),
            hostname: "a.ns.svc".into(),
            ..Default::default()
        };
        let enc = |t: Type| wl::Address { r#type: Some(t) }.encode_to_vec();
        let big_b = enc(Type::Workload(big.clone()));
        let small_b = enc(Type::Workload(small.clone()));
        let service_b = enc(Type::Service(service.clone()));
        let inner = |t: Type| match t {
            Type::Workload(w) => w.encode_to_vec(),
            Type::Service(s) => s.encode_to_vec(),
        };
        let sequence: Vec<Vec<u8>> = vec![
            big_b.clone(),
            small_b.clone(),
            big_b.clone(),
            service_b.clone(),
            small_b.clone(),
            Vec::new(),
            big_b.clone(),
            // Only an unknown field: no type.
            // (field 99, varint: key 792 as a varint, then the value 1)
            vec![0x98, 0x06, 1],
            big_b.clone(),
            // A workload field then a service field: the service wins; and the other way.
            [
                field(1, inner(Type::Workload(small.clone()))),
                field(2, inner(Type::Service(service.clone()))),
            ]
            .concat(),
            [
                field(2, inner(Type::Service(service.clone()))),
                field(1, inner(Type::Workload(small.clone()))),
            ]
            .concat(),
            // The same variant twice: the second merges into the first.
            [
                field(1, inner(Type::Workload(small.clone()))),
                field(
                    1,
                    wl::Workload {
                        name: "n".into(),
                        ..Default::default()
                    }
                    .encode_to_vec(),
                ),
            ]
            .concat(),
            // Cut short after a valid workload's start, then a good one.
            big_b[..big_b.len() - 3].to_vec(),
            small_b.clone(),
            big_b[..big_b.len() - 3].to_vec(),
            Vec::new(),
        ];
        let mut scratch = wl::Address::default();
        let mut check = |bytes: &[u8], what: &str| {
            let reused = decode_reusing(&mut scratch, bytes);
            match wl::Address::decode(bytes) {
                Ok(fresh) => {
                    assert!(reused.is_ok(), "{what}: {reused:?}");
                    assert_eq!(scratch, fresh, "{what}");
                }
                Err(_) => assert!(reused.is_err(), "{what}"),
            }
        };
        for (i, bytes) in sequence.iter().enumerate() {
            check(bytes, &format!("case {i}"));
        }
        // Mutated copies (a byte changed, or cut), each after one of the valid messages.
        let mut rng = crate::testkit::rng::Xorshift::new(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng.next_u64();
        let valid = [&big_b, &small_b, &service_b];
        for round in 0..3000 {
            let before = valid[(next() % 3) as usize];
            check(before, "valid");
            let mut bytes = valid[(next() % 3) as usize].clone();
            let at = (next() as usize) % bytes.len();
            match next() % 3 {
                0 => bytes[at] = next() as u8,
                1 => bytes.truncate(at),
                _ => bytes.insert(at, next() as u8),
            }
            check(&bytes, &format!("mutation {round}: {bytes:?}"));
        }
    }
}
