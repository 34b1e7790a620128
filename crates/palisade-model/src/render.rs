//! The way back: a [`Cluster`] as Kubernetes API objects (JSON), which
//! read again give the same cluster. The lab writes its cluster this way
//! for the agents' `dir` source, as the API server would serve it: every
//! endpoint as a Pod, with its node and addresses in place.

use serde_json::{json, Map, Value};

use crate::endpoint::{Endpoint, EndpointKey};
use crate::labels::{LabelSelector, Requirement};
use crate::objects::{Namespace, Node, NAMESPACE_NAME_LABEL};
use crate::policy::{NamespaceScope, NetworkPolicy, Peer, PolicyPort, PortSpec, Rule};
use crate::Cluster;

/// Every object of `cluster`, each endpoint as a Pod named by `pod_name`.
pub fn to_objects(cluster: &Cluster, pod_name: impl Fn(&EndpointKey) -> String) -> Vec<Value> {
    let mut out: Vec<Value> = cluster.namespaces.values().map(namespace).collect();
    out.extend(cluster.nodes.iter().map(node));
    out.extend(cluster.endpoints.iter().map(|ep| pod(ep, &pod_name(&ep.key))));
    out.extend(cluster.policies.iter().map(policy));
    out
}

/// The objects as one multi-document YAML stream (JSON is YAML).
pub fn to_yaml_stream(objects: &[Value]) -> String {
    objects.iter().map(|o| format!("---\n{o}\n")).collect()
}

fn namespace(ns: &Namespace) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns.name, "labels": ns.labels}})
}

fn node(n: &Node) -> Value {
    let mut spec = Map::new();
    if let Some(first) = n.pod_cidrs.first() {
        spec.insert("podCIDR".into(), json!(first.to_string()));
        spec.insert("podCIDRs".into(), json!(n.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>()));
    }
    let addresses: Vec<Value> =
        n.internal_ips.iter().map(|ip| json!({"type": "InternalIP", "address": ip.to_string()})).collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": n.name, "labels": n.labels},
        "spec": spec,
        "status": {"addresses": addresses},
    })
}

fn pod(ep: &Endpoint, name: &str) -> Value {
    let ports: Vec<Value> = ep
        .ports
        .iter()
        .map(|p| {
            let mut v = json!({"containerPort": p.port, "protocol": p.protocol.as_api()});
            if let Some(n) = &p.name {
                v["name"] = json!(n);
            }
            v
        })
        .collect();
    let mut spec = json!({"containers": [{"name": "main", "image": "palisade.invalid/lab", "ports": ports}]});
    if let Some(n) = &ep.node {
        spec["nodeName"] = json!(n);
    }
    if ep.host_network {
        spec["hostNetwork"] = json!(true);
    }
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ep.key.namespace, "labels": ep.labels},
        "spec": spec,
    });
    if let Some(uid) = &ep.uid {
        pod["metadata"]["uid"] = json!(uid);
    }
    if let Some(first) = ep.ips.first() {
        let ips: Vec<Value> = ep.ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
        pod["status"] = json!({"podIP": first.to_string(), "podIPs": ips});
    }
    pod
}

fn selector(sel: &LabelSelector) -> Value {
    let mut match_labels = Map::new();
    let mut expressions = Vec::new();
    for r in sel.requirements() {
        match r {
            Requirement::In { key, values } if values.len() == 1 && !match_labels.contains_key(key) => {
                match_labels.insert(key.clone(), json!(values.iter().next()));
            }
            Requirement::In { key, values } => {
                expressions.push(json!({"key": key, "operator": "In", "values": values}))
            }
            Requirement::NotIn { key, values } => {
                expressions.push(json!({"key": key, "operator": "NotIn", "values": values}))
            }
            Requirement::Exists { key } => expressions.push(json!({"key": key, "operator": "Exists"})),
            Requirement::DoesNotExist { key } => expressions.push(json!({"key": key, "operator": "DoesNotExist"})),
        }
    }
    let mut out = Map::new();
    if !match_labels.is_empty() {
        out.insert("matchLabels".into(), Value::Object(match_labels));
    }
    if !expressions.is_empty() {
        out.insert("matchExpressions".into(), Value::Array(expressions));
    }
    Value::Object(out)
}

fn peer(p: &Peer, policy_ns: &str) -> Value {
    match p {
        Peer::IpBlock(b) => {
            let mut block = json!({"cidr": b.cidr.to_string()});
            if !b.except.is_empty() {
                block["except"] = json!(b.except.iter().map(|e| e.to_string()).collect::<Vec<_>>());
            }
            json!({"ipBlock": block})
        }
        Peer::Selector(s) => {
            let mut v = json!({"podSelector": selector(&s.pods)});
            match &s.namespaces {
                NamespaceScope::Named(ns) if ns == policy_ns => {}
                // Only the policy's own namespace has no selector; another
                // one by name is the label the API server sets.
                NamespaceScope::Named(ns) => {
                    v["namespaceSelector"] = json!({"matchLabels": {NAMESPACE_NAME_LABEL: ns}})
                }
                NamespaceScope::Matching(sel) => v["namespaceSelector"] = selector(sel),
            }
            v
        }
    }
}

fn port(p: &PolicyPort) -> Value {
    let mut v = json!({"protocol": p.protocol.as_api()});
    match &p.port {
        PortSpec::All => {}
        PortSpec::Range { start, end } => {
            v["port"] = json!(start);
            if end != start {
                v["endPort"] = json!(end);
            }
        }
        PortSpec::Named(n) => v["port"] = json!(n),
    }
    v
}

fn rules(rules: &[Rule], peer_field: &str, ns: &str) -> Value {
    rules
        .iter()
        .map(|r| {
            let mut v = Map::new();
            if !r.peers.is_empty() {
                v.insert(peer_field.into(), r.peers.iter().map(|p| peer(p, ns)).collect());
            }
            if !r.ports.is_empty() {
                v.insert("ports".into(), r.ports.iter().map(port).collect());
            }
            Value::Object(v)
        })
        .collect()
}

fn policy(p: &NetworkPolicy) -> Value {
    let mut types = Vec::new();
    let mut spec = json!({"podSelector": selector(&p.pod_selector)});
    if let Some(r) = &p.ingress {
        types.push("Ingress");
        spec["ingress"] = rules(r, "from", &p.namespace);
    }
    if let Some(r) = &p.egress {
        types.push("Egress");
        spec["egress"] = rules(r, "to", &p.namespace);
    }
    spec["policyTypes"] = json!(types);
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": p.name, "namespace": p.namespace},
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_sources, read_paths};
    use std::path::PathBuf;

    fn pod_name(k: &EndpointKey) -> String {
        k.name.clone() + &k.kind.as_deref().map_or(String::new(), |k| format!("-{}", k.to_lowercase()))
    }

    fn reparse(cluster: &Cluster) -> Cluster {
        let text = to_yaml_stream(&to_objects(cluster, pod_name));
        let (back, problems, _) =
            Cluster::from_manifests(parse_sources(&[crate::Source { name: "r.yaml".into(), text }]));
        assert!(problems.is_empty(), "{problems:?}");
        back
    }

    /// Every conformance scenario's cluster survives the way out and back.
    #[test]
    fn conformance_clusters_round_trip() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance");
        let (sources, problems) = read_paths(&[root]);
        assert!(problems.is_empty());
        assert!(sources.len() > 50, "the corpus is there");
        for source in sources {
            let (cluster, problems, _) = Cluster::from_manifests(parse_sources(std::slice::from_ref(&source)));
            if !problems.is_empty() {
                continue; // scenarios about invalid input
            }
            let back = reparse(&cluster);
            assert_eq!(back.policies, cluster.policies, "{}", source.name);
            assert_eq!(back.namespaces, cluster.namespaces, "{}", source.name);
            assert_eq!(back.nodes, cluster.nodes, "{}", source.name);
            assert_eq!(back.endpoints.len(), cluster.endpoints.len(), "{}", source.name);
            for a in &cluster.endpoints {
                let key = EndpointKey::pod(&a.key.namespace, &pod_name(&a.key));
                let b = back.endpoints.iter().find(|b| b.key == key).expect("rendered as a pod");
                let strip =
                    |e: &Endpoint| (e.labels.clone(), e.ips.clone(), e.ports.clone(), e.host_network, e.node.clone());
                assert_eq!(strip(a), strip(b), "{}: {}", source.name, a.key);
            }
        }
    }
}
