//! A node without IP forwarding and without a default route (containerd's
//! CRI test node was one): its IPv4 pods cannot reach each other until
//! `NodeSetup::ensure` makes it ready; and when it cannot (a read-only
//! sysctl), it says so instead of reporting success. Needs root.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use palisade_dataplane::netns::Netns;
use palisade_dataplane::node_ready::NodeSetup;
use palisade_dataplane::podnet::PodLink;
use palisade_testkit::privileged;

struct Owned(String);

impl Owned {
    fn new(tag: &str) -> Owned {
        let name = format!("palisade-test-{}-{tag}", std::process::id());
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
        Owned(name)
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

fn connects(from: &Netns, to: SocketAddr) -> bool {
    from.enter(|| TcpStream::connect_timeout(&to, Duration::from_millis(700)).is_ok()).unwrap()
}

#[test]
fn a_bare_node_is_made_ready_for_its_pods() {
    if !privileged("node readiness: forwarding and the pods' gateway") {
        return;
    }
    let node = Owned::new("rnode");
    let node_ns = Netns::named(&node.0);
    node_ns.ip_batch("link set lo up\n").unwrap();
    node_ns.sysctl("net.ipv4.ip_forward", "0").unwrap();
    let mut pods = Vec::new();
    for (i, ip) in ["10.9.0.10", "10.9.0.11"].iter().enumerate() {
        let pod = Owned::new(&format!("rpod{i}"));
        PodLink {
            pod: Netns::named(&pod.0),
            node: node_ns.clone(),
            host_if: format!("pal-r{i}"),
            pod_if: "eth0".into(),
            addresses: vec![ip.parse().unwrap()],
        }
        .attach()
        .unwrap();
        pods.push(pod);
    }
    let (a, b) = (Netns::named(&pods[0].0), Netns::named(&pods[1].0));
    let server = b.enter(|| TcpListener::bind("10.9.0.11:80").unwrap()).unwrap();
    let to_b: SocketAddr = "10.9.0.11:80".parse().unwrap();
    assert!(!connects(&a, to_b), "a bare node routes nothing between its pods");

    let setup = NodeSetup::default();
    let first = setup.ensure(Some(&node_ns));
    assert!(first.problems.is_empty(), "{first:?}");
    assert!(first.changed.iter().any(|c| c.contains("ip_forward")), "{first:?}");
    assert!(first.changed.iter().any(|c| c.contains("169.254.1.1/32 dev lo")), "{first:?}");
    assert!(connects(&a, to_b), "ready: a reaches b through the gateway");
    assert_eq!(setup.ensure(Some(&node_ns)).changed, Vec::<String>::new(), "nothing to do the second time");
    drop(server);

    // A node whose sysctl cannot be written (here an immutable file): not
    // ready, and why.
    let root = std::env::temp_dir().join(format!("palisade-sysctl-{}", std::process::id()));
    std::fs::create_dir_all(root.join("net/ipv4")).unwrap();
    let file = root.join("net/ipv4/ip_forward");
    std::fs::write(&file, "0\n").unwrap();
    assert!(Command::new("chattr").arg("+i").arg(&file).status().unwrap().success());
    let stuck = NodeSetup { sysctl_root: root.clone() }.ensure(Some(&node_ns));
    let _ = Command::new("chattr").arg("-i").arg(&file).status();
    let _ = std::fs::remove_dir_all(&root);
    assert_eq!(stuck.problems.len(), 1, "{stuck:?}");
    assert!(stuck.problems[0].contains("net.ipv4.ip_forward is 0 and cannot be set"), "{stuck:?}");
}
