//! Established connections across policy changes and restarts, with real
//! TCP connections in a lab. Needs root.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use palisade_lab::probe::{connect_tcp, echo};
use palisade_lab::{Lab, LabOptions};
use palisade_model::Protocol;

use common::{cluster, privileged, run_id};

const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
";

/// b admits a on TCP 80.
const ALLOW: &str = "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}]}]
";

/// b admits nobody.
const DENY: &str = "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
";

fn addr(lab: &Lab, pod: &str) -> SocketAddr {
    let p = lab.topology.plan.pods.iter().find(|p| p.key.name == pod).unwrap();
    SocketAddr::new(p.ips[0], 80)
}

fn netns(lab: &Lab, pod: &str) -> palisade_dataplane::netns::Netns {
    let i = lab.topology.plan.pods.iter().position(|p| p.key.name == pod).unwrap();
    lab.topology.pod_netns(i)
}

fn start(tag: &str, keep_established: bool) -> Lab {
    let opts = LabOptions { keep_established, timeout: Duration::from_millis(500), ..LabOptions::default() };
    let mut lab = Lab::start(&cluster(&format!("{PODS}{ALLOW}")), &run_id(tag), &[], opts, |_, _| {}).unwrap();
    lab.apply().unwrap();
    lab
}

fn assert_agree(lab: &Lab) {
    let results = lab.probe(&[(Protocol::Tcp, 80)]);
    assert!(!results.is_empty());
    for r in &results {
        assert!(r.agrees(), "{} -> {}: kernel {:?}, engine allows: {}", r.src, r.dst, r.outcome, r.engine_allows);
    }
}

#[test]
fn a_change_that_forbids_a_flow_ends_it_and_only_it() {
    if !privileged("established flows end") {
        return;
    }
    let mut lab = start("e", false);
    let (mut forbidden, greeting) = connect_tcp(&netns(&lab, "a"), addr(&lab, "b"), Duration::from_secs(1)).unwrap();
    assert_eq!(greeting, "x/b");
    echo(&mut forbidden, "before").unwrap();
    // b -> a stays allowed (a is not isolated): it must survive the change.
    let (mut unrelated, _) = connect_tcp(&netns(&lab, "b"), addr(&lab, "a"), Duration::from_secs(1)).unwrap();

    lab.update(&cluster(&format!("{PODS}{DENY}"))).unwrap();
    let changed = Instant::now();
    lab.apply().unwrap();
    forbidden.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(echo(&mut forbidden, "after").is_err(), "a flow the new policy forbids still talks");
    assert!(changed.elapsed() < Duration::from_secs(2));
    echo(&mut unrelated, "still here").expect("an allowed established flow was cut");
    assert_agree(&lab);
}

#[test]
fn keep_established_keeps_forbidden_flows_but_not_new_ones() {
    if !privileged("keep established") {
        return;
    }
    let mut lab = start("k", true);
    let (mut old, _) = connect_tcp(&netns(&lab, "a"), addr(&lab, "b"), Duration::from_secs(1)).unwrap();
    lab.update(&cluster(&format!("{PODS}{DENY}"))).unwrap();
    lab.apply().unwrap();
    echo(&mut old, "kept").expect("keep-established cut an established flow");
    assert!(connect_tcp(&netns(&lab, "a"), addr(&lab, "b"), Duration::from_millis(500)).is_err());
    assert_agree(&lab);
}

/// A new process programming the kernel knows nothing of the old one's
/// state: it replaces each node's table in one transaction. Established
/// flows go on, new flows are judged as before, the rules are the same.
#[test]
fn restarting_the_programmer_changes_nothing() {
    if !privileged("restart") {
        return;
    }
    let mut lab = start("r", false);
    let (mut flow, _) = connect_tcp(&netns(&lab, "a"), addr(&lab, "b"), Duration::from_secs(1)).unwrap();
    let list = |lab: &Lab| {
        (0..lab.topology.plan.nodes.len())
            .map(|n| lab.topology.node_netns(n).exec("nft", &["list", "table", "inet", "palisade"], None).unwrap())
            .collect::<Vec<_>>()
    };
    let before = list(&lab);
    for _ in 0..3 {
        lab.forget_rules().unwrap();
        lab.apply().unwrap();
        echo(&mut flow, "across a restart").expect("a restart cut an established, allowed flow");
        assert_agree(&lab);
    }
    assert_eq!(list(&lab), before, "a restart changed the rules");
}
