//! What a node needs before its pods can talk, made so and checked: IP
//! forwarding on (pods are routed, not bridged), and a route for the pods'
//! IPv4 gateway `169.254.1.1` through a non-pod interface. The node answers
//! the pods' ARP for the gateway by proxy ARP, which the kernel does only
//! for an address it can route elsewhere than back to the asking veth; a
//! node without a default route (or whose default route goes away) leaves
//! every IPv4 pod without a gateway. A `/32` route through `lo` is enough,
//! whatever else the node routes. (IPv6 needs no route: the gateway
//! `fe80::1` is an address on every pod veth.)

use std::path::PathBuf;

use crate::netns::Netns;
use crate::podnet::GATEWAY_V4;

/// Where sysctls are read and written: `/proc/sys`, or a writable mount of
/// the node's (a container's own `/proc/sys` is read-only).
#[derive(Debug, Clone)]
pub struct NodeSetup {
    pub sysctl_root: PathBuf,
}

impl Default for NodeSetup {
    fn default() -> Self {
        NodeSetup { sysctl_root: PathBuf::from("/proc/sys") }
    }
}

/// What [`NodeSetup::ensure`] found: what it changed, and what is still
/// wrong (the node is not ready while anything is).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub changed: Vec<String>,
    pub problems: Vec<String>,
}

const FORWARDING: &[(&str, &str)] =
    &[("net/ipv4/ip_forward", "net.ipv4.ip_forward"), ("net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding")];

impl NodeSetup {
    /// Makes the node (`netns`, or this process's namespace) ready for
    /// pods, idempotently, and says what is still missing.
    pub fn ensure(&self, netns: Option<&Netns>) -> Readiness {
        let work = || self.ensure_here();
        match netns {
            None => work(),
            Some(ns) => ns.enter(work).unwrap_or_else(|e| Readiness { changed: vec![], problems: vec![e.to_string()] }),
        }
    }

    fn ensure_here(&self) -> Readiness {
        let mut r = Readiness::default();
        for (file, key) in FORWARDING {
            let path = self.sysctl_root.join(file);
            match std::fs::read_to_string(&path) {
                Ok(v) if v.trim() == "1" => {}
                Ok(_) => match std::fs::write(&path, "1") {
                    Ok(()) => r.changed.push(format!("{key} set to 1")),
                    Err(e) => r.problems.push(format!(
                        "{key} is 0 and cannot be set ({}: {e}): pods cannot reach anything beyond their own veth; \
                         set it on the node, or give the agent a writable mount of the node's /proc/sys (--sysctl-dir)",
                        path.display()
                    )),
                },
                // No IPv6 on this node: nothing to forward.
                Err(_) if key.contains("ipv6") && !self.sysctl_root.join("net/ipv6").exists() => {}
                Err(e) => r.problems.push(format!("{key}: cannot read {}: {e}", path.display())),
            }
        }
        match gateway_route() {
            Ok(true) => {}
            // (`lo` is up on any working node; a bare namespace has it down.)
            Ok(false) => match crate::netns::run("ip", &["link", "set", "lo", "up"], None)
                .and_then(|_| crate::netns::run("ip", &["route", "replace", &format!("{GATEWAY_V4}/32"), "dev", "lo"], None))
            {
                Ok(_) => r.changed.push(format!("route {GATEWAY_V4}/32 dev lo added (the pods' gateway, answered by proxy ARP)")),
                Err(e) => r.problems.push(format!(
                    "no route for the pods' gateway {GATEWAY_V4} through a non-pod interface, and adding one failed: {e}"
                )),
            },
            Err(e) => r.problems.push(e),
        }
        r
    }
}

/// Whether the node routes the gateway address through an interface that
/// is not a pod's veth (proxy ARP answers only then).
fn gateway_route() -> Result<bool, String> {
    let text = match crate::netns::run("ip", &["route", "get", GATEWAY_V4], None) {
        Ok(t) => t,
        // No route, or one that does not deliver (blackhole, unreachable).
        Err(crate::netns::NetnsError::Command { .. }) => return Ok(false),
        Err(e) => return Err(format!("looking up the route for the pods' gateway {GATEWAY_V4}: {e}")),
    };
    // `169.254.1.1 via 10.0.0.1 dev eth0 src ...` or `local 169.254.1.1 dev lo ...`
    let mut words = text.split_whitespace();
    let dev = words.by_ref().skip_while(|w| *w != "dev").nth(1);
    Ok(dev.is_some_and(|d| !d.starts_with(crate::podnet::POD_IF_PREFIX)))
}
