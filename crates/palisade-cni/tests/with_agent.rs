//! The plugin against the node agent's real state machine (`NodeAgent`
//! with a `DirSource` and the `CniSocket`), in a node namespace made for
//! the test: ADD returns only once the pod's policy is in the kernel, a pod
//! the agent does not know is refused, and real packets between the pods
//! follow the policy from the first one.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_agent::daemon::{run, Config};
use palisade_agent::node::NodeOptions;
use palisade_dataplane::netns::Netns;
use palisade_dataplane::podnet::enable_forwarding;
use palisade_dataplane::DenyAction;
use serde_json::{json, Value};

const MANIFESTS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 10.48.0.0/24, podCIDRs: [10.48.0.0/24]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 5432}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: shop, labels: {app: other}}
spec: {containers: [{name: c, image: i}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]
";

fn netns(tag: &str) -> Netns {
    Netns::create(&format!("pal-{}a-{tag}", std::process::id())).unwrap()
}

struct Cleanup(Vec<Netns>, PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = ns.delete();
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn add(node: &Netns, conf: &Value, pod: &Netns, name: &str) -> (i32, Value) {
    cni("ADD", node, conf, pod, name)
}

fn cni(command: &str, node: &Netns, conf: &Value, pod: &Netns, name: &str) -> (i32, Value) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.name, env!("CARGO_BIN_EXE_palisade-cni")])
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("ctr-{name}"))
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={name}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

/// Connects from inside `from` (the socket is made there) within 500 ms.
fn connects(from: &Netns, to: SocketAddr) -> bool {
    let socket = from.enter(|| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)).unwrap();
    let Ok(socket) = socket else { return false };
    socket.connect_timeout(&to.into(), Duration::from_millis(500)).is_ok()
}

#[test]
fn add_returns_only_with_the_policy_in_place() {
    if !palisade_testkit::privileged("cni with agent") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("palisade-cni-agent-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(dir.join("manifests/shop.yaml"), MANIFESTS).unwrap();
    let node = netns("node");
    let pods: Vec<Netns> = ["web", "db", "other", "ghost"].iter().map(|p| netns(p)).collect();
    let _cleanup = Cleanup([vec![node.clone()], pods.clone()].concat(), dir.clone());
    enable_forwarding(&node).unwrap();
    // A node has a default route; proxy ARP answers for the pods' gateway
    // only if the node can route it. A veth with both ends in the node
    // stands in for the uplink (this kernel has no dummy links; nothing
    // leaves the namespace).
    node.ip_batch("link add uplink type veth peer name uplink-end\nlink set uplink up\nlink set uplink-end up\nroute add default dev uplink\n").unwrap();
    let socket_path = dir.join("agent.sock");

    // The agent's loop, as `palisade agent` runs it, on the node.
    let stop = Arc::new(AtomicBool::new(false));
    let agent = {
        let mut config = Config::new(dir.join("manifests"), socket_path.clone(), palisade_cni::plugin::host_ifname);
        config.node = NodeOptions {
            netns: Some(node.name.clone()),
            deny: Some(DenyAction::Reject),
            state_file: Some(dir.join("local-pods.json")),
            node_name: Some("node-a".into()),
            ..NodeOptions::default()
        };
        config.poll = Duration::from_millis(50);
        let stop = stop.clone();
        std::thread::spawn(move || run(&config, &stop, &mut |event, _| eprintln!("agent: {event:?}")).unwrap())
    };
    while !socket_path.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    // No ranges in the config: the node's pod CIDR comes from its Node
    // object, through the agent.
    let conf = json!({
        "cniVersion": "1.0.0", "name": "podnet", "type": "palisade-cni",
        "ipam": {"dataDir": dir.join("ipam")},
        "agentSocket": socket_path,
    });

    // db first, and probe it the moment ADD returns: its policy is there.
    let (code, db) = add(&node, &conf, &pods[1], "db");
    assert_eq!(code, 0, "{db}");
    let db_ip: std::net::IpAddr = db["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap();
    assert!("10.48.0.0/24".parse::<ipnet::IpNet>().unwrap().contains(&db_ip), "from the Node's podCIDR: {db_ip}");
    let listener = pods[1].enter(|| TcpListener::bind((db_ip, 5432))).unwrap().unwrap();
    let server = std::thread::spawn(move || {
        for mut s in listener.incoming().flatten().take(1) {
            let _ = s.write_all(b"db");
        }
    });
    let table = node.exec("nft", &["list", "table", "inet", "palisade"], None).unwrap();
    assert!(table.contains(&format!("{db_ip} : jump ingress_shop_db_")), "db is isolated at once:\n{table}");

    // A plugin that does not say it attached the sender check: the agent
    // attaches it itself, and with no veth to attach it to, refuses.
    let foreign = json!({"op": "add", "containerID": "foreign", "netns": "/dev/null", "ifname": "eth0",
        "ips": ["10.48.0.200"], "podNamespace": "shop", "podName": "other"});
    let refused = palisade_agent::cni_socket::call(&socket_path, &foreign, Duration::from_secs(5));
    assert!(refused.as_ref().is_err_and(|e| e.contains("sender check")), "{refused:?}");

    for (i, name) in [(0, "web"), (2, "other")] {
        let (code, v) = add(&node, &conf, &pods[i], name);
        assert_eq!(code, 0, "{name}: {v}");
    }
    let to_db = SocketAddr::new(db_ip, 5432);
    assert!(!connects(&pods[2], to_db), "other -> db is denied");
    let web_ok = connects(&pods[0], to_db);
    let table = node.exec("nft", &["list", "table", "inet", "palisade"], None).unwrap();
    assert!(web_ok, "web -> db is allowed:\n{table}");
    let _ = server.join();

    // A pod the agent's state does not have: refused, nothing left behind.
    let (code, v) = add(&node, &conf, &pods[3], "ghost");
    assert_eq!((code, v["code"].as_u64()), (1, Some(101)), "{v}");
    assert!(v["details"].as_str().unwrap().contains("shop/ghost"), "{v}");

    // STATUS asks the real agent, which is ready: its kernel holds the state.
    let mut status = Command::new("ip")
        .args(["netns", "exec", &node.name, env!("CARGO_BIN_EXE_palisade-cni")])
        .env_clear()
        .env("CNI_COMMAND", "STATUS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status_conf = conf.clone();
    status_conf["cniVersion"] = json!("1.1.0");
    status.stdin.take().unwrap().write_all(status_conf.to_string().as_bytes()).unwrap();
    let out = status.wait_with_output().unwrap();
    assert!(out.status.success(), "STATUS: {}", String::from_utf8_lossy(&out.stdout));

    // A deleted pod's tracked flows go with it: a new pod given its address
    // must not receive them as established, past its own policy.
    let tracked = |ip: std::net::IpAddr| {
        node.exec("conntrack", &["-L", "-d", &ip.to_string()], None).unwrap_or_default().lines().count()
    };
    assert!(tracked(db_ip) > 0, "web -> db left a tracked flow");
    let (code, v) = cni("DEL", &node, &conf, &pods[1], "db");
    assert_eq!(code, 0, "DEL db: {v}");
    assert_eq!(tracked(db_ip), 0, "db's flows are removed with it");

    stop.store(true, Ordering::Relaxed);
    agent.join().unwrap();
}
