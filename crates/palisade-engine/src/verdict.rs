//! Queries on the compiled state: the verdict for one flow, the connection
//! set between two ends. `CompiledIdentity` lookups here mirror what the
//! kernel does; the dataplane's differential tests compare against them.

use std::net::IpAddr;

use palisade_model::{Direction, PortSpec, Protocol};

use crate::connset::ConnSet;
use crate::engine::{AllowEntry, EndpointId, Engine, PeerMatch, PolicyId, PortMatch, RuleOrigin};
use crate::identity::Identity;

/// One end of a flow: an endpoint the engine knows, or an address outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowEnd {
    Endpoint(EndpointId),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub src: FlowEnd,
    pub dst: FlowEnd,
    pub protocol: Protocol,
    pub port: u16,
}

/// Why one side (the source's egress or the destination's ingress) let the
/// flow through or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SideVerdict {
    /// The side is an address outside the cluster: no policy of ours applies.
    External,
    /// Traffic of an endpoint to itself never leaves its network namespace.
    SelfTraffic,
    /// Traffic between a pod and its own node is always allowed (kubelet probes).
    NodeLocal,
    /// No policy of this direction selects the endpoint.
    NotIsolated,
    /// Isolated; these rules allow the flow.
    Allowed { rules: Vec<RuleOrigin> },
    /// Isolated by these policies, and no rule of theirs allows the flow.
    Denied { policies: Vec<PolicyId> },
}

impl SideVerdict {
    pub fn allows(&self) -> bool {
        !matches!(self, SideVerdict::Denied { .. })
    }

    /// A stable one-word name, for machine-readable output.
    pub fn name(&self) -> &'static str {
        match self {
            SideVerdict::External => "external",
            SideVerdict::SelfTraffic => "self",
            SideVerdict::NodeLocal => "node-local",
            SideVerdict::NotIsolated => "not-isolated",
            SideVerdict::Allowed { .. } => "allowed",
            SideVerdict::Denied { .. } => "denied",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub egress: SideVerdict,
    pub ingress: SideVerdict,
}

/// What a rule's peer is tested against: the other end of the flow.
struct PeerView<'a> {
    identity: Option<(crate::identity::IdentityId, &'a Identity)>,
    ips: &'a [IpAddr],
}

impl Engine {
    fn peer_view<'a>(&'a self, end: &'a FlowEnd) -> PeerView<'a> {
        match end {
            FlowEnd::Endpoint(id) => {
                let identity = self.endpoint_identity(*id);
                PeerView { identity: Some((identity, self.identity(identity))), ips: &self.endpoint(*id).ips }
            }
            FlowEnd::Address(ip) => PeerView { identity: None, ips: std::slice::from_ref(ip) },
        }
    }

    #[inline]
    fn peer_matches(&self, peer: &PeerMatch, view: &PeerView) -> bool {
        match peer {
            PeerMatch::Any => true,
            PeerMatch::Selector(sel) => view.identity.is_some_and(|(id, _)| self.selectors.contains(*sel, id)),
            // An endpoint with several addresses (replicas, dual stack) is
            // matched when any of them is: reachability is over-approximated,
            // never hidden.
            PeerMatch::IpBlock(block) => view.ips.iter().any(|ip| block.contains(*ip)),
        }
    }

    /// Ports an entry opens to a destination (named ports resolve there).
    pub(crate) fn entry_ports(ports: &PortMatch, dst: Option<&Identity>) -> ConnSet {
        match ports {
            PortMatch::Any => ConnSet::all(),
            PortMatch::Ports(list) => {
                let mut set = ConnSet::none();
                for p in list.iter() {
                    match &p.port {
                        PortSpec::All => set.add_range(p.protocol, 1, 65535),
                        PortSpec::Range { start, end } => set.add_range(p.protocol, *start, *end),
                        PortSpec::Named(name) => {
                            for port in dst.into_iter().flat_map(|d| d.named_ports(name, p.protocol)) {
                                set.add_range(p.protocol, port, port);
                            }
                        }
                    }
                }
                set
            }
        }
    }

    #[inline]
    fn entry_allows_port(ports: &PortMatch, protocol: Protocol, port: u16, dst: Option<&Identity>) -> bool {
        match ports {
            PortMatch::Any => true,
            PortMatch::Ports(list) => list.iter().any(|p| {
                p.protocol == protocol
                    && match &p.port {
                        PortSpec::All => true,
                        PortSpec::Range { start, end } => *start <= port && port <= *end,
                        PortSpec::Named(name) => dst.is_some_and(|d| d.has_named_port(name, protocol, port)),
                    }
            }),
        }
    }

    /// Special cases that hold before any policy is consulted.
    fn special_case(&self, src: &FlowEnd, dst: &FlowEnd) -> Option<SideVerdict> {
        if let (FlowEnd::Endpoint(a), FlowEnd::Endpoint(b)) = (src, dst) {
            // A Pod to itself never leaves its network namespace. A workload
            // "to itself" is traffic between its replicas: separate pods,
            // so policy applies (regression: reported as always allowed),
            // unless it was read from its one running pod.
            if a == b && self.endpoint(*a).is_one_pod() {
                return Some(SideVerdict::SelfTraffic);
            }
            let (ea, eb) = (self.endpoint(*a), self.endpoint(*b));
            if ea.host_network != eb.host_network && ea.node.is_some() && ea.node == eb.node {
                return Some(SideVerdict::NodeLocal);
            }
        }
        None
    }

    /// One side's decision. `this` is the endpoint whose policy applies,
    /// `other` the flow's other end, `dst` the destination's identity.
    fn side(&self, direction: Direction, this: &FlowEnd, other: &FlowEnd, flow: &Flow, explain: bool) -> SideVerdict {
        let FlowEnd::Endpoint(id) = this else {
            return SideVerdict::External;
        };
        let compiled = self.compiled(self.endpoint_identity(*id));
        let Some(side) = compiled.direction(direction) else {
            return SideVerdict::NotIsolated;
        };
        let view = self.peer_view(other);
        let dst_identity = match direction {
            Direction::Ingress => Some(self.identity(self.endpoint_identity(*id))),
            Direction::Egress => view.identity.map(|(_, i)| i),
        };
        let matching = |e: &&AllowEntry| {
            Self::entry_allows_port(&e.ports, flow.protocol, flow.port, dst_identity)
                && self.peer_matches(&e.peer, &view)
        };
        if explain {
            let rules: Vec<RuleOrigin> = side.entries.iter().filter(matching).map(|e| e.origin).collect();
            if !rules.is_empty() {
                return SideVerdict::Allowed { rules };
            }
        } else if let Some(e) = side.entries.iter().find(matching) {
            return SideVerdict::Allowed { rules: vec![e.origin] };
        }
        SideVerdict::Denied { policies: side.policies.clone() }
    }

    /// The verdict for a flow, naming every rule that allows it on each side.
    pub fn verdict(&self, flow: &Flow) -> Verdict {
        if let Some(special) = self.special_case(&flow.src, &flow.dst) {
            return Verdict { allowed: true, egress: special.clone(), ingress: special };
        }
        let egress = self.side(Direction::Egress, &flow.src, &flow.dst, flow, true);
        let ingress = self.side(Direction::Ingress, &flow.dst, &flow.src, flow, true);
        Verdict { allowed: egress.allows() && ingress.allows(), egress, ingress }
    }

    /// Just the answer: the hot path for matrices and benchmarks.
    pub fn allows(&self, flow: &Flow) -> bool {
        if self.special_case(&flow.src, &flow.dst).is_some() {
            return true;
        }
        self.side_allows(Direction::Egress, &flow.src, &flow.dst, flow)
            && self.side_allows(Direction::Ingress, &flow.dst, &flow.src, flow)
    }

    fn side_allows(&self, direction: Direction, this: &FlowEnd, other: &FlowEnd, flow: &Flow) -> bool {
        let FlowEnd::Endpoint(id) = this else {
            return true;
        };
        let Some(side) = self.compiled(self.endpoint_identity(*id)).direction(direction) else {
            return true;
        };
        let view = self.peer_view(other);
        let dst_identity = match direction {
            Direction::Ingress => Some(self.identity(self.endpoint_identity(*id))),
            Direction::Egress => view.identity.map(|(_, i)| i),
        };
        side.entries.iter().any(|e| {
            Self::entry_allows_port(&e.ports, flow.protocol, flow.port, dst_identity)
                && self.peer_matches(&e.peer, &view)
        })
    }

    /// Everything `src` may open to `dst`: egress at the source intersected
    /// with ingress at the destination.
    pub fn connections(&self, src: &FlowEnd, dst: &FlowEnd) -> ConnSet {
        if self.special_case(src, dst).is_some() {
            return ConnSet::all();
        }
        let egress = self.side_connections(Direction::Egress, src, dst);
        if egress.is_none() {
            return egress;
        }
        egress.intersection(&self.side_connections(Direction::Ingress, dst, src))
    }

    fn side_connections(&self, direction: Direction, this: &FlowEnd, other: &FlowEnd) -> ConnSet {
        let FlowEnd::Endpoint(id) = this else {
            return ConnSet::all();
        };
        let Some(side) = self.compiled(self.endpoint_identity(*id)).direction(direction) else {
            return ConnSet::all();
        };
        let view = self.peer_view(other);
        let dst_identity = match direction {
            Direction::Ingress => Some(self.identity(self.endpoint_identity(*id))),
            Direction::Egress => view.identity.map(|(_, i)| i),
        };
        let mut out = ConnSet::none();
        for e in &side.entries {
            if self.peer_matches(&e.peer, &view) {
                out.union(&Self::entry_ports(&e.ports, dst_identity));
                if out.is_all() {
                    break;
                }
            }
        }
        out
    }
}
