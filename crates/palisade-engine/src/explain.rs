//! Explanations: the decision chain for one flow, rule by rule, on both
//! sides. Built from the same compiled entries the verdict uses, so an
//! explanation can never disagree with the verdict it explains.

use palisade_model::{Direction, Peer, PortSpec, Protocol};
use serde::Serialize;

use crate::engine::{Engine, PolicyId};
use crate::verdict::{Flow, FlowEnd, SideVerdict, Verdict};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub source: String,
    pub destination: String,
    pub protocol: Protocol,
    pub port: u16,
    pub allowed: bool,
    pub egress: SideExplanation,
    pub ingress: SideExplanation,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SideExplanation {
    pub direction: Direction,
    /// The endpoint whose policy applies on this side.
    pub endpoint: String,
    /// `allowed`, `denied`, `not-isolated`, `self`, `node-local` or `external`.
    pub decision: &'static str,
    #[serde(skip)]
    pub verdict: SideVerdict,
    /// Every policy that selects the endpoint in this direction.
    pub policies: Vec<PolicyExplanation>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyExplanation {
    pub policy: String,
    pub rules: Vec<RuleExplanation>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleExplanation {
    pub index: usize,
    pub allows: bool,
    /// Why, in one line: which peer and port matched, or what did not.
    pub reason: String,
}

impl Engine {
    pub fn end_name(&self, end: &FlowEnd) -> String {
        match end {
            FlowEnd::Endpoint(id) => self.endpoint(*id).key.to_string(),
            FlowEnd::Address(ip) => ip.to_string(),
        }
    }

    pub fn explain(&self, flow: &Flow) -> Explanation {
        self.explain_verdict(flow, self.verdict(flow))
    }

    /// One pod of an endpoint that stands for several (a workload's
    /// replicas) to that same pod: its traffic never leaves its network
    /// namespace, as for a Pod to itself. (`flow` names the endpoint on
    /// both ends; the caller knows it is one pod.)
    pub fn explain_pod_to_itself(&self, flow: &Flow) -> Explanation {
        let side = SideVerdict::SelfTraffic;
        self.explain_verdict(flow, Verdict { allowed: true, egress: side.clone(), ingress: side })
    }

    fn explain_verdict(&self, flow: &Flow, verdict: Verdict) -> Explanation {
        let side = |direction: Direction, this: &FlowEnd, other: &FlowEnd, verdict: SideVerdict| {
            let policies = match (this, &verdict) {
                (FlowEnd::Endpoint(id), SideVerdict::Allowed { .. } | SideVerdict::Denied { .. }) => {
                    let compiled = self.compiled(self.endpoint_identity(*id));
                    compiled
                        .direction(direction)
                        .map(|d| d.policies.iter().map(|p| self.explain_policy(*p, direction, flow, other)).collect())
                        .unwrap_or_default()
                }
                _ => Vec::new(),
            };
            SideExplanation { direction, endpoint: self.end_name(this), decision: verdict.name(), verdict, policies }
        };
        Explanation {
            source: self.end_name(&flow.src),
            destination: self.end_name(&flow.dst),
            protocol: flow.protocol,
            port: flow.port,
            allowed: verdict.allowed,
            egress: side(Direction::Egress, &flow.src, &flow.dst, verdict.egress.clone()),
            ingress: side(Direction::Ingress, &flow.dst, &flow.src, verdict.ingress.clone()),
        }
    }

    fn explain_policy(&self, id: PolicyId, direction: Direction, flow: &Flow, other: &FlowEnd) -> PolicyExplanation {
        let policy = self.policy(id);
        let dst_identity = match flow.dst {
            FlowEnd::Endpoint(e) => Some(self.identity(self.endpoint_identity(e))),
            FlowEnd::Address(_) => None,
        };
        let other_name = self.end_name(other);
        let rules = policy
            .rules(direction)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(r, rule)| {
                let peer_hit = if rule.peers.is_empty() {
                    Some("any peer".to_string())
                } else {
                    rule.peers.iter().enumerate().find_map(|(p, peer)| {
                        let hit = match peer {
                            Peer::Selector(_) => match (other, self.rule_peer_selector(id, direction, r, p)) {
                                (FlowEnd::Endpoint(e), Some(sel)) => {
                                    self.selector_cache().contains(sel, self.endpoint_identity(*e))
                                }
                                _ => false,
                            },
                            Peer::IpBlock(b) => match other {
                                FlowEnd::Endpoint(e) => self.endpoint(*e).ips.iter().any(|ip| b.contains(*ip)),
                                FlowEnd::Address(ip) => b.contains(*ip),
                            },
                        };
                        hit.then(|| format!("peer {p} ({peer})"))
                    })
                };
                let port_hit = if rule.ports.is_empty() {
                    Some("any port".to_string())
                } else {
                    rule.ports.iter().find_map(|p| {
                        let ok = p.protocol == flow.protocol
                            && match &p.port {
                                PortSpec::All => true,
                                PortSpec::Range { start, end } => *start <= flow.port && flow.port <= *end,
                                PortSpec::Named(n) => {
                                    dst_identity.is_some_and(|d| d.has_named_port(n, p.protocol, flow.port))
                                }
                            };
                        ok.then(|| format!("port {p}"))
                    })
                };
                let (allows, reason) = match (&peer_hit, &port_hit) {
                    (Some(peer), Some(port)) => (true, format!("{other_name} matches {peer} on {port}")),
                    (None, _) => (false, format!("{other_name} matches none of its {} peers", rule.peers.len())),
                    (Some(_), None) => {
                        let ports: Vec<String> = rule.ports.iter().map(|p| p.to_string()).collect();
                        (
                            false,
                            format!("{} {} is not among its ports ({})", flow.protocol, flow.port, ports.join(", ")),
                        )
                    }
                };
                RuleExplanation { index: r, allows, reason }
            })
            .collect();
        PolicyExplanation { policy: format!("{}/{}", policy.namespace, policy.name), rules }
    }
}
