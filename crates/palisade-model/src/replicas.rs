//! The pods of one workload as endpoints: one endpoint while they agree on
//! everything policy sees (the labels some policy's pod selector looks at,
//! the policies' ipBlocks their addresses are in, named ports, hostNetwork,
//! and the node when a hostNetwork pod runs there: traffic between a pod
//! and its node is always allowed), one endpoint per difference when they
//! do not. A pod is never judged with another pod's labels, address or
//! node; a label no policy reads splits nothing.

use std::collections::{BTreeMap, HashSet};

use crate::endpoint::{Endpoint, EndpointKey};
use crate::labels::Labels;
use crate::load::{Located, Object};
use crate::policy::{IpBlock, NetworkPolicy, Peer};

/// What of a pod the cluster's policies can see.
/// Two states compared (`diff`) are assembled with the union of what their
/// policies see, so a policy change does not rename the endpoints.
#[derive(Debug, Clone, Default)]
pub struct Visibility {
    /// Label keys some policy's pod selector (target or peer) reads.
    label_keys: HashSet<String>,
    /// Nodes where a hostNetwork pod runs.
    host_nodes: HashSet<String>,
    /// The policies' ipBlocks: a pod's addresses in or out of one are
    /// seen by policy as surely as its labels.
    blocks: Vec<IpBlock>,
}

impl Visibility {
    /// What the policies among `objects` see of the pods among them.
    pub fn of(objects: &[Located]) -> Self {
        let mut v = Visibility::default();
        for located in objects {
            match &located.object {
                Object::NetworkPolicy(p) => v.add_policy(p),
                Object::Endpoint(e) if e.host_network => v.host_nodes.extend(e.node.clone()),
                _ => {}
            }
        }
        v
    }

    fn add_policy(&mut self, p: &NetworkPolicy) {
        self.label_keys.extend(p.pod_selector.requirements().iter().map(|r| r.key().to_string()));
        for peer in [&p.ingress, &p.egress].into_iter().flatten().flatten().flat_map(|r| &r.peers) {
            match peer {
                Peer::Selector(s) => self.label_keys.extend(s.pods.requirements().iter().map(|r| r.key().to_string())),
                Peer::IpBlock(b) if !self.blocks.contains(b) => self.blocks.push(b.clone()),
                Peer::IpBlock(_) => {}
            }
        }
    }

    /// What either sees.
    pub fn union(mut self, other: &Visibility) -> Self {
        self.label_keys.extend(other.label_keys.iter().cloned());
        self.host_nodes.extend(other.host_nodes.iter().cloned());
        for b in &other.blocks {
            if !self.blocks.contains(b) {
                self.blocks.push(b.clone());
            }
        }
        self
    }
}

/// One endpoint as read: a Pod, or a workload's template.
pub(crate) struct Read {
    pub endpoint: Endpoint,
    /// Read from the object the key names (the Deployment itself, not one
    /// of its ReplicaSets).
    pub top_level: bool,
}

/// What policy sees of a pod, and so what must agree for pods to share an
/// endpoint.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Signature {
    labels: Labels,
    named_ports: BTreeMap<String, String>,
    host_network: bool,
    /// Where a hostNetwork pod runs, or any pod on a node with one.
    node: Option<String>,
    /// The policies' ipBlocks that hold one of its addresses, written
    /// without spaces (`10.0.0.0/8_except_10.1.0.0/16`).
    blocks: Vec<String>,
}

impl Signature {
    fn of(ep: &Endpoint, visible: &Visibility) -> Self {
        let node_matters = ep.host_network || ep.node.as_ref().is_some_and(|n| visible.host_nodes.contains(n));
        Signature {
            labels: ep
                .labels
                .iter()
                .filter(|(k, _)| visible.label_keys.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            named_ports: ep
                .ports
                .iter()
                .filter_map(|p| p.name.as_ref().map(|n| (n.clone(), format!("{}/{}", p.port, p.protocol))))
                .collect(),
            host_network: ep.host_network,
            node: if node_matters { ep.node.clone() } else { None },
            blocks: (visible.blocks.iter())
                .filter(|b| ep.ips.iter().any(|ip| b.contains(*ip)))
                .map(|b| b.to_string().replace(' ', "_"))
                .collect(),
        }
    }

    /// Every attribute as `(key, value)`. The keys that are not labels
    /// have a `:`, which no label key can have.
    fn attributes(&self) -> BTreeMap<String, String> {
        let mut out = self.labels.clone();
        for (name, port) in &self.named_ports {
            out.insert(format!("port:{name}"), port.clone());
        }
        if self.host_network {
            out.insert("pod:hostNetwork".into(), "true".into());
        }
        if let Some(node) = &self.node {
            out.insert("pod:node".into(), node.clone());
        }
        for block in &self.blocks {
            out.insert(format!("ip:{block}"), "in".into());
        }
        out
    }
}

/// The endpoints for everything read under one key, and a notice when the
/// pods had to be told apart.
pub(crate) fn endpoints(key: &EndpointKey, reads: Vec<Read>, visible: &Visibility) -> (Vec<Endpoint>, Option<String>) {
    // Pods are what runs: in a dump with both, a workload's template (and
    // its old ReplicaSets' templates) only repeat or predate them.
    let has_pods = reads.iter().any(|r| !r.endpoint.pods.is_empty());
    let has_top = reads.iter().any(|r| r.top_level);
    let members = reads
        .into_iter()
        .filter(|r| if has_pods { !r.endpoint.pods.is_empty() } else { !has_top || r.top_level })
        .map(|r| r.endpoint);
    let mut groups: BTreeMap<Signature, Vec<Endpoint>> = BTreeMap::new();
    for ep in members {
        groups.entry(Signature::of(&ep, visible)).or_default().push(ep);
    }
    if groups.len() <= 1 {
        return (groups.into_values().map(merge).collect(), None);
    }
    let attributes: Vec<BTreeMap<String, String>> = groups.keys().map(Signature::attributes).collect();
    let differing: Vec<&String> = {
        let mut keys: Vec<&String> = attributes.iter().flat_map(|a| a.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.retain(|k| attributes.iter().any(|a| a.get(*k) != attributes[0].get(*k)));
        keys
    };
    let mut out = Vec::new();
    for (attrs, group) in attributes.iter().zip(groups.into_values()) {
        let variant: Vec<String> = differing
            .iter()
            .map(|k| match attrs.get(*k) {
                Some(v) => format!("{k}={v}"),
                None => format!("!{k}"),
            })
            .collect();
        let mut ep = merge(group);
        ep.key.variant = Some(variant.join(","));
        out.push(ep);
    }
    let names: Vec<String> = out.iter().map(|e| e.key.to_string()).collect();
    let notice = format!(
        "the pods of {key} differ in what policies see; each variant is its own endpoint: {}",
        names.join(", ")
    );
    (out, Some(notice))
}

/// Replicas that agree: one endpoint with all their addresses and pods,
/// and the labels they all have (they may differ only in labels no policy
/// reads).
fn merge(group: Vec<Endpoint>) -> Endpoint {
    let mut it = group.into_iter();
    let mut first = it.next().expect("a group has a member");
    for ep in it {
        first.labels.retain(|k, v| ep.labels.get(k) == Some(v));
        first.ips.extend(ep.ips);
        first.ports.extend(ep.ports);
        first.pods.extend(ep.pods);
        first.uid = None;
        if first.node.is_none() {
            first.node = ep.node;
        }
    }
    first.ips.sort();
    first.ips.dedup();
    first.ports.sort();
    first.ports.dedup();
    first.pods.sort();
    first.pods.dedup();
    first
}
