//! Anti-spoofing: a pod that sends with another pod's address is stopped
//! at its own node, so it cannot borrow that pod's policy or ride that
//! pod's connection. IPv4 and IPv6. Needs root.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use palisade_dataplane::netns::Netns;
use palisade_lab::{Lab, LabOptions};

use common::{cluster, privileged, run_id};

/// Pods a and c on node n1, b on n2; b admits UDP 9999 from c only. With
/// `v6_net`, the pods are IPv6-only with addresses in that /64 prefix;
/// otherwise the lab gives them IPv4 addresses.
fn manifests(v6_net: Option<&str>) -> String {
    let mut text = String::new();
    for (name, node, host) in [("a", "n1", "1::a"), ("c", "n1", "1::c"), ("b", "n2", "2::b")] {
        text += &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {name}}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c, image: i}}]}}\n"
        );
        if let Some(net) = v6_net {
            text += &format!("status: {{podIP: '{net}{host}', podIPs: [{{ip: '{net}{host}'}}]}}\n");
        }
        text += "---\n";
    }
    text + "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: c}}}], ports: [{protocol: UDP, port: 9999}]}]
"
}

fn udp_from(ns: &Netns, src: SocketAddr) -> UdpSocket {
    ns.enter(|| UdpSocket::bind(src)).unwrap().unwrap()
}

#[test]
fn an_ipv4_pod_cannot_send_with_another_pods_address() {
    if privileged("anti-spoofing, IPv4") {
        forging_scenario(&manifests(None), "4");
    }
}

#[test]
fn an_ipv6_pod_cannot_send_with_another_pods_address() {
    if privileged("anti-spoofing, IPv6") {
        forging_scenario(&manifests(Some("fd00:10:244:")), "6");
    }
}

/// Pods a and c share node n1, b is on n2 and admits only c. Pod a takes
/// c's address and sends to b: as a new flow, and inside c's established
/// flow (same five-tuple).
fn forging_scenario(manifests: &str, tag: &str) {
    let mut lab =
        Lab::start(&cluster(manifests), &run_id(&format!("s{tag}")), &[], LabOptions::default(), |_, _| {}).unwrap();
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
    let mut nothing_arrives = |what: &str| match receiver.recv_from(&mut buf) {
        Err(_) => {}
        Ok((n, from)) => panic!("{what} got through from {from}: {:?}", String::from_utf8_lossy(&buf[..n])),
    };

    // c itself is admitted, and b answers: the flow is established.
    let c_socket = udp_from(&lab.topology.pod_netns(c), SocketAddr::new(ip(c), 40002));
    c_socket.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    c_socket.send_to(b"from c", target).unwrap();
    let mut rbuf = [0u8; 64];
    let (n, from) = receiver.recv_from(&mut rbuf).expect("c's datagram is allowed");
    assert_eq!((&rbuf[..n], from.ip()), (&b"from c"[..], ip(c)));
    receiver.send_to(b"reply", from).unwrap();
    assert_eq!(c_socket.recv_from(&mut rbuf).expect("b's reply reaches c").0, 5);

    // ICMP errors about c's flow (c -> b): either end may report on it, as
    // its kernel would, to the other end; a may not, though a sends from its
    // own address and passes its veth's check. Conntrack marks all of them
    // `related` to c's flow (each goes to the sender of the packet it
    // quotes, as the kernel requires).
    let quoted_from_c = (SocketAddr::new(ip(c), 40002), target);
    let quoted_from_b = (target, SocketAddr::new(ip(c), 40002));
    let (b_ns, c_ns, a_ns) = (lab.topology.pod_netns(b), lab.topology.pod_netns(c), lab.topology.pod_netns(a));
    let (icmp_at_b, icmp_at_c) = (IcmpWatch::new(&b_ns), IcmpWatch::new(&c_ns));
    // The responder (b: the flow's reply source) reports to c.
    send_port_unreachable(&b_ns, ip(b), ip(c), quoted_from_c);
    assert!(icmp_at_c.sees_unreachable_from(ip(b)), "b's error about its own flow reaches c");
    // The initiator (c: the flow's original source) reports to b.
    send_port_unreachable(&c_ns, ip(c), ip(b), quoted_from_b);
    assert!(icmp_at_b.sees_unreachable_from(ip(c)), "c's error about its own flow reaches b");
    // a sends the same two errors.
    let own_a = plan.pods[a].ips[0];
    for _ in 0..3 {
        send_port_unreachable(&a_ns, own_a, ip(c), quoted_from_c);
        send_port_unreachable(&a_ns, own_a, ip(b), quoted_from_b);
    }
    assert!(!icmp_at_c.sees_unreachable_from(own_a), "a's error about b's and c's flow reached c");
    assert!(!icmp_at_b.sees_unreachable_from(own_a), "a's error about b's and c's flow reached b");
    c_socket.send_to(b"after the errors", target).unwrap();
    assert_eq!(receiver.recv_from(&mut rbuf).expect("c's flow goes on").0, 16);
    // What stops a's errors is the `related` chain, not conntrack: with an
    // accept in front of it, the same error gets through.
    let a_node = lab.topology.node_netns(plan.pods[a].node);
    a_node.exec("nft", &["insert", "rule", "inet", "palisade", "related", "accept"], None).unwrap();
    send_port_unreachable(&a_ns, own_a, ip(b), quoted_from_b);
    assert!(
        icmp_at_b.sees_unreachable_from(own_a),
        "without the related chain's check, a's error is related and passes"
    );
    let listing = a_node.exec("nft", &["-a", "list", "chain", "inet", "palisade", "related"], None).unwrap();
    let handle =
        listing.lines().find(|l| l.trim().starts_with("accept # handle")).and_then(|l| l.split_whitespace().last());
    a_node.exec("nft", &["delete", "rule", "inet", "palisade", "related", "handle", handle.unwrap()], None).unwrap();

    // a claims c's address on its own interface and sends as c.
    let len = if ip(c).is_ipv4() { 32 } else { 128 };
    let nodad = if ip(c).is_ipv4() { "" } else { " nodad" };
    lab.topology.pod_netns(a).ip_batch(&format!("addr add {}/{len} dev eth0{nodad}\n", ip(c))).unwrap();
    let forger = udp_from(&lab.topology.pod_netns(a), SocketAddr::new(ip(c), 40001));
    for _ in 0..3 {
        forger.send_to(b"forged", target).unwrap();
    }
    nothing_arrives("a forged datagram (new flow)");
    // The same five-tuple as c's established flow: conntrack alone would
    // pass it, the sender check on a's veth must not.
    let rider = udp_from(&lab.topology.pod_netns(a), SocketAddr::new(ip(c), 40002));
    for _ in 0..3 {
        rider.send_to(b"injected", target).unwrap();
    }
    nothing_arrives("a datagram injected into c's flow");
    if let (IpAddr::V4(forged), IpAddr::V4(dst)) = (ip(c), ip(b)) {
        // The same injection inside two VLAN tags (priority, vid 0): tc
        // sees the frame with the outer tag removed and 0x8100 in place of
        // the EtherType; the kernel strips the inner one after tc and
        // routes the packet. The veth's check drops non-IP, non-ARP frames.
        let node = lab.topology.node_netns(plan.pods[a].node);
        let mac = |ns: &Netns, dev: &str| ns.exec("cat", &[&format!("/sys/class/net/{dev}/address")], None).unwrap();
        let frame = double_tagged_udp(
            &mac(&lab.topology.pod_netns(a), "eth0"),
            &mac(&node, &plan.pods[a].host_if),
            (forged, 40002),
            (dst, 9999),
            b"tagged",
        );
        for _ in 0..3 {
            send_frame(&lab.topology.pod_netns(a), "eth0", &frame);
        }
        nothing_arrives("a double-tagged datagram injected into c's flow");
    }
    // c's own flow still works.
    c_socket.send_to(b"again", target).unwrap();
    assert_eq!(receiver.recv_from(&mut rbuf).expect("c's flow is untouched").0, 5);
    // And a as itself is denied by b's policy.
    let own = plan.pods[a].ips[0];
    udp_from(&lab.topology.pod_netns(a), SocketAddr::new(own, 40003)).send_to(b"from a", target).unwrap();
    nothing_arrives("a's own datagram (b's policy admits only c)");

    // Where the protection lives: established packets are accepted before
    // any rule of the forward chain (as in the conntrack floor), so it is
    // the check on a's veth that stops the injection. Without it, the
    // forged datagram rides c's flow; a new forged flow is still stopped
    // by the forward chain.
    let node = lab.topology.node_netns(plan.pods[a].node);
    let (a_if, a_ips) = (&plan.pods[a].host_if, &plan.pods[a].ips);
    assert!(palisade_dataplane::sender::is_attached_in(&node, a_if, a_ips).unwrap(), "a's veth carries the check");
    palisade_dataplane::sender::detach_in(&node, a_if).unwrap();
    forger.send_to(b"forged", target).unwrap();
    nothing_arrives("a forged new flow, without the veth check");
    rider.send_to(b"injected", target).unwrap();
    let (n, from) = receiver.recv_from(&mut rbuf).expect("without the veth check, the injection rides c's flow");
    assert_eq!((&rbuf[..n], from.ip()), (&b"injected"[..], ip(c)));

    // The same check as a tc filter (how the CNI plugin attaches it, until
    // the agent moves it to tcx) stops the injection again.
    palisade_dataplane::sender::attach_fast_in(&node, a_if, a_ips).unwrap();
    for _ in 0..3 {
        rider.send_to(b"injected again", target).unwrap();
    }
    nothing_arrives("the injection, with the check as a tc filter");
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends, from `ns` through a raw socket bound to `from`, a "port
/// unreachable" error to `to` quoting a UDP packet `quoted.0 -> quoted.1`,
/// as the kernel of a host that received that packet would.
fn send_port_unreachable(ns: &Netns, from: IpAddr, to: IpAddr, quoted: (SocketAddr, SocketAddr)) {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut udp = Vec::new();
    udp.extend(quoted.0.port().to_be_bytes());
    udp.extend(quoted.1.port().to_be_bytes());
    udp.extend([0, 8, 0, 0]);
    let (domain, protocol, message) = match (quoted.0.ip(), quoted.1.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut inner = vec![0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 17, 0, 0];
            inner.extend(src.octets());
            inner.extend(dst.octets());
            let sum = checksum(&inner);
            inner[10..12].copy_from_slice(&sum.to_be_bytes());
            let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0]; // destination unreachable, port
            icmp.extend(inner);
            icmp.extend(&udp);
            let sum = checksum(&icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            (Domain::IPV4, Protocol::ICMPV4, icmp)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            // The kernel fills in an ICMPv6 checksum on raw sockets.
            let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0]; // destination unreachable, port
            icmp.extend([0x60, 0, 0, 0, 0, 8, 17, 64]);
            icmp.extend(src.octets());
            icmp.extend(dst.octets());
            icmp.extend(&udp);
            (Domain::IPV6, Protocol::ICMPV6, icmp)
        }
        _ => panic!("mixed families"),
    };
    let socket = ns.enter(|| Socket::new(domain, Type::RAW, Some(protocol))).unwrap().unwrap();
    socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
    socket.send_to(&message, &SocketAddr::new(to, 0).into()).unwrap();
}

/// A raw ICMP socket in a pod: sees every ICMP message the pod receives.
struct IcmpWatch(UdpSocket, bool);

impl IcmpWatch {
    fn new(ns: &Netns) -> IcmpWatch {
        use socket2::{Domain, Protocol, Socket, Type};
        let v4 = ns.exec("ip", &["-6", "-o", "addr", "show", "scope", "global"], None).unwrap().trim().is_empty();
        let (domain, protocol) = if v4 { (Domain::IPV4, Protocol::ICMPV4) } else { (Domain::IPV6, Protocol::ICMPV6) };
        let socket: UdpSocket = ns.enter(|| Socket::new(domain, Type::RAW, Some(protocol))).unwrap().unwrap().into();
        socket.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
        IcmpWatch(socket, v4)
    }

    /// Whether a destination-unreachable from `from` arrives within 700 ms.
    fn sees_unreachable_from(&self, from: IpAddr) -> bool {
        let mut buf = [0u8; 1500];
        while let Ok((n, sender)) = self.0.recv_from(&mut buf) {
            // IPv4 raw sockets return the IP header too; IPv6 ones do not.
            let at = if self.1 { usize::from(buf[0] & 0x0f) * 4 } else { 0 };
            let unreachable = if self.1 { 3 } else { 1 };
            if sender.ip() == from && n > at && buf[at] == unreachable {
                return true;
            }
        }
        false
    }
}

/// An Ethernet frame with two VLAN tags (vid 0) around an IPv4/UDP
/// datagram (UDP checksum 0: none, valid for IPv4).
fn double_tagged_udp(src_mac: &str, dst_mac: &str, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), data: &[u8]) -> Vec<u8> {
    let mac = |m: &str| m.trim().split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect::<Vec<u8>>();
    let mut f = mac(dst_mac);
    f.extend(mac(src_mac));
    f.extend([0x81, 0x00, 0x00, 0x00, 0x81, 0x00, 0x00, 0x00, 0x08, 0x00]);
    let total = (20 + 8 + data.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend(src.0.octets());
    ip.extend(dst.0.octets());
    let sum: u32 = ip.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !(((folded & 0xffff) + (folded >> 16)) as u16);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    f.extend(ip);
    f.extend(src.1.to_be_bytes());
    f.extend(dst.1.to_be_bytes());
    f.extend((8 + data.len() as u16).to_be_bytes());
    f.extend([0, 0]);
    f.extend(data);
    f
}

/// Sends one raw frame on `dev` from inside `ns` (AF_PACKET, through
/// python3, which scripts/ensure-toolchain.sh installs: the workspace
/// forbids the unsafe code a raw `sockaddr_ll` needs).
fn send_frame(ns: &Netns, dev: &str, frame: &[u8]) {
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    let script = "import socket, sys\n\
                  s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
                  s.bind((sys.argv[1], 0))\n\
                  assert s.send(bytes.fromhex(sys.argv[2])) == len(sys.argv[2]) // 2\n";
    ns.exec("python3", &["-c", script, dev, &hex], None).expect("a raw frame sent");
}
