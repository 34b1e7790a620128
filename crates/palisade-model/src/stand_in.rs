//! What stands in for an object that cannot be read, so that one bad
//! object affects only what it could have affected, and there fails
//! closed (the node agent's rule; the analysis tools refuse bad input).
//!
//! - A NetworkPolicy isolates every pod its namespace could select, both
//!   ways: a deny-all policy of the same name takes its place. The other
//!   policies still add what they allow (policies only add), so nothing is
//!   allowed that any reading of the bad policy would not allow.
//! - A Namespace: its labels are unknown, so its pods are isolated the same
//!   way (a deny-all policy under a name no manifest can use) and it keeps
//!   only the label the API server gives every namespace.
//! - A Pod, Node or Service is left out, as if not yet created: a pod that
//!   is not there is no policy's peer, and on its own node its veth matches
//!   no pod and drops everything; its CNI ADD is refused.

use std::collections::{BTreeMap, HashMap};

use crate::labels::LabelSelector;
use crate::load::{Located, Location, Object, ObjectRef, Problem};
use crate::objects::Namespace;
use crate::policy::NetworkPolicy;

/// The name of the policy that isolates a namespace whose object cannot be
/// read. A `:` is in no valid object name, so it cannot collide.
pub const UNREADABLE_NAMESPACE_POLICY: &str = "palisade:unreadable-namespace";

/// A policy that selects every pod of `namespace` and allows nothing.
pub fn deny_all(namespace: &str, name: &str) -> NetworkPolicy {
    NetworkPolicy {
        namespace: namespace.to_string(),
        name: name.to_string(),
        pod_selector: LabelSelector::default(),
        ingress: Some(Vec::new()),
        egress: Some(Vec::new()),
    }
}

/// The objects that take the place of `bad`, each with its reference (the
/// first, if any, has `bad`'s own reference).
pub fn stand_ins(bad: &ObjectRef) -> Vec<Located> {
    let location = Location { file: format!("(in place of the unreadable {bad})"), document: 0, item: None };
    let located = |object_ref: ObjectRef, object: Object| Located { location: location.clone(), object_ref, object };
    match (bad.kind.as_str(), &bad.namespace) {
        ("NetworkPolicy", Some(ns)) => vec![located(bad.clone(), Object::NetworkPolicy(deny_all(ns, &bad.name)))],
        ("Namespace", _) if !bad.name.is_empty() => {
            let policy = ObjectRef {
                kind: "NetworkPolicy".into(),
                namespace: Some(bad.name.clone()),
                name: UNREADABLE_NAMESPACE_POLICY.into(),
            };
            vec![
                located(bad.clone(), Object::Namespace(Namespace::implied(&bad.name))),
                located(policy, Object::NetworkPolicy(deny_all(&bad.name, UNREADABLE_NAMESPACE_POLICY))),
            ]
        }
        _ => Vec::new(),
    }
}

/// Objects and their problems, sorted into what can be used.
#[derive(Debug, Default)]
pub struct FailClosed {
    /// The readable objects, and stand-ins for the unreadable ones.
    pub objects: Vec<Located>,
    /// Every object that cannot be read, with why.
    pub unreadable: BTreeMap<ObjectRef, String>,
    /// Problems that name no object (a file that is not YAML): the caller
    /// knows what the file held before.
    pub unnamed: Vec<Problem>,
}

/// Sorts `objects` and `problems` as the node agent uses them: an object
/// with a problem, or declared twice, is unreadable and replaced by its
/// stand-ins; the rest is used as it is.
pub fn fail_closed(objects: Vec<Located>, problems: Vec<Problem>) -> FailClosed {
    let mut unreadable: BTreeMap<ObjectRef, String> = BTreeMap::new();
    let mut unnamed = Vec::new();
    for p in problems {
        match &p {
            Problem::Invalid { object, .. } => note(&mut unreadable, object.clone(), p.to_string()),
            _ => unnamed.push(p),
        }
    }
    let mut first: HashMap<ObjectRef, Location> = HashMap::new();
    for l in &objects {
        if let Some(at) = first.get(&l.object_ref) {
            note(&mut unreadable, l.object_ref.clone(), format!("{}: declared twice: at {at}", l.location));
        } else {
            first.insert(l.object_ref.clone(), l.location.clone());
        }
    }
    let mut out: Vec<Located> = objects.into_iter().filter(|l| !unreadable.contains_key(&l.object_ref)).collect();
    out.extend(unreadable.keys().flat_map(stand_ins));
    FailClosed { objects: out, unreadable, unnamed }
}

fn note(unreadable: &mut BTreeMap<ObjectRef, String>, object: ObjectRef, why: String) {
    let entry = unreadable.entry(object).or_default();
    if !entry.is_empty() {
        entry.push('\n');
    }
    entry.push_str(&why);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_sources, Cluster, Source};

    fn read(text: &str) -> FailClosed {
        let m = parse_sources(&[Source { name: "m.yaml".into(), text: text.into() }]).per_pod();
        fail_closed(m.objects, m.problems)
    }

    #[test]
    fn a_bad_policy_isolates_its_namespace_and_nothing_else() {
        let fc = read(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec: {podSelector: {matchLabels: {x: '!'}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: q, namespace: b}\nspec: {containers: [{name: c, image: i}]}\n",
        );
        let (cluster, problems, _) = Cluster::assemble(fc.objects);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(fc.unreadable.keys().map(|r| r.to_string()).collect::<Vec<_>>(), ["NetworkPolicy a/p"]);
        assert!(fc.unreadable.values().next().unwrap().contains("m.yaml"), "{:?}", fc.unreadable);
        assert_eq!(cluster.policies, vec![deny_all("a", "p")]);
        assert_eq!(cluster.endpoints.len(), 1, "the pod of b is used");
    }

    #[test]
    fn a_bad_namespace_keeps_only_its_name_label_and_is_isolated() {
        let fc = read("apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {'bad key!': x}}\n");
        let (cluster, _, _) = Cluster::assemble(fc.objects);
        assert_eq!(cluster.namespaces["a"], Namespace::implied("a"));
        assert_eq!(cluster.policies, vec![deny_all("a", UNREADABLE_NAMESPACE_POLICY)]);
    }

    #[test]
    fn a_bad_pod_and_a_twice_declared_pod_are_left_out() {
        let pod =
            "apiVersion: v1\nkind: Pod\nmetadata: {name: q, namespace: b}\nspec: {containers: [{name: c, image: i}]}\n";
        let fc = read(&format!(
            "{pod}---\n{pod}---\n{}",
            pod.replace("name: q", "name: r").replace("containers: [{name: c, image: i}]", "containers: 7")
        ));
        let (cluster, _, _) = Cluster::assemble(fc.objects);
        assert!(cluster.endpoints.is_empty(), "{:?}", cluster.endpoints);
        let reasons: Vec<String> = fc.unreadable.iter().map(|(r, why)| format!("{r}: {why}")).collect();
        assert!(reasons[0].starts_with("Pod b/q") && reasons[0].contains("declared twice"), "{reasons:?}");
        assert_eq!(fc.unreadable.len(), 2, "{reasons:?}");
    }

    #[test]
    fn a_file_that_is_not_yaml_names_no_object() {
        let fc = read("kind: [\n");
        assert!(fc.unreadable.is_empty() && fc.objects.is_empty());
        assert_eq!(fc.unnamed.len(), 1);
    }
}
