//! The conntrack table over netlink, against the kernel: real TCP and UDP
//! flows in a namespace of the test, dumped with both directions and the
//! TCP state, ended by policy (`flush_denied`: exactly the denied ones) and
//! by address (`forget_addresses`: every protocol, either direction).
//! Needs root.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;

use palisade_dataplane::conntrack::{flush_denied, forget_addresses, list};
use palisade_dataplane::ctnetlink::Conntrack;
use palisade_dataplane::netns::Netns;
use palisade_model::Protocol;
use palisade_testkit::privileged;

struct Owned(String);
impl Drop for Owned {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

#[test]
fn flows_are_dumped_and_ended_over_netlink() {
    if !privileged("conntrack over netlink") {
        return;
    }
    let owned = Owned(format!("palisade-test-{}-ct", std::process::id()));
    assert!(Command::new("ip").args(["netns", "add", &owned.0]).status().unwrap().success());
    let ns = Netns::named(&owned.0);
    ns.ip_batch("link set lo up\naddr add 10.7.0.1/32 dev lo\naddr add 10.7.0.2/32 dev lo\n").unwrap();
    // Conntrack tracks a namespace once a rule there uses it.
    ns.exec(
        "nft",
        &["-f", "-"],
        Some("table inet t {\n chain c {\n type filter hook output priority 0;\n ct state established accept\n }\n}\n"),
    )
    .unwrap();

    let (a, b) = ("10.7.0.1".parse().unwrap(), "10.7.0.2".parse().unwrap());
    let (server, mut keep) = ns
        .enter(|| {
            let server = TcpListener::bind("10.7.0.2:80").unwrap();
            let mut streams = Vec::new();
            for port in [80, 80] {
                let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
                socket.bind(&SocketAddr::new(a, 0).into()).unwrap();
                socket.connect(&SocketAddr::new(b, port).into()).unwrap();
                streams.push(TcpStream::from(socket));
            }
            let udp = UdpSocket::bind("10.7.0.1:0").unwrap();
            udp.send_to(b"x", "10.7.0.2:53").unwrap();
            (server, streams)
        })
        .unwrap();
    keep[0].write_all(b"hello").unwrap();

    let entries = Conntrack::open(Some(&ns)).unwrap().dump().unwrap();
    let tcp: Vec<_> = entries.iter().filter(|e| e.orig.protocol == 6 && e.orig.dport == 80).collect();
    assert_eq!(tcp.len(), 2, "{entries:?}");
    let reply = tcp[0].reply.unwrap();
    assert_eq!((reply.src, reply.dst, reply.sport), (b, a, 80), "the reply direction");
    assert_eq!(tcp[0].tcp_state, Some(3), "ESTABLISHED");
    let flows = list(Some(&ns)).unwrap();
    assert!(flows.iter().any(|f| f.protocol == Protocol::Udp && f.dport == 53), "{flows:?}");

    // Policy now denies TCP 80: both of those entries go, the UDP one stays.
    let removed = flush_denied(Some(&ns), |f| f.protocol == Protocol::Tcp && f.dport == 80).unwrap();
    assert_eq!(removed, 2);
    let flows = list(Some(&ns)).unwrap();
    assert!(!flows.iter().any(|f| f.protocol == Protocol::Tcp && f.dport == 80), "{flows:?}");
    assert!(flows.iter().any(|f| f.protocol == Protocol::Udp), "{flows:?}");

    // The pod with address b is gone: every flow with it, any direction.
    let failed = forget_addresses(Some(&ns), &[b]);
    assert!(failed.is_empty(), "{failed:?}");
    let left = Conntrack::open(Some(&ns)).unwrap().dump().unwrap();
    assert!(left.iter().all(|e| e.orig.src != b && e.orig.dst != b), "{left:?}");
    drop((server, keep));
}
