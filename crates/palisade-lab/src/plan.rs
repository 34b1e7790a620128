//! The lab's layout, decided before anything is created: which node each
//! pod runs on, its addresses, and the names of every namespace and
//! interface. Pure, so it is tested without root.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::Ipv4Net;
use palisade_model::{Cluster, Endpoint, EndpointKey};
use serde::{Deserialize, Serialize};

/// Every lab namespace starts with this; the run id follows.
pub const PREFIX: &str = "pal-";

/// The underlay joining nodes and the external host (TEST-NET-1, never
/// routed anywhere real).
pub const UNDERLAY_V4: &str = "192.0.2.0/24";
pub const EXTERNAL_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
pub const EXTERNAL_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x192, 0, 2, 0, 0, 0, 0xfe);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabNode {
    /// The Kubernetes node name (spec.nodeName), or `lab-node-N`.
    pub name: String,
    pub netns: String,
    /// The node's interface on the underlay, and its addresses there.
    pub underlay_v4: Ipv4Addr,
    pub underlay_v6: Ipv6Addr,
    pub pod_cidr: Ipv4Net,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPod {
    pub key: EndpointKey,
    pub netns: String,
    pub node: usize,
    /// The node-side veth end.
    pub host_if: String,
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub run_id: String,
    pub underlay: String,
    pub external: String,
    pub nodes: Vec<LabNode>,
    pub pods: Vec<LabPod>,
    /// Endpoints not given a namespace, with why (hostNetwork pods).
    pub skipped: Vec<(EndpointKey, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("{0}: pod address {1} is used by {2} too; every lab pod needs its own address")]
    DuplicateAddress(Box<EndpointKey>, IpAddr, Box<EndpointKey>),
    #[error("node {0}: pod CIDR {1} is exhausted")]
    Exhausted(String, Ipv4Net),
    #[error("{0}: not in the running lab (a running lab cannot add pods yet; start a new one)")]
    UnknownPod(Box<EndpointKey>),
    #[error("too many nodes ({0}); the lab supports up to 200")]
    TooManyNodes(usize),
}

impl Plan {
    /// Lays out `cluster` on at least `min_nodes` nodes and gives every pod
    /// that has no IPv4 address one from its node's CIDR. Returns the plan
    /// and the cluster as the lab runs it (endpoints with their lab
    /// addresses and nodes): the engine must judge exactly that cluster.
    pub fn new(cluster: &Cluster, min_nodes: usize, run_id: &str) -> Result<(Plan, Cluster), PlanError> {
        let ns = |suffix: &str| format!("{PREFIX}{run_id}-{suffix}");
        let mut names: Vec<String> = Vec::new();
        for ep in &cluster.endpoints {
            if let Some(n) = &ep.node {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        let mut i = 0;
        while names.len() < min_nodes.max(1) {
            i += 1;
            let candidate = format!("lab-node-{i}");
            if !names.contains(&candidate) {
                names.push(candidate);
            }
        }
        if names.len() > 200 {
            return Err(PlanError::TooManyNodes(names.len()));
        }
        let declared_cidr: BTreeMap<&str, Ipv4Net> = cluster
            .nodes
            .iter()
            .filter_map(|n| {
                let v4 = n.pod_cidrs.iter().find_map(|c| match c {
                    ipnet::IpNet::V4(v4) => Some(*v4),
                    ipnet::IpNet::V6(_) => None,
                })?;
                Some((n.name.as_str(), v4))
            })
            .collect();
        let nodes: Vec<LabNode> = names
            .iter()
            .enumerate()
            .map(|(i, name)| LabNode {
                name: name.clone(),
                netns: ns(&format!("n{i}")),
                underlay_v4: Ipv4Addr::new(192, 0, 2, 1 + i as u8),
                underlay_v6: Ipv6Addr::new(0xfd00, 0x192, 0, 2, 0, 0, 0, 1 + i as u16),
                pod_cidr: declared_cidr
                    .get(name.as_str())
                    .copied()
                    .unwrap_or_else(|| Ipv4Net::new(Ipv4Addr::new(10, 250, i as u8, 0), 24).expect("valid prefix")),
            })
            .collect();

        let mut used: BTreeMap<IpAddr, EndpointKey> = BTreeMap::new();
        for ep in cluster.endpoints.iter().filter(|e| !e.host_network) {
            for ip in &ep.ips {
                if let Some(other) = used.insert(*ip, ep.key.clone()) {
                    if other != ep.key {
                        return Err(PlanError::DuplicateAddress(Box::new(ep.key.clone()), *ip, Box::new(other)));
                    }
                }
            }
        }
        let mut lab = cluster.clone();
        let mut pods = Vec::new();
        let mut skipped = Vec::new();
        let mut per_node = vec![0usize; nodes.len()];
        let mut next_host: Vec<u32> = vec![10; nodes.len()];
        for ep in lab.endpoints.iter_mut() {
            if ep.host_network {
                skipped.push((ep.key.clone(), "hostNetwork: shares its node's address".into()));
                continue;
            }
            let node = match &ep.node {
                Some(n) => names.iter().position(|x| x == n).expect("every named node is planned"),
                None => (0..nodes.len()).min_by_key(|&i| (per_node[i], i)).expect("at least one node"),
            };
            per_node[node] += 1;
            // One lab pod per endpoint: its first address of each family.
            // A pod without any address gets an IPv4 one; an IPv6-only pod
            // stays IPv6-only (its cluster is single-stack).
            let mut ips: Vec<IpAddr> = Vec::new();
            ips.extend(ep.ips.iter().find(|ip| ip.is_ipv4()));
            if ep.ips.is_empty() {
                let cidr = nodes[node].pod_cidr;
                let ip = loop {
                    let offset = next_host[node];
                    if offset as u64 + 1 >= 1u64 << (32 - cidr.prefix_len()) {
                        return Err(PlanError::Exhausted(nodes[node].name.clone(), cidr));
                    }
                    next_host[node] += 1;
                    let candidate = IpAddr::V4(Ipv4Addr::from(u32::from(cidr.network()) + offset));
                    if !used.contains_key(&candidate) {
                        break candidate;
                    }
                };
                used.insert(ip, ep.key.clone());
                ips.push(ip);
            }
            ips.extend(ep.ips.iter().find(|ip| ip.is_ipv6()));
            ep.ips = ips.clone();
            ep.node = Some(nodes[node].name.clone());
            let index = pods.len();
            pods.push(LabPod {
                key: ep.key.clone(),
                netns: ns(&format!("p{index}")),
                node,
                host_if: format!("p{index}"),
                ips,
            });
        }
        let plan = Plan { run_id: run_id.to_string(), underlay: ns("ul"), external: ns("ext"), nodes, pods, skipped };
        Ok((plan, lab))
    }

    /// `cluster` as this lab runs it: the same pods with the lab's
    /// addresses and nodes (namespaces, labels and policies may differ).
    pub fn adopt(&self, cluster: &Cluster) -> Result<Cluster, PlanError> {
        let mut next = cluster.clone();
        for ep in next.endpoints.iter_mut().filter(|e| !e.host_network) {
            let i = self.pod(&ep.key).ok_or_else(|| PlanError::UnknownPod(Box::new(ep.key.clone())))?;
            let pod = &self.pods[i];
            ep.ips = pod.ips.clone();
            ep.node = Some(self.nodes[pod.node].name.clone());
        }
        Ok(next)
    }

    /// Plans a pod for endpoint `ep` in a running lab (its node, as in
    /// [`new`](Self::new), or the least loaded; a free address of its
    /// node's CIDR unless it has one; fresh namespace and veth names).
    /// Returns its index.
    pub fn add_pod(&mut self, ep: &Endpoint) -> Result<usize, PlanError> {
        let node = match ep.node.as_ref().and_then(|n| self.nodes.iter().position(|x| &x.name == n)) {
            Some(i) => i,
            None => (0..self.nodes.len())
                .min_by_key(|&i| (self.pods.iter().filter(|p| p.node == i).count(), i))
                .expect("at least one node"),
        };
        let used: BTreeMap<IpAddr, &EndpointKey> =
            self.pods.iter().flat_map(|p| p.ips.iter().map(move |ip| (*ip, &p.key))).collect();
        for ip in &ep.ips {
            if let Some(other) = used.get(ip) {
                return Err(PlanError::DuplicateAddress(Box::new(ep.key.clone()), *ip, Box::new((*other).clone())));
            }
        }
        let mut ips: Vec<IpAddr> = ep.ips.iter().find(|ip| ip.is_ipv4()).into_iter().copied().collect();
        if ep.ips.is_empty() {
            let cidr = self.nodes[node].pod_cidr;
            let free = (10..(1u32 << (32 - cidr.prefix_len())) - 1)
                .map(|offset| IpAddr::V4(Ipv4Addr::from(u32::from(cidr.network()) + offset)))
                .find(|ip| !used.contains_key(ip));
            ips.push(free.ok_or_else(|| PlanError::Exhausted(self.nodes[node].name.clone(), cidr))?);
        }
        ips.extend(ep.ips.iter().find(|ip| ip.is_ipv6()));
        let index = (self.pods.len()..)
            .find(|i| !self.pods.iter().any(|p| p.netns.ends_with(&format!("-p{i}"))))
            .expect("a free name");
        self.pods.push(LabPod {
            key: ep.key.clone(),
            netns: format!("{PREFIX}{}-p{index}", self.run_id),
            node,
            host_if: format!("p{index}"),
            ips,
        });
        Ok(self.pods.len() - 1)
    }

    /// Forgets the pod of `key`; returns it.
    pub fn remove_pod(&mut self, key: &EndpointKey) -> Option<LabPod> {
        let i = self.pod(key)?;
        Some(self.pods.remove(i))
    }

    /// Every namespace of the lab, in the order they are created.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.underlay.clone(), self.external.clone()];
        v.extend(self.nodes.iter().map(|n| n.netns.clone()));
        v.extend(self.pods.iter().map(|p| p.netns.clone()));
        v
    }

    pub fn pod(&self, key: &EndpointKey) -> Option<usize> {
        self.pods.iter().position(|p| &p.key == key)
    }

    /// Whether any pod has an IPv6 address (the underlay then carries IPv6 too).
    pub fn ipv6(&self) -> bool {
        self.pods.iter().any(|p| p.ips.iter().any(IpAddr::is_ipv6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::{parse_sources, Source};

    fn cluster(text: &str) -> Cluster {
        let (c, problems, _) =
            Cluster::from_manifests(parse_sources(&[Source { name: "t.yaml".into(), text: text.into() }]));
        assert!(problems.is_empty(), "{problems:?}");
        c
    }

    const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.250.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x}
spec: {nodeName: big, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: h, namespace: x}
spec: {hostNetwork: true, containers: [{name: c, image: i}]}
";

    #[test]
    fn spreads_pods_and_assigns_free_addresses() {
        let (plan, lab) = Plan::new(&cluster(PODS), 2, "7").unwrap();
        let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["big", "lab-node-1"]);
        let by_name = |n: &str| plan.pods.iter().find(|p| p.key.name == n).unwrap();
        assert_eq!(by_name("c").node, 0, "spec.nodeName is honoured");
        assert_eq!(by_name("b").ips, vec!["10.250.0.10".parse::<IpAddr>().unwrap()], "manifest addresses are kept");
        // a is placed first (on big, empty then); its address skips b's.
        assert_ne!(by_name("a").ips, by_name("b").ips);
        assert_eq!(plan.skipped.len(), 1, "hostNetwork pods get no namespace");
        assert!(plan.namespaces().iter().all(|n| n.starts_with("pal-7-")));
        let a = lab.endpoints.iter().find(|e| e.key.name == "a").unwrap();
        assert_eq!(a.ips, by_name("a").ips, "the engine sees the lab's addresses");
        assert_eq!(a.node.as_deref(), Some(plan.nodes[by_name("a").node].name.as_str()));
    }

    #[test]
    fn duplicate_addresses_are_refused() {
        let text = format!("{PODS}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: d, namespace: x}}\nspec: {{containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: 10.250.0.10}}\n");
        let err = Plan::new(&cluster(&text), 2, "7").unwrap_err();
        assert!(matches!(err, PlanError::DuplicateAddress(..)), "{err}");
    }
}
