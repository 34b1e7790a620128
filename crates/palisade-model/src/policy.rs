//! NetworkPolicy (networking.k8s.io/v1) in validated form.
//!
//! Conversion applies the API server's `ValidateNetworkPolicySpec` rules and
//! resolves the API's defaults (protocol TCP, policyTypes), so the engine
//! never sees an optional that changes meaning.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::field::{FieldErrors, FieldPath};
use crate::labels::LabelSelector;
use crate::names;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The API's spelling (`TCP`), which is also how manifests write it.
    pub fn parse_api(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Lower case, as the CLI writes it (`tcp/80`).
    pub fn as_lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    pub fn as_api(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_api())
    }
}

/// Which ports of a protocol a policy port entry opens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PortSpec {
    /// No `port`: every port of the protocol.
    All,
    /// `port` (and `endPort`): an inclusive range; a single port has start == end.
    Range { start: u16, end: u16 },
    /// A named port, resolved against the destination's container ports.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct PolicyPort {
    pub protocol: Protocol,
    pub port: PortSpec,
}

impl fmt::Display for PolicyPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortSpec::All => write!(f, "{} all ports", self.protocol),
            PortSpec::Range { start, end } if start == end => {
                write!(f, "{} {start}", self.protocol)
            }
            PortSpec::Range { start, end } => write!(f, "{} {start}-{end}", self.protocol),
            PortSpec::Named(n) => write!(f, "{} {n:?}", self.protocol),
        }
    }
}

/// `ipBlock`: addresses in `cidr` and in none of `except`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        if !self.except.is_empty() {
            let ex: Vec<String> = self.except.iter().map(|e| e.to_string()).collect();
            write!(f, " except {}", ex.join(","))?;
        }
        Ok(())
    }
}

/// Where a selector peer looks for pods.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NamespaceScope {
    /// No namespaceSelector: the policy's own namespace.
    Named(String),
    /// A namespaceSelector: every namespace whose labels match.
    Matching(LabelSelector),
}

/// Pods selected by namespace and pod labels: the unit the selector cache keys on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PeerSelector {
    pub namespaces: NamespaceScope,
    pub pods: LabelSelector,
}

impl fmt::Display for PeerSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespaces {
            NamespaceScope::Named(ns) => write!(f, "pods {} in namespace {ns}", self.pods),
            NamespaceScope::Matching(sel) => {
                write!(f, "pods {} in namespaces {sel}", self.pods)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Peer {
    Selector(PeerSelector),
    IpBlock(IpBlock),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Selector(s) => s.fmt(f),
            Peer::IpBlock(b) => write!(f, "ipBlock {b}"),
        }
    }
}

/// One ingress or egress rule. Empty `peers` means any peer, empty `ports`
/// any port: the API's meaning of an absent or empty list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PolicyPort>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// A validated NetworkPolicy. `ingress` is `Some` exactly when the policy
/// isolates its pods for ingress (policyTypes after defaulting), even when it
/// has no rules: `Some(vec![])` is deny-all.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl NetworkPolicy {
    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// The pods this policy applies to, as a selector-cache key.
    pub fn target(&self) -> PeerSelector {
        PeerSelector { namespaces: NamespaceScope::Named(self.namespace.clone()), pods: self.pod_selector.clone() }
    }

    /// Converts and validates an API object; `namespace` is already defaulted.
    pub fn parse(api: &net::NetworkPolicy, namespace: &str, errors: &mut FieldErrors) -> Self {
        let name = api.metadata.name.clone().unwrap_or_default();
        let spec_path = FieldPath::root("spec");
        // No spec is the empty spec (the API's spec is not optional):
        // every pod of the namespace, isolated for ingress, nothing allowed.
        let empty = net::NetworkPolicySpec::default();
        let spec = api.spec.as_ref().unwrap_or(&empty);
        let pod_selector = match &spec.pod_selector {
            Some(sel) => LabelSelector::parse(sel, &spec_path.child("podSelector"), errors),
            None => LabelSelector::everything(),
        };
        let parse_rules = |field: &str, peer_field: &str, rules: Vec<RawRule>, errors: &mut FieldErrors| {
            rules
                .into_iter()
                .enumerate()
                .map(|(i, (peers, ports))| {
                    let path = spec_path.child(field).index(i);
                    Rule {
                        peers: peers
                            .into_iter()
                            .flatten()
                            .enumerate()
                            .filter_map(|(j, p)| parse_peer(p, namespace, &path.child(peer_field).index(j), errors))
                            .collect(),
                        ports: ports
                            .into_iter()
                            .flatten()
                            .enumerate()
                            .filter_map(|(j, p)| parse_port(p, &path.child("ports").index(j), errors))
                            .collect(),
                    }
                })
                .collect::<Vec<_>>()
        };
        let ingress_rules = parse_rules(
            "ingress",
            "from",
            spec.ingress.iter().flatten().map(|r| (r.from.as_ref(), r.ports.as_ref())).collect(),
            errors,
        );
        let egress_rules = parse_rules(
            "egress",
            "to",
            spec.egress.iter().flatten().map(|r| (r.to.as_ref(), r.ports.as_ref())).collect(),
            errors,
        );

        // policyTypes defaulting (API server): Ingress always, Egress when the
        // policy has egress rules. An explicit empty list defaults the same way.
        let (mut isolates_ingress, mut isolates_egress) = (true, !egress_rules.is_empty());
        match spec.policy_types.as_deref() {
            Some(types) if !types.is_empty() => {
                let path = spec_path.child("policyTypes");
                if types.len() > 2 {
                    errors.push(&path, "may not specify more than two policyTypes");
                }
                isolates_ingress = false;
                isolates_egress = false;
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        "Ingress" => isolates_ingress = true,
                        "Egress" => isolates_egress = true,
                        other => {
                            errors.push(&path.index(i), format!("{other:?}: supported values: \"Ingress\", \"Egress\""))
                        }
                    }
                }
            }
            _ => {}
        }
        NetworkPolicy {
            namespace: namespace.to_string(),
            name,
            pod_selector,
            ingress: isolates_ingress.then_some(ingress_rules),
            egress: isolates_egress.then_some(egress_rules),
        }
    }
}

/// A rule as the API has it: peers (`from` or `to`) and ports.
type RawRule<'a> = (Option<&'a Vec<net::NetworkPolicyPeer>>, Option<&'a Vec<net::NetworkPolicyPort>>);

fn parse_peer(
    peer: &net::NetworkPolicyPeer,
    namespace: &str,
    path: &FieldPath,
    errors: &mut FieldErrors,
) -> Option<Peer> {
    let count = [peer.pod_selector.is_some(), peer.namespace_selector.is_some(), peer.ip_block.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if count == 0 {
        errors.push(path, "must specify a peer");
        return None;
    }
    if let Some(block) = &peer.ip_block {
        if count > 1 {
            errors.push(path, "may not specify both ipBlock and another peer");
            return None;
        }
        return parse_ip_block(block, &path.child("ipBlock"), errors).map(Peer::IpBlock);
    }
    let pods = match &peer.pod_selector {
        Some(sel) => LabelSelector::parse(sel, &path.child("podSelector"), errors),
        None => LabelSelector::everything(),
    };
    let namespaces = match &peer.namespace_selector {
        Some(sel) => NamespaceScope::Matching(LabelSelector::parse(sel, &path.child("namespaceSelector"), errors)),
        None => NamespaceScope::Named(namespace.to_string()),
    };
    Some(Peer::Selector(PeerSelector { namespaces, pods }))
}

fn parse_ip_block(block: &net::IPBlock, path: &FieldPath, errors: &mut FieldErrors) -> Option<IpBlock> {
    let cidr_path = path.child("cidr");
    if block.cidr.is_empty() {
        errors.push(&cidr_path, "required");
        return None;
    }
    let cidr = match parse_cidr(&block.cidr) {
        Ok(c) => c,
        Err(e) => {
            errors.push(&cidr_path, e);
            return None;
        }
    };
    let mut except = Vec::new();
    for (i, e) in block.except.iter().flatten().enumerate() {
        let epath = path.child("except").index(i);
        match parse_cidr(e) {
            Ok(ex) => {
                // Upstream: the except's network address inside cidr, and a longer prefix.
                if !cidr.contains(&ex.network()) || ex.prefix_len() <= cidr.prefix_len() {
                    errors.push(&epath, format!("{e:?}: must be a strict subset of `cidr` {}", block.cidr));
                } else {
                    except.push(ex);
                }
            }
            Err(msg) => errors.push(&epath, msg),
        }
    }
    Some(IpBlock { cidr: cidr.trunc(), except: except.into_iter().map(|e| e.trunc()).collect() })
}

/// A CIDR as the API server accepts it (`ValidateCIDR`: parseable by Go's
/// `net.ParseCIDR`; host bits may be set and are ignored).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>().map_err(|_| format!("{s:?}: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"))
}

fn parse_port(port: &net::NetworkPolicyPort, path: &FieldPath, errors: &mut FieldErrors) -> Option<PolicyPort> {
    let protocol = match port.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(p) => match Protocol::parse_api(p) {
            Some(p) => p,
            None => {
                errors.push(&path.child("protocol"), format!("{p:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""));
                return None;
            }
        },
    };
    let spec = match (&port.port, port.end_port) {
        (None, None) => PortSpec::All,
        (None, Some(_)) => {
            errors.push(&path.child("endPort"), "may not be specified when `port` is not specified");
            return None;
        }
        (Some(IntOrString::Int(p)), end) => {
            if !(1..=65535).contains(p) {
                errors.push(&path.child("port"), format!("{p}: must be between 1 and 65535, inclusive"));
                return None;
            }
            let start = *p as u16;
            match end {
                None => PortSpec::Range { start, end: start },
                Some(e) if !(1..=65535).contains(&e) => {
                    errors.push(&path.child("endPort"), format!("{e}: must be between 1 and 65535, inclusive"));
                    return None;
                }
                Some(e) if e < *p => {
                    errors.push(&path.child("endPort"), format!("{e}: must be greater than or equal to `port` {p}"));
                    return None;
                }
                Some(e) => PortSpec::Range { start, end: e as u16 },
            }
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                errors.push(&path.child("endPort"), "may not be specified when `port` is non-numeric");
                return None;
            }
            // Upstream accepts a numeric string here only as a named port, which it fails.
            if let Err(e) = names::iana_svc_name(name) {
                errors.push(&path.child("port"), e);
                return None;
            }
            PortSpec::Named(name.clone())
        }
    };
    Some(PolicyPort { protocol, port: spec })
}

/// Reports fields the NetworkPolicy API does not have, with their paths.
pub fn check_known_fields(doc: &serde_json::Value, errors: &mut FieldErrors) {
    use serde_json::Value;
    fn object(v: &Value, path: &FieldPath, known: &[&str], errors: &mut FieldErrors) {
        if let Value::Object(map) = v {
            for k in map.keys().filter(|k| !known.contains(&k.as_str())) {
                errors.push(&path.child(k), "unknown field");
            }
        }
    }
    fn list(
        v: Option<&Value>,
        path: &FieldPath,
        each: &dyn Fn(&Value, &FieldPath, &mut FieldErrors),
        errors: &mut FieldErrors,
    ) {
        if let Some(Value::Array(items)) = v {
            for (i, item) in items.iter().enumerate() {
                each(item, &path.index(i), errors);
            }
        }
    }
    fn selector(v: Option<&Value>, path: &FieldPath, errors: &mut FieldErrors) {
        if let Some(v) = v {
            object(v, path, &["matchLabels", "matchExpressions"], errors);
            list(
                v.get("matchExpressions"),
                &path.child("matchExpressions"),
                &|e, p, errors| object(e, p, &["key", "operator", "values"], errors),
                errors,
            );
        }
    }
    fn rules(v: Option<&Value>, path: &FieldPath, peers: &'static str, errors: &mut FieldErrors) {
        list(
            v,
            path,
            &|rule, p, errors| {
                object(rule, p, &[peers, "ports"], errors);
                list(
                    rule.get("ports"),
                    &p.child("ports"),
                    &|port, p, errors| object(port, p, &["protocol", "port", "endPort"], errors),
                    errors,
                );
                list(
                    rule.get(peers),
                    &p.child(peers),
                    &|peer, p, errors| {
                        object(peer, p, &["podSelector", "namespaceSelector", "ipBlock"], errors);
                        selector(peer.get("podSelector"), &p.child("podSelector"), errors);
                        selector(peer.get("namespaceSelector"), &p.child("namespaceSelector"), errors);
                        if let Some(b) = peer.get("ipBlock") {
                            object(b, &p.child("ipBlock"), &["cidr", "except"], errors);
                        }
                    },
                    errors,
                );
            },
            errors,
        );
    }
    object(doc, &FieldPath::root(""), &["apiVersion", "kind", "metadata", "spec", "status"], errors);
    let Some(spec) = doc.get("spec") else { return };
    let path = FieldPath::root("spec");
    object(spec, &path, &["podSelector", "policyTypes", "ingress", "egress"], errors);
    selector(spec.get("podSelector"), &path.child("podSelector"), errors);
    rules(spec.get("ingress"), &path.child("ingress"), "from", errors);
    rules(spec.get("egress"), &path.child("egress"), "to", errors);
}
