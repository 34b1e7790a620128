//! Pods are decided on their own labels: the replicas of a workload are one
//! endpoint only while they agree on everything policy sees.

use palisade_model::{parse_sources, Cluster, Source};
use serde_json::{json, Value};

fn pod(name: &str, owner: Option<(&str, &str)>, labels: Value, ip: &str) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "podIP": ip},
    });
    if let Some((kind, owner)) = owner {
        p["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": "u", "controller": true}]);
    }
    p
}

/// A policy whose pod selector reads `keys`: labels no policy reads split nothing.
fn reading(keys: &[&str]) -> Value {
    let expressions: Vec<Value> = keys.iter().map(|k| json!({"key": k, "operator": "Exists"})).collect();
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "reads", "namespace": "shop"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchExpressions": expressions}}]}]}})
}

fn cluster(items: Vec<Value>) -> (Cluster, Vec<String>) {
    let text = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    let m = parse_sources(&[Source { name: "dump.json".into(), text }]);
    let (c, problems, notices) = Cluster::from_manifests(m);
    assert!(problems.is_empty(), "{problems:?}");
    (c, notices.into_iter().map(|n| n.0).collect())
}

fn keys(c: &Cluster) -> Vec<String> {
    c.endpoints.iter().map(|e| e.key.to_string()).collect()
}

#[test]
fn replicas_that_agree_are_one_endpoint() {
    let labels = json!({"app": "web", "pod-template-hash": "7d9f8"});
    let (c, notices) = cluster(vec![
        pod("web-7d9f8-a", Some(("ReplicaSet", "web-7d9f8")), labels.clone(), "10.0.0.2"),
        pod("web-7d9f8-b", Some(("ReplicaSet", "web-7d9f8")), labels, "10.0.0.3"),
    ]);
    assert_eq!(keys(&c), ["shop/web[Deployment]"]);
    assert_eq!(c.endpoints[0].pods, ["web-7d9f8-a", "web-7d9f8-b"]);
    assert_eq!(c.endpoints[0].ips.len(), 2);
    assert!(notices.is_empty(), "{notices:?}");
}

/// Regression: the pods of one owner were merged and "the first seen"
/// labels used for all of them.
#[test]
fn replicas_that_differ_in_labels_are_told_apart_by_the_difference() {
    let (c, notices) = cluster(vec![
        reading(&["role"]),
        pod("db-0", Some(("StatefulSet", "db")), json!({"app": "db", "role": "primary"}), "10.0.0.2"),
        pod("db-1", Some(("StatefulSet", "db")), json!({"app": "db", "role": "replica"}), "10.0.0.3"),
        pod("db-2", Some(("StatefulSet", "db")), json!({"app": "db", "role": "replica"}), "10.0.0.4"),
        pod("db-3", Some(("StatefulSet", "db")), json!({"app": "db"}), "10.0.0.5"),
    ]);
    assert_eq!(
        keys(&c),
        ["shop/db[StatefulSet:!role]", "shop/db[StatefulSet:role=primary]", "shop/db[StatefulSet:role=replica]"]
    );
    let replica = &c.endpoints[2];
    assert_eq!(replica.pods, ["db-1", "db-2"]);
    assert_eq!(replica.labels.get("role").map(String::as_str), Some("replica"));
    assert_eq!(notices.len(), 1);
    assert!(
        notices[0].contains("shop/db[StatefulSet]") && notices[0].contains("shop/db[StatefulSet:role=primary]"),
        "{notices:?}"
    );
    // A label no policy reads splits nothing: the pods share the labels they agree on.
    let (c, notices) = cluster(vec![
        reading(&["app"]),
        pod("db-0", Some(("StatefulSet", "db")), json!({"app": "db", "debug": "1"}), "10.0.0.2"),
        pod("db-1", Some(("StatefulSet", "db")), json!({"app": "db"}), "10.0.0.3"),
    ]);
    assert_eq!(keys(&c), ["shop/db[StatefulSet]"]);
    assert_eq!(c.endpoints[0].labels.len(), 1);
    assert!(notices.is_empty(), "{notices:?}");
}

#[test]
fn replicas_that_differ_in_named_ports_or_host_network_are_told_apart() {
    let with_port = |name: &str, port: u16| {
        let mut p = pod(name, Some(("DaemonSet", "agent")), json!({"app": "agent"}), "10.0.0.9");
        p["spec"]["containers"][0]["ports"] = json!([{"name": "metrics", "containerPort": port}]);
        p
    };
    let (c, _) = cluster(vec![with_port("agent-a", 9100), with_port("agent-b", 9200)]);
    assert_eq!(
        keys(&c),
        ["shop/agent[DaemonSet:port:metrics=9100/TCP]", "shop/agent[DaemonSet:port:metrics=9200/TCP]"]
    );
    // hostNetwork pods have their node's address: one endpoint per node.
    let host = |name: &str, node: &str| {
        let mut p = pod(name, Some(("DaemonSet", "proxy")), json!({"app": "proxy"}), "192.168.0.1");
        p["spec"]["hostNetwork"] = json!(true);
        p["spec"]["nodeName"] = json!(node);
        p
    };
    let (c, _) = cluster(vec![host("proxy-a", "n1"), host("proxy-b", "n2")]);
    assert_eq!(keys(&c), ["shop/proxy[DaemonSet:pod:node=n1]", "shop/proxy[DaemonSet:pod:node=n2]"]);
    assert_eq!(c.endpoints[1].node.as_deref(), Some("n2"));
    // A pod on a node where a hostNetwork pod runs is node-local to it: its
    // replicas on other nodes are not, so the node tells them apart.
    let on = |name: &str, node: &str| {
        let mut p = pod(name, Some(("ReplicaSet", "web-1")), json!({"app": "web"}), "10.0.0.5");
        p["spec"]["nodeName"] = json!(node);
        p
    };
    let (c, _) = cluster(vec![host("proxy-a", "n1"), on("web-a", "n1"), on("web-b", "n2"), on("web-c", "n2")]);
    let names = keys(&c);
    assert!(names.contains(&"shop/web-1[ReplicaSet:pod:node=n1]".to_string()), "{names:?}");
    assert!(names.contains(&"shop/web-1[ReplicaSet:!pod:node]".to_string()), "{names:?}");
    // A label spelled like an attribute cannot collide with one.
    let mut lookalike =
        pod("ds-1", Some(("DaemonSet", "ds")), json!({"hostNetwork": "true", "node": "n1"}), "10.0.0.6");
    lookalike["spec"]["nodeName"] = json!("n1");
    let mut real = pod("ds-2", Some(("DaemonSet", "ds")), json!({}), "192.168.0.1");
    real["spec"]["hostNetwork"] = json!(true);
    real["spec"]["nodeName"] = json!("n1");
    let (c, _) = cluster(vec![reading(&["hostNetwork", "node"]), lookalike, real]);
    let names = keys(&c);
    assert_eq!(names.len(), 2, "{names:?}");
    assert_ne!(names[0], names[1]);
}

/// Replicas on both sides of a policy's ipBlock are told apart: policy
/// sees their addresses as surely as their labels.
#[test]
fn replicas_across_an_ip_block_are_told_apart() {
    let block = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "t", "namespace": "shop"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.1.0.0/16"}}]}]}});
    let (c, _) = cluster(vec![
        block,
        pod("w-a", Some(("ReplicaSet", "w-1")), json!({"app": "w"}), "10.1.0.5"),
        pod("w-b", Some(("ReplicaSet", "w-1")), json!({"app": "w"}), "10.2.0.5"),
        pod("w-c", Some(("ReplicaSet", "w-1")), json!({"app": "w"}), "10.2.0.6"),
    ]);
    assert_eq!(keys(&c), ["shop/w-1[ReplicaSet:!ip:10.1.0.0/16]", "shop/w-1[ReplicaSet:ip:10.1.0.0/16=in]"]);
}

#[test]
fn static_pods_are_individual_pods() {
    let (c, _) = cluster(vec![
        pod("kube-apiserver-n1", Some(("Node", "n1")), json!({"component": "kube-apiserver"}), "192.168.0.1"),
        pod("kube-apiserver-n2", Some(("Node", "n2")), json!({"component": "kube-apiserver"}), "192.168.0.2"),
    ]);
    assert_eq!(keys(&c), ["shop/kube-apiserver-n1", "shop/kube-apiserver-n2"]);
}

/// A dump with a Deployment, its ReplicaSets and its pods: the pods are
/// what runs; the templates only repeat them (without the hash label) or
/// predate them (an old ReplicaSet).
#[test]
fn pods_supersede_their_workloads_templates() {
    let template =
        |labels: Value| json!({"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template(json!({"app": "web"}))}});
    let rs = |hash: &str| {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": format!("web-{hash}"), "namespace": "shop", "labels": {"pod-template-hash": hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u", "controller": true}]},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template(json!({"app": "web", "pod-template-hash": hash}))}})
    };
    let running = pod(
        "web-new-a",
        Some(("ReplicaSet", "web-new")),
        json!({"app": "web", "pod-template-hash": "new"}),
        "10.0.0.2",
    );
    let (c, notices) = cluster(vec![deployment.clone(), rs("old"), rs("new"), running]);
    assert_eq!(keys(&c), ["shop/web[Deployment]"]);
    assert_eq!(c.endpoints[0].pods, ["web-new-a"]);
    assert!(notices.is_empty(), "{notices:?}");
    // Without pods, the Deployment's own template stands for them.
    let (c, _) = cluster(vec![deployment, rs("old")]);
    assert_eq!(keys(&c), ["shop/web[Deployment]"]);
    assert_eq!(c.endpoints[0].labels.get("pod-template-hash"), None);
}

#[test]
fn finished_pods_are_left_out() {
    let mut done = pod("migrate-x", Some(("Job", "migrate")), json!({"app": "migrate"}), "10.0.0.7");
    done["status"]["phase"] = json!("Succeeded");
    let mut failed = pod("oneoff", None, json!({}), "10.0.0.8");
    failed["status"]["phase"] = json!("Failed");
    let running = pod("api", None, json!({"app": "api"}), "10.0.0.9");
    let text = json!({"apiVersion": "v1", "kind": "List", "items": [done, failed, running]}).to_string();
    let m = parse_sources(&[Source { name: "dump.json".into(), text }]);
    assert_eq!(m.finished_pods, 2);
    let (c, _, _) = Cluster::from_manifests(m);
    assert_eq!(keys(&c), ["shop/api"]);
}

#[test]
fn a_nodes_view_has_every_pod_as_itself() {
    let labels = json!({"app": "web"});
    let text = json!({"apiVersion": "v1", "kind": "List", "items": [
        pod("web-a", Some(("ReplicaSet", "web-1")), labels.clone(), "10.0.0.2"),
        pod("web-b", Some(("ReplicaSet", "web-1")), labels, "10.0.0.3"),
    ]})
    .to_string();
    let m = parse_sources(&[Source { name: "dump.json".into(), text }]).per_pod();
    let (c, _, _) = Cluster::from_manifests(m);
    assert_eq!(keys(&c), ["shop/web-a", "shop/web-b"]);
}

/// The analyzer groups replicas, a node sees pods: the same pods, each
/// with the same labels, addresses and ports, either way.
#[test]
fn grouped_and_per_pod_views_hold_the_same_pods() {
    let mut host = pod("proxy-a", Some(("DaemonSet", "proxy")), json!({"app": "proxy"}), "192.168.0.1");
    host["spec"]["hostNetwork"] = json!(true);
    let mut done = pod("job-x", Some(("Job", "job")), json!({"app": "job"}), "10.0.0.9");
    done["status"]["phase"] = json!("Succeeded");
    let items = vec![
        reading(&["v"]),
        pod(
            "web-1",
            Some(("ReplicaSet", "web-7d")),
            json!({"app": "web", "pod-template-hash": "7d", "v": "1"}),
            "10.0.0.2",
        ),
        pod(
            "web-2",
            Some(("ReplicaSet", "web-7d")),
            json!({"app": "web", "pod-template-hash": "7d", "v": "2"}),
            "10.0.0.3",
        ),
        pod(
            "web-3",
            Some(("ReplicaSet", "web-7d")),
            json!({"app": "web", "pod-template-hash": "7d", "v": "2"}),
            "10.0.0.4",
        ),
        pod("etcd-n1", Some(("Node", "n1")), json!({"component": "etcd"}), "192.168.0.1"),
        pod("lone", None, json!({}), "10.0.0.5"),
        host,
        done,
    ];
    let text = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    let read = || parse_sources(&[Source { name: "dump.json".into(), text: text.clone() }]);
    let (grouped, _, _) = Cluster::from_manifests(read());
    let (per_pod, _, _) = Cluster::from_manifests(read().per_pod());
    type View = Vec<(String, Vec<(String, String)>, bool, Option<String>)>;
    let view = |c: &Cluster| -> View {
        let mut v: View = Vec::new();
        for e in &c.endpoints {
            for p in &e.pods {
                let labels = e.labels.clone().into_iter().collect();
                v.push((format!("{}/{p}", e.key.namespace), labels, e.host_network, e.node.clone()));
            }
        }
        v.sort();
        v
    };
    assert_eq!(view(&grouped), view(&per_pod));
    assert_eq!(per_pod.endpoints.len(), 6, "every running pod, itself");
    let addresses = |c: &Cluster| {
        let mut a: Vec<_> = c.endpoints.iter().flat_map(|e| e.ips.clone()).collect();
        a.sort();
        a
    };
    assert_eq!(addresses(&grouped), addresses(&per_pod));
}
