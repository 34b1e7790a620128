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
    use palisade_dataplane::nfnetlink::ElementBatch;
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
    let batch = ElementBatch::from_transaction(&tx, keys).unwrap().expect("element-only");
    batch.apply_in(Some(&ns.0)).unwrap();
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
    let batch = ElementBatch::from_transaction(&bad, keys).unwrap().unwrap();
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
        ElementBatch::from_transaction(&tx, keys).unwrap().unwrap()
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

    // A transaction that changes a rule is not an element batch.
    let mut rules = Transaction::new("palisade");
    rules.push(Op::FlushChain("c1".into()));
    assert!(ElementBatch::from_transaction(&rules, keys).unwrap().is_none());
}
