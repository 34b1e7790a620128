//! The smaller kinds: Namespace, Node, Service.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;

use crate::field::{FieldErrors, FieldPath};
use crate::labels::Labels;
use crate::names;

/// The label the API server sets on every namespace (since Kubernetes 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Always includes `kubernetes.io/metadata.name`, as on a real cluster.
    pub labels: Labels,
}

impl Namespace {
    /// A namespace that objects refer to but no manifest declares: it has
    /// only the label the API server would give it.
    pub fn implied(name: &str) -> Self {
        Namespace {
            name: name.to_string(),
            labels: Labels::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())]),
        }
    }

    pub fn parse(api: &core::Namespace, errors: &mut FieldErrors) -> Option<Self> {
        let name = api.metadata.name.clone()?;
        let mut labels = api.metadata.labels.clone().unwrap_or_default();
        let path = FieldPath::root("metadata.labels");
        for (k, v) in &labels {
            errors.check(&path, names::qualified_name(k));
            errors.check(&path.key(k), names::label_value(v));
        }
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        Some(Namespace { name, labels })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    pub pod_cidrs: Vec<IpNet>,
    pub internal_ips: Vec<IpAddr>,
}

impl Node {
    pub fn parse(api: &core::Node, errors: &mut FieldErrors) -> Self {
        let spec = api.spec.as_ref();
        let mut pod_cidrs = Vec::new();
        let cidrs: Vec<String> = match spec.and_then(|s| s.pod_cidrs.clone()) {
            Some(list) if !list.is_empty() => list,
            _ => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
        };
        for (i, c) in cidrs.iter().enumerate() {
            match c.parse::<IpNet>() {
                Ok(n) => pod_cidrs.push(n),
                Err(_) => {
                    errors.push(&FieldPath::root("spec.podCIDRs").index(i), format!("{c:?}: must be a valid CIDR"))
                }
            }
        }
        let internal_ips = api
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        Node {
            name: api.metadata.name.clone().unwrap_or_default(),
            labels: api.metadata.labels.clone().unwrap_or_default(),
            pod_cidrs,
            internal_ips,
        }
    }
}

/// What later layers need of a Service: which pods back it, on which ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub selector: Option<Labels>,
    pub type_: String,
}

impl Service {
    pub fn parse(api: &core::Service, namespace: &str) -> Self {
        let spec = api.spec.as_ref();
        Service {
            namespace: namespace.to_string(),
            name: api.metadata.name.clone().unwrap_or_default(),
            selector: spec.and_then(|s| s.selector.clone()),
            type_: spec.and_then(|s| s.type_.clone()).unwrap_or_else(|| "ClusterIP".into()),
        }
    }
}
