//! Endpoints: the things policies select and connections run between.
//!
//! A Pod is an endpoint; so is a workload (Deployment, StatefulSet, ...),
//! whose labels and ports come from its pod template, because manifests in
//! a repository describe workloads, not pods. A Pod with a controlling owner
//! is shown as that owner, so the replicas of a workload are one endpoint,
//! unless they differ in what policy sees (see `replicas.rs`).

use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use serde::{Deserialize, Serialize};

use crate::field::{FieldErrors, FieldPath};
use crate::labels::Labels;
use crate::names;
use crate::policy::Protocol;

/// The stable name of an endpoint: `namespace/name` for a Pod,
/// `namespace/name[Kind]` for a workload (np-guard's convention), and
/// `namespace/name[Kind:version=v2]` for the pods of a workload that differ
/// from its other pods in what policy sees (here, the label `version`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointKey {
    pub namespace: String,
    pub name: String,
    /// `None` for a Pod; the workload kind otherwise.
    pub kind: Option<String>,
    /// What sets these pods of the workload apart from its other pods:
    /// `key=value` or `!key` items joined by `,`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl EndpointKey {
    pub fn pod(namespace: &str, name: &str) -> Self {
        EndpointKey { namespace: namespace.into(), name: name.into(), kind: None, variant: None }
    }

    pub fn workload(namespace: &str, name: &str, kind: &str) -> Self {
        EndpointKey { namespace: namespace.into(), name: name.into(), kind: Some(kind.into()), variant: None }
    }

    /// Parses the display form; a missing namespace means `default`.
    pub fn parse(s: &str) -> Self {
        let (namespace, rest) = s.split_once('/').unwrap_or(("default", s));
        match rest.strip_suffix(']').and_then(|r| r.split_once('[')) {
            Some((name, kind)) => {
                let (kind, variant) = match kind.split_once(':') {
                    Some((k, v)) => (k, Some(v.to_string())),
                    None => (kind, None),
                };
                EndpointKey { variant, ..EndpointKey::workload(namespace, name, kind) }
            }
            None => EndpointKey::pod(namespace, rest),
        }
    }
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.variant) {
            (None, _) => write!(f, "{}/{}", self.namespace, self.name),
            (Some(kind), None) => write!(f, "{}/{}[{kind}]", self.namespace, self.name),
            (Some(kind), Some(v)) => write!(f, "{}/{}[{kind}:{v}]", self.namespace, self.name),
        }
    }
}

/// A container port, the target of named policy ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub key: EndpointKey,
    pub labels: Labels,
    /// Pod IPs (all replicas, both families). Empty for a workload read from
    /// a manifest: such an endpoint is matched only by selectors.
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ContainerPort>,
    /// hostNetwork pods share the node's address: policies do not select them.
    pub host_network: bool,
    pub node: Option<String>,
    /// The Pods this endpoint stands for, by name (sorted); empty for a
    /// workload read from its template.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    /// The Pod's `metadata.uid` when the endpoint is one Pod: a pod created
    /// again under the same name (StatefulSets do) is another pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl Endpoint {
    /// One pod, so "to itself" is traffic that never leaves it: a Pod, or
    /// a workload read from its one running pod. A workload read from a
    /// template, or from several pods, stands for replicas that talk to
    /// each other through the network (policy applies).
    pub fn is_one_pod(&self) -> bool {
        self.key.kind.is_none() || self.pods.len() == 1
    }
}

/// The kinds read as workloads, with where their pod template lives.
pub const WORKLOAD_KINDS: &[&str] =
    &["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job", "CronJob"];

/// The endpoint a Pod belongs to: its controller, or itself. A static pod
/// (mirrored by the kubelet, its controller the `Node`) is itself: the
/// kube-apiserver and etcd of each node are separate pods.
pub fn pod_endpoint_key(meta: &meta::ObjectMeta, namespace: &str) -> EndpointKey {
    let name = meta.name.clone().unwrap_or_default();
    let owner = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    match owner {
        Some(o) if o.kind != "Node" => owner_key(namespace, &o.kind, &o.name, meta.labels.as_ref()),
        _ => EndpointKey::pod(namespace, &name),
    }
}

/// A ReplicaSet named `<deployment>-<pod-template-hash>` is shown as its Deployment.
fn owner_key(
    namespace: &str,
    kind: &str,
    name: &str,
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> EndpointKey {
    if kind == "ReplicaSet" {
        let hash = labels.and_then(|l| l.get("pod-template-hash"));
        if let Some(deployment) = hash.and_then(|h| name.strip_suffix(h.as_str())).and_then(|d| d.strip_suffix('-')) {
            return EndpointKey::workload(namespace, deployment, "Deployment");
        }
    }
    EndpointKey::workload(namespace, name, kind)
}

/// Reads a Pod. `namespace` is already defaulted.
pub fn parse_pod(pod: &core::Pod, namespace: &str, errors: &mut FieldErrors) -> Endpoint {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let mut ips = Vec::new();
    if let Some(status) = status {
        let listed: Vec<(FieldPath, &str)> = match &status.pod_ips {
            Some(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, p)| (FieldPath::root("status.podIPs").index(i).child("ip"), p.ip.as_str()))
                .collect(),
            _ => status.pod_ip.iter().map(|ip| (FieldPath::root("status.podIP"), ip.as_str())).collect(),
        };
        for (path, ip) in listed {
            match ip.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => errors.push(&path, format!("{ip:?}: must be a valid IP address")),
            }
        }
    }
    let ports = spec.map(|s| container_ports(&s.containers, &FieldPath::root("spec"), errors)).unwrap_or_default();
    Endpoint {
        key: pod_endpoint_key(&pod.metadata, namespace),
        labels: labels_of(&pod.metadata, &FieldPath::root("metadata"), errors),
        ips,
        ports,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        node: spec.and_then(|s| s.node_name.clone()),
        pods: vec![pod.metadata.name.clone().unwrap_or_default()],
        uid: pod.metadata.uid.clone(),
    }
}

/// Reads a workload from its pod template (`template_path` names it for errors).
pub fn parse_workload(
    kind: &str,
    meta: &meta::ObjectMeta,
    namespace: &str,
    template: Option<&core::PodTemplateSpec>,
    template_path: &FieldPath,
    errors: &mut FieldErrors,
) -> Endpoint {
    let name = meta.name.clone().unwrap_or_default();
    let owner = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    let key = match owner {
        Some(o) => owner_key(namespace, &o.kind, &o.name, meta.labels.as_ref()),
        None => EndpointKey::workload(namespace, &name, kind),
    };
    let (labels, ports, host_network) = match template {
        None => {
            errors.push(template_path, "required");
            (Labels::new(), Vec::new(), false)
        }
        Some(t) => {
            let labels =
                t.metadata.as_ref().map(|m| labels_of(m, &template_path.child("metadata"), errors)).unwrap_or_default();
            let spec = t.spec.as_ref();
            let ports =
                spec.map(|s| container_ports(&s.containers, &template_path.child("spec"), errors)).unwrap_or_default();
            (labels, ports, spec.and_then(|s| s.host_network).unwrap_or(false))
        }
    };
    Endpoint { key, labels, ips: Vec::new(), ports, host_network, node: None, pods: Vec::new(), uid: None }
}

fn labels_of(meta: &meta::ObjectMeta, path: &FieldPath, errors: &mut FieldErrors) -> Labels {
    let labels = meta.labels.clone().unwrap_or_default();
    let path = path.child("labels");
    for (k, v) in &labels {
        errors.check(&path, names::qualified_name(k));
        errors.check(&path.key(k), names::label_value(v));
    }
    labels
}

fn container_ports(containers: &[core::Container], spec: &FieldPath, errors: &mut FieldErrors) -> Vec<ContainerPort> {
    let mut out = Vec::new();
    // Port names are unique across a pod's containers (API server rule).
    let mut names = std::collections::HashSet::new();
    for (i, c) in containers.iter().enumerate() {
        for (j, p) in c.ports.iter().flatten().enumerate() {
            let path = spec.child("containers").index(i).child("ports").index(j);
            let protocol = match p.protocol.as_deref() {
                None => Protocol::Tcp,
                Some(s) => match Protocol::parse_api(s) {
                    Some(p) => p,
                    None => {
                        errors.push(
                            &path.child("protocol"),
                            format!("{s:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
                        );
                        continue;
                    }
                },
            };
            if !(1..=65535).contains(&p.container_port) {
                errors.push(
                    &path.child("containerPort"),
                    format!("{}: must be between 1 and 65535, inclusive", p.container_port),
                );
                continue;
            }
            if let Some(name) = &p.name {
                errors.check(&path.child("name"), names::iana_svc_name(name));
                if !names.insert(name.clone()) {
                    errors.push(&path.child("name"), format!("{name:?}: Duplicate value"));
                }
            }
            out.push(ContainerPort { name: p.name.clone(), protocol, port: p.container_port as u16 });
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_through_display() {
        for s in ["shop/web", "shop/web[Deployment]", "shop/web[Deployment:version=v2,!canary]"] {
            assert_eq!(EndpointKey::parse(s).to_string(), s);
        }
        assert_eq!(EndpointKey::parse("web").to_string(), "default/web");
    }

    #[test]
    fn replicaset_pods_show_as_their_deployment() {
        let pod: core::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-7d9f8-abcde", "labels": {"app": "web", "pod-template-hash": "7d9f8"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8", "uid": "u", "controller": true}]},
            "status": {"podIP": "10.0.0.1"}
        }))
        .unwrap();
        let mut errors = FieldErrors::default();
        let ep = parse_pod(&pod, "shop", &mut errors);
        assert!(errors.is_empty());
        assert_eq!(ep.key.to_string(), "shop/web[Deployment]");
        assert_eq!(ep.ips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }
}
