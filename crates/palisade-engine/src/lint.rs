//! Findings a reviewer wants about a set of policies, each with an id, a
//! severity, the object and a one-line fix. Computed from the engine's
//! state, so "selects nothing" means exactly what enforcement would do.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use palisade_model::{Direction, NamespaceScope, NetworkPolicy, Peer, PolicyPort, PortSpec, Protocol, Rule};
use serde::Serialize;

use crate::connset::ConnSet;
use crate::engine::{Engine, PolicyId};
use crate::identity::IdentityId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub severity: Severity,
    /// `NetworkPolicy ns/name` or `Namespace ns`.
    pub object: String,
    pub message: String,
    pub fix: String,
}

fn policy_ref(p: &NetworkPolicy) -> String {
    format!("NetworkPolicy {}/{}", p.namespace, p.name)
}

/// All findings, sorted by severity (worst first), then object.
pub fn lint(engine: &Engine) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut policies: Vec<(PolicyId, &NetworkPolicy)> = engine.policies().collect();
    policies.sort_by(|a, b| (&a.1.namespace, &a.1.name).cmp(&(&b.1.namespace, &b.1.name)));
    for &(id, p) in &policies {
        selects_nothing(engine, id, p, &mut out);
        peers_match_nothing(engine, p, &mut out);
        named_ports(engine, id, p, &mut out);
        ip_blocks_cover_pods(engine, p, &mut out);
        shadowed_rules(p, &mut out);
    }
    duplicates(&policies, &mut out);
    default_deny(engine, &policies, &mut out);
    dns(engine, &mut out);
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| a.object.cmp(&b.object)).then_with(|| a.id.cmp(b.id)));
    out
}

fn selects_nothing(engine: &Engine, id: PolicyId, p: &NetworkPolicy, out: &mut Vec<Finding>) {
    if engine.policy_targets(id).next().is_none() {
        out.push(Finding {
            id: "policy-selects-nothing",
            severity: Severity::Warning,
            object: policy_ref(p),
            message: format!("podSelector {} matches no endpoint in namespace {}", p.pod_selector, p.namespace),
            fix: "fix the podSelector labels, or delete the policy".into(),
        });
    }
}

fn rules_of(p: &NetworkPolicy) -> impl Iterator<Item = (Direction, usize, &Rule)> {
    [Direction::Ingress, Direction::Egress]
        .into_iter()
        .flat_map(move |d| p.rules(d).unwrap_or_default().iter().enumerate().map(move |(i, r)| (d, i, r)))
}

fn field(d: Direction) -> (&'static str, &'static str) {
    match d {
        Direction::Ingress => ("ingress", "from"),
        Direction::Egress => ("egress", "to"),
    }
}

fn peers_match_nothing(engine: &Engine, p: &NetworkPolicy, out: &mut Vec<Finding>) {
    let id = engine.policy_id(&p.namespace, &p.name).expect("linted policy is loaded");
    for (d, r, rule) in rules_of(p) {
        let (section, peers) = field(d);
        for (j, peer) in rule.peers.iter().enumerate() {
            let Peer::Selector(sel) = peer else { continue };
            let path = format!("spec.{section}[{r}].{peers}[{j}]");
            if let NamespaceScope::Matching(ns_sel) = &sel.namespaces {
                if !engine.namespaces().any(|(_, labels)| ns_sel.matches(labels)) {
                    out.push(Finding {
                        id: "namespace-selector-matches-nothing",
                        severity: Severity::Warning,
                        object: policy_ref(p),
                        message: format!("{path}.namespaceSelector {ns_sel} matches no namespace"),
                        fix: "check the namespace labels (every namespace has kubernetes.io/metadata.name=<name>)"
                            .into(),
                    });
                    continue;
                }
            }
            let sid = engine.rule_peer_selector(id, d, r, j).expect("selector peer");
            if engine.selector_cache().members(sid).is_empty() {
                out.push(Finding {
                    id: "selector-matches-nothing",
                    severity: Severity::Warning,
                    object: policy_ref(p),
                    message: format!("{path} ({sel}) matches no endpoint"),
                    fix: "fix the selector labels, or remove the peer".into(),
                });
            }
        }
    }
}

fn named_ports(engine: &Engine, id: PolicyId, p: &NetworkPolicy, out: &mut Vec<Finding>) {
    let targets: Vec<IdentityId> = engine.policy_targets(id).collect();
    for (d, r, rule) in rules_of(p) {
        let (section, _) = field(d);
        for (j, port) in rule.ports.iter().enumerate() {
            let PortSpec::Named(name) = &port.port else {
                continue;
            };
            // Ingress: the selected pods must declare it; egress: some
            // destination the rule can reach must.
            let declared = match d {
                Direction::Ingress => {
                    targets.iter().any(|t| engine.identity(*t).named_ports(name, port.protocol).next().is_some())
                }
                Direction::Egress => engine.endpoints().any(|(eid, e)| {
                    let identity = engine.endpoint_identity(eid);
                    // Only destinations this rule's peers reach count.
                    let reached = rule.peers.is_empty()
                        || rule.peers.iter().enumerate().any(|(k, peer)| match peer {
                            Peer::IpBlock(b) => e.ips.iter().any(|ip| b.contains(*ip)),
                            Peer::Selector(_) => engine
                                .rule_peer_selector(id, d, r, k)
                                .is_some_and(|sel| engine.selector_cache().contains(sel, identity)),
                        });
                    reached && engine.identity(identity).named_ports(name, port.protocol).next().is_some()
                }),
            };
            if !declared {
                out.push(Finding {
                    id: "named-port-undeclared",
                    severity: Severity::Error,
                    object: policy_ref(p),
                    message: format!(
                        "spec.{section}[{r}].ports[{j}]: no {} endpoint declares a {} container port named {name:?}: the rule opens nothing",
                        if d == Direction::Ingress { "selected" } else { "destination" },
                        port.protocol
                    ),
                    fix: format!("name a containerPort {name:?} (protocol {}), or use the port number", port.protocol),
                });
            }
        }
    }
}

fn ip_blocks_cover_pods(engine: &Engine, p: &NetworkPolicy, out: &mut Vec<Finding>) {
    for (d, r, rule) in rules_of(p) {
        let (section, peers) = field(d);
        for (j, peer) in rule.peers.iter().enumerate() {
            let Peer::IpBlock(block) = peer else { continue };
            let covered = engine
                .endpoints()
                .filter(|(_, e)| !e.host_network && e.ips.iter().any(|ip| block.contains(*ip)))
                .count();
            if covered > 0 {
                out.push(Finding {
                    id: "ipblock-covers-pod-network",
                    severity: Severity::Warning,
                    object: policy_ref(p),
                    message: format!(
                        "spec.{section}[{r}].{peers}[{j}].ipBlock {block} also matches {covered} pod(s) of the cluster"
                    ),
                    fix: "add the pod CIDR to `except`, and select pods with pod/namespace selectors".into(),
                });
            }
        }
    }
}

/// Numeric view of a rule's ports; named ports stay separate.
fn port_view(ports: &[PolicyPort]) -> (ConnSet, BTreeSet<(Protocol, String)>) {
    if ports.is_empty() {
        return (ConnSet::all(), BTreeSet::new());
    }
    let mut set = ConnSet::none();
    let mut named = BTreeSet::new();
    for p in ports {
        match &p.port {
            PortSpec::All => set.add_range(p.protocol, 1, 65535),
            PortSpec::Range { start, end } => set.add_range(p.protocol, *start, *end),
            PortSpec::Named(n) => {
                named.insert((p.protocol, n.clone()));
            }
        }
    }
    (set, named)
}

/// Does peer `a` cover everything peer `b` matches, whatever the cluster?
fn peer_covers(a: &Peer, b: &Peer) -> bool {
    match (a, b) {
        (Peer::Selector(x), Peer::Selector(y)) => {
            x == y
                || (x.pods.is_everything()
                    && (x.namespaces == y.namespaces
                        || matches!(&x.namespaces, NamespaceScope::Matching(s) if s.is_everything())))
        }
        (Peer::IpBlock(x), Peer::IpBlock(y)) => {
            x.cidr.contains(&y.cidr)
                && x.except.iter().all(|e| {
                    y.except.iter().any(|f| f.contains(e))
                        || !e.contains(&y.cidr.network()) && !y.cidr.contains(&e.network())
                })
        }
        _ => false,
    }
}

fn rule_covers(a: &Rule, b: &Rule) -> bool {
    let peers_ok = a.peers.is_empty()
        || (!b.peers.is_empty() && b.peers.iter().all(|pb| a.peers.iter().any(|pa| peer_covers(pa, pb))));
    let (a_ports, a_named) = port_view(&a.ports);
    let (b_ports, b_named) = port_view(&b.ports);
    let ports_ok = a.ports.is_empty()
        || (b_ports.difference(&a_ports).is_none() && !b_ports.other_protocols() && b_named.is_subset(&a_named));
    peers_ok && ports_ok
}

fn shadowed_rules(p: &NetworkPolicy, out: &mut Vec<Finding>) {
    for d in [Direction::Ingress, Direction::Egress] {
        let rules = p.rules(d).unwrap_or_default();
        let (section, _) = field(d);
        for (j, b) in rules.iter().enumerate() {
            let by =
                rules.iter().enumerate().find(|(i, a)| *i != j && rule_covers(a, b) && (!rule_covers(b, a) || *i < j));
            if let Some((i, _)) = by {
                out.push(Finding {
                    id: "rule-shadowed",
                    severity: Severity::Info,
                    object: policy_ref(p),
                    message: format!(
                        "spec.{section}[{j}] allows nothing that spec.{section}[{i}] does not already allow"
                    ),
                    fix: format!("remove spec.{section}[{j}], or narrow spec.{section}[{i}]"),
                });
            }
        }
    }
}

fn duplicates(policies: &[(PolicyId, &NetworkPolicy)], out: &mut Vec<Finding>) {
    let mut seen: BTreeMap<String, &NetworkPolicy> = BTreeMap::new();
    for (_, p) in policies {
        let key = serde_json::to_string(&(&p.namespace, &p.pod_selector, &p.ingress, &p.egress)).unwrap_or_default();
        match seen.get(&key) {
            Some(first) => out.push(Finding {
                id: "duplicate-policy",
                severity: Severity::Warning,
                object: policy_ref(p),
                message: format!("same selector and rules as NetworkPolicy {}/{}", first.namespace, first.name),
                fix: "delete one of the two".into(),
            }),
            None => {
                seen.insert(key, p);
            }
        }
    }
}

fn default_deny(engine: &Engine, policies: &[(PolicyId, &NetworkPolicy)], out: &mut Vec<Finding>) {
    let mut with_endpoints: BTreeSet<&str> = BTreeSet::new();
    for (_, e) in engine.endpoints() {
        if !e.host_network {
            with_endpoints.insert(e.key.namespace.as_str());
        }
    }
    for ns in with_endpoints {
        let has = policies.iter().any(|(_, p)| {
            // Isolates every pod, and no rule of it opens everything again.
            p.namespace == ns
                && p.pod_selector.is_everything()
                && p.ingress
                    .as_ref()
                    .is_some_and(|rules| !rules.iter().any(|r| r.peers.is_empty() && r.ports.is_empty()))
        });
        if !has {
            out.push(Finding {
                id: "namespace-without-default-deny",
                severity: Severity::Info,
                object: format!("Namespace {ns}"),
                message: "has endpoints but no policy with `podSelector: {}` isolating ingress: new pods start open"
                    .into(),
                fix: format!("add a default-deny NetworkPolicy in {ns} (podSelector: {{}}, policyTypes: [Ingress])"),
            });
        }
    }
}

fn dns(engine: &Engine, out: &mut Vec<Finding>) {
    let mut reported: BTreeSet<IdentityId> = BTreeSet::new();
    let mut by_namespace: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, e) in engine.endpoints() {
        let identity = engine.endpoint_identity(id);
        if reported.contains(&identity) {
            continue;
        }
        let compiled = engine.compiled(identity);
        let Some(egress) = &compiled.egress else {
            continue;
        };
        let allows_dns = egress.entries.iter().any(|entry| match &entry.ports {
            crate::engine::PortMatch::Any => true,
            crate::engine::PortMatch::Ports(ports) => ports.iter().any(|p| {
                p.protocol == Protocol::Udp
                    && match &p.port {
                        PortSpec::All => true,
                        PortSpec::Range { start, end } => *start <= 53 && 53 <= *end,
                        PortSpec::Named(n) => n == "dns" || n == "domain",
                    }
            }),
        });
        if !allows_dns {
            reported.insert(identity);
            by_namespace.entry(e.key.namespace.clone()).or_default().push(e.key.to_string());
        }
    }
    for (ns, endpoints) in by_namespace {
        let shown: Vec<&str> = endpoints.iter().take(5).map(String::as_str).collect();
        let more = if endpoints.len() > 5 { format!(" and {} more", endpoints.len() - 5) } else { String::new() };
        out.push(Finding {
            id: "egress-blocks-dns",
            severity: Severity::Warning,
            object: format!("Namespace {ns}"),
            message: format!("egress of {}{more} allows no UDP port 53: name resolution will fail", shown.join(", ")),
            fix: "allow egress to kube-system/kube-dns on UDP and TCP 53".into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::{parse_sources, Cluster, Source};

    fn findings(yaml: &str) -> Vec<String> {
        let (c, problems, _) =
            Cluster::from_manifests(parse_sources(&[Source { name: "t".into(), text: yaml.into() }]));
        assert!(problems.is_empty(), "{problems:?}");
        lint(&Engine::from_cluster(&c)).into_iter().map(|f| format!("{} {}", f.id, f.object)).collect()
    }

    const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: d, labels: {app: web}}\nspec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: d, labels: {app: db}}\nspec: {containers: [{name: c, image: i}]}\n";

    #[test]
    fn an_allow_all_policy_is_no_default_deny() {
        let f = findings(&format!("{PODS}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: open, namespace: d}}\nspec: {{podSelector: {{}}, ingress: [{{}}]}}\n"));
        assert!(f.contains(&"namespace-without-default-deny Namespace d".to_string()), "{f:?}");
        let f = findings(&format!("{PODS}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: d}}\nspec: {{podSelector: {{}}}}\n"));
        assert!(!f.iter().any(|f| f.starts_with("namespace-without-default-deny")), "{f:?}");
    }

    #[test]
    fn egress_named_port_must_be_declared_by_a_reached_destination() {
        // web declares `http`, db does not: egress to db on `http` opens nothing.
        let policy = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: e, namespace: d}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {app: TARGET}}}], ports: [{port: http}]}]\n";
        let f = findings(&format!("{PODS}{}", policy.replace("TARGET", "db")));
        assert!(f.contains(&"named-port-undeclared NetworkPolicy d/e".to_string()), "{f:?}");
        let f = findings(&format!("{PODS}{}", policy.replace("TARGET", "web")));
        assert!(!f.iter().any(|f| f.starts_with("named-port-undeclared")), "{f:?}");
    }
}
