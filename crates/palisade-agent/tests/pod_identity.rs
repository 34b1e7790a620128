//! Pods are told apart by UID: a pod created again under the same name
//! (StatefulSets do this) is not confirmed with its predecessor's policy
//! while the old object lingers. And a DEL for a pod the node does not
//! hold says so. No kernel is touched (the plugin attached the checks).

use palisade_agent::node::{LocalPod, NodeAgent, NodeError, NodeOptions};
use palisade_agent::source::Update;
use palisade_model::{parse_sources, Cluster, EndpointKey, Source};

fn cluster(uid: &str) -> Cluster {
    let text = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: db-0, namespace: x, uid: {uid}}}\nspec: {{containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: 10.9.0.5}}\n");
    let (c, problems, _) = Cluster::from_manifests(parse_sources(&[Source { name: "p.yaml".into(), text }]).per_pod());
    assert!(problems.is_empty(), "{problems:?}");
    c
}

fn link() -> LocalPod {
    LocalPod { host_if: "palnotthere0".into(), ips: vec!["10.9.0.5".parse().unwrap()] }
}

#[test]
fn a_pod_created_again_under_its_name_is_another_pod() {
    let mut node = NodeAgent::new(NodeOptions::default()).unwrap();
    node.update(Update::Full(cluster("uid-old")));
    let key = EndpointKey::pod("x", "db-0");
    let err = node.pod_added(key.clone(), Some("uid-new"), link(), true).unwrap_err();
    assert!(matches!(&err, NodeError::OtherPod(o) if o.have == "uid-old" && o.want == "uid-new"), "{err}");
    assert!(node.local_pods().is_empty(), "nothing is kept of a refused ADD");
    // The API server's newer object arrives: the same ADD is confirmed.
    node.update(Update::Full(cluster("uid-new")));
    node.pod_added(key.clone(), Some("uid-new"), link(), true).unwrap();
    assert!(node.local_pods().contains_key(&key));
    // A runtime that passes no UID is matched by name, as before.
    node.pod_added(key.clone(), None, link(), true).unwrap();

    // DEL: the pod's veth first, then again (runtimes DEL twice).
    assert_eq!(node.pod_deleted("palnotthere0").unwrap(), vec![key]);
    assert_eq!(node.pod_deleted("palnotthere0").unwrap(), Vec::<EndpointKey>::new(), "a second DEL holds nothing");
}
