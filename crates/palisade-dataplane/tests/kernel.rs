//! The rendered rules against the real kernel: applied in a network
//! namespace created for the test, read back, patched incrementally.
//! Needs root; skips loudly otherwise, and fails instead when CI=true or
//! PALISADE_REQUIRE_PRIVILEGED=1.

use std::collections::BTreeMap;
use std::process::Command;

use palisade_dataplane::nft::run_nft_in;
use palisade_dataplane::{compile, DenyAction, NodeCompiler, Options};
use palisade_engine::Engine;
use palisade_model::{parse_sources, Cluster, Source};

/// A network namespace that is deleted when dropped, also on panic.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("palisade-test-{}-{tag}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status().unwrap().success();
        assert!(ok, "ip netns add {name}");
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 10.244.1.10, podIPs: [{ip: 10.244.1.10}, {ip: "fd00::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: n2, containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.2.11}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.244.2.0/24]}}]
    ports: [{port: http}, {protocol: UDP, port: 53, endPort: 60}, {protocol: SCTP}]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: x}}}]
    ports: [{port: http}]
  - to: [{ipBlock: {cidr: "fd00::/64"}}]
"#;

fn engine(text: &str) -> Engine {
    let (cluster, problems, _) =
        Cluster::from_manifests(parse_sources(&[Source { name: "t.yaml".into(), text: text.into() }]));
    assert!(problems.is_empty(), "{problems:?}");
    Engine::from_cluster(&cluster)
}

#[test]
fn rendered_ruleset_is_accepted_by_the_kernel_and_patched_in_place() {
    if !palisade_testkit::privileged("dataplane kernel test") {
        return;
    }
    let ns = Netns::new("nft");
    let mut engine = engine(CLUSTER);
    let node1: BTreeMap<_, _> = engine.endpoints().map(|(id, e)| (id, e.node.as_deref() == Some("n1"))).collect();
    for deny in [DenyAction::Drop, DenyAction::Reject] {
        let opts = Options { deny, ..Options::default() };
        let rs = compile(&engine, |id| node1[&id], &opts);
        let tx = rs.full_transaction(&opts.table);
        tx.apply_in(Some(&ns.0)).unwrap_or_else(|e| panic!("{e}\n{}", tx.render()));
    }
    let listed = run_nft_in(Some(&ns.0), &["list", "table", "inet", "palisade"], None).unwrap();
    for expected in [
        "x/a ingress rule 0 peer 0",
        "10.244.2.11",
        "ip saddr 10.0.0.0/8 ip saddr != 10.244.2.0/24",
        "jump ingress_x_a_",
        "reject with tcp reset",
    ] {
        assert!(listed.contains(expected), "missing {expected:?} in:\n{listed}");
    }

    // Incremental: relabel b so the selector no longer matches it.
    let opts = Options::default();
    let on_node1 = |id| node1.get(&id).copied().unwrap_or(false).then(String::new);
    let mut compiler = NodeCompiler::new(opts.clone());
    compiler.resync(&engine, &on_node1).apply_in(Some(&ns.0)).unwrap();
    let before = compiler.ruleset().clone();
    let b = engine.endpoints().find(|(_, e)| e.key.name == "b").map(|(_, e)| e.clone()).unwrap();
    let mut relabelled = b.clone();
    relabelled.labels.insert("pod".into(), "z".into());
    engine.upsert_endpoint(relabelled);
    let changes = engine.compile();
    let update = compiler.update(&engine, &changes, &on_node1);
    assert_eq!(update.full, None);
    let script = update.transaction.render();
    assert!(script.contains("delete element inet palisade sel_"), "{script}");
    assert!(!script.contains("delete table"), "an incremental change must not replace the table:\n{script}");
    update.transaction.apply_in(Some(&ns.0)).unwrap_or_else(|e| panic!("{e}\n{script}"));
    let after = compiler.ruleset().clone();
    let listed =
        run_nft_in(Some(&ns.0), &["list", "set", "inet", "palisade", &selector_set_of(&after, "pod=b")], None).unwrap();
    assert!(!listed.contains("10.244.2.11"), "{listed}");

    // A failed transaction changes nothing: the last good state stays.
    let mut bad = after.diff_transaction(&before, &opts.table);
    bad.push(palisade_dataplane::nft::Op::AddRule {
        chain: "forward".into(),
        rule: palisade_dataplane::nft::Rule { exprs: vec!["this is not nft".into()], comment: None },
    });
    assert!(bad.apply_in(Some(&ns.0)).is_err());
    let still = run_nft_in(Some(&ns.0), &["list", "table", "inet", "palisade"], None).unwrap();
    assert!(still.contains("x/a ingress rule 0 peer 0"));
}

fn selector_set_of(rs: &palisade_dataplane::Ruleset, selector_text: &str) -> String {
    rs.sets
        .iter()
        .find(|(n, (d, _))| n.ends_with("_v4") && n.starts_with("sel_") && d.comment.contains(selector_text))
        .map(|(n, _)| n.clone())
        .unwrap()
}

/// Element batches over netlink land exactly as `nft` would write them,
/// for every key type Palisade uses, and a refused batch changes nothing.
#[test]
fn netlink_element_batches_match_nft() {
    use palisade_dataplane::nfnetlink::NetlinkBatch;
    use palisade_dataplane::nft::{KeyType, Op, Transaction};
    if !palisade_testkit::privileged("netlink element batches") {
        return;
    }
    let ns = Netns::new("nl");
    let setup = "table inet palisade {
        chain c1 { }
        set a4 { type ipv4_addr; }
        set a6 { type ipv6_addr; }
        set ifs { type ifname; }
        set src4 { type ifname . ipv4_addr; }
        set np4 { type ipv4_addr . inet_service; }
        map m4 { type ipv4_addr : verdict; }
    }";
    run_nft_in(Some(&ns.0), &["-f", "-"], Some(setup)).unwrap();
    let keys = |set: &str| {
        Some(KeyType(match set {
            "a4" | "m4" => vec!["ipv4_addr"],
            "a6" => vec!["ipv6_addr"],
            "ifs" => vec!["ifname"],
            "src4" => vec!["ifname", "ipv4_addr"],
            "np4" => vec!["ipv4_addr", "inet_service"],
            _ => return None,
        }))
    };
    let mut tx = Transaction::new("palisade");
    let add = |set: &str, e: &str| Op::AddElements { set: set.into(), elements: vec![e.into()] };
    tx.push(add("a4", "10.1.2.3"));
    tx.push(add("a6", "fd00::7"));
    tx.push(add("ifs", "\"veth-a\""));
    tx.push(add("src4", "\"veth-a\" . 10.1.2.3"));
    tx.push(add("np4", "10.1.2.3 . 8080"));
    tx.push(add("m4", "10.1.2.3 : jump c1"));
    let batch = NetlinkBatch::from_transaction(&tx, keys).unwrap().expect("element-only");
    batch.apply_in(Some(&ns.0)).unwrap();

    // The same sets created over netlink list as nft's, keys and elements.
    use palisade_dataplane::nft::SetDef;
    let by_netlink = Netns::new("nl-sets");
    run_nft_in(Some(&by_netlink.0), &["add", "table", "inet", "palisade"], None).unwrap();
    let mut create = Transaction::new("palisade");
    create.push(Op::AddChain(palisade_dataplane::nft::ChainDef { name: "c1".into(), hook: None, comment: "".into() }));
    for set in ["a4", "a6", "ifs", "src4", "np4", "m4"] {
        let key = keys(set).unwrap();
        let map_to = (set == "m4").then_some("verdict");
        create.push(Op::AddSet(SetDef { name: set.into(), key, map_to, interval: false, comment: String::new() }));
    }
    create.ops.extend(tx.ops.iter().cloned());
    NetlinkBatch::from_transaction(&create, |_| None).unwrap().unwrap().apply_in(Some(&by_netlink.0)).unwrap();
    let list = |ns: &Netns| run_nft_in(Some(&ns.0), &["list", "table", "inet", "palisade"], None).unwrap();
    assert_eq!(objects(&list(&by_netlink)), objects(&list(&ns)), "{}", list(&by_netlink));
    drop(by_netlink);

    let listed = run_nft_in(Some(&ns.0), &["list", "table", "inet", "palisade"], None).unwrap();
    for expected in
        ["10.1.2.3", "fd00::7", "\"veth-a\"", "\"veth-a\" . 10.1.2.3", "10.1.2.3 . 8080", "10.1.2.3 : jump c1"]
    {
        assert!(listed.contains(expected), "missing {expected:?} in:\n{listed}");
    }
    // Deleting one present and one absent element: the kernel refuses the
    // batch and the present one stays.
    let mut bad = Transaction::new("palisade");
    bad.push(Op::DeleteElements { set: "a4".into(), elements: vec!["10.1.2.3".into()] });
    bad.push(Op::DeleteElements { set: "a6".into(), elements: vec!["fd00::99".into()] });
    let batch = NetlinkBatch::from_transaction(&bad, keys).unwrap().unwrap();
    assert!(batch.apply_in(Some(&ns.0)).is_err());
    let listed = run_nft_in(Some(&ns.0), &["list", "set", "inet", "palisade", "a4"], None).unwrap();
    assert!(listed.contains("10.1.2.3"), "a refused batch must change nothing:\n{listed}");
    // A kept session: deletes are as fast as adds (closing a netfilter
    // socket after a delete waits for the kernel), and a namespace rebuilt
    // under the same name gets a new socket, never the stale one.
    let mut session = palisade_dataplane::nfnetlink::NetlinkSession::new(Some(&ns.0));
    let one = |add: bool, e: &str| {
        let mut tx = Transaction::new("palisade");
        let elements = vec![e.to_string()];
        tx.push(if add {
            Op::AddElements { set: "a4".into(), elements }
        } else {
            Op::DeleteElements { set: "a4".into(), elements }
        });
        NetlinkBatch::from_transaction(&tx, keys).unwrap().unwrap()
    };
    session.apply(&one(true, "10.7.7.7")).unwrap();
    session.apply(&one(false, "10.7.7.7")).unwrap();
    assert!(session.apply(&one(false, "10.7.7.7")).is_err(), "deleting a missing element is refused");
    session.apply(&one(true, "10.7.7.8")).unwrap(); // the refusal's leftovers do not confuse the next batch
    Command::new("ip").args(["netns", "delete", &ns.0]).status().unwrap();
    Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap();
    run_nft_in(Some(&ns.0), &["-f", "-"], Some(setup)).unwrap();
    session.apply(&one(true, "10.7.7.9")).unwrap();
    let listed = run_nft_in(Some(&ns.0), &["list", "set", "inet", "palisade", "a4"], None).unwrap();
    assert!(listed.contains("10.7.7.9") && !listed.contains("10.7.7.8"), "{listed}");

    // The table itself and base chains are nft's to write.
    let mut table = Transaction::new("palisade");
    table.push(Op::AddTable);
    assert!(NetlinkBatch::from_transaction(&table, keys).unwrap().is_none());
}

/// A cluster with every rule form the policy compiler emits: selector and
/// namespace peers, ipBlocks with excepts at byte and odd prefix lengths in
/// both families, named ports both ways, port ranges, all protocols,
/// any-peer and any-port rules.
const EVERY_FORM: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {pod: c}}
spec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: dns, containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.244.1.20, podIPs: [{ip: 10.244.1.20}, {ip: "fd00::20"}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c, namespace: y}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 172.16.0.0/12, except: [172.16.0.0/31, 172.17.0.1/32]}}]
  - from: [{ipBlock: {cidr: "2001:db8::/33", except: ["2001:db8::/120"]}}]
    ports: [{protocol: SCTP, port: 9000, endPort: 9100}, {protocol: UDP, port: dns}]
  - {}
  egress:
  - to: [{podSelector: {}, namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{protocol: UDP, port: dns}, {protocol: TCP, port: 1, endPort: 65535}]
  - ports: [{protocol: TCP, port: 443}]
"#;

/// Splits `nft list table` into its objects, each with its lines; a set's
/// elements sorted (the kernel lists a hash set in no fixed order).
fn objects(listing: &str) -> BTreeMap<String, Vec<String>> {
    let sorted = |text: &str| {
        let mut items: Vec<String> = text.trim_end_matches('}').split(',').map(|e| e.trim().to_string()).collect();
        items.sort();
        format!("elements = {items:?}")
    };
    let mut out = BTreeMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    let mut elements: Option<String> = None;
    for line in listing.lines() {
        let trimmed = line.trim();
        if line.starts_with('\t') && !line.starts_with("\t\t") {
            if trimmed == "}" {
                let (name, lines) = current.take().expect("an object is open");
                out.insert(name, lines);
            } else {
                current = Some((trimmed.to_string(), Vec::new()));
            }
            continue;
        }
        let Some((_, lines)) = current.as_mut() else { continue };
        if let Some(rest) = trimmed.strip_prefix("elements = {") {
            elements = Some(rest.to_string());
        } else if let Some(text) = elements.as_mut() {
            text.push_str(trimmed);
        } else {
            lines.push(trimmed.to_string());
            continue;
        }
        let text = elements.as_deref().expect("inside an element list");
        if text.ends_with('}') {
            lines.push(sorted(text));
            elements = None;
        }
    }
    out
}

/// Sets, policy chains and their rules written over netlink list exactly as
/// the same objects written by `nft -f`, for every rule form the compiler
/// emits (both deny actions, both families); only the table and its base
/// chains come from nft.
#[test]
fn netlink_objects_list_as_nft_writes_them() {
    use palisade_dataplane::nfnetlink::NetlinkBatch;
    if !palisade_testkit::privileged("netlink objects") {
        return;
    }
    for (text, deny) in [(CLUSTER, DenyAction::Drop), (EVERY_FORM, DenyAction::Reject), (EVERY_FORM, DenyAction::Drop)]
    {
        let engine = engine(text);
        let opts = Options { deny, ..Options::default() };
        let full = compile(&engine, |_| true, &opts);
        let base = compile(&engine, |_| false, &opts);
        let by_nft = Netns::new("nl-nft");
        full.full_transaction(&opts.table).apply_in(Some(&by_nft.0)).unwrap();
        let by_netlink = Netns::new("nl-obj");
        base.full_transaction(&opts.table).apply_in(Some(&by_netlink.0)).unwrap();
        let rest = full.diff_transaction(&base, &opts.table);
        let keys = |set: &str| full.sets.get(set).map(|(d, _)| d.key.clone());
        let batch = NetlinkBatch::from_transaction(&rest, keys)
            .unwrap()
            .unwrap_or_else(|| panic!("a rule outside the netlink grammar:\n{}", rest.render()));
        assert!(batch.writes_objects());
        batch.apply_in(Some(&by_netlink.0)).unwrap_or_else(|e| panic!("{e}\n{}", rest.render()));
        let list = |ns: &Netns| run_nft_in(Some(&ns.0), &["list", "table", "inet", "palisade"], None).unwrap();
        let (want, got) = (list(&by_nft), list(&by_netlink));
        assert_eq!(objects(&got), objects(&want), "netlink:\n{got}\nnft:\n{want}");
        assert!(want.contains("reject") == (deny == DenyAction::Reject) && objects(&want).len() > 8, "{want}");

        // And taken apart again: flushed and deleted chains, deleted sets.
        let undo = base.diff_transaction(&full, &opts.table);
        let batch = NetlinkBatch::from_transaction(&undo, keys).unwrap().expect("deletes go over netlink");
        batch.apply_in(Some(&by_netlink.0)).unwrap_or_else(|e| panic!("{e}\n{}", undo.render()));
        base.full_transaction(&opts.table).apply_in(Some(&by_nft.0)).unwrap();
        assert_eq!(objects(&list(&by_netlink)), objects(&list(&by_nft)));
    }
}

/// The kernel's verifier accepts the sender check for a pod with many
/// addresses (the program grows with them), attaching twice keeps one
/// program, and detaching leaves none.
#[test]
fn sender_checks_of_any_size_load_and_replace_each_other() {
    use palisade_dataplane::netns::Netns as Ns;
    use palisade_dataplane::sender;
    if !palisade_testkit::privileged("sender check attach") {
        return;
    }
    let ns = Netns::new("snd");
    let node = Ns::named(&ns.0);
    node.exec("ip", &["link", "add", "palx0", "type", "veth", "peer", "name", "palx1"], None).unwrap();
    let many: Vec<std::net::IpAddr> = (0..300u32)
        .flat_map(|i| {
            [
                std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
                std::net::IpAddr::from(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i))),
            ]
        })
        .collect();
    let few = &many[..2];
    sender::attach_in(&node, "palx0", &many).unwrap();
    assert!(sender::is_attached_in(&node, "palx0", &many).unwrap());
    assert!(!sender::is_attached_in(&node, "palx0", few).unwrap(), "another address list is another program");
    sender::attach_in(&node, "palx0", few).unwrap();
    sender::attach_in(&node, "palx0", few).unwrap();
    assert!(sender::is_attached_in(&node, "palx0", few).unwrap());
    let listed = node.enter(|| palisade_dataplane::bpf::attached("palx0")).unwrap().unwrap();
    assert_eq!(listed.len(), 1, "the old check left when the new one came: {listed:?}");
    sender::detach_in(&node, "palx0").unwrap();
    assert!(node.enter(|| palisade_dataplane::bpf::attached("palx0")).unwrap().unwrap().is_empty());
    assert!(sender::attach_in(&node, "nosuchdev", few).is_err(), "a missing device is an error");

    // The plugin's way: a tc filter first (no RCU grace period), then the
    // agent moves it to tcx; the check is there throughout.
    let tc_names = || {
        let out = node.exec("tc", &["filter", "show", "dev", "palx0", "ingress"], None).unwrap_or_default();
        out.lines().filter(|l| l.contains("palsnd_")).count()
    };
    let started = std::time::Instant::now();
    sender::attach_fast_in(&node, "palx0", few).unwrap();
    let fast = started.elapsed();
    assert!(sender::is_attached_in(&node, "palx0", few).unwrap(), "a tc filter is the check too");
    assert_eq!(tc_names(), 1);
    assert!(node.enter(|| palisade_dataplane::bpf::attached("palx0")).unwrap().unwrap().is_empty());
    sender::attach_fast_in(&node, "palx0", few).unwrap(); // idempotent
    assert_eq!(tc_names(), 1);
    let started = std::time::Instant::now();
    sender::promote_in(&node, "palx0", few).unwrap();
    let promoted = started.elapsed();
    assert!(sender::is_attached_in(&node, "palx0", few).unwrap());
    assert_eq!(tc_names(), 0, "the tc filter goes once tcx holds the check");
    assert_eq!(node.enter(|| palisade_dataplane::bpf::attached("palx0")).unwrap().unwrap().len(), 1);
    eprintln!("sender check: as a tc filter {fast:?}; moved to tcx {promoted:?}");
}

/// A veth end is activated after its peer comes up, asynchronously, under
/// the rtnl lock; until then it drops all it sends. With the lock busy
/// (namespaces with many devices being torn down, as when a lab ends
/// beside another), that window can be long. Wiring a pod returns only
/// after it, so the pod's first connection, made at once, gets through.
#[test]
fn a_wired_pod_link_transmits_when_attach_returns() {
    use palisade_dataplane::link;
    use palisade_dataplane::netns::Netns as Ns;
    use palisade_dataplane::podnet::PodLink;
    use std::sync::atomic::{AtomicBool, Ordering};
    if !palisade_testkit::privileged("pod link activation") {
        return;
    }
    let node = Netns::new("lnode");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    /// Stops the churn also when the test panics.
    struct Stop(std::sync::Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop = Stop(stop.clone());
    // Keeps the kernel tearing namespaces down while the pods are wired
    // (bounded: at most 100 rounds).
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) && round < 100 {
                let (busy, peer) = (Netns::new(&format!("lbusy{round}")), Netns::new(&format!("lpeer{round}")));
                let script: String =
                    (0..200).map(|i| format!("link add v{i} type veth peer name w{i} netns {}\n", peer.0)).collect();
                Ns::named(&busy.0).ip_batch(&script).unwrap();
                round += 1;
            }
        })
    };
    // The node answers for the pods' gateway (proxy ARP needs a route to
    // it elsewhere than the veth) and owns an address the pods connect to.
    let node_ns = Ns::named(&node.0);
    palisade_dataplane::podnet::enable_forwarding(&node_ns).unwrap();
    node_ns.ip_batch("link set lo up\naddr add 10.9.255.1/32 dev lo\nroute add 169.254.1.1/32 dev lo\n").unwrap();
    let mut pods = Vec::new();
    let mut wired = Vec::new();
    for i in 0..20 {
        let pod = Netns::new(&format!("lpod{i}"));
        let link = PodLink {
            pod: Ns::named(&pod.0),
            node: Ns::named(&node.0),
            host_if: format!("pl{i}"),
            pod_if: "eth0".into(),
            addresses: vec![format!("10.9.0.{}", 10 + i).parse().unwrap()],
        };
        pods.push(pod);
        let attached = link.attach();
        // At once, the pod's first connection: its ARP for the gateway,
        // the node's ARP for it, a SYN and the node's reset. A lost ARP
        // exchange is retried after a second, so 500 ms tells.
        let first = link.pod.enter(|| {
            let to = std::net::SocketAddr::from(([10, 9, 255, 1], 9));
            std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_millis(500)).map(|_| ())
        });
        wired.push((i, attached, first.unwrap()));
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    for (i, attached, first) in wired {
        attached.unwrap();
        let refused = matches!(&first, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
        assert!(refused, "pod {i}: its first connection to the node after attach: {first:?}");
    }
    assert!(link::state(&Ns::named(&node.0), "nosuchdev").is_err(), "a missing device is an error");
}

/// The wait itself: a veth end whose peer is down never transmits (the
/// wait ends in an error naming what it saw); once the peer is up it does.
#[test]
fn waiting_for_a_link_ends_when_it_transmits_or_at_the_limit() {
    use palisade_dataplane::link::{state, wait_until_transmitting};
    use palisade_dataplane::netns::Netns as Ns;
    use std::time::{Duration, Instant};
    if !palisade_testkit::privileged("link activation wait") {
        return;
    }
    let (a, b) = (Netns::new("wa"), Netns::new("wb"));
    let (node, pod) = (Ns::named(&a.0), Ns::named(&b.0));
    node.ip_batch(&format!("link add h0 type veth peer name e0 netns {}\nlink set h0 up\n", b.0)).unwrap();
    let before = state(&node, "h0").unwrap();
    assert!(!before.transmits(), "peer down: {before:?}");
    let started = Instant::now();
    let err = wait_until_transmitting(&node, "h0", Duration::from_millis(200)).unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(200), "gave up early");
    let text = format!("{err}: {}", std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default());
    assert!(text.contains("h0") && text.contains("not transmitting"), "{text}");
    pod.ip_batch("link set e0 up\n").unwrap();
    wait_until_transmitting(&node, "h0", Duration::from_secs(10)).unwrap();
    assert!(state(&node, "h0").unwrap().transmits());
    assert!(state(&pod, "e0").unwrap().transmits());
}
