//! The pods of one workload as endpoints: one endpoint while they agree on
//! everything policy sees (the labels some policy's pod selector looks at,
//! named ports, hostNetwork, and the node when a hostNetwork pod runs
//! there: traffic between a pod and its node is always allowed), one
//! endpoint per difference when they do not. A pod is never judged with
//! another pod's labels or node; a label no policy reads splits nothing.

use std::collections::{BTreeMap, HashSet};

use crate::endpoint::{Endpoint, EndpointKey};
use crate::labels::Labels;
use crate::policy::{NetworkPolicy, Peer};

/// What of a pod the cluster's policies can see.
pub(crate) struct Visible {
    /// Label keys some policy's pod selector (target or peer) reads.
    label_keys: HashSet<String>,
    /// Nodes where a hostNetwork pod runs.
    host_nodes: HashSet<String>,
}

impl Visible {
    pub fn new<'a>(policies: &[NetworkPolicy], endpoints: impl Iterator<Item = &'a Endpoint>) -> Self {
        let mut label_keys = HashSet::new();
        for p in policies {
            let peers = [&p.ingress, &p.egress].into_iter().flatten().flatten().flat_map(|r| &r.peers);
            let selectors = std::iter::once(&p.pod_selector).chain(peers.filter_map(|peer| match peer {
                Peer::Selector(s) => Some(&s.pods),
                Peer::IpBlock(_) => None,
            }));
            for selector in selectors {
                label_keys.extend(selector.requirements().iter().map(|r| r.key().to_string()));
            }
        }
        let host_nodes = endpoints.filter(|e| e.host_network).filter_map(|e| e.node.clone()).collect();
        Visible { label_keys, host_nodes }
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
}

impl Signature {
    fn of(ep: &Endpoint, visible: &Visible) -> Self {
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
        out
    }
}

/// The endpoints for everything read under one key, and a notice when the
/// pods had to be told apart.
pub(crate) fn endpoints(key: &EndpointKey, reads: Vec<Read>, visible: &Visible) -> (Vec<Endpoint>, Option<String>) {
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
