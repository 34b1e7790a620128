//! The rules of one identity's policy chain, shared by the full compiler and
//! the incremental one. Peers are never rules: a rule names a set, and the
//! caller decides how that set is created and filled ([`SetRequest`]).

use std::net::IpAddr;

use palisade_engine::{Engine, IdentityId, PeerMatch, PortMatch, SelectorId};
use palisade_model::{Direction, IpBlock, PortSpec, Protocol};

use crate::nft::{ChainDef, KeyType, Rule, SetDef};
use crate::ruleset::{DenyAction, Options};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
    pub(crate) fn addr_type(self) -> &'static str {
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

pub(crate) const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

pub(crate) fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// nft identifiers: letters, digits, underscore.
fn ident(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// A stable 64-bit hash for names derived from content (ipBlocks, named
/// ports): at 64 bits a collision among a cluster's sets is not a practical
/// concern, and the compilers still check that a reused name means the same.
fn fnv(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A peer set a rule looks up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum SetRequest {
    /// Addresses of the endpoints a selector matches. Selector ids are
    /// recycled, so the name also carries a hash of the selector's text
    /// (`tag`): a recycled id with another meaning is another set.
    Selector { sel: SelectorId, tag: String, family: Family },
    /// Egress to a named port: (peer address . port) of the endpoints that
    /// declare it; `peer` narrows to a selector's members (`None`: anyone).
    NamedPort { peer: Option<SelectorId>, label: String, name: String, proto: Protocol, family: Family },
}

impl SetRequest {
    pub(crate) fn name(&self) -> String {
        match self {
            SetRequest::Selector { sel, tag, family } => format!("sel_{}_{tag}_{}", sel.0, family.suffix()),
            SetRequest::NamedPort { label, family, .. } => format!("np_{}_{}", fnv(label), family.suffix()),
        }
    }

    pub(crate) fn def(&self, engine: &Engine) -> SetDef {
        let (key, comment) = match self {
            SetRequest::Selector { sel, family, .. } => {
                (KeyType(vec![family.addr_type()]), engine.selector_cache().selector(*sel).to_string())
            }
            SetRequest::NamedPort { name, proto, family, .. } => {
                (KeyType(vec![family.addr_type(), "inet_service"]), format!("peers declaring {proto} port {name:?}"))
            }
        };
        SetDef { name: self.name(), key, map_to: None, interval: false, comment }
    }

    /// What the set holds for one endpoint of `identity` with addresses
    /// `ips`, given whether the identity is a member of the peer selector.
    pub(crate) fn elements_of(
        &self,
        identity: &palisade_engine::Identity,
        ips: &[IpAddr],
        member: bool,
    ) -> Vec<String> {
        match self {
            SetRequest::Selector { family, .. } => {
                if !member {
                    return Vec::new();
                }
                ips.iter().filter(|ip| Family::of(ip) == *family).map(|ip| ip.to_string()).collect()
            }
            SetRequest::NamedPort { peer, name, proto, family, .. } => {
                if peer.is_some() && !member {
                    return Vec::new();
                }
                let mut out = Vec::new();
                for port in identity.named_ports(name, *proto) {
                    out.extend(ips.iter().filter(|ip| Family::of(ip) == *family).map(|ip| format!("{ip} . {port}")));
                }
                out
            }
        }
    }

    /// The selector whose members this set follows, if any.
    pub(crate) fn selector(&self) -> Option<SelectorId> {
        match self {
            SetRequest::Selector { sel, .. } => Some(*sel),
            SetRequest::NamedPort { peer, .. } => *peer,
        }
    }
}

/// 32 bits of the selector text's hash: tells apart the meanings of a
/// recycled selector id.
pub(crate) fn selector_tag(engine: &Engine, sel: SelectorId) -> String {
    fnv(&engine.selector_cache().selector(sel).to_string())[8..].to_string()
}

/// The match of an ipBlock in one family: the cidr as a prefix compare and
/// each except inside it as a negated one. `None` if an except covers the
/// whole cidr. Excepts are few per block (bounded by the policy, not the
/// cluster), so the compares cost less than a set lookup.
fn block_match(block: &IpBlock, ip: &str, field: &str) -> Option<String> {
    let cidr = block.cidr.trunc();
    let mut out = if cidr.prefix_len() == 0 { String::new() } else { format!("{ip} {field} {cidr}") };
    for except in block.except.iter().map(|e| e.trunc()) {
        if except.contains(&cidr) {
            return None;
        }
        if cidr.contains(&except) {
            let sep = if out.is_empty() { "" } else { " " };
            out.push_str(&format!("{sep}{ip} {field} != {except}"));
        }
    }
    Some(out)
}

/// The chain of `identity` in direction `d`, with the peer sets its rules
/// name, or `None` if no policy isolates that direction.
///
/// Chains are named by their content (`<direction>_<namespace>_<first
/// policy>_<hash>`), so identities whose policy compiles to the same rules
/// share one chain: a pod of a new ReplicaSet, whose labels are new but
/// whose policies are not, needs no new chain, only map elements. A name
/// never changes meaning, so chains are only ever added and deleted.
pub(crate) fn identity_chain(
    engine: &Engine,
    identity: IdentityId,
    d: Direction,
    opts: &Options,
) -> Option<(ChainDef, Vec<Rule>, Vec<SetRequest>)> {
    let mut requests = Vec::new();
    let mut set = |req: SetRequest| {
        let name = req.name();
        requests.push(req);
        name
    };
    let compiled = engine.compiled(identity);
    let side = compiled.direction(d)?;
    let id = engine.identity(identity);
    let (addr_field, allow) = match d {
        Direction::Ingress => ("saddr", "accept"),
        // Egress allowed: back to the forward chain for the destination's ingress check.
        Direction::Egress => ("daddr", "return"),
    };
    let mut rules = Vec::new();
    for entry in &side.entries {
        let p = engine.policy(entry.origin.policy);
        let origin = match entry.origin.peer {
            Some(i) => format!("{}/{} {} rule {} peer {i}", p.namespace, p.name, d, entry.origin.rule),
            None => format!("{}/{} {} rule {} (any peer)", p.namespace, p.name, d, entry.origin.rule),
        };
        for f in FAMILIES {
            let peer_expr = match &entry.peer {
                PeerMatch::Any => None,
                PeerMatch::Selector(s) => {
                    let tag = selector_tag(engine, *s);
                    Some(format!("{} {addr_field} @{}", f.ip(), set(SetRequest::Selector { sel: *s, tag, family: f })))
                }
                // An IPv4 block never matches IPv6 traffic.
                PeerMatch::IpBlock(b) if Family::of(&b.cidr.addr()) != f => continue,
                // Prefix compares, no interval set: nft 1.0.6 downloads the
                // elements of every interval set (named or anonymous) in the
                // table before any element change, which made a one-pod
                // patch cost 30-60 ms at 400 blocks.
                PeerMatch::IpBlock(b) => match block_match(b, f.ip(), addr_field) {
                    Some(expr) => (!expr.is_empty()).then_some(expr),
                    None => continue, // except covers the whole cidr: matches nothing
                },
            };
            let family_expr = format!("meta nfproto {}", if f == Family::V4 { "ipv4" } else { "ipv6" });
            let mut base = vec![family_expr];
            base.extend(peer_expr);
            let PortMatch::Ports(list) = &entry.ports else {
                rules.push(Rule { exprs: [base, vec![allow.into()]].concat(), comment: Some(origin.clone()) });
                continue;
            };
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
                if d == Direction::Ingress {
                    // Ingress: named ports resolve on this identity.
                    for n in &named {
                        numeric.extend(id.named_ports(n, proto).map(|p| p.to_string()));
                    }
                } else {
                    // Egress: on each peer, so the port goes with the address.
                    for n in &named {
                        let peer = match &entry.peer {
                            PeerMatch::Selector(s) => Some(*s),
                            PeerMatch::Any | PeerMatch::IpBlock(_) => None,
                        };
                        let label = format!("{:?}/{n}/{proto}", entry.peer);
                        let name = n.to_string();
                        let np = set(SetRequest::NamedPort { peer, label, name, proto, family: f });
                        let exprs = [
                            base.clone(),
                            vec![l4.clone(), format!("{} daddr . th dport @{np}", f.ip()), allow.into()],
                        ]
                        .concat();
                        rules.push(Rule { exprs, comment: Some(format!("{origin}, port {n:?}")) });
                    }
                }
                numeric.sort();
                numeric.dedup();
                // One rule per port or range rather than an anonymous set:
                // sets with ranges are interval sets (see ipBlock above).
                for ports in numeric {
                    rules.push(Rule {
                        exprs: [base.clone(), vec![l4.clone(), format!("th dport {ports}"), allow.into()]].concat(),
                        comment: Some(origin.clone()),
                    });
                }
            }
        }
    }
    let policies: Vec<String> =
        side.policies.iter().map(|p| engine.policy(*p)).map(|p| format!("{}/{}", p.namespace, p.name)).collect();
    let end = format!("isolated by {}: nothing else allowed", policies.join(", "));
    let comment = format!("{} of pods in {} {end}", dir_name(d), id.namespace);
    match opts.deny {
        DenyAction::Drop => rules.push(Rule { exprs: vec!["drop".into()], comment: Some(end) }),
        DenyAction::Reject => {
            rules.push(Rule {
                exprs: vec!["meta l4proto tcp reject with tcp reset".into()],
                comment: Some(end.clone()),
            });
            rules.push(Rule { exprs: vec!["reject with icmpx admin-prohibited".into()], comment: Some(end) });
        }
    }
    let content: String = rules.iter().map(|r| format!("{r}\n")).collect();
    let first_policy = side.policies.first().map(|p| engine.policy(*p).name.as_str()).unwrap_or("");
    let mut first_policy = ident(first_policy);
    first_policy.truncate(40);
    let name =
        format!("{}_{}_{first_policy}_{}", dir_name(d), ident(&id.namespace), fnv(&format!("{comment}\n{content}")));
    // Only the sets a rule names: a peer whose ports resolve to nothing on
    // this identity makes no rule, and its set must not be kept alive.
    requests.retain(|r| content.contains(&format!("@{} ", r.name())));
    requests.dedup();
    Some((ChainDef { name, hook: None, comment }, rules, requests))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_prefix_compares_with_negated_excepts() {
        let block = |cidr: &str, except: &[&str]| IpBlock {
            cidr: cidr.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
        };
        assert_eq!(
            block_match(&block("10.0.0.0/8", &["10.1.0.0/16", "192.168.0.0/16"]), "ip", "daddr").as_deref(),
            Some("ip daddr 10.0.0.0/8 ip daddr != 10.1.0.0/16"),
            "an except outside the cidr changes nothing"
        );
        assert_eq!(
            block_match(&block("0.0.0.0/0", &["10.0.0.0/8"]), "ip", "saddr").as_deref(),
            Some("ip saddr != 10.0.0.0/8")
        );
        assert_eq!(block_match(&block("0.0.0.0/0", &[]), "ip", "saddr").as_deref(), Some(""));
        assert_eq!(block_match(&block("fd00::/126", &["fd00::/120"]), "ip6", "saddr"), None);
    }
}
