//! Builds a [`Plan`] out of network namespaces: an underlay bridge joining
//! the nodes and the external host, pods wired to their nodes, and routes
//! so pod traffic between nodes is routed over the underlay. Nothing is
//! created in the root namespace: veth pairs are created with both ends
//! placed directly in lab namespaces.

use std::fmt::Write as _;
use std::net::IpAddr;

use palisade_dataplane::link::wait_until_transmitting;
use palisade_dataplane::netns::{Netns, NetnsError};
use palisade_dataplane::podnet::{enable_forwarding, PodLink, ACTIVATION_LIMIT};

use crate::plan::{Plan, EXTERNAL_V4, EXTERNAL_V6};

/// The lab's namespaces, deleted when dropped (`palisade lab up` keeps its
/// lab process alive instead; `lab down` stops it).
pub struct Topology {
    pub plan: Plan,
    created: Vec<Netns>,
}

impl Topology {
    /// Creates everything; on error, what was created is deleted again.
    /// `progress(done, total)` is called as pods are wired.
    pub fn build(plan: Plan, progress: impl FnMut(usize, usize)) -> Result<Topology, NetnsError> {
        Self::build_with(plan, progress, true)
    }

    /// As [`build`](Self::build); with `wire_pods` false the pods'
    /// namespaces are created but not attached (a CNI plugin does that).
    pub fn build_with(
        plan: Plan,
        mut progress: impl FnMut(usize, usize),
        wire_pods: bool,
    ) -> Result<Topology, NetnsError> {
        let mut topo = Topology { plan, created: Vec::new() };
        topo.create_all(&mut progress, wire_pods)?;
        Ok(topo)
    }

    fn create(&mut self, name: &str) -> Result<Netns, NetnsError> {
        let ns = Netns::create(name)?;
        self.created.push(ns.clone());
        Ok(ns)
    }

    fn create_all(&mut self, progress: &mut impl FnMut(usize, usize), wire_pods: bool) -> Result<(), NetnsError> {
        let plan = self.plan.clone();
        let v6 = plan.ipv6();
        let underlay = self.create(&plan.underlay)?;
        underlay.ip_batch("link add br0 type bridge\nlink set br0 up\n")?;
        // The underlay only switches frames; it never routes or filters.
        underlay.sysctl("net.ipv4.ip_forward", "0")?;

        let mut uplinks = Vec::new();
        for (i, node) in plan.nodes.iter().enumerate() {
            uplinks.push((format!("n{i}"), self.create(&node.netns)?, IpAddr::V4(node.underlay_v4), node.underlay_v6));
        }
        uplinks.push(("ext".into(), self.create(&plan.external)?, IpAddr::V4(EXTERNAL_V4), EXTERNAL_V6));
        palisade_dataplane::podnet::no_dad(&underlay)?;
        for (_, ns, ..) in &uplinks {
            palisade_dataplane::podnet::no_dad(ns)?;
        }
        let mut script = String::new();
        for (port, ns, ..) in &uplinks {
            writeln!(script, "link add name {port} type veth peer name ul0 netns {}", ns.name).unwrap();
            writeln!(script, "link set {port} master br0 up").unwrap();
        }
        underlay.ip_batch(&script)?;
        for (_, ns, v4, v6addr) in &uplinks {
            let mut s = format!("addr add {v4}/24 dev ul0\nlink set ul0 up\n");
            if v6 {
                writeln!(s, "addr add {v6addr}/64 dev ul0 nodad").unwrap();
            }
            ns.ip_batch(&s)?;
        }
        // The bridge's ports are activated (and start forwarding) after
        // their peers came up, asynchronously: see `link`.
        for (port, ..) in &uplinks {
            wait_until_transmitting(&underlay, port, ACTIVATION_LIMIT)?;
        }
        // Nodes route what is not a pod to the external host, "the
        // internet" of the lab. Proxy ARP for the pods' gateway needs such a
        // route too: a node answers for 169.254.1.1 because it can route it.
        for node in &plan.nodes {
            let ns = Netns::named(&node.netns);
            enable_forwarding(&ns)?;
            // Probes are thousands of short connections: without this their
            // TIME_WAIT entries (120 s) fill the node's conntrack table.
            ns.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "5")?;
            // A flow whose conntrack entry a policy change removed must not
            // be picked up again mid-stream (by either end) as if new: only
            // a SYN starts a TCP flow, anything else is invalid and dropped.
            ns.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")?;
            let mut s = format!("route add default via {EXTERNAL_V4}\n");
            if v6 {
                writeln!(s, "route add ::/0 via {EXTERNAL_V6}").unwrap();
            }
            ns.ip_batch(&s)?;
        }

        let total = plan.pods.len();
        for (done, pod) in plan.pods.iter().enumerate() {
            let pod_ns = self.create(&pod.netns)?;
            if !wire_pods {
                progress(done + 1, total);
                continue;
            }
            PodLink {
                pod: pod_ns,
                node: Netns::named(&plan.nodes[pod.node].netns),
                host_if: pod.host_if.clone(),
                pod_if: "eth0".into(),
                addresses: pod.ips.clone(),
            }
            .attach()?;
            progress(done + 1, total);
        }

        // Routes to pods on other nodes (and from the external host), via
        // the owning node's underlay address.
        let via = |pod: &crate::plan::LabPod, ip: &IpAddr| {
            let node = &plan.nodes[pod.node];
            match ip {
                IpAddr::V4(_) => format!("route add {ip}/32 via {}\n", node.underlay_v4),
                IpAddr::V6(_) => format!("route add {ip}/128 via {}\n", node.underlay_v6),
            }
        };
        for (i, node) in plan.nodes.iter().enumerate() {
            let mut s = String::new();
            for pod in plan.pods.iter().filter(|p| p.node != i) {
                for ip in &pod.ips {
                    s += &via(pod, ip);
                }
            }
            Netns::named(&node.netns).ip_batch(&s)?;
        }
        let mut s = String::new();
        for pod in &plan.pods {
            for ip in &pod.ips {
                s += &via(pod, ip);
            }
        }
        Netns::named(&plan.external).ip_batch(&s)?;
        Ok(())
    }

    /// Creates the namespace of pod `index` (planned after the build) and
    /// the routes to its addresses on the other nodes and the external
    /// host. Its veth is the CNI plugin's job.
    pub fn add_pod(&mut self, index: usize) -> Result<Netns, NetnsError> {
        let pod = self.plan.pods[index].clone();
        let ns = self.create(&pod.netns)?;
        self.pod_routes(&pod, "add")?;
        Ok(ns)
    }

    /// Deletes a removed pod's namespace and its routes.
    pub fn remove_pod(&mut self, pod: &crate::plan::LabPod) -> Result<(), NetnsError> {
        self.pod_routes(pod, "del")?;
        if let Some(i) = self.created.iter().position(|n| n.name == pod.netns) {
            self.created.remove(i);
        }
        Netns::named(&pod.netns).delete()
    }

    fn pod_routes(&self, pod: &crate::plan::LabPod, verb: &str) -> Result<(), NetnsError> {
        let node = &self.plan.nodes[pod.node];
        let mut script = String::new();
        for ip in &pod.ips {
            match ip {
                IpAddr::V4(_) => writeln!(script, "route {verb} {ip}/32 via {}", node.underlay_v4).unwrap(),
                IpAddr::V6(_) => writeln!(script, "route {verb} {ip}/128 via {}", node.underlay_v6).unwrap(),
            }
        }
        let others = self.plan.nodes.iter().enumerate().filter(|(i, _)| *i != pod.node).map(|(_, n)| &n.netns);
        for ns in others.chain([&self.plan.external]) {
            Netns::named(ns).ip_batch(&script)?;
        }
        Ok(())
    }

    pub fn pod_netns(&self, pod: usize) -> Netns {
        Netns::named(&self.plan.pods[pod].netns)
    }

    pub fn node_netns(&self, node: usize) -> Netns {
        Netns::named(&self.plan.nodes[node].netns)
    }

    /// Deletes every namespace of the lab now.
    pub fn teardown(&mut self) {
        for ns in self.created.drain(..).rev() {
            let _ = ns.delete();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Deletes every namespace of plan, created by this process or another.
pub fn delete_plan(plan: &Plan) {
    for name in plan.namespaces().iter().rev() {
        let _ = Netns::named(name).delete();
    }
    let _ = std::fs::remove_dir_all(std::path::Path::new(crate::agents::AGENTS_DIR).join(&plan.run_id));
}
