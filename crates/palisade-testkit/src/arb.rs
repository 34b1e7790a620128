//! proptest strategies for small random clusters: few label keys and values,
//! three namespaces, overlapping addresses and blocks, named ports, so that
//! selectors, excepts and port resolution collide often.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use palisade_model::{
    Cluster, ContainerPort, Endpoint, EndpointKey, IpBlock, LabelSelector, Labels, Namespace, NamespaceScope,
    NetworkPolicy, Peer, PeerSelector, PolicyPort, PortSpec, Protocol, Requirement, Rule,
};
use proptest::prelude::*;

pub const KEYS: &[&str] = &["app", "tier", "env"];
pub const VALUES: &[&str] = &["a", "b", "c"];
pub const NAMESPACES: &[&str] = &["n1", "n2", "n3"];
pub const PORT_NAMES: &[&str] = &["http", "dns"];
pub const PROBES: &[(Protocol, u16)] =
    &[(Protocol::Tcp, 80), (Protocol::Tcp, 81), (Protocol::Udp, 53), (Protocol::Sctp, 80), (Protocol::Tcp, 8080)];

pub fn labels() -> impl Strategy<Value = Labels> {
    prop::collection::btree_map(prop::sample::select(KEYS), prop::sample::select(VALUES), 0..3)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

pub fn selector() -> impl Strategy<Value = LabelSelector> {
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

pub fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u8..4, 0u8..4).prop_map(|(a, b)| IpAddr::from([10, 0, a, b])),
        (0u16..4).prop_map(|a| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, a])),
    ]
}

pub fn ip_block() -> impl Strategy<Value = IpBlock> {
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

pub fn peer(ns: &'static str) -> impl Strategy<Value = Peer> {
    prop_oneof![
        selector()
            .prop_map(move |pods| Peer::Selector(PeerSelector { namespaces: NamespaceScope::Named(ns.into()), pods })),
        (selector(), selector())
            .prop_map(|(n, pods)| Peer::Selector(PeerSelector { namespaces: NamespaceScope::Matching(n), pods })),
        ip_block().prop_map(Peer::IpBlock),
    ]
}

pub fn policy_port() -> impl Strategy<Value = PolicyPort> {
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

pub fn rule(ns: &'static str) -> impl Strategy<Value = Rule> {
    (prop::collection::vec(peer(ns), 0..3), prop::collection::vec(policy_port(), 0..3))
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

pub fn policy(i: usize) -> impl Strategy<Value = NetworkPolicy> {
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

pub fn endpoint(i: usize) -> impl Strategy<Value = Endpoint> {
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
            pods: vec![format!("e{i}")],
            uid: None,
        })
}

pub fn cluster() -> impl Strategy<Value = Cluster> {
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
