//! The desired nftables state of one node, compiled from the engine.
//!
//! The shape mirrors the engine, so the kernel does what `CompiledIdentity`
//! lookups do:
//! - one set per selector-cache entry (addresses of the endpoints it
//!   matches), one interval set per ipBlock (cidr minus except);
//! - one chain per local isolated identity and direction, one rule per
//!   compiled entry (peer x protocol), commented with its policy and rule;
//! - verdict maps from a local pod's address to its identity's chains.
//!
//! Per packet: conntrack, then at most one map lookup per direction and the
//! rules of one identity (bounded by its policies' rules, never by peers or
//! pods: peers are set elements).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use palisade_engine::{EndpointId, Engine, IdentityId, PeerMatch, PortMatch};
use palisade_model::{Direction, IpBlock, PortSpec, Protocol};

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
}

impl Default for Options {
    fn default() -> Self {
        Options { table: "palisade".into(), deny: DenyAction::Drop }
    }
}

/// Desired state: sets (and maps) with elements, chains with rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub sets: BTreeMap<String, (SetDef, BTreeSet<String>)>,
    pub chains: BTreeMap<String, (ChainDef, Vec<Rule>)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
    fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
    fn ip(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// nft identifiers: letters, digits, underscore.
fn ident(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// A short stable hash for names derived from content.
fn fnv(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h as u32)
}

/// Address ranges of `cidr` minus `except`, disjoint and sorted, in the
/// family of the cidr. Interval sets refuse overlapping elements.
pub fn block_ranges(block: &IpBlock) -> Vec<(IpAddr, IpAddr)> {
    let to_u128 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    };
    let v4 = block.cidr.addr().is_ipv4();
    let from_u128 = |n: u128| if v4 { IpAddr::from((n as u32).to_be_bytes()) } else { IpAddr::from(n.to_be_bytes()) };
    let (start, end) = (to_u128(block.cidr.network()), to_u128(block.cidr.broadcast()));
    let mut holes: Vec<(u128, u128)> =
        block.except.iter().map(|e| (to_u128(e.network()), to_u128(e.broadcast()))).collect();
    holes.sort();
    let mut out = Vec::new();
    let mut cursor = start;
    let mut done = false;
    for (a, b) in holes {
        if b < cursor {
            continue;
        }
        if a > cursor {
            out.push((from_u128(cursor), from_u128(a - 1)));
        }
        if b >= end {
            done = true;
            break;
        }
        cursor = b + 1;
    }
    if !done && cursor <= end {
        out.push((from_u128(cursor), from_u128(end)));
    }
    out
}

fn range_element((a, b): (IpAddr, IpAddr)) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
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
    let mut b = Builder { engine, rs: Ruleset::default(), by_identity: HashMap::new(), opts };
    for (id, ep) in engine.endpoints() {
        b.by_identity.entry(engine.endpoint_identity(id)).or_default().push(ep.ips.clone());
    }
    b.base();
    let mut local_identities: BTreeSet<IdentityId> = BTreeSet::new();
    for (id, ep) in engine.endpoints() {
        let Some(iface) = pod_iface(id).filter(|_| !ep.host_network) else { continue };
        if !iface.is_empty() {
            b.element("pod_ifaces", quote(&iface));
            for ip in &ep.ips {
                b.element(&format!("pod_src_{}", Family::of(ip).suffix()), format!("{} . {ip}", quote(&iface)));
            }
        }
        let identity = engine.endpoint_identity(id);
        local_identities.insert(identity);
        let compiled = engine.compiled(identity);
        for direction in [Direction::Ingress, Direction::Egress] {
            if compiled.direction(direction).is_none() {
                continue;
            }
            let chain = b.chain_name(direction, identity);
            for ip in &ep.ips {
                let map = format!("{}_{}", dir_name(direction), Family::of(ip).suffix());
                b.element(&map, format!("{ip} : jump {chain}"));
            }
        }
    }
    for identity in local_identities {
        for direction in [Direction::Ingress, Direction::Egress] {
            b.identity_chain(identity, direction);
        }
    }
    b.rs
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

struct Builder<'a> {
    engine: &'a Engine,
    rs: Ruleset,
    by_identity: HashMap<IdentityId, Vec<Vec<IpAddr>>>,
    opts: &'a Options,
}

impl Builder<'_> {
    fn set(&mut self, name: &str, key: KeyType, interval: bool, map_to: Option<&'static str>, comment: String) {
        self.rs
            .sets
            .entry(name.to_string())
            .or_insert_with(|| (SetDef { name: name.to_string(), key, map_to, interval, comment }, BTreeSet::new()));
    }

    fn element(&mut self, set: &str, element: String) {
        self.rs.sets.get_mut(set).expect("set declared before its elements").1.insert(element);
    }

    fn chain(&mut self, name: &str, hook: Option<Hook>, comment: String, rules: Vec<Rule>) {
        self.rs.chains.insert(name.to_string(), (ChainDef { name: name.to_string(), hook, comment }, rules));
    }

    /// The static part: the forward hook and the dispatch maps.
    fn base(&mut self) {
        self.set("pod_ifaces", KeyType(vec!["ifname"]), false, None, "node side of local pods' veths".into());
        for f in FAMILIES {
            self.set(
                &format!("pod_src_{}", f.suffix()),
                KeyType(vec!["ifname", f.addr_type()]),
                false,
                None,
                "local pod veth . an address of that pod (anti-spoofing)".into(),
            );
        }
        for f in FAMILIES {
            for d in [Direction::Ingress, Direction::Egress] {
                let name = format!("{}_{}", dir_name(d), f.suffix());
                let what = if d == Direction::Ingress { "destination" } else { "source" };
                self.set(
                    &name,
                    KeyType(vec![f.addr_type()]),
                    false,
                    Some("verdict"),
                    format!("local isolated pod ({what}) -> its {} chain", dir_name(d)),
                );
            }
        }
        let rule = |e: &[&str], c: &str| Rule {
            exprs: e.iter().map(|s| s.to_string()).collect(),
            comment: Some(c.to_string()),
        };
        let rules = vec![
            rule(
                &["meta nfproto ipv4 iifname @pod_ifaces iifname . ip saddr != @pod_src_v4 drop"],
                "anti-spoofing: a pod sends only from its own addresses",
            ),
            rule(
                &["meta nfproto ipv6 iifname @pod_ifaces iifname . ip6 saddr != @pod_src_v6 drop"],
                "anti-spoofing: a pod sends only from its own addresses",
            ),
            rule(&["ct state established,related accept"], "replies and related ICMP of allowed connections"),
            rule(&["ct state invalid drop"], "not part of any known connection"),
            rule(&["ip saddr vmap @egress_v4"], "egress policy of local pods"),
            rule(&["ip6 saddr vmap @egress_v6"], "egress policy of local pods"),
            rule(&["ip daddr vmap @ingress_v4"], "ingress policy of local pods"),
            rule(&["ip6 daddr vmap @ingress_v6"], "ingress policy of local pods"),
        ];
        let hook = Hook { kind: "filter", hook: "forward", priority: "filter", policy: "accept" };
        self.chain("forward", Some(hook), "pod traffic crossing this node; non-isolated pods pass".into(), rules);
    }

    fn chain_name(&self, d: Direction, identity: IdentityId) -> String {
        let ns = &self.engine.identity(identity).namespace;
        format!("{}_{}_id{}", dir_name(d), ident(ns), identity.0)
    }

    fn selector_set(&mut self, sel: palisade_engine::SelectorId, f: Family) -> String {
        let name = format!("sel_{}_{}", sel.0, f.suffix());
        if !self.rs.sets.contains_key(&name) {
            let comment = self.engine.selector_cache().selector(sel).to_string();
            self.set(&name, KeyType(vec![f.addr_type()]), false, None, comment);
            let members: Vec<u32> = self.engine.selector_cache().members(sel).iter().collect();
            let mut elements = Vec::new();
            for i in members {
                for ips in self.by_identity.get(&IdentityId(i)).into_iter().flatten() {
                    elements.extend(ips.iter().filter(|ip| Family::of(ip) == f).map(|ip| ip.to_string()));
                }
            }
            for e in elements {
                self.element(&name, e);
            }
        }
        name
    }

    fn block_set(&mut self, block: &IpBlock, f: Family) -> Option<String> {
        if Family::of(&block.cidr.addr()) != f {
            return None;
        }
        let text = block.to_string();
        let name = format!("blk_{}_{}", fnv(&text), f.suffix());
        if !self.rs.sets.contains_key(&name) {
            self.set(&name, KeyType(vec![f.addr_type()]), true, None, format!("ipBlock {text}"));
            for r in block_ranges(block) {
                self.element(&name, range_element(r));
            }
        }
        Some(name)
    }

    /// Egress with a named port: (peer address . port) pairs, resolved on each peer.
    fn named_port_set(&mut self, peer: &PeerMatch, name: &str, proto: Protocol, f: Family) -> String {
        let label = format!("{peer:?}/{name}/{proto}");
        let set = format!("np_{}_{}", fnv(&label), f.suffix());
        if !self.rs.sets.contains_key(&set) {
            self.set(
                &set,
                KeyType(vec![f.addr_type(), "inet_service"]),
                false,
                None,
                format!("peers declaring {proto} port {name:?}"),
            );
            let mut elements = Vec::new();
            for (id, ep) in self.engine.endpoints() {
                let identity = self.engine.endpoint_identity(id);
                let matches = match peer {
                    PeerMatch::Any => true,
                    PeerMatch::Selector(s) => self.engine.selector_cache().contains(*s, identity),
                    PeerMatch::IpBlock(_) => true, // the address check stays in the rule
                };
                if !matches {
                    continue;
                }
                for port in self.engine.identity(identity).named_ports(name, proto) {
                    for ip in ep.ips.iter().filter(|ip| Family::of(ip) == f) {
                        elements.push(format!("{ip} . {port}"));
                    }
                }
            }
            for e in elements {
                self.element(&set, e);
            }
        }
        set
    }

    fn identity_chain(&mut self, identity: IdentityId, d: Direction) {
        let compiled = self.engine.compiled(identity).clone();
        let Some(side) = compiled.direction(d) else { return };
        let chain = self.chain_name(d, identity);
        let id = self.engine.identity(identity).clone();
        let labels: Vec<String> = id.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let comment = format!(
            "{} of identity {} (namespace {}, labels {})",
            dir_name(d),
            identity.0,
            id.namespace,
            labels.join(",")
        );
        let (addr_field, allow) = match d {
            Direction::Ingress => ("saddr", "accept"),
            // Egress allowed: back to the forward chain for the destination's ingress check.
            Direction::Egress => ("daddr", "return"),
        };
        let mut rules = Vec::new();
        for entry in &side.entries {
            let p = self.engine.policy(entry.origin.policy);
            let origin = match entry.origin.peer {
                Some(i) => format!("{}/{} {} rule {} peer {i}", p.namespace, p.name, d, entry.origin.rule),
                None => format!("{}/{} {} rule {} (any peer)", p.namespace, p.name, d, entry.origin.rule),
            };
            for f in FAMILIES {
                let peer_expr = match &entry.peer {
                    PeerMatch::Any => None,
                    PeerMatch::Selector(s) => Some(format!("{} {addr_field} @{}", f.ip(), self.selector_set(*s, f))),
                    PeerMatch::IpBlock(b) => match self.block_set(b, f) {
                        Some(set) => Some(format!("{} {addr_field} @{set}", f.ip())),
                        None => continue, // an IPv4 block never matches IPv6 traffic
                    },
                };
                let family_expr = format!("meta nfproto {}", if f == Family::V4 { "ipv4" } else { "ipv6" });
                let mut base = vec![family_expr];
                base.extend(peer_expr);
                match &entry.ports {
                    PortMatch::Any => {
                        let mut exprs = base.clone();
                        exprs.push(allow.into());
                        rules.push(Rule { exprs, comment: Some(origin.clone()) });
                    }
                    PortMatch::Ports(list) => {
                        for proto in Protocol::ALL {
                            let mut numeric: Vec<String> = Vec::new();
                            let mut all = false;
                            let mut named: Vec<&str> = Vec::new();
                            for pp in list.iter().filter(|pp| pp.protocol == proto) {
                                match &pp.port {
                                    PortSpec::All => all = true,
                                    PortSpec::Range { start, end } if start == end => numeric.push(start.to_string()),
                                    PortSpec::Range { start, end } => numeric.push(format!("{start}-{end}")),
                                    PortSpec::Named(n) => named.push(n),
                                }
                            }
                            let l4 = format!("meta l4proto {}", proto.as_lower());
                            if all {
                                rules.push(Rule {
                                    exprs: [base.clone(), vec![l4.clone(), allow.into()]].concat(),
                                    comment: Some(origin.clone()),
                                });
                                continue;
                            }
                            // Ingress: named ports resolve on this identity.
                            if d == Direction::Ingress {
                                for n in &named {
                                    numeric.extend(id.named_ports(n, proto).map(|p| p.to_string()));
                                }
                            } else {
                                for n in &named {
                                    let set = self.named_port_set(&entry.peer, n, proto, f);
                                    let exprs = [
                                        base.clone(),
                                        vec![l4.clone(), format!("{} daddr . th dport @{set}", f.ip()), allow.into()],
                                    ]
                                    .concat();
                                    rules.push(Rule { exprs, comment: Some(format!("{origin}, port {n:?}")) });
                                }
                            }
                            numeric.sort();
                            numeric.dedup();
                            if !numeric.is_empty() {
                                let ports = if numeric.len() == 1 {
                                    numeric[0].clone()
                                } else {
                                    format!("{{ {} }}", numeric.join(", "))
                                };
                                rules.push(Rule {
                                    exprs: [base.clone(), vec![l4.clone(), format!("th dport {ports}"), allow.into()]]
                                        .concat(),
                                    comment: Some(origin.clone()),
                                });
                            }
                        }
                    }
                }
            }
        }
        let policies: Vec<String> = side
            .policies
            .iter()
            .map(|p| self.engine.policy(*p))
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let end = format!("isolated by {}: nothing else allowed", policies.join(", "));
        match self.opts.deny {
            DenyAction::Drop => rules.push(Rule { exprs: vec!["drop".into()], comment: Some(end) }),
            DenyAction::Reject => {
                rules.push(Rule {
                    exprs: vec!["meta l4proto tcp reject with tcp reset".into()],
                    comment: Some(end.clone()),
                });
                rules.push(Rule { exprs: vec!["reject with icmpx admin-prohibited".into()], comment: Some(end) });
            }
        }
        self.chain(&chain, None, comment, rules);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ranges_carve_out_excepts() {
        let b = IpBlock {
            cidr: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.1.0.0/16".parse().unwrap(), "10.0.0.0/24".parse().unwrap()],
        };
        let r: Vec<String> = block_ranges(&b).into_iter().map(range_element).collect();
        assert_eq!(r, vec!["10.0.1.0-10.0.255.255", "10.2.0.0-10.255.255.255"]);
        let all = IpBlock { cidr: "0.0.0.0/0".parse().unwrap(), except: vec![] };
        assert_eq!(
            block_ranges(&all).into_iter().map(range_element).collect::<Vec<_>>(),
            vec!["0.0.0.0-255.255.255.255"]
        );
        let v6 = IpBlock { cidr: "fd00::/126".parse().unwrap(), except: vec!["fd00::1/128".parse().unwrap()] };
        assert_eq!(
            block_ranges(&v6).into_iter().map(range_element).collect::<Vec<_>>(),
            vec!["fd00::", "fd00::2-fd00::3"]
        );
    }
}
