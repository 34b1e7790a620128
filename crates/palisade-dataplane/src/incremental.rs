//! The incremental compiler of one node: it keeps the desired state and
//! turns the engine's [`Changes`] into a patch that touches only the set
//! elements and chains they affect, in time proportional to the change (not
//! to the cluster). [`compile_node`](crate::compile_node) stays the oracle:
//! after any sequence of updates the state equals a compile from scratch.
//!
//! Peer sets are maintained by contribution: what one endpoint puts in a
//! set depends only on its identity, its addresses and whether the identity
//! is a member of the set's selector. A change re-evaluates exactly the
//! (set, endpoint) pairs whose inputs moved: changed endpoints, and the
//! endpoints of identities that entered or left a changed selector.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use palisade_engine::{BitSet, Changes, EndpointId, Engine, Identity, IdentityId, SelectorId};
use palisade_model::Direction;

use crate::chains::{identity_chain, selector_tag, SetRequest};
use crate::nfnetlink::{NetlinkBatch, NetlinkError, NetlinkSession};
use crate::nft::{ChainDef, NftError, Op, Rule, Transaction};
use crate::ruleset::{local_elements, Options, Ruleset};

/// What the compiler remembers of an endpoint, to undo its contribution.
struct Shadow {
    identity: IdentityId,
    /// The identity as it was: valid after the engine recycles the id.
    shared: Arc<Identity>,
    ips: Vec<IpAddr>,
    /// The elements a local endpoint put in the base sets (maps,
    /// anti-spoofing); empty for remote ones.
    local: Vec<(String, String)>,
    iface: Option<String>,
}

/// A peer set derived from endpoints, with the selector members it was
/// last computed from.
struct Derived {
    request: SetRequest,
    members: BitSet,
}

impl Derived {
    /// The selector this set follows, if it still means what it meant when
    /// the set was made (ids are recycled; the name carries the meaning).
    fn live_selector(&self, engine: &Engine) -> Option<SelectorId> {
        let SetRequest::Selector { sel, tag, .. } = &self.request else {
            return self.request.selector().filter(|s| engine.selector_cache().is_live(*s));
        };
        (engine.selector_cache().is_live(*sel) && selector_tag(engine, *sel) == *tag).then_some(*sel)
    }
}

/// The result of one [`NodeCompiler::update`].
pub struct Update {
    pub transaction: Transaction,
    /// The same change as a netlink batch, when everything in it can be
    /// written that way (the fast path: no `nft` process).
    pub netlink: Option<NetlinkBatch>,
    /// `Some(why)` when the update could not be done incrementally (or
    /// there was no state yet): the transaction replaces the whole table.
    pub full: Option<&'static str>,
}

/// Keeps one node's desired ruleset in step with the engine.
pub struct NodeCompiler {
    opts: Options,
    rs: Ruleset,
    /// Element reference counts per set: an address can be contributed by
    /// more than one endpoint.
    counts: HashMap<String, HashMap<String, u32>>,
    endpoints: HashMap<EndpointId, Shadow>,
    by_identity: HashMap<IdentityId, BTreeSet<EndpointId>>,
    local_by_identity: HashMap<IdentityId, BTreeSet<EndpointId>>,
    derived: HashMap<String, Derived>,
    /// How many chains name each peer set.
    set_refs: HashMap<String, usize>,
    /// The peer sets each chain names.
    chain_sets: HashMap<String, Vec<String>>,
    /// The chain of each local identity, per isolated direction.
    identity_chains: HashMap<IdentityId, Vec<(Direction, String)>>,
    /// How many local identities use each chain (chains are shared).
    chain_users: HashMap<String, usize>,
    synced: bool,
}

/// Net element changes and touched chains of one update.
#[derive(Default)]
struct Delta {
    added: BTreeMap<String, BTreeSet<String>>,
    removed: BTreeMap<String, BTreeSet<String>>,
    new_sets: BTreeSet<String>,
    gone_sets: Vec<String>,
    chains_before: BTreeMap<String, Option<(ChainDef, Vec<Rule>)>>,
}

#[derive(Debug)]
struct NeedsResync(&'static str);

/// Why a change did not reach the kernel. Either way the kernel refused the
/// whole transaction and still holds the previous state.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

impl Update {
    /// Applies the change in the session's namespace: over netlink when it
    /// can, else with `nft -f`.
    pub fn apply(&self, session: &mut NetlinkSession) -> Result<(), ApplyError> {
        match &self.netlink {
            Some(batch) => Ok(session.apply(batch)?),
            None => Ok(self.transaction.apply_in(session.netns())?),
        }
    }

    /// [`apply`](Self::apply) on a one-off session.
    pub fn apply_in(&self, netns: Option<&str>) -> Result<(), ApplyError> {
        self.apply(&mut NetlinkSession::new(netns))
    }
}

impl NodeCompiler {
    pub fn new(opts: Options) -> Self {
        NodeCompiler {
            opts,
            rs: Ruleset::default(),
            counts: HashMap::new(),
            endpoints: HashMap::new(),
            by_identity: HashMap::new(),
            local_by_identity: HashMap::new(),
            derived: HashMap::new(),
            set_refs: HashMap::new(),
            chain_sets: HashMap::new(),
            identity_chains: HashMap::new(),
            chain_users: HashMap::new(),
            synced: false,
        }
    }

    /// The desired state, as the last update left it.
    pub fn ruleset(&self) -> &Ruleset {
        &self.rs
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Forgets everything: the next update replaces the whole table (after
    /// a failed apply, or to adopt a kernel in an unknown state).
    pub fn reset(&mut self) {
        *self = NodeCompiler::new(self.opts.clone());
    }

    /// Compiles the whole state and returns a transaction replacing the table.
    pub fn resync(&mut self, engine: &Engine, pod_iface: &dyn Fn(EndpointId) -> Option<String>) -> Transaction {
        self.reset();
        self.rs.add_base(&self.opts);
        let everything =
            Changes { endpoints_changed: engine.endpoints().map(|(id, _)| id).collect(), ..Changes::default() };
        self.patch(engine, &everything, pod_iface).expect("a fresh compile needs no resync");
        self.synced = true;
        self.rs.full_transaction(&self.opts.table)
    }

    /// The patch for `changes` (everything the engine's `compile` calls
    /// returned since the last update, merged). `pod_iface` says which
    /// endpoints run on this node, as for [`compile_node`](crate::compile_node).
    pub fn update(
        &mut self,
        engine: &Engine,
        changes: &Changes,
        pod_iface: &dyn Fn(EndpointId) -> Option<String>,
    ) -> Update {
        let why = if self.synced {
            match self.patch(engine, changes, pod_iface) {
                Ok(delta) => {
                    let transaction = self.transaction(delta);
                    let key_of = |set: &str| self.rs.sets.get(set).map(|(def, _)| def.key.clone());
                    // Anything the encoder does not know goes through nft.
                    let netlink = NetlinkBatch::from_transaction(&transaction, key_of).ok().flatten();
                    return Update { transaction, netlink, full: None };
                }
                Err(NeedsResync(why)) => why,
            }
        } else {
            "first update"
        };
        Update { transaction: self.resync(engine, pod_iface), netlink: None, full: Some(why) }
    }

    fn patch(
        &mut self,
        engine: &Engine,
        changes: &Changes,
        pod_iface: &dyn Fn(EndpointId) -> Option<String>,
    ) -> Result<Delta, NeedsResync> {
        let mut delta = Delta::default();
        let changed: Vec<EndpointId> = changes.endpoints_changed.iter().copied().collect();
        let is_changed = |e: &EndpointId| changes.endpoints_changed.contains(e);

        // Which endpoints' contributions each existing peer set must redo.
        let mut affected: Vec<(String, Vec<EndpointId>)> = Vec::new();
        for (name, d) in &self.derived {
            let mut endpoints = changed.clone();
            if let Some(sel) = d.request.selector().filter(|s| changes.selectors_changed.contains(s)) {
                if d.live_selector(engine).is_none() {
                    continue; // a set of a deleted selector: no chain keeps it
                }
                let moved = d.members.symmetric_difference(engine.selector_cache().members(sel));
                for identity in moved.iter() {
                    let of = self.by_identity.get(&IdentityId(identity));
                    endpoints.extend(of.into_iter().flatten().filter(|e| !is_changed(e)));
                }
            }
            affected.push((name.clone(), endpoints));
        }
        // 1. Take back the old contributions.
        for (name, endpoints) in &affected {
            for element in self.contributions(name, endpoints) {
                self.remove_element(&mut delta, name, element);
            }
        }
        let mut dirty_identities: BTreeSet<IdentityId> =
            changes.identities_recompiled.union(&changes.identities_removed).copied().collect();
        for e in &changed {
            if let Some(old) = self.endpoints.remove(e) {
                for (set, element) in &old.local {
                    self.remove_element(&mut delta, set, element.clone());
                }
                remove_from(&mut self.by_identity, old.identity, *e);
                if old.iface.is_some() {
                    remove_from(&mut self.local_by_identity, old.identity, *e);
                    dirty_identities.insert(old.identity);
                }
            }
        }
        // 2. The new state of the changed endpoints.
        let live: BTreeSet<EndpointId> = changed.iter().copied().filter(|e| engine.endpoint_exists(*e)).collect();
        for e in &live {
            let ep = engine.endpoint(*e);
            let identity = engine.endpoint_identity(*e);
            let iface = pod_iface(*e).filter(|_| !ep.host_network);
            self.by_identity.entry(identity).or_default().insert(*e);
            if iface.is_some() {
                self.local_by_identity.entry(identity).or_default().insert(*e);
                dirty_identities.insert(identity);
            }
            let shadow = Shadow {
                identity,
                shared: engine.identity_shared(identity),
                ips: ep.ips.clone(),
                local: Vec::new(),
                iface,
            };
            self.endpoints.insert(*e, shadow);
        }
        // 3. The new contributions, against the selectors as they are now.
        for (name, endpoints) in &affected {
            let d = self.derived.get_mut(name).expect("derived set");
            if let Some(sel) = d.live_selector(engine) {
                d.members = engine.selector_cache().members(sel).clone();
            }
            for element in self.contributions(name, endpoints) {
                self.add_element(&mut delta, name, element);
            }
        }
        // 4. Chains of the identities that changed or gained/lost local pods.
        for identity in &dirty_identities {
            self.rebuild_chains(engine, *identity, &mut delta);
        }
        let unused: Vec<String> = self.chain_users.iter().filter(|(_, n)| **n == 0).map(|(c, _)| c.clone()).collect();
        for name in unused {
            self.chain_users.remove(&name);
            self.release_chain_sets(&name);
            let before = self.rs.chains.remove(&name);
            delta.chains_before.entry(name).or_insert(before);
        }
        // 5. Local endpoints: their own elements follow their identity's chains.
        let mut relocal: BTreeSet<EndpointId> =
            live.iter().copied().filter(|e| self.endpoints[e].iface.is_some()).collect();
        for identity in &dirty_identities {
            relocal.extend(self.local_by_identity.get(identity).into_iter().flatten());
        }
        for e in relocal {
            let shadow = self.endpoints.get_mut(&e).expect("local endpoint");
            let old = std::mem::take(&mut shadow.local);
            let chains = self.identity_chains.get(&shadow.identity).map(Vec::as_slice).unwrap_or_default();
            let new = local_elements(chains, shadow.iface.as_deref().unwrap_or(""), &shadow.ips);
            shadow.local = new.clone();
            for (set, element) in old {
                self.remove_element(&mut delta, &set, element);
            }
            for (set, element) in new {
                self.add_element(&mut delta, &set, element);
            }
        }
        // 6. Peer sets no chain names any more.
        let unused: Vec<String> = self.set_refs.iter().filter(|(_, n)| **n == 0).map(|(s, _)| s.clone()).collect();
        for name in unused {
            self.set_refs.remove(&name);
            self.derived.remove(&name);
            self.counts.remove(&name);
            self.rs.sets.remove(&name);
            delta.added.remove(&name);
            delta.removed.remove(&name);
            if !delta.new_sets.remove(&name) {
                delta.gone_sets.push(name);
            }
        }
        if self.derived.values().any(|d| d.request.selector().is_some() && d.live_selector(engine).is_none()) {
            return Err(NeedsResync("a chain still names the set of a deleted selector"));
        }
        Ok(delta)
    }

    /// What `endpoints` put in peer set `name`, by their shadows and the
    /// selector members the set last saw.
    fn contributions(&self, name: &str, endpoints: &[EndpointId]) -> Vec<String> {
        let d = &self.derived[name];
        let mut out = Vec::new();
        for s in endpoints.iter().filter_map(|e| self.endpoints.get(e)) {
            let member = d.request.selector().is_some() && d.members.contains(s.identity.0);
            out.extend(d.request.elements_of(&s.shared, &s.ips, member));
        }
        out
    }

    /// Points `identity` at the chains its policy compiles to, creating
    /// those no other identity uses yet. Chains are named by content, so an
    /// existing name is already right; unused ones go at the end of the
    /// update.
    fn rebuild_chains(&mut self, engine: &Engine, identity: IdentityId, delta: &mut Delta) {
        let old = self.identity_chains.remove(&identity).unwrap_or_default();
        let mut new = Vec::new();
        if self.local_by_identity.get(&identity).is_some_and(|l| !l.is_empty()) {
            for direction in [Direction::Ingress, Direction::Egress] {
                let chain = identity_chain(engine, identity, direction, &self.opts);
                let Some((def, rules, requests)) = chain else { continue };
                let name = def.name.clone();
                *self.chain_users.entry(name.clone()).or_insert(0) += 1;
                if !self.rs.chains.contains_key(&name) {
                    let sets = requests.into_iter().map(|req| self.acquire_set(engine, req, delta)).collect();
                    self.chain_sets.insert(name.clone(), sets);
                    let before = self.rs.chains.insert(name.clone(), (def, rules));
                    delta.chains_before.entry(name.clone()).or_insert(before);
                }
                new.push((direction, name));
            }
        }
        for (_, name) in old {
            if let Some(n) = self.chain_users.get_mut(&name) {
                *n -= 1;
            }
        }
        if !new.is_empty() {
            self.identity_chains.insert(identity, new);
        }
    }

    fn release_chain_sets(&mut self, chain: &str) {
        for set in self.chain_sets.remove(chain).unwrap_or_default() {
            if let Some(n) = self.set_refs.get_mut(&set) {
                *n -= 1;
            }
        }
    }

    /// Counts one more reference to a peer set, creating it (with its whole
    /// content, from the shadows) on first use.
    fn acquire_set(&mut self, engine: &Engine, req: SetRequest, delta: &mut Delta) -> String {
        let name = req.name();
        *self.set_refs.entry(name.clone()).or_insert(0) += 1;
        if let Some(existing) = self.derived.get(&name) {
            // Names of named-port sets are 64-bit content hashes.
            debug_assert_eq!(existing.request, req, "set name collision");
            return name;
        }
        self.rs.sets.insert(name.clone(), (req.def(engine), BTreeSet::new()));
        delta.new_sets.insert(name.clone());
        let sel = req.selector();
        let members = sel.map(|s| engine.selector_cache().members(s).clone()).unwrap_or_default();
        let mut elements = Vec::new();
        for (identity, endpoints) in &self.by_identity {
            let member = sel.is_some() && members.contains(identity.0);
            if sel.is_some() && !member {
                continue;
            }
            for e in endpoints {
                let s = &self.endpoints[e];
                elements.extend(req.elements_of(&s.shared, &s.ips, member));
            }
        }
        for element in elements {
            self.add_element(delta, &name, element);
        }
        self.derived.insert(name.clone(), Derived { request: req, members });
        name
    }

    fn add_element(&mut self, delta: &mut Delta, set: &str, element: String) {
        let count = self.counts.entry(set.to_string()).or_default().entry(element.clone()).or_insert(0);
        *count += 1;
        if *count > 1 {
            return;
        }
        self.rs.sets.get_mut(set).expect("known set").1.insert(element.clone());
        if !delta.removed.get_mut(set).is_some_and(|r| r.remove(&element)) {
            delta.added.entry(set.to_string()).or_default().insert(element);
        }
    }

    fn remove_element(&mut self, delta: &mut Delta, set: &str, element: String) {
        let Some(counts) = self.counts.get_mut(set) else { return };
        let Some(count) = counts.get_mut(&element) else { return };
        *count -= 1;
        if *count > 0 {
            return;
        }
        counts.remove(&element);
        if let Some((_, elements)) = self.rs.sets.get_mut(set) {
            elements.remove(&element);
        }
        if !delta.added.get_mut(set).is_some_and(|a| a.remove(&element)) {
            delta.removed.entry(set.to_string()).or_default().insert(element);
        }
    }

    /// One transaction in the order the kernel needs: new chains and sets,
    /// element changes, rewritten chains, then what is gone.
    fn transaction(&self, delta: Delta) -> Transaction {
        let mut tx = Transaction::new(&self.opts.table);
        for (name, before) in &delta.chains_before {
            if let (None, Some((def, _))) = (before, self.rs.chains.get(name)) {
                tx.push(Op::AddChain(def.clone()));
            }
        }
        for name in &delta.new_sets {
            let (def, elements) = &self.rs.sets[name];
            tx.push(Op::AddSet(def.clone()));
            if !elements.is_empty() {
                tx.push(Op::AddElements { set: name.clone(), elements: elements.iter().cloned().collect() });
            }
        }
        for (set, elements) in &delta.removed {
            if !elements.is_empty() && !delta.new_sets.contains(set) && self.rs.sets.contains_key(set) {
                tx.push(Op::DeleteElements { set: set.clone(), elements: elements.iter().cloned().collect() });
            }
        }
        for (set, elements) in &delta.added {
            if !elements.is_empty() && !delta.new_sets.contains(set) {
                tx.push(Op::AddElements { set: set.clone(), elements: elements.iter().cloned().collect() });
            }
        }
        let mut gone_chains = Vec::new();
        for (name, before) in &delta.chains_before {
            match (before, self.rs.chains.get(name)) {
                (Some((_, old)), Some((_, new))) if old == new => {}
                (before, Some((_, rules))) => {
                    if before.is_some() {
                        tx.push(Op::FlushChain(name.clone()));
                    }
                    for rule in rules {
                        tx.push(Op::AddRule { chain: name.clone(), rule: rule.clone() });
                    }
                }
                (Some(_), None) => gone_chains.push(name.clone()),
                (None, None) => {}
            }
        }
        for name in gone_chains {
            tx.push(Op::FlushChain(name.clone()));
            tx.push(Op::DeleteChain(name));
        }
        for name in delta.gone_sets {
            tx.push(Op::DeleteSet(name));
        }
        tx
    }
}

fn remove_from(index: &mut HashMap<IdentityId, BTreeSet<EndpointId>>, identity: IdentityId, e: EndpointId) {
    if let Some(set) = index.get_mut(&identity) {
        set.remove(&e);
        if set.is_empty() {
            index.remove(&identity);
        }
    }
}
