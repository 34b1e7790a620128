//! Property tests: the engine agrees with a deliberately naive evaluator,
//! written here from the NetworkPolicy API text with none of the engine's
//! machinery (no identities, no selector cache, no compilation), on random
//! clusters and policies.

use palisade_engine::{Engine, Flow, FlowEnd, Matrix};
use std::collections::BTreeMap;

use palisade_model::{
    Cluster, ContainerPort, Endpoint, EndpointKey, LabelSelector, Labels, Namespace, NamespaceScope, NetworkPolicy,
    Peer, PolicyPort, PortSpec, Protocol, Rule,
};
use palisade_testkit::arb::*;
use proptest::prelude::*;

// ---------- the naive reference ----------

fn ns_labels<'a>(c: &'a Cluster, ns: &str) -> Option<&'a Labels> {
    c.namespaces.get(ns).map(|n| &n.labels)
}

fn peer_matches(c: &Cluster, policy_ns: &str, peer: &Peer, other: &Endpoint) -> bool {
    match peer {
        Peer::IpBlock(b) => other.ips.iter().any(|ip| b.contains(*ip)),
        Peer::Selector(sel) => {
            if other.host_network {
                return false;
            }
            let ns_ok = match &sel.namespaces {
                NamespaceScope::Named(ns) => ns == &other.key.namespace && ns == policy_ns,
                NamespaceScope::Matching(s) => ns_labels(c, &other.key.namespace).is_some_and(|l| s.matches(l)),
            };
            ns_ok && sel.pods.matches(&other.labels)
        }
    }
}

fn port_matches(p: &PolicyPort, proto: Protocol, port: u16, dst: &Endpoint) -> bool {
    p.protocol == proto
        && match &p.port {
            PortSpec::All => true,
            PortSpec::Range { start, end } => *start <= port && port <= *end,
            PortSpec::Named(n) => {
                dst.ports.iter().any(|cp| cp.protocol == proto && cp.name.as_deref() == Some(n) && cp.port == port)
            }
        }
}

fn rule_allows(
    c: &Cluster,
    policy: &NetworkPolicy,
    rule: &Rule,
    other: &Endpoint,
    proto: Protocol,
    port: u16,
    dst: &Endpoint,
) -> bool {
    (rule.peers.is_empty() || rule.peers.iter().any(|p| peer_matches(c, &policy.namespace, p, other)))
        && (rule.ports.is_empty() || rule.ports.iter().any(|p| port_matches(p, proto, port, dst)))
}

fn selects(p: &NetworkPolicy, ep: &Endpoint) -> bool {
    !ep.host_network && p.namespace == ep.key.namespace && p.pod_selector.matches(&ep.labels)
}

/// `None`: not isolated; `Some(allowed)` otherwise.
fn side(
    c: &Cluster,
    this: &Endpoint,
    other: &Endpoint,
    ingress: bool,
    proto: Protocol,
    port: u16,
    only: Option<&NetworkPolicy>,
) -> Option<bool> {
    let dst = if ingress { this } else { other };
    let mut isolated = false;
    let mut allowed = false;
    for p in c.policies.iter().filter(|p| only.is_none_or(|o| o == *p)) {
        let rules = if ingress { &p.ingress } else { &p.egress };
        if let (true, Some(rules)) = (selects(p, this), rules) {
            isolated = true;
            allowed |= rules.iter().any(|r| rule_allows(c, p, r, other, proto, port, dst));
        }
    }
    isolated.then_some(allowed)
}

fn naive_allows(c: &Cluster, s: &Endpoint, d: &Endpoint, proto: Protocol, port: u16) -> bool {
    if s.key == d.key && s.is_one_pod() {
        return true;
    }
    if s.host_network != d.host_network && s.node.is_some() && s.node == d.node {
        return true;
    }
    side(c, s, d, false, proto, port, None).unwrap_or(true) && side(c, d, s, true, proto, port, None).unwrap_or(true)
}

fn all_flows(engine: &Engine) -> Vec<(Flow, usize, usize)> {
    let ids: Vec<_> = engine.endpoints().map(|(id, _)| id).collect();
    let mut out = Vec::new();
    for (i, &s) in ids.iter().enumerate() {
        for (j, &d) in ids.iter().enumerate() {
            for &(protocol, port) in PROBES {
                out.push((Flow { src: FlowEnd::Endpoint(s), dst: FlowEnd::Endpoint(d), protocol, port }, i, j));
            }
        }
    }
    out
}

/// Both engines give every pair of `c`'s endpoints the same verdicts.
fn same_verdicts(a: &Engine, b: &Engine, c: &Cluster) -> Result<(), TestCaseError> {
    for e in &c.endpoints {
        for f in &c.endpoints {
            for &(protocol, port) in PROBES {
                let flow = |en: &Engine| Flow {
                    src: FlowEnd::Endpoint(en.endpoint_id(&e.key).unwrap()),
                    dst: FlowEnd::Endpoint(en.endpoint_id(&f.key).unwrap()),
                    protocol,
                    port,
                };
                prop_assert_eq!(a.allows(&flow(a)), b.allows(&flow(b)), "{} -> {}", e.key, f.key);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// The engine's verdict equals the naive evaluator's on every pair and port.
    #[test]
    fn engine_agrees_with_naive_reference(c in cluster()) {
        let engine = Engine::from_cluster(&c);
        for (flow, _, _) in all_flows(&engine) {
            let (FlowEnd::Endpoint(s), FlowEnd::Endpoint(d)) = (flow.src, flow.dst) else { unreachable!() };
            let expected = naive_allows(&c, engine.endpoint(s), engine.endpoint(d), flow.protocol, flow.port);
            prop_assert_eq!(engine.allows(&flow), expected, "{} -> {} {}/{}", engine.endpoint(s).key, engine.endpoint(d).key, flow.protocol, flow.port);
            prop_assert_eq!(engine.verdict(&flow).allowed, expected);
            prop_assert_eq!(engine.connections(&flow.src, &flow.dst).contains(flow.protocol, flow.port), expected);
        }
    }

    /// The class-level matrix gives every pair what the per-pair query gives.
    #[test]
    fn matrix_equals_per_pair_connections(c in cluster()) {
        let engine = Engine::from_cluster(&c);
        let m = Matrix::compute(&engine);
        for i in 0..m.endpoints.len() {
            for j in (0..m.endpoints.len()).filter(|&j| j != i) {
                let direct = engine.connections(&FlowEnd::Endpoint(m.endpoints[i]), &FlowEnd::Endpoint(m.endpoints[j]));
                prop_assert_eq!(m.get(i, j), &direct);
            }
        }
    }

    /// The outside world's ranges: every address of a range (that is no
    /// endpoint's) gets what the matrix says of the range, both ways, and
    /// every address outside the cluster is in exactly one range.
    #[test]
    fn external_ranges_equal_per_address_connections(c in cluster(), ips in prop::collection::vec(ip(), 1..8)) {
        let engine = Engine::from_cluster(&c);
        let m = Matrix::compute(&engine);
        let endpoint_ips: std::collections::HashSet<_> = c.endpoints.iter().flat_map(|e| e.ips.iter().copied()).collect();
        let extra: [std::net::IpAddr; 3] = ["0.0.0.0".parse().unwrap(), "203.0.113.7".parse().unwrap(), "::".parse().unwrap()];
        for ip in ips.iter().chain(&extra).filter(|ip| !endpoint_ips.contains(ip)) {
            let holders: Vec<usize> = (m.endpoints.len()..m.len()).filter(|&k| m.external(k).unwrap().contains(*ip)).collect();
            prop_assert_eq!(holders.len(), 1, "{} is in one range", ip);
            let k = holders[0];
            for i in 0..m.endpoints.len() {
                let ep = FlowEnd::Endpoint(m.endpoints[i]);
                let outside = FlowEnd::Address(*ip);
                prop_assert_eq!(m.get(i, k), &engine.connections(&ep, &outside), "{} -> {}", engine.endpoint(m.endpoints[i]).key, ip);
                prop_assert_eq!(m.get(k, i), &engine.connections(&outside, &ep), "{} -> {}", ip, engine.endpoint(m.endpoints[i]).key);
            }
        }
    }

    /// Incremental updates end in the same verdicts as compiling the final
    /// state from scratch.
    #[test]
    fn incremental_equals_from_scratch(start in cluster(), end in cluster()) {
        let mut engine = Engine::from_cluster(&start);
        for p in &start.policies {
            if !end.policies.iter().any(|q| q.namespace == p.namespace && q.name == p.name) {
                engine.remove_policy(&p.namespace, &p.name);
            }
        }
        for e in &start.endpoints {
            if !end.endpoints.iter().any(|f| f.key == e.key) {
                engine.remove_endpoint(&e.key);
            }
        }
        engine.compile();
        for ns in end.namespaces.values() {
            engine.upsert_namespace(ns);
        }
        for e in &end.endpoints {
            engine.upsert_endpoint(e.clone());
            engine.compile();
        }
        for p in &end.policies {
            engine.upsert_policy(p.clone());
        }
        engine.compile();
        let fresh = Engine::from_cluster(&end);
        same_verdicts(&engine, &fresh, &end)?;
    }

    /// Adding a policy never opens a flow that it does not itself allow:
    /// anything newly allowed is allowed by a rule of the new policy on a
    /// side it isolated before.
    #[test]
    fn adding_a_policy_only_opens_what_it_allows(c in cluster(), extra in policy(99)) {
        let before = Engine::from_cluster(&c);
        let mut with = c.clone();
        with.policies.push(extra.clone());
        let after = Engine::from_cluster(&with);
        for s in &c.endpoints {
            for d in &c.endpoints {
                for &(proto, port) in PROBES {
                    let flow = |en: &Engine| Flow {
                        src: FlowEnd::Endpoint(en.endpoint_id(&s.key).unwrap()),
                        dst: FlowEnd::Endpoint(en.endpoint_id(&d.key).unwrap()),
                        protocol: proto, port,
                    };
                    if after.allows(&flow(&after)) && !before.allows(&flow(&before)) {
                        let by_egress = side(&with, s, d, false, proto, port, Some(&extra)) == Some(true);
                        let by_ingress = side(&with, d, s, true, proto, port, Some(&extra)) == Some(true);
                        prop_assert!(by_egress || by_ingress, "{} -> {} {proto}/{port} opened by a policy that does not allow it", s.key, d.key);
                    }
                }
            }
        }
    }
}

/// Regression: merged replicas declaring one port name with two numbers
/// (found by `engine_agrees_with_naive_reference`). Every number counts.
#[test]
fn regression_named_port_declared_twice_by_merged_replicas() {
    let mut namespaces = BTreeMap::new();
    for ns in ["n1", "n2"] {
        namespaces.insert(ns.to_string(), Namespace::implied(ns));
    }
    let http = |port| ContainerPort { name: Some("http".into()), protocol: Protocol::Tcp, port };
    let ep = |ns: &str, name: &str, ports| Endpoint {
        key: EndpointKey::pod(ns, name),
        labels: Labels::new(),
        ips: vec![],
        ports,
        host_network: false,
        node: None,
        pods: vec![name.to_string()],
        uid: None,
    };
    let c = Cluster {
        namespaces,
        endpoints: vec![ep("n2", "e0", vec![]), ep("n1", "e1", vec![http(53), http(80)])],
        policies: vec![NetworkPolicy {
            namespace: "n2".into(),
            name: "p1".into(),
            pod_selector: LabelSelector::everything(),
            ingress: None,
            egress: Some(vec![Rule {
                peers: vec![],
                ports: vec![PolicyPort { protocol: Protocol::Tcp, port: PortSpec::Named("http".into()) }],
            }]),
        }],
        nodes: vec![],
        services: vec![],
    };
    let engine = Engine::from_cluster(&c);
    let (s, d) = (engine.endpoint_id(&c.endpoints[0].key).unwrap(), engine.endpoint_id(&c.endpoints[1].key).unwrap());
    for port in [53, 80, 81] {
        let flow = Flow { src: FlowEnd::Endpoint(s), dst: FlowEnd::Endpoint(d), protocol: Protocol::Tcp, port };
        assert_eq!(
            engine.allows(&flow),
            naive_allows(&c, &c.endpoints[0], &c.endpoints[1], Protocol::Tcp, port),
            "port {port}"
        );
        assert_eq!(engine.allows(&flow), port != 81);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// `sync_cluster` (upsert and remove only what differs) ends in the
    /// same verdicts as loading the target cluster from scratch.
    #[test]
    fn sync_cluster_equals_from_scratch(start in cluster(), end in cluster()) {
        let mut engine = Engine::from_cluster(&start);
        engine.sync_cluster(&end);
        let fresh = Engine::from_cluster(&end);
        same_verdicts(&engine, &fresh, &end)?;
        prop_assert_eq!(engine.endpoints().count(), end.endpoints.iter().map(|e| &e.key).collect::<std::collections::BTreeSet<_>>().len());
        prop_assert_eq!(engine.policies().count(), fresh.policies().count());
    }
}
