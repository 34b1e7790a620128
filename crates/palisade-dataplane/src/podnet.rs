//! Pod network plumbing, Calico style: a veth pair per pod, `eth0` in the
//! pod's namespace with /32 and /128 addresses, the other end in the node's
//! namespace with a host route per address. The pod's default route goes to
//! a link-local gateway that the node answers for (proxy ARP for IPv4,
//! `fe80::1` on the host end for IPv6), so pods never share an L2 segment:
//! every packet between pods crosses the node's forward hook, where policy
//! is enforced.

use std::net::IpAddr;

use crate::netns::{Netns, NetnsError};
use crate::rtnl::Rtnl;

/// The IPv4 gateway every pod routes to; answered by the node (proxy ARP).
pub const GATEWAY_V4: &str = "169.254.1.1";

/// How palisade-cni names the node side of every pod's veth.
pub const POD_IF_PREFIX: &str = "pal";
/// The IPv6 gateway: the link-local address of the host end.
pub const GATEWAY_V6: &str = "fe80::1";
/// How long wiring waits for the node's end of a veth to be activated.
pub const ACTIVATION_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One pod's attachment to its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    pub pod: Netns,
    pub node: Netns,
    /// The node-side interface name (at most 15 bytes, unique on the node).
    pub host_if: String,
    /// The interface name inside the pod (`eth0`, or the CNI_IFNAME).
    pub pod_if: String,
    pub addresses: Vec<IpAddr>,
}

impl PodLink {
    /// Creates the veth pair directly in both namespaces (never in the
    /// root namespace), addresses, routes, proxy ARP, and the sender check
    /// on the node side (see `sender`). Returns once the node's end
    /// transmits, so the pod's first packets are not lost.
    pub fn attach(&self) -> Result<(), NetnsError> {
        self.attach_with(false)
    }

    /// [`attach`](Self::attach), the sender check attached as a tc filter
    /// when `fast_check` (no RCU grace period on a pod's start: the CNI
    /// plugin's way; the agent then moves it to tcx, `sender::promote`).
    pub fn attach_with(&self, fast_check: bool) -> Result<(), NetnsError> {
        let has_v6 = self.addresses.iter().any(IpAddr::is_ipv6);
        let len = |a: &IpAddr| if a.is_ipv4() { 32 } else { 128 };
        // No duplicate address detection on a point-to-point link: link-local
        // addresses are usable at once, so the first packet is not delayed.
        no_dad(&self.node)?;
        no_dad(&self.pod)?;
        // The pair is created from the node's namespace with the peer placed in the pod's.
        let mut node = Rtnl::open(&self.node)?;
        node.add_veth(&self.host_if, &self.pod_if, &self.pod)?;
        node.set_up(&self.host_if)?;
        let host = node.index(&self.host_if)?;
        if has_v6 {
            node.add_address(host, gateway_v6(), 64)?;
        }
        for a in &self.addresses {
            node.add_route(host, *a, len(a), None)?;
        }
        // Before the pod's end is up, so nothing it sends escapes the check.
        if fast_check {
            crate::sender::attach_fast_in(&self.node, &self.host_if, &self.addresses)?;
        } else {
            crate::sender::attach_in(&self.node, &self.host_if, &self.addresses)?;
        }
        self.node.sysctl(&format!("net.ipv4.conf.{}.proxy_arp", self.host_if), "1")?;
        // Replies to the pod's neighbour solicitations come at once.
        self.node.sysctl(&format!("net.ipv4.neigh.{}.proxy_delay", self.host_if), "0")?;

        let mut pod = Rtnl::open(&self.pod)?;
        pod.set_up("lo")?;
        pod.set_up(&self.pod_if)?;
        let dev = pod.index(&self.pod_if)?;
        for a in &self.addresses {
            pod.add_address(dev, *a, len(a))?;
        }
        if self.addresses.iter().any(IpAddr::is_ipv4) {
            let gw = gateway_v4();
            pod.add_route(dev, gw, 32, None)?;
            pod.add_route(dev, IpAddr::from([0, 0, 0, 0]), 0, Some(gw))?;
        }
        if has_v6 {
            pod.add_route(dev, IpAddr::from([0u16; 8]), 0, Some(gateway_v6()))?;
        }
        // The node's end is activated asynchronously once the pod's is up;
        // until then it drops what it sends (see `link`).
        crate::link::wait_until_transmitting(&self.node, &self.host_if, ACTIVATION_LIMIT)
    }

    /// Removes the pair (deleting one end deletes both) and its routes.
    /// Gone already is fine.
    pub fn detach(&self) -> Result<(), NetnsError> {
        Rtnl::open(&self.node)?.delete_link(&self.host_if).map(|_| ())
    }
}

fn gateway_v4() -> IpAddr {
    GATEWAY_V4.parse().expect("gateway address")
}

fn gateway_v6() -> IpAddr {
    GATEWAY_V6.parse().expect("gateway address")
}

/// Makes a namespace a router: forwarding on, in both families.
pub fn enable_forwarding(node: &Netns) -> Result<(), NetnsError> {
    node.sysctl("net.ipv4.ip_forward", "1")?;
    node.sysctl("net.ipv6.conf.all.forwarding", "1")
}

/// Interfaces created in `ns` from now on skip IPv6 duplicate address
/// detection (each of our links has exactly two ends, both ours).
pub fn no_dad(ns: &Netns) -> Result<(), NetnsError> {
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
}
