//! The incremental compiler against the full one (the oracle): after every
//! random sequence of endpoint, policy and namespace changes, the state it
//! keeps equals `compile_node` from scratch, and its patches, replayed on a
//! strict model of the kernel's table, produce exactly that state.

use std::collections::BTreeSet;

use palisade_dataplane::nft::{Op, Transaction};
use palisade_dataplane::{compile_node, DenyAction, NodeCompiler, Options, Ruleset};
use palisade_engine::{Changes, EndpointId, Engine};
use palisade_model::{Endpoint, EndpointKey, Labels, Namespace, NetworkPolicy};
use palisade_testkit::arb;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Change {
    UpsertEndpoint(Endpoint),
    RemoveEndpoint(usize),
    UpsertPolicy(NetworkPolicy),
    RemovePolicy(usize),
    RelabelNamespace(usize, Labels),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (0..8usize).prop_flat_map(arb::endpoint).prop_map(Change::UpsertEndpoint),
        1 => (0..8usize).prop_map(Change::RemoveEndpoint),
        3 => (0..6usize).prop_flat_map(arb::policy).prop_map(Change::UpsertPolicy),
        1 => (0..6usize).prop_map(Change::RemovePolicy),
        1 => (0..3usize, arb::labels()).prop_map(|(n, l)| Change::RelabelNamespace(n, l)),
    ]
}

fn apply_change(engine: &mut Engine, change: &Change) {
    match change {
        Change::UpsertEndpoint(e) => {
            // Pod IPs are unique in a cluster (a kernel map holds one
            // chain per address): drop the ones another pod has.
            let mut e = e.clone();
            e.ips.retain(|ip| !engine.endpoints().any(|(_, f)| f.key.name != e.key.name && f.ips.contains(ip)));
            // The same name in another namespace is another pod: keep one.
            let same_name: Vec<EndpointKey> =
                engine.endpoints().filter(|(_, f)| f.key.name == e.key.name).map(|(_, f)| f.key.clone()).collect();
            for key in same_name.iter().filter(|k| **k != e.key) {
                engine.remove_endpoint(key);
            }
            engine.upsert_endpoint(e);
        }
        Change::RemoveEndpoint(i) => {
            let key = engine.endpoints().map(|(_, e)| e.key.clone()).find(|k| k.name == format!("e{i}"));
            if let Some(key) = key {
                engine.remove_endpoint(&key);
            }
        }
        Change::UpsertPolicy(p) => {
            let same: Vec<(String, String)> = engine
                .policies()
                .filter(|(_, q)| q.name == p.name && q.namespace != p.namespace)
                .map(|(_, q)| (q.namespace.clone(), q.name.clone()))
                .collect();
            for (ns, name) in same {
                engine.remove_policy(&ns, &name);
            }
            engine.upsert_policy(p.clone());
        }
        Change::RemovePolicy(i) => {
            let found = engine.policies().find(|(_, q)| q.name == format!("p{i}")).map(|(_, q)| q.namespace.clone());
            if let Some(ns) = found {
                engine.remove_policy(&ns, &format!("p{i}"));
            }
        }
        Change::RelabelNamespace(n, labels) => {
            let name = arb::NAMESPACES[*n].to_string();
            let mut labels = labels.clone();
            labels.insert(palisade_model::NAMESPACE_NAME_LABEL.into(), name.clone());
            engine.upsert_namespace(&Namespace { name, labels });
        }
    }
}

/// Endpoints on `node-0` are local; their veth is named after the pod.
fn pod_iface(engine: &Engine) -> impl Fn(EndpointId) -> Option<String> + '_ {
    |id| {
        let ep = engine.endpoint(id);
        (ep.node.as_deref() == Some("node-0")).then(|| format!("v{}", ep.key.name))
    }
}

/// A strict model of our table in the kernel: every operation must be one
/// the kernel accepts (no deleting what is missing or still referenced, no
/// adding a key twice, nothing used before it exists).
fn replay(kernel: &mut Ruleset, tx: &Transaction) -> Result<(), String> {
    let referenced = |k: &Ruleset, set: &str| {
        k.chains.values().flat_map(|(_, rules)| rules).any(|r| r.exprs.iter().any(|e| e.contains(&format!("@{set}"))))
    };
    let jumped_to = |k: &Ruleset, chain: &str| {
        k.sets.values().flat_map(|(_, els)| els).any(|e| e.ends_with(&format!(": jump {chain}")))
    };
    let key = |e: &str| e.split(" : ").next().unwrap_or(e).to_string();
    for op in &tx.ops {
        match op {
            Op::AddTable => {}
            Op::DeleteTable => *kernel = Ruleset::default(),
            Op::AddChain(def) => {
                if kernel.chains.insert(def.name.clone(), (def.clone(), vec![])).is_some() {
                    return Err(format!("chain {} added twice", def.name));
                }
            }
            Op::FlushChain(name) => kernel.chains.get_mut(name).ok_or(format!("flush missing chain {name}"))?.1.clear(),
            Op::DeleteChain(name) => {
                let (_, rules) = kernel.chains.get(name).ok_or(format!("delete missing chain {name}"))?;
                if !rules.is_empty() || jumped_to(kernel, name) {
                    return Err(format!("chain {name} deleted while in use"));
                }
                kernel.chains.remove(name);
            }
            Op::AddSet(def) => {
                if kernel.sets.insert(def.name.clone(), (def.clone(), BTreeSet::new())).is_some() {
                    return Err(format!("set {} added twice", def.name));
                }
            }
            Op::FlushSet(name) => kernel.sets.get_mut(name).ok_or(format!("flush missing set {name}"))?.1.clear(),
            Op::DeleteSet(name) => {
                if referenced(kernel, name) {
                    return Err(format!("set {name} deleted while a rule names it"));
                }
                kernel.sets.remove(name).ok_or(format!("delete missing set {name}"))?;
            }
            Op::AddElements { set, elements } => {
                let (_, els) = kernel.sets.get(set).ok_or(format!("elements into missing set {set}"))?;
                for e in elements {
                    if els.iter().any(|x| key(x) == key(e)) {
                        return Err(format!("element {e} added twice to {set}"));
                    }
                    if let Some(chain) = e.split(": jump ").nth(1) {
                        if !kernel.chains.contains_key(chain) {
                            return Err(format!("{set} jumps to missing chain {chain}"));
                        }
                    }
                }
                kernel.sets.get_mut(set).unwrap().1.extend(elements.iter().cloned());
            }
            Op::DeleteElements { set, elements } => {
                let (_, els) = kernel.sets.get_mut(set).ok_or(format!("delete elements of missing set {set}"))?;
                for e in elements {
                    if !els.remove(e) {
                        return Err(format!("delete missing element {e} of {set}"));
                    }
                }
            }
            Op::AddRule { chain, rule } => {
                for expr in &rule.exprs {
                    for word in expr.split_whitespace().filter_map(|w| w.strip_prefix('@')) {
                        if !kernel.sets.contains_key(word) {
                            return Err(format!("rule in {chain} names missing set {word}"));
                        }
                    }
                }
                kernel.chains.get_mut(chain).ok_or(format!("rule into missing chain {chain}"))?.1.push(rule.clone());
            }
        }
    }
    Ok(())
}

fn first_difference(a: &Ruleset, b: &Ruleset) -> String {
    let names: BTreeSet<&String> = a.sets.keys().chain(b.sets.keys()).collect();
    for n in names {
        if a.sets.get(n) != b.sets.get(n) {
            return format!("set {n}: {:?} vs {:?}", a.sets.get(n).map(|s| &s.1), b.sets.get(n).map(|s| &s.1));
        }
    }
    let chains: BTreeSet<&String> = a.chains.keys().chain(b.chains.keys()).collect();
    for n in chains {
        if a.chains.get(n) != b.chains.get(n) {
            return format!("chain {n}: {:?} vs {:?}", a.chains.get(n), b.chains.get(n));
        }
    }
    "no difference".into()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn incremental_patches_equal_full_compiles(
        start in arb::cluster(),
        steps in prop::collection::vec((change(), prop::bool::weighted(0.7)), 1..16),
        reject in any::<bool>(),
    ) {
        let opts = Options::new(if reject { DenyAction::Reject } else { DenyAction::Drop });
        let mut start = start;
        let mut seen = BTreeSet::new();
        for e in &mut start.endpoints {
            e.ips.retain(|ip| seen.insert(*ip));
        }
        let mut engine = Engine::from_cluster(&start);
        let mut compiler = NodeCompiler::new(opts.clone());
        let mut kernel = Ruleset::default();
        let first = compiler.update(&engine, &Changes::default(), &pod_iface(&engine));
        prop_assert_eq!(first.full, Some("first update"));
        replay(&mut kernel, &first.transaction).map_err(TestCaseError::fail)?;
        let mut pending = Changes::default();
        for (change, apply_now) in &steps {
            apply_change(&mut engine, change);
            pending.merge(engine.compile());
            if !apply_now {
                continue; // several compiles reach the dataplane at once
            }
            let update = compiler.update(&engine, &std::mem::take(&mut pending), &pod_iface(&engine));
            prop_assert_eq!(update.full, None, "after {:?}", change);
            let oracle = compile_node(&engine, pod_iface(&engine), &opts);
            prop_assert!(compiler.ruleset() == &oracle, "after {change:?}: {}", first_difference(compiler.ruleset(), &oracle));
            replay(&mut kernel, &update.transaction).map_err(|e| TestCaseError::fail(format!("after {change:?}: {e}\n{}", update.transaction.render())))?;
            prop_assert!(kernel == oracle, "kernel after {change:?}: {}", first_difference(&kernel, &oracle));
        }
    }
}

/// A pod of a new ReplicaSet has new labels but the same policies: it
/// shares the existing chains, so its patch is element-only (netlink).
#[test]
fn a_new_identity_with_known_policies_needs_no_new_chain() {
    let yaml = |rev: &str| {
        format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: web-1, namespace: shop, labels: {{app: web, pod-template-hash: '{rev}'}}}}
spec: {{nodeName: node-0, containers: [{{name: c, image: i}}]}}
status: {{podIP: 10.0.0.5}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress: [{{from: [{{podSelector: {{}}}}], ports: [{{port: 80}}]}}]
"
        )
    };
    let cluster = |rev: &str| {
        let sources = [palisade_model::Source { name: "t.yaml".into(), text: yaml(rev) }];
        let (c, problems, _) = palisade_model::Cluster::from_manifests(palisade_model::parse_sources(&sources));
        assert!(problems.is_empty(), "{problems:?}");
        c
    };
    let mut engine = Engine::from_cluster(&cluster("a1"));
    let mut compiler = NodeCompiler::new(Options::default());
    compiler.resync(&engine, &pod_iface(&engine));
    let chains: Vec<String> = compiler.ruleset().chains.keys().cloned().collect();
    let dispatch = &compiler.ruleset().sets["ingress_v4"].1;
    assert!(dispatch.iter().any(|e| e.starts_with("10.0.0.5 : jump ingress_shop_web_")), "{dispatch:?}");
    let changes = engine.sync_cluster(&cluster("b2"));
    assert!(!changes.endpoints_changed.is_empty() && !changes.identities_recompiled.is_empty());
    let update = compiler.update(&engine, &changes, &pod_iface(&engine));
    assert_eq!(update.full, None);
    // Same chains, same address, same selector memberships: nothing to do.
    assert!(update.transaction.ops.is_empty(), "expected no change:\n{}", update.transaction.render());
    assert!(update.netlink.is_some());
    assert_eq!(compiler.ruleset().chains.keys().cloned().collect::<Vec<_>>(), chains);
    assert_eq!(compiler.ruleset(), &compile_node(&engine, pod_iface(&engine), &Options::default()));
}
