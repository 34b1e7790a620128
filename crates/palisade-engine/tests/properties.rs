//! Property tests: the engine agrees with a deliberately naive evaluator,
//! written here from the NetworkPolicy API text with none of the engine's
//! machinery (no identities, no selector cache, no compilation), on random
//! clusters and policies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use palisade_engine::{Engine, Flow, FlowEnd, Matrix};
use palisade_model::{
    Cluster, ContainerPort, Endpoint, EndpointKey, IpBlock, LabelSelector, Labels, Namespace, NamespaceScope,
    NetworkPolicy, Peer, PeerSelector, PolicyPort, PortSpec, Protocol, Requirement, Rule,
};
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
    if s.key == d.key && s.key.kind.is_none() {
        return true;
    }
    if s.host_network != d.host_network && s.node.is_some() && s.node == d.node {
        return true;
    }
    side(c, s, d, false, proto, port, None).unwrap_or(true) && side(c, d, s, true, proto, port, None).unwrap_or(true)
}

// ---------- random clusters ----------

const KEYS: &[&str] = &["app", "tier", "env"];
const VALUES: &[&str] = &["a", "b", "c"];
const NAMESPACES: &[&str] = &["n1", "n2", "n3"];
const PORT_NAMES: &[&str] = &["http", "dns"];
const PROBES: &[(Protocol, u16)] =
    &[(Protocol::Tcp, 80), (Protocol::Tcp, 81), (Protocol::Udp, 53), (Protocol::Sctp, 80), (Protocol::Tcp, 8080)];

fn labels() -> impl Strategy<Value = Labels> {
    prop::collection::btree_map(prop::sample::select(KEYS), prop::sample::select(VALUES), 0..3)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    let req =
        (prop::sample::select(KEYS), prop::sample::subsequence(VALUES, 1..3), 0..4u8).prop_map(|(k, vals, op)| {
            let key = k.to_string();
            let values: BTreeSet<String> = vals.iter().map(|v| v.to_string()).collect();
            match op {
                0 => Requirement::In { key, values },
                1 => Requirement::NotIn { key, values },
                2 => Requirement::Exists { key },
                _ => Requirement::DoesNotExist { key },
            }
        });
    prop::collection::vec(req, 0..3).prop_map(LabelSelector::from_requirements)
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u8..4, 0u8..4).prop_map(|(a, b)| IpAddr::from([10, 0, a, b])),
        (0u16..4).prop_map(|a| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, a])),
    ]
}

fn ip_block() -> impl Strategy<Value = IpBlock> {
    prop_oneof![
        (0u8..4, prop::option::of(0u8..4)).prop_map(|(a, ex)| IpBlock {
            cidr: format!("10.0.{a}.0/24").parse().unwrap(),
            except: ex.map(|b| format!("10.0.{a}.{b}/32").parse().unwrap()).into_iter().collect(),
        }),
        Just(IpBlock { cidr: "10.0.0.0/16".parse().unwrap(), except: vec!["10.0.1.0/24".parse().unwrap()] }),
        Just(IpBlock { cidr: "0.0.0.0/0".parse().unwrap(), except: vec![] }),
        Just(IpBlock { cidr: "fd00::/126".parse().unwrap(), except: vec!["fd00::1/128".parse().unwrap()] }),
    ]
}

fn peer(ns: &'static str) -> impl Strategy<Value = Peer> {
    prop_oneof![
        selector()
            .prop_map(move |pods| Peer::Selector(PeerSelector { namespaces: NamespaceScope::Named(ns.into()), pods })),
        (selector(), selector())
            .prop_map(|(n, pods)| Peer::Selector(PeerSelector { namespaces: NamespaceScope::Matching(n), pods })),
        ip_block().prop_map(Peer::IpBlock),
    ]
}

fn policy_port() -> impl Strategy<Value = PolicyPort> {
    let proto = prop::sample::select(&[Protocol::Tcp, Protocol::Udp, Protocol::Sctp][..]);
    let spec = prop_oneof![
        Just(PortSpec::All),
        prop::sample::select(&[53u16, 80, 81, 8080][..]).prop_map(|p| PortSpec::Range { start: p, end: p }),
        Just(PortSpec::Range { start: 80, end: 81 }),
        Just(PortSpec::Range { start: 81, end: 8080 }),
        prop::sample::select(PORT_NAMES).prop_map(|n| PortSpec::Named(n.to_string())),
    ];
    (proto, spec).prop_map(|(protocol, port)| PolicyPort { protocol, port })
}

fn rule(ns: &'static str) -> impl Strategy<Value = Rule> {
    (prop::collection::vec(peer(ns), 0..3), prop::collection::vec(policy_port(), 0..3))
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

fn policy(i: usize) -> impl Strategy<Value = NetworkPolicy> {
    prop::sample::select(NAMESPACES).prop_flat_map(move |ns| {
        (
            selector(),
            prop::option::of(prop::collection::vec(rule(ns), 0..3)),
            prop::option::of(prop::collection::vec(rule(ns), 0..3)),
        )
            .prop_map(move |(pod_selector, ingress, egress)| NetworkPolicy {
                namespace: ns.into(),
                name: format!("p{i}"),
                pod_selector,
                ingress,
                egress,
            })
    })
}

fn endpoint(i: usize) -> impl Strategy<Value = Endpoint> {
    let ports = prop::collection::vec(
        (
            prop::sample::select(PORT_NAMES),
            prop::sample::select(&[Protocol::Tcp, Protocol::Udp][..]),
            prop::sample::select(&[53u16, 80, 81, 8080][..]),
        ),
        0..3,
    );
    (
        prop::sample::select(NAMESPACES),
        labels(),
        prop::collection::vec(ip(), 0..2),
        ports,
        prop::bool::weighted(0.1),
        prop::option::of(0..2u8),
    )
        .prop_map(move |(ns, labels, ips, ports, host_network, node)| Endpoint {
            key: EndpointKey::pod(ns, &format!("e{i}")),
            labels,
            ips,
            ports: ports
                .into_iter()
                .map(|(n, protocol, port)| ContainerPort { name: Some(n.into()), protocol, port })
                .collect(),
            host_network,
            node: node.map(|n| format!("node-{n}")),
        })
}

fn cluster() -> impl Strategy<Value = Cluster> {
    let endpoints = (1..7usize).prop_flat_map(|n| (0..n).map(endpoint).collect::<Vec<_>>());
    let policies = (0..5usize).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>());
    let ns_labels = prop::collection::vec(labels(), 3);
    (endpoints, policies, ns_labels).prop_map(|(endpoints, policies, ns_labels)| {
        let mut namespaces = BTreeMap::new();
        for (ns, mut labels) in NAMESPACES.iter().zip(ns_labels) {
            labels.insert(palisade_model::NAMESPACE_NAME_LABEL.into(), ns.to_string());
            namespaces.insert(ns.to_string(), Namespace { name: ns.to_string(), labels });
        }
        Cluster { namespaces, endpoints, policies, nodes: vec![], services: vec![] }
    })
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
        for e in &end.endpoints {
            for f in &end.endpoints {
                for &(protocol, port) in PROBES {
                    let flow = |en: &Engine| Flow {
                        src: FlowEnd::Endpoint(en.endpoint_id(&e.key).unwrap()),
                        dst: FlowEnd::Endpoint(en.endpoint_id(&f.key).unwrap()),
                        protocol, port,
                    };
                    prop_assert_eq!(engine.allows(&flow(&engine)), fresh.allows(&flow(&fresh)), "{} -> {}", e.key, f.key);
                }
            }
        }
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
