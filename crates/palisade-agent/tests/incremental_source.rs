//! The dir source's object updates, applied by the node agent one by one,
//! give exactly the cluster and the verdicts a full read gives (unreadable
//! objects replaced by their stand-ins in both): 300 random
//! edits of a manifests directory (relabels, pods and policies added and
//! removed, namespaces relabeled, objects moved between files, a
//! workload's replica, a workload that forces a full read, objects made
//! unreadable, a pod declared in two files). No kernel
//! is touched.

use std::path::Path;

use palisade_agent::node::{NodeAgent, NodeOptions};
use palisade_agent::source::{DirSource, Source, Update};
use palisade_engine::{Engine, Flow, FlowEnd};
use palisade_model::stand_in::fail_closed;
use palisade_model::{parse_sources, read_paths, Cluster, Protocol};

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[derive(Clone)]
struct Item {
    file: usize,
    text: String,
}

fn pod(i: usize, role: usize, ns: usize) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: n{ns}, labels: {{role: r{role}}}}}\nspec: {{containers: [{{name: c, image: i, ports: [{{containerPort: 80, name: http}}]}}]}}\nstatus: {{podIP: 10.7.0.{}}}\n", 10 + i)
}

fn policy(k: usize, ns: usize, a: usize, b: usize) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{k}, namespace: n{ns}}}\nspec:\n  podSelector: {{matchLabels: {{role: r{a}}}}}\n  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{tier: t{b}}}}}, podSelector: {{}}}}], ports: [{{port: http}}]}}]\n")
}

fn namespace(ns: usize, tier: usize) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: n{ns}, labels: {{tier: t{tier}}}}}\n")
}

/// Slot 15: a workload's replica (a pod like any other on a node); slot
/// 16: a workload itself, read from its template (forces a full read).
fn replica(i: usize) -> String {
    if i == 16 {
        return "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w, namespace: n0}\nspec: {selector: {}, template: {metadata: {labels: {role: r1}}}}\n".into();
    }
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: w-{i}, namespace: n0, labels: {{role: r1}}, ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: w-7d, uid: u, controller: true}}]}}\nspec: {{containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: 10.7.1.{i}}}\n")
}

fn write(dir: &Path, items: &[Option<Item>]) {
    for f in 0..3 {
        let text: String = items.iter().flatten().filter(|i| i.file == f).map(|i| format!("---\n{}", i.text)).collect();
        let path = dir.join(format!("f{f}.yaml"));
        if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
            continue; // unchanged files stay untouched, as an editor leaves them
        }
        let tmp = dir.join(format!("f{f}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(format!("f{f}.yaml"))).unwrap();
    }
}

/// The whole directory read at once, unreadable objects replaced by their
/// stand-ins: what the node must hold.
fn full_read(dir: &Path) -> (Cluster, Vec<String>) {
    let (sources, problems) = read_paths(&[dir.to_path_buf()]);
    assert!(problems.is_empty());
    // The node's view: every pod itself.
    let m = parse_sources(&sources).per_pod();
    let fc = fail_closed(m.objects, m.problems);
    assert!(fc.unnamed.is_empty(), "{:?}", fc.unnamed);
    let (c, problems, _) = Cluster::assemble(fc.objects);
    assert!(problems.is_empty(), "{problems:?}");
    (c, fc.unreadable.keys().map(|o| o.to_string()).collect())
}

/// `text` made unreadable: a field the API server would refuse.
fn broken(text: &str) -> String {
    text.replace("tier: t", "'tier!': t")
        .replace("containers: [{name: c, image: i, ports: [{containerPort: 80, name: http}]}]", "containers: 7")
        .replace("podSelector: {matchLabels: {role:", "podSelector: {matchLabels: {'role!':")
}

fn verdicts(engine: &Engine) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for (a, ea) in engine.endpoints() {
        for (b, eb) in engine.endpoints() {
            let allowed = engine.allows(&Flow {
                src: FlowEnd::Endpoint(a),
                dst: FlowEnd::Endpoint(b),
                protocol: Protocol::Tcp,
                port: 80,
            });
            out.push((ea.key.to_string(), eb.key.to_string(), allowed));
        }
    }
    out.sort();
    out
}

#[test]
fn object_updates_equal_full_reads() {
    let dir = std::env::temp_dir().join(format!("palisade-incremental-source-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng(0x1234_5678);
    // Slots: 0-2 namespaces, 3-10 pods, 11-14 policies, 15 a replica, 16 a
    // workload, 17 a second declaration of slot 3's pod.
    let mut items: Vec<Option<Item>> = vec![None; 18];
    for (ns, item) in items.iter_mut().enumerate().take(3) {
        *item = Some(Item { file: 0, text: namespace(ns, ns % 2) });
    }
    for i in 0..8 {
        items[3 + i] = Some(Item { file: 1 + i % 2, text: pod(i, i % 3, i % 3) });
    }
    write(&dir, &items);
    let mut source = DirSource::new(&dir);
    let mut node = NodeAgent::new(NodeOptions::default()).unwrap();
    let (mut incremental, mut full, mut broken_seen) = (0, 0, 0);
    for step in 0..300 {
        let slot = rng.below(18);
        let file = rng.below(3);
        items[slot] = match slot {
            0..=2 => Some(Item { file, text: namespace(slot, rng.below(3)) }),
            3..=10 if rng.below(4) == 0 => None,
            3..=10 => Some(Item { file, text: pod(slot - 3, rng.below(3), rng.below(3)) }),
            11..=14 if rng.below(3) == 0 => None,
            11..=14 => Some(Item { file, text: policy(slot - 11, rng.below(3), rng.below(3), rng.below(3)) }),
            17 if items[slot].is_some() => None,
            // The same pod as slot 3's, in any file: declared twice.
            17 => Some(Item { file, text: pod(0, rng.below(3), 0) }),
            _ if items[slot].is_some() => None,
            _ => Some(Item { file, text: replica(slot) }),
        };
        // One edit in six leaves its object unreadable.
        if slot < 15 && rng.below(6) == 0 {
            if let Some(item) = &mut items[slot] {
                item.text = broken(&item.text);
            }
        }
        write(&dir, &items);
        match source.poll().unwrap_or_else(|e| panic!("step {step}: {e}")) {
            Some(u @ Update::Objects { .. }) => {
                incremental += 1;
                node.update(u);
            }
            Some(u) => {
                full += 1;
                node.update(u);
            }
            None => continue,
        }
        let (expected, unreadable) = full_read(&dir);
        let got = node.cluster();
        let named: Vec<String> = source.unreadable().keys().map(|o| o.to_string()).collect();
        assert_eq!(named, unreadable, "step {step}: unreadable objects");
        broken_seen += unreadable.len();
        assert_eq!(got.endpoints, expected.endpoints, "step {step}: endpoints");
        assert_eq!(got.policies, expected.policies, "step {step}: policies");
        assert_eq!(got.namespaces, expected.namespaces, "step {step}: namespaces");
        assert_eq!(verdicts(node.engine()), verdicts(&Engine::from_cluster(&expected)), "step {step}: verdicts");
    }
    assert!(incremental > 100 && full > 10, "both paths ran: {incremental} incremental, {full} full");
    assert!(broken_seen > 50, "unreadable objects were tried: {broken_seen}");
    let _ = std::fs::remove_dir_all(&dir);
}
