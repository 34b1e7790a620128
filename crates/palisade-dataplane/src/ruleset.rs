//! The desired nftables state of one node, compiled from the engine.
//!
//! The shape mirrors the engine, so the kernel does what `CompiledIdentity`
//! lookups do:
//! - one set per selector-cache entry (addresses of the endpoints it
//!   matches); an ipBlock (cidr minus except) is an anonymous interval set
//!   inside its rule;
//! - one chain per local isolated identity and direction, one rule per
//!   compiled entry (peer x protocol), commented with its policy and rule;
//! - verdict maps from a local pod's address to its identity's chains.
//!
//! Per packet: conntrack, then at most one map lookup per direction and the
//! rules of one identity (bounded by its policies' rules, never by peers or
//! pods: peers are set elements).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use palisade_engine::{EndpointId, Engine, IdentityId};
use palisade_model::Direction;

use crate::chains::{dir_name, identity_chain, Family, SetRequest, FAMILIES};
use crate::nft::{quote, ChainDef, Hook, KeyType, Op, Rule, SetDef, Transaction};

/// What happens to a packet no rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyAction {
    /// Silently dropped: the client times out. The default, as in Calico and
    /// Cilium: it reveals nothing to a scanner.
    Drop,
    /// TCP reset, ICMP admin-prohibited otherwise: the client fails fast.
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub table: String,
    pub deny: DenyAction,
    /// Node-side pod interfaces start with this (palisade-cni's `pal`):
    /// one that is not a known local pod is dropped both ways, so a pod
    /// the plugin has wired is unreachable until its policy is in place.
    pub pod_if_prefix: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options { table: "palisade".into(), deny: DenyAction::Drop, pod_if_prefix: None }
    }
}

impl Options {
    pub fn new(deny: DenyAction) -> Self {
        Options { deny, ..Options::default() }
    }
}

/// Desired state: sets (and maps) with elements, chains with rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub sets: BTreeMap<String, (SetDef, BTreeSet<String>)>,
    pub chains: BTreeMap<String, (ChainDef, Vec<Rule>)>,
}

/// Compiles the desired state for the endpoints `is_local` says run here,
/// without anti-spoofing (their interfaces are unknown).
pub fn compile(engine: &Engine, is_local: impl Fn(EndpointId) -> bool, opts: &Options) -> Ruleset {
    compile_node(engine, |id| is_local(id).then(String::new), opts)
}

/// Compiles the desired state of one node. `pod_iface` is `Some` for the
/// endpoints that run here, with the node-side interface of the pod's veth
/// (empty if unknown): packets arriving from that interface must carry one
/// of the pod's addresses, or they are dropped before anything else.
pub fn compile_node(engine: &Engine, pod_iface: impl Fn(EndpointId) -> Option<String>, opts: &Options) -> Ruleset {
    let mut rs = Ruleset::default();
    rs.add_base(opts);
    let local: Vec<(EndpointId, String)> = engine
        .endpoints()
        .filter(|(_, ep)| !ep.host_network)
        .filter_map(|(id, _)| Some((id, pod_iface(id)?)))
        .collect();
    let mut by_identity: HashMap<IdentityId, Vec<&[IpAddr]>> = HashMap::new();
    for (id, ep) in engine.endpoints() {
        by_identity.entry(engine.endpoint_identity(id)).or_default().push(&ep.ips);
    }
    let mut chains_of: HashMap<IdentityId, Vec<(Direction, String)>> = HashMap::new();
    for identity in local.iter().map(|(id, _)| engine.endpoint_identity(*id)) {
        if chains_of.contains_key(&identity) {
            continue;
        }
        let mut names = Vec::new();
        for direction in [Direction::Ingress, Direction::Egress] {
            let Some((def, rules, requests)) = identity_chain(engine, identity, direction, opts) else { continue };
            for req in requests {
                rs.sets
                    .entry(req.name())
                    .or_insert_with(|| (req.def(engine), full_contents(engine, &req, &by_identity)));
            }
            names.push((direction, def.name.clone()));
            rs.chains.insert(def.name.clone(), (def, rules));
        }
        chains_of.insert(identity, names);
    }
    for (id, iface) in &local {
        let chains = &chains_of[&engine.endpoint_identity(*id)];
        for (set, element) in local_elements(chains, iface, &engine.endpoint(*id).ips) {
            rs.sets.get_mut(&set).expect("base set").1.insert(element);
        }
    }
    rs
}

/// A set's whole content, straight from the engine.
fn full_contents(
    engine: &Engine,
    req: &SetRequest,
    by_identity: &HashMap<IdentityId, Vec<&[IpAddr]>>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (identity, endpoints) in by_identity {
        let member = req.selector().is_some_and(|s| engine.selector_cache().contains(s, *identity));
        for ips in endpoints {
            out.extend(req.elements_of(engine.identity(*identity), ips, member));
        }
    }
    out
}

/// The base-set elements one local endpoint contributes: its veth for
/// anti-spoofing (if known), and its addresses in the dispatch maps of the
/// directions its identity is isolated in, to that direction's `chains`.
pub(crate) fn local_elements(chains: &[(Direction, String)], iface: &str, ips: &[IpAddr]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !iface.is_empty() {
        out.push(("pod_ifaces".to_string(), quote(iface)));
        for ip in ips {
            out.push((format!("pod_src_{}", Family::of(ip).suffix()), format!("{} . {ip}", quote(iface))));
        }
    }
    for (direction, chain) in chains {
        for ip in ips {
            out.push((format!("{}_{}", dir_name(*direction), Family::of(ip).suffix()), format!("{ip} : jump {chain}")));
        }
    }
    out
}

impl Ruleset {
    /// The static part: the forward hook, anti-spoofing and dispatch sets.
    pub(crate) fn add_base(&mut self, opts: &Options) {
        let mut set = |name: &str, key: KeyType, map_to: Option<&'static str>, comment: String| {
            let def = SetDef { name: name.to_string(), key, map_to, interval: false, comment };
            self.sets.insert(name.to_string(), (def, BTreeSet::new()));
        };
        set("pod_ifaces", KeyType(vec!["ifname"]), None, "node side of local pods' veths".into());
        for f in FAMILIES {
            set(
                &format!("pod_src_{}", f.suffix()),
                KeyType(vec!["ifname", f.addr_type()]),
                None,
                "local pod veth . an address of that pod (anti-spoofing)".into(),
            );
        }
        for f in FAMILIES {
            for d in [Direction::Ingress, Direction::Egress] {
                let what = if d == Direction::Ingress { "destination" } else { "source" };
                set(
                    &format!("{}_{}", dir_name(d), f.suffix()),
                    KeyType(vec![f.addr_type()]),
                    Some("verdict"),
                    format!("local isolated pod ({what}) -> its {} chain", dir_name(d)),
                );
            }
        }
        let rule = |e: &str, c: &str| Rule { exprs: vec![e.to_string()], comment: Some(c.to_string()) };
        // Established packets first, as in the conntrack floor: each packet
        // from a pod has already passed the sender check on its veth (tc,
        // `sender.rs`), so a forged one cannot ride another pod's flow.
        // `from_pod` repeats that check for packets that open a connection,
        // and drops everything from a veth that is not confirmed yet.
        let from_pod = match &opts.pod_if_prefix {
            Some(prefix) => format!("iifname \"{prefix}*\" jump from_pod"),
            None => "iifname @pod_ifaces jump from_pod".to_string(),
        };
        let mut rules = vec![
            rule("ct state established accept", "packets of allowed connections, both ways"),
            // `invalid` here rather than after `from_pod`: both only drop.
            rule(
                "ct state vmap { invalid : drop, related : jump related }",
                "not part of any known connection; ICMP errors about one",
            ),
            rule(&from_pod, "from a pod: its own source address, or dropped"),
        ];
        if let Some(prefix) = &opts.pod_if_prefix {
            rules.push(rule(
                &format!("oifname \"{prefix}*\" oifname != @pod_ifaces drop"),
                "to a pod wired by palisade-cni whose policy is not in the kernel yet",
            ));
        }
        rules.extend([
            rule("ip saddr vmap @egress_v4", "egress policy of local pods"),
            rule("ip6 saddr vmap @egress_v6", "egress policy of local pods"),
            rule("ip daddr vmap @ingress_v4", "ingress policy of local pods"),
            rule("ip6 daddr vmap @ingress_v6", "ingress policy of local pods"),
        ]);
        let sender = vec![
            rule("iifname . ip saddr @pod_src_v4 return", "a local pod's own address"),
            rule("iifname . ip6 saddr @pod_src_v6 return", "a local pod's own address"),
            rule("drop", "a forged source, or a pod whose policy is not in the kernel yet"),
        ];
        let def = ChainDef {
            name: "from_pod".into(),
            hook: None,
            comment: "anti-spoofing: a pod sends only from its own addresses".into(),
        };
        self.chains.insert("from_pod".into(), (def, sender));
        // A related packet (an ICMP error) carries the connection it quotes
        // as its conntrack entry. The veth check proves who sent it, not
        // that the sender is part of that connection: a pod could fake
        // errors about other pods' flows (unreachable, packet too big).
        let pod_veth = match &opts.pod_if_prefix {
            Some(prefix) => format!("iifname \"{prefix}*\" drop"),
            None => "iifname @pod_ifaces drop".to_string(),
        };
        let related = vec![
            rule("iifname . ct original ip saddr @pod_src_v4 accept", "a pod's error about its own connection"),
            rule("iifname . ct reply ip saddr @pod_src_v4 accept", "a pod's error about its own connection"),
            rule("iifname . ct original ip6 saddr @pod_src_v6 accept", "a pod's error about its own connection"),
            rule("iifname . ct reply ip6 saddr @pod_src_v6 accept", "a pod's error about its own connection"),
            rule(&pod_veth, "a pod's error about a connection it is not part of"),
            rule("accept", "from the network, about an allowed connection"),
        ];
        let def = ChainDef {
            name: "related".into(),
            hook: None,
            comment: "ICMP errors: a pod reports only on its own connections".into(),
        };
        self.chains.insert("related".into(), (def, related));
        let hook = Hook { kind: "filter", hook: "forward", priority: "filter", policy: "accept" };
        let def = ChainDef {
            name: "forward".into(),
            hook: Some(hook),
            comment: "pod traffic crossing this node; non-isolated pods pass".into(),
        };
        self.chains.insert("forward".into(), (def, rules));
    }
}

impl Ruleset {
    /// Replaces our whole table atomically (`add table; delete table;` then
    /// everything): the first apply, or a resync after a restart.
    pub fn full_transaction(&self, table: &str) -> Transaction {
        let mut tx = Transaction::new(table);
        tx.push(Op::AddTable);
        tx.push(Op::DeleteTable);
        tx.push(Op::AddTable);
        tx.ops.extend(self.diff_transaction(&Ruleset::default(), table).ops);
        tx
    }

    fn add_all(&self, tx: &mut Transaction, old: &Ruleset) {
        for (name, (def, _)) in &self.chains {
            if !old.chains.contains_key(name) {
                tx.push(Op::AddChain(def.clone()));
            }
        }
        for (name, (def, elements)) in &self.sets {
            if !old.sets.contains_key(name) {
                tx.push(Op::AddSet(def.clone()));
                if !elements.is_empty() {
                    tx.push(Op::AddElements { set: name.clone(), elements: elements.iter().cloned().collect() });
                }
            }
        }
    }

    /// The patch from `old` to `self`, as one transaction: new chains and
    /// sets first, element changes, chains rewritten, then what is gone.
    /// Only what changed is touched.
    pub fn diff_transaction(&self, old: &Ruleset, table: &str) -> Transaction {
        let mut tx = Transaction::new(table);
        self.add_all(&mut tx, old);
        for (name, (_, elements)) in &self.sets {
            if let Some((_, before)) = old.sets.get(name) {
                let gone: Vec<String> = before.difference(elements).cloned().collect();
                let new: Vec<String> = elements.difference(before).cloned().collect();
                if !gone.is_empty() {
                    tx.push(Op::DeleteElements { set: name.clone(), elements: gone });
                }
                if !new.is_empty() {
                    tx.push(Op::AddElements { set: name.clone(), elements: new });
                }
            }
        }
        for (name, (_, rules)) in &self.chains {
            let before = old.chains.get(name).map(|(_, r)| r);
            if before != Some(rules) {
                if before.is_some() {
                    tx.push(Op::FlushChain(name.clone()));
                }
                for rule in rules {
                    tx.push(Op::AddRule { chain: name.clone(), rule: rule.clone() });
                }
            }
        }
        for name in old.chains.keys().filter(|n| !self.chains.contains_key(*n)) {
            tx.push(Op::FlushChain(name.clone()));
            tx.push(Op::DeleteChain(name.clone()));
        }
        for name in old.sets.keys().filter(|n| !self.sets.contains_key(*n)) {
            tx.push(Op::DeleteSet(name.clone()));
        }
        tx
    }
}
