//! The engine's state and its incremental compilation.
//!
//! Updates (namespaces, endpoints, policies) change the selector cache at
//! once and mark the identities whose compiled policy they affect;
//! [`Engine::compile`] recompiles only those. Queries read the compiled
//! state (see `verdict.rs`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use palisade_model::{
    Direction, Endpoint, EndpointKey, IpBlock, Labels, Namespace, NetworkPolicy, Peer, PolicyPort, NAMESPACE_NAME_LABEL,
};

use crate::identity::{Identities, Identity, IdentityId};
use crate::selector::{NamespaceLabels, SelectorCache, SelectorId};
use crate::slots::Slots;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(pub u32);

/// `namespace/name` of a policy.
pub type PolicyKey = (String, String);

/// A peer of a compiled rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerMatch {
    /// Empty `from`/`to`: every source or destination, in or out of the cluster.
    Any,
    Selector(SelectorId),
    IpBlock(Arc<IpBlock>),
}

/// The ports of a compiled rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortMatch {
    /// Empty `ports`: every protocol and port.
    Any,
    Ports(Arc<[PolicyPort]>),
}

/// Where a compiled entry came from, so explanations and flow logs can name
/// the policy and rule that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleOrigin {
    pub policy: PolicyId,
    pub direction: Direction,
    pub rule: u32,
    /// Index in `from`/`to`; `None` when the rule has no peers (any peer).
    pub peer: Option<u32>,
}

/// One allowed (peer x ports) pair of an isolated endpoint's direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AllowEntry {
    pub peer: PeerMatch,
    pub ports: PortMatch,
    pub origin: RuleOrigin,
}

/// One direction of one identity's compiled policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectionPolicy {
    /// The policies that isolate this direction (they select the identity).
    pub policies: Vec<PolicyId>,
    /// The union of their rules: allowed iff some entry matches.
    pub entries: Vec<AllowEntry>,
}

/// An identity's compiled policy; `None` in a direction means not isolated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledIdentity {
    pub ingress: Option<DirectionPolicy>,
    pub egress: Option<DirectionPolicy>,
}

impl CompiledIdentity {
    pub fn direction(&self, d: Direction) -> Option<&DirectionPolicy> {
        match d {
            Direction::Ingress => self.ingress.as_ref(),
            Direction::Egress => self.egress.as_ref(),
        }
    }
}

struct CompiledRule {
    peers: Vec<PeerMatch>,
    ports: PortMatch,
}

pub(crate) struct PolicyState {
    pub(crate) policy: NetworkPolicy,
    target: SelectorId,
    ingress: Vec<CompiledRule>,
    egress: Vec<CompiledRule>,
    selectors: Vec<SelectorId>,
}

pub(crate) struct EndpointState {
    pub(crate) endpoint: Endpoint,
    pub(crate) identity: IdentityId,
}

#[derive(Default)]
struct NamespaceTable(HashMap<String, Labels>);

impl NamespaceLabels for NamespaceTable {
    fn labels_of(&self, namespace: &str) -> Option<&Labels> {
        self.0.get(namespace)
    }
    fn all(&self) -> Box<dyn Iterator<Item = (&str, &Labels)> + '_> {
        Box::new(self.0.iter().map(|(k, v)| (k.as_str(), v)))
    }
}

/// What one `compile` changed: the input of an incremental dataplane update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub revision: u64,
    pub identities_recompiled: BTreeSet<IdentityId>,
    pub identities_removed: BTreeSet<IdentityId>,
    pub selectors_changed: BTreeSet<SelectorId>,
    pub endpoints_changed: BTreeSet<EndpointId>,
}

impl Changes {
    /// Folds a later `compile`'s changes into these, for a consumer that
    /// applies several compiles at once. Consumers re-read the engine for
    /// current state, so the union of what was touched is enough.
    pub fn merge(&mut self, later: Changes) {
        self.revision = later.revision;
        self.identities_recompiled.extend(later.identities_recompiled);
        self.identities_removed.extend(later.identities_removed);
        self.selectors_changed.extend(later.selectors_changed);
        self.endpoints_changed.extend(later.endpoints_changed);
    }

    pub fn is_empty(&self) -> bool {
        self.identities_recompiled.is_empty()
            && self.identities_removed.is_empty()
            && self.selectors_changed.is_empty()
            && self.endpoints_changed.is_empty()
    }
}

/// Cluster state and compiled policy. Pure: no I/O, no clock, no Linux.
#[derive(Default)]
pub struct Engine {
    namespaces: NamespaceTable,
    pub(crate) identities: Identities,
    pub(crate) selectors: SelectorCache,
    pub(crate) endpoints: Slots<EndpointState>,
    endpoint_by_key: HashMap<EndpointKey, EndpointId>,
    pub(crate) policies: Slots<PolicyState>,
    policy_by_key: HashMap<PolicyKey, PolicyId>,
    policies_by_namespace: HashMap<String, BTreeSet<PolicyId>>,
    pub(crate) compiled: Vec<Option<Arc<CompiledIdentity>>>,
    dirty: BTreeSet<IdentityId>,
    removed: BTreeSet<IdentityId>,
    endpoints_changed: BTreeSet<EndpointId>,
    revision: u64,
}

impl Engine {
    pub fn new() -> Self {
        Engine::default()
    }

    /// Loads a whole cluster and compiles it.
    pub fn from_cluster(cluster: &palisade_model::Cluster) -> Self {
        let mut engine = Engine::new();
        engine.sync_cluster(cluster);
        engine
    }

    /// Brings the engine to `cluster`'s state by upserting and removing
    /// only what differs, then compiles: ids of unchanged objects stay, so
    /// the returned changes are as small as the difference.
    pub fn sync_cluster(&mut self, cluster: &palisade_model::Cluster) -> Changes {
        let wanted: std::collections::HashSet<(&str, &str)> =
            cluster.policies.iter().map(|p| (p.namespace.as_str(), p.name.as_str())).collect();
        let gone: Vec<(String, String)> = self
            .policy_by_key
            .keys()
            .filter(|(ns, name)| !wanted.contains(&(ns.as_str(), name.as_str())))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.remove_policy(&ns, &name);
        }
        let keep: std::collections::HashSet<&EndpointKey> = cluster.endpoints.iter().map(|e| &e.key).collect();
        let gone: Vec<EndpointKey> = self.endpoint_by_key.keys().filter(|k| !keep.contains(k)).cloned().collect();
        for key in gone {
            self.remove_endpoint(&key);
        }
        let gone: Vec<String> =
            self.namespaces.0.keys().filter(|n| !cluster.namespaces.contains_key(*n)).cloned().collect();
        for ns in gone {
            self.remove_namespace(&ns);
        }
        for ns in cluster.namespaces.values() {
            self.upsert_namespace(ns);
        }
        // Compared before cloned: a sync is mostly unchanged objects.
        for ep in &cluster.endpoints {
            let same = self
                .endpoint_by_key
                .get(&ep.key)
                .is_some_and(|id| self.endpoints.get(id.0).expect("live endpoint").endpoint == *ep);
            if !same {
                self.upsert_endpoint(ep.clone());
            }
        }
        for p in &cluster.policies {
            let key = (p.namespace.clone(), p.name.clone());
            let same = self
                .policy_by_key
                .get(&key)
                .is_some_and(|id| self.policies.get(id.0).expect("live policy").policy == *p);
            if !same {
                self.upsert_policy(p.clone());
            }
        }
        self.compile()
    }

    // ---- namespaces ----

    pub fn upsert_namespace(&mut self, ns: &Namespace) {
        if self.namespaces.0.get(&ns.name) == Some(&ns.labels) {
            return;
        }
        self.namespaces.0.insert(ns.name.clone(), ns.labels.clone());
        self.selectors.namespace_relabeled(&ns.name, &self.identities, &self.namespaces);
    }

    /// A deleted namespace keeps only the label the API server gives every
    /// namespace, in case endpoints in it are still being deleted.
    pub fn remove_namespace(&mut self, name: &str) {
        self.upsert_namespace(&Namespace::implied(name));
    }

    fn ensure_namespace(&mut self, name: &str) {
        if !self.namespaces.0.contains_key(name) {
            let labels = Labels::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())]);
            self.namespaces.0.insert(name.to_string(), labels);
            self.selectors.namespace_relabeled(name, &self.identities, &self.namespaces);
        }
    }

    pub fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.namespaces.0.get(name)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = (&str, &Labels)> {
        self.namespaces.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    // ---- endpoints ----

    pub fn upsert_endpoint(&mut self, endpoint: Endpoint) -> EndpointId {
        self.ensure_namespace(&endpoint.key.namespace.clone());
        let identity = Identity {
            namespace: endpoint.key.namespace.clone(),
            labels: endpoint.labels.clone(),
            ports: endpoint.ports.clone(),
            host_network: endpoint.host_network,
        };
        if let Some(&id) = self.endpoint_by_key.get(&endpoint.key) {
            let state = self.endpoints.get(id.0).expect("live endpoint");
            if state.endpoint == endpoint {
                return id;
            }
            let old_identity = state.identity;
            let new_identity = if *self.identities.get(old_identity) == identity {
                old_identity
            } else {
                let new = self.acquire_identity(identity);
                self.release_identity(old_identity);
                new
            };
            let state = self.endpoints.get_mut(id.0).expect("live endpoint");
            state.endpoint = endpoint;
            state.identity = new_identity;
            self.endpoints_changed.insert(id);
            return id;
        }
        let identity = self.acquire_identity(identity);
        let key = endpoint.key.clone();
        let id = EndpointId(self.endpoints.insert(EndpointState { endpoint, identity }));
        self.endpoint_by_key.insert(key, id);
        self.endpoints_changed.insert(id);
        id
    }

    pub fn remove_endpoint(&mut self, key: &EndpointKey) -> bool {
        let Some(id) = self.endpoint_by_key.remove(key) else {
            return false;
        };
        let state = self.endpoints.remove(id.0).expect("live endpoint");
        self.release_identity(state.identity);
        self.endpoints_changed.insert(id);
        true
    }

    fn acquire_identity(&mut self, identity: Identity) -> IdentityId {
        let (id, created) = self.identities.acquire(identity);
        if created {
            let identity = self.identities.get(id).clone();
            self.selectors.identity_added(id, &identity, &self.namespaces);
            self.dirty.insert(id);
            self.removed.remove(&id);
        }
        id
    }

    fn release_identity(&mut self, id: IdentityId) {
        if self.identities.release(id) {
            self.selectors.identity_removed(id);
            if let Some(slot) = self.compiled.get_mut(id.0 as usize) {
                *slot = None;
            }
            self.dirty.remove(&id);
            self.removed.insert(id);
        }
    }

    pub fn endpoint_id(&self, key: &EndpointKey) -> Option<EndpointId> {
        self.endpoint_by_key.get(key).copied()
    }

    pub fn endpoint(&self, id: EndpointId) -> &Endpoint {
        &self.endpoints.get(id.0).expect("live endpoint").endpoint
    }

    /// Whether `id` names a live endpoint (ids are recycled).
    pub fn endpoint_exists(&self, id: EndpointId) -> bool {
        self.endpoints.get(id.0).is_some()
    }

    pub fn endpoint_identity(&self, id: EndpointId) -> IdentityId {
        self.endpoints.get(id.0).expect("live endpoint").identity
    }

    pub fn endpoints(&self) -> impl Iterator<Item = (EndpointId, &Endpoint)> {
        self.endpoints.iter().map(|(i, s)| (EndpointId(i), &s.endpoint))
    }

    pub fn identity(&self, id: IdentityId) -> &Identity {
        self.identities.get(id)
    }

    /// See [`Identities::shared`](crate::identity::Identities::shared).
    pub fn identity_shared(&self, id: IdentityId) -> Arc<Identity> {
        self.identities.shared(id)
    }

    pub fn identity_count(&self) -> usize {
        self.identities.len()
    }

    pub fn selector_count(&self) -> usize {
        self.selectors.len()
    }

    pub fn selector_cache(&self) -> &SelectorCache {
        &self.selectors
    }

    // ---- policies ----

    pub fn upsert_policy(&mut self, policy: NetworkPolicy) -> PolicyId {
        let key = (policy.namespace.clone(), policy.name.clone());
        if let Some(&id) = self.policy_by_key.get(&key) {
            if self.policies.get(id.0).expect("live policy").policy == policy {
                return id;
            }
            self.remove_policy(&key.0, &key.1);
        }
        let target = self.selectors.acquire(&policy.target(), &self.identities, &self.namespaces);
        let mut selectors = vec![target];
        let mut compile_rules = |rules: Option<&[palisade_model::Rule]>, selectors: &mut Vec<SelectorId>| {
            rules
                .into_iter()
                .flatten()
                .map(|rule| CompiledRule {
                    peers: rule
                        .peers
                        .iter()
                        .map(|peer| match peer {
                            Peer::Selector(sel) => {
                                let id = self.selectors.acquire(sel, &self.identities, &self.namespaces);
                                selectors.push(id);
                                PeerMatch::Selector(id)
                            }
                            Peer::IpBlock(b) => PeerMatch::IpBlock(Arc::new(b.clone())),
                        })
                        .collect(),
                    ports: if rule.ports.is_empty() {
                        PortMatch::Any
                    } else {
                        PortMatch::Ports(rule.ports.clone().into())
                    },
                })
                .collect::<Vec<_>>()
        };
        let ingress = compile_rules(policy.rules(Direction::Ingress), &mut selectors);
        let egress = compile_rules(policy.rules(Direction::Egress), &mut selectors);
        for i in self.selectors.members(target).iter() {
            self.dirty.insert(IdentityId(i));
        }
        let ns = policy.namespace.clone();
        let id = PolicyId(self.policies.insert(PolicyState { policy, target, ingress, egress, selectors }));
        self.policy_by_key.insert(key, id);
        self.policies_by_namespace.entry(ns).or_default().insert(id);
        id
    }

    pub fn remove_policy(&mut self, namespace: &str, name: &str) -> bool {
        let Some(id) = self.policy_by_key.remove(&(namespace.to_string(), name.to_string())) else {
            return false;
        };
        let state = self.policies.remove(id.0).expect("live policy");
        for i in self.selectors.members(state.target).iter() {
            self.dirty.insert(IdentityId(i));
        }
        for s in state.selectors {
            self.selectors.release(s);
        }
        if let Some(set) = self.policies_by_namespace.get_mut(namespace) {
            set.remove(&id);
        }
        true
    }

    pub fn policy(&self, id: PolicyId) -> &NetworkPolicy {
        &self.policies.get(id.0).expect("live policy").policy
    }

    pub fn policy_id(&self, namespace: &str, name: &str) -> Option<PolicyId> {
        self.policy_by_key.get(&(namespace.to_string(), name.to_string())).copied()
    }

    pub fn policies(&self) -> impl Iterator<Item = (PolicyId, &NetworkPolicy)> {
        self.policies.iter().map(|(i, s)| (PolicyId(i), &s.policy))
    }

    /// The identities a policy applies to.
    pub fn policy_targets(&self, id: PolicyId) -> impl Iterator<Item = IdentityId> + '_ {
        let target = self.policies.get(id.0).expect("live policy").target;
        self.selectors.members(target).iter().map(IdentityId)
    }

    /// The selector-cache id of each selector peer of a policy's rule.
    pub fn rule_peer_selector(
        &self,
        id: PolicyId,
        direction: Direction,
        rule: usize,
        peer: usize,
    ) -> Option<SelectorId> {
        let state = self.policies.get(id.0)?;
        let rules = match direction {
            Direction::Ingress => &state.ingress,
            Direction::Egress => &state.egress,
        };
        match rules.get(rule)?.peers.get(peer)? {
            PeerMatch::Selector(s) => Some(*s),
            _ => None,
        }
    }

    // ---- compilation ----

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn is_compiled(&self) -> bool {
        self.dirty.is_empty()
    }

    /// Recompiles the identities affected by updates since the last call.
    pub fn compile(&mut self) -> Changes {
        self.revision += 1;
        if self.compiled.len() < self.identities.capacity() {
            self.compiled.resize(self.identities.capacity(), None);
        }
        let dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            let compiled = self.compile_identity(id);
            self.compiled[id.0 as usize] = Some(Arc::new(compiled));
        }
        Changes {
            revision: self.revision,
            identities_recompiled: dirty,
            identities_removed: std::mem::take(&mut self.removed),
            selectors_changed: self.selectors.take_changed(),
            endpoints_changed: std::mem::take(&mut self.endpoints_changed),
        }
    }

    fn compile_identity(&self, id: IdentityId) -> CompiledIdentity {
        let identity = self.identities.get(id);
        let mut out = CompiledIdentity::default();
        // Host-network endpoints are never selected: their traffic is the node's.
        if identity.host_network {
            return out;
        }
        let Some(candidates) = self.policies_by_namespace.get(&identity.namespace) else {
            return out;
        };
        for &pid in candidates {
            let state = self.policies.get(pid.0).expect("live policy");
            if !self.selectors.contains(state.target, id) {
                continue;
            }
            for (direction, rules, isolates) in [
                (Direction::Ingress, &state.ingress, state.policy.ingress.is_some()),
                (Direction::Egress, &state.egress, state.policy.egress.is_some()),
            ] {
                if !isolates {
                    continue;
                }
                let side = match direction {
                    Direction::Ingress => out.ingress.get_or_insert_with(Default::default),
                    Direction::Egress => out.egress.get_or_insert_with(Default::default),
                };
                side.policies.push(pid);
                for (r, rule) in rules.iter().enumerate() {
                    let origin = |peer| RuleOrigin { policy: pid, direction, rule: r as u32, peer };
                    if rule.peers.is_empty() {
                        side.entries.push(AllowEntry {
                            peer: PeerMatch::Any,
                            ports: rule.ports.clone(),
                            origin: origin(None),
                        });
                    }
                    for (p, peer) in rule.peers.iter().enumerate() {
                        side.entries.push(AllowEntry {
                            peer: peer.clone(),
                            ports: rule.ports.clone(),
                            origin: origin(Some(p as u32)),
                        });
                    }
                }
            }
        }
        out
    }

    /// The compiled policy of an identity. Panics if updates are pending:
    /// queries must never see a half-compiled state.
    #[inline]
    pub fn compiled(&self, id: IdentityId) -> &CompiledIdentity {
        debug_assert!(self.dirty.is_empty(), "query before compile()");
        self.compiled[id.0 as usize].as_deref().expect("compiled identity")
    }

    /// Every distinct ipBlock in the compiled rules (for address classes).
    pub fn ip_blocks(&self) -> Vec<Arc<IpBlock>> {
        let mut seen: Vec<Arc<IpBlock>> = Vec::new();
        let mut set = std::collections::HashSet::new();
        for (_, state) in self.policies.iter() {
            for rule in state.ingress.iter().chain(&state.egress) {
                for peer in &rule.peers {
                    if let PeerMatch::IpBlock(b) = peer {
                        if set.insert(b.clone()) {
                            seen.push(b.clone());
                        }
                    }
                }
            }
        }
        seen
    }
}
