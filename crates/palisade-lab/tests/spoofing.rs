//! Anti-spoofing: a pod that sends with another pod's address is stopped
//! at its own node, so it cannot borrow that pod's policy. Needs root.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use palisade_dataplane::netns::Netns;
use palisade_lab::{Lab, LabOptions};

use common::{cluster, privileged, run_id};

const CLUSTER: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {app: c}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: n2, containers: [{name: c, image: i}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: c}}}], ports: [{protocol: UDP, port: 9999}]}]
";

fn udp_from(ns: &Netns, src: SocketAddr) -> UdpSocket {
    ns.enter(|| UdpSocket::bind(src)).unwrap().unwrap()
}

#[test]
fn a_pod_cannot_send_with_another_pods_address() {
    if !privileged("anti-spoofing") {
        return;
    }
    let mut lab = Lab::start(&cluster(CLUSTER), &run_id("s"), &[], LabOptions::default(), |_, _| {}).unwrap();
    let plan = lab.topology.plan.clone();
    let pod = |n: &str| plan.pods.iter().position(|p| p.key.name == n).unwrap();
    let (a, b, c) = (pod("a"), pod("b"), pod("c"));
    let ip = |i: usize| plan.pods[i].ips[0];
    // Nodes that do not filter by reverse path (as many CNIs need), so only
    // Palisade stands between a forged packet and its destination.
    for n in 0..plan.nodes.len() {
        let ns = lab.topology.node_netns(n);
        ns.sysctl("net.ipv4.conf.all.rp_filter", "0").unwrap();
        if n == plan.pods[a].node {
            ns.sysctl(&format!("net.ipv4.conf.{}.rp_filter", plan.pods[a].host_if), "0").unwrap();
        }
    }
    lab.apply().unwrap();
    let receiver = udp_from(&lab.topology.pod_netns(b), SocketAddr::new(ip(b), 9999));
    receiver.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let target = SocketAddr::new(ip(b), 9999);
    let mut buf = [0u8; 64];

    // c itself is admitted, and b answers: the flow is established.
    let c_socket = udp_from(&lab.topology.pod_netns(c), SocketAddr::new(ip(c), 40002));
    c_socket.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    c_socket.send_to(b"from c", target).unwrap();
    let (n, from) = receiver.recv_from(&mut buf).expect("c's datagram is allowed");
    assert_eq!((&buf[..n], from.ip()), (&b"from c"[..], ip(c)));
    receiver.send_to(b"reply", from).unwrap();
    assert_eq!(c_socket.recv_from(&mut buf).expect("b's reply reaches c").0, 5);

    // a claims c's address on its own interface and sends as c.
    lab.topology.pod_netns(a).ip_batch(&format!("addr add {}/32 dev eth0\n", ip(c))).unwrap();
    let forger = udp_from(&lab.topology.pod_netns(a), SocketAddr::new(ip(c), 40001));
    for _ in 0..3 {
        forger.send_to(b"forged", target).unwrap();
    }
    match receiver.recv_from(&mut buf) {
        Err(_) => {}
        Ok((n, from)) => panic!("a forged datagram from {from} got through: {:?}", String::from_utf8_lossy(&buf[..n])),
    }
    // The same five-tuple as c's established flow: conntrack alone would
    // pass it, the sender check on a's veth must not.
    let rider = udp_from(&lab.topology.pod_netns(a), SocketAddr::new(ip(c), 40002));
    for _ in 0..3 {
        rider.send_to(b"injected", target).unwrap();
    }
    match receiver.recv_from(&mut buf) {
        Err(_) => {}
        Ok((n, from)) => panic!("a datagram injected into c's flow got through from {from}: {:?}", &buf[..n]),
    }
    // c's own flow still works.
    c_socket.send_to(b"again", target).unwrap();
    assert_eq!(receiver.recv_from(&mut buf).expect("c's flow is untouched").0, 5);
    // And a as itself is denied by b's policy.
    udp_from(&lab.topology.pod_netns(a), SocketAddr::new(ip(a), 40003)).send_to(b"from a", target).unwrap();
    assert!(receiver.recv_from(&mut buf).is_err(), "a is not admitted by b's policy");
}
