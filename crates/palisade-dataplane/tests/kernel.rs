//! The rendered rules against the real kernel: applied in a network
//! namespace created for the test, read back, patched incrementally.
//! Needs root; skips loudly otherwise, and fails instead when CI=true or
//! PALISADE_REQUIRE_PRIVILEGED=1.

use std::collections::BTreeMap;
use std::process::Command;

use palisade_dataplane::nft::run_nft_in;
use palisade_dataplane::{compile, DenyAction, Options};
use palisade_engine::Engine;
use palisade_model::{parse_sources, Cluster, Source};

fn privileged() -> bool {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    let required = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("PALISADE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
    if !root {
        assert!(!required, "this test needs root (CI=true or PALISADE_REQUIRE_PRIVILEGED=1 forbids skipping)");
        eprintln!("\n*** SKIPPED: {} needs root to create network namespaces ***\n", module_path!());
    }
    root
}

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
    if !privileged() {
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
        "10.0.0.0-10.244.1.255",
        "jump ingress_x_id",
        "reject with tcp reset",
    ] {
        assert!(listed.contains(expected), "missing {expected:?} in:\n{listed}");
    }

    // Incremental: relabel b so the selector no longer matches it.
    let opts = Options::default();
    let before = compile(&engine, |id| node1[&id], &opts);
    before.full_transaction(&opts.table).apply_in(Some(&ns.0)).unwrap();
    let (b_id, b) = engine.endpoints().find(|(_, e)| e.key.name == "b").map(|(i, e)| (i, e.clone())).unwrap();
    let mut relabelled = b.clone();
    relabelled.labels.insert("pod".into(), "z".into());
    engine.upsert_endpoint(relabelled);
    engine.compile();
    let after = compile(&engine, |id| node1.get(&id).copied().unwrap_or(false), &opts);
    let patch = after.diff_transaction(&before, &opts.table);
    let script = patch.render();
    assert!(script.contains("delete element inet palisade sel_"), "{script}");
    assert!(!script.contains("delete table"), "an incremental change must not replace the table:\n{script}");
    patch.apply_in(Some(&ns.0)).unwrap_or_else(|e| panic!("{e}\n{script}"));
    let listed =
        run_nft_in(Some(&ns.0), &["list", "set", "inet", "palisade", &selector_set_of(&after, "pod=b")], None).unwrap();
    assert!(!listed.contains("10.244.2.11"), "{listed}");
    let _ = b_id;

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
