//! The `kube` source against kube's real client and watcher, talking to a
//! scripted API server (tower-test): the initial lists, watch events,
//! bookmarks, a `410 Gone` that forces a re-list, deletions of objects
//! never seen, and an object the agent refuses. No API server can be
//! installed on these machines, so the JSON is what one sends.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use palisade_agent::kube_source::KubeSource;
use palisade_agent::node::{NodeAgent, NodeOptions};
use palisade_agent::source::{Source, Update};
use palisade_model::Cluster;
use serde_json::{json, Value};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Pods,
    Namespaces,
    Policies,
    Nodes,
}

fn route(path: &str) -> Kind {
    match path {
        "/api/v1/pods" => Kind::Pods,
        "/api/v1/namespaces" => Kind::Namespaces,
        "/apis/networking.k8s.io/v1/networkpolicies" => Kind::Policies,
        "/api/v1/nodes" => Kind::Nodes,
        other => panic!("the agent called {other}: only the standard list and watch calls are expected"),
    }
}

/// What the fake API server answers a list (`watch == false`) or a watch.
struct Reply {
    kind: Kind,
    watch: bool,
    body: String,
}

fn list(kind: Kind, list_kind: &str, rv: &str, items: Vec<Value>) -> Reply {
    let api_version = if kind == Kind::Policies { "networking.k8s.io/v1" } else { "v1" };
    let body =
        json!({"kind": list_kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv}, "items": items});
    Reply { kind, watch: false, body: body.to_string() }
}

fn events(kind: Kind, events: Vec<(&str, Value)>) -> Reply {
    let body = events.into_iter().map(|(t, o)| json!({"type": t, "object": o}).to_string() + "\n").collect();
    Reply { kind, watch: true, body }
}

type Pending = tower_test::mock::SendResponse<Response<Body>>;

/// Serves scripted replies in order per (kind, list|watch); a request with
/// nothing scripted yet waits (a watch with no news). Logs every request.
fn fake_api_server(
    runtime: &tokio::runtime::Runtime,
) -> (Client, mpsc::UnboundedSender<Reply>, Arc<Mutex<Vec<String>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    runtime.spawn(async move {
        let mut queued: HashMap<(Kind, bool), VecDeque<String>> = HashMap::new();
        let mut waiting: HashMap<(Kind, bool), VecDeque<Pending>> = HashMap::new();
        let respond = |send: Pending, body: String| {
            send.send_response(Response::builder().status(200).body(Body::from(body.into_bytes())).unwrap());
        };
        loop {
            tokio::select! {
                request = handle.next_request() => {
                    let Some((request, send)) = request else { break };
                    let uri = request.uri().clone();
                    seen.lock().unwrap().push(uri.to_string());
                    let key = (route(uri.path()), uri.query().unwrap_or("").contains("watch=true"));
                    match queued.get_mut(&key).and_then(VecDeque::pop_front) {
                        Some(body) => respond(send, body),
                        None => waiting.entry(key).or_default().push_back(send),
                    }
                }
                reply = rx.recv() => {
                    let Some(reply) = reply else { break };
                    let key = (reply.kind, reply.watch);
                    match waiting.get_mut(&key).and_then(VecDeque::pop_front) {
                        Some(send) => respond(send, reply.body),
                        None => queued.entry(key).or_default().push_back(reply.body),
                    }
                }
            }
        }
    });
    let _guard = runtime.enter();
    (Client::new(service, "default"), tx, log)
}

fn pod(name: &str, labels: Value, ip: &str, extra: Value) -> Value {
    let mut p = json!({
        "metadata": {"name": name, "namespace": "x", "labels": labels, "resourceVersion": "1", "uid": format!("uid-{name}")},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "name": "http"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    });
    if let (Some(p), Value::Object(extra)) = (p["metadata"].as_object_mut(), extra) {
        p.extend(extra);
    }
    p
}

fn with_kind(mut v: Value, kind: &str) -> Value {
    v["kind"] = json!(kind);
    v["apiVersion"] = json!(if kind == "NetworkPolicy" { "networking.k8s.io/v1" } else { "v1" });
    v
}

fn policy(name: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "x", "resourceVersion": "3"},
        "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]},
    })
}

/// Polls until the state the source's updates build on a node is one
/// `done` accepts (or 5 s pass).
fn wait_for(source: &mut KubeSource, node: &mut NodeAgent, what: &str, done: impl Fn(&Cluster) -> bool) -> Cluster {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = None;
    loop {
        match source.poll() {
            Ok(Some(update)) => node.update(update),
            Ok(None) => {}
            Err(e) => last = Some(e.to_string()),
        }
        if source.digest().is_some() && done(node.cluster()) {
            return node.cluster().clone();
        }
        assert!(Instant::now() < deadline, "{what}: not reached in 5 s; last: {last:?}; {:?}", pods_of(node.cluster()));
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn pods_of(c: &Cluster) -> Vec<String> {
    c.endpoints.iter().map(|e| e.key.to_string()).collect()
}

#[test]
fn replays_lists_watches_bookmarks_and_gone() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (client, api, log) = fake_api_server(&runtime);
    let mut source = KubeSource::start_on(client, runtime.handle());
    let mut node = NodeAgent::new(NodeOptions::default()).unwrap();

    // Pods are listed first: not a complete state yet.
    let owned = json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "a-7d9", "uid": "rs", "controller": true}]});
    let mut done = pod("done", json!({"app": "a"}), "10.1.0.9", json!({}));
    done["status"]["phase"] = json!("Succeeded");
    api.send(list(
        Kind::Pods,
        "PodList",
        "10",
        vec![
            pod("a", json!({"app": "a"}), "10.1.0.1", owned),
            pod("b", json!({"app": "b"}), "10.1.0.2", json!({})),
            done,
        ],
    ))
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(matches!(source.poll(), Ok(None)), "no state before every kind is listed");

    api.send(list(
        Kind::Namespaces,
        "NamespaceList",
        "10",
        vec![json!({"metadata": {"name": "x", "labels": {"team": "t"}}})],
    ))
    .unwrap();
    api.send(list(Kind::Policies, "NetworkPolicyList", "10", vec![policy("np")])).unwrap();
    api.send(list(
        Kind::Nodes,
        "NodeList",
        "10",
        vec![json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.1.0.0/24", "podCIDRs": ["10.1.0.0/24"]}})],
    ))
    .unwrap();
    let c = wait_for(&mut source, &mut node, "the initial lists", |c| c.endpoints.len() == 2);
    assert_eq!(pods_of(&c), ["x/a", "x/b"], "pods are themselves (not their ReplicaSet); a finished pod is gone");
    assert_eq!(c.policies.len(), 1);
    assert_eq!(c.namespaces["x"].labels.get("team").map(String::as_str), Some("t"));
    assert_eq!(c.nodes[0].pod_cidrs[0].to_string(), "10.1.0.0/24");
    assert!(matches!(source.poll(), Ok(None)), "nothing new, no new state");

    // Watch events: an add, a relabel, the deletion of a pod never seen, a bookmark.
    api.send(events(
        Kind::Pods,
        vec![
            ("ADDED", with_kind(pod("c", json!({"app": "c"}), "10.1.0.3", json!({})), "Pod")),
            ("MODIFIED", with_kind(pod("b", json!({"app": "b", "tier": "db"}), "10.1.0.2", json!({})), "Pod")),
            ("DELETED", with_kind(pod("ghost", json!({}), "10.1.0.99", json!({})), "Pod")),
            ("BOOKMARK", json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "15"}})),
        ],
    ))
    .unwrap();
    let c = wait_for(&mut source, &mut node, "the watch events", |c| c.endpoints.len() == 3);
    assert_eq!(pods_of(&c), ["x/a", "x/b", "x/c"]);
    let b = c.endpoints.iter().find(|e| e.key.name == "b").unwrap();
    assert_eq!(b.labels.get("tier").map(String::as_str), Some("db"), "the relabel is seen");

    // 410 Gone: the watcher lists again; b went away meanwhile.
    let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410});
    api.send(events(Kind::Pods, vec![("ERROR", gone)])).unwrap();
    api.send(list(
        Kind::Pods,
        "PodList",
        "20",
        vec![
            pod("a", json!({"app": "a"}), "10.1.0.1", json!({})),
            pod("c", json!({"app": "c"}), "10.1.0.3", json!({})),
        ],
    ))
    .unwrap();
    let c = wait_for(&mut source, &mut node, "the re-list after 410", |c| c.endpoints.len() == 2);
    assert_eq!(pods_of(&c), ["x/a", "x/c"], "what the re-list says, b included in its absence");
    let pod_lists =
        log.lock().unwrap().iter().filter(|u| u.starts_with("/api/v1/pods?") && !u.contains("watch=true")).count();
    assert_eq!(pod_lists, 2, "one list at start, one after 410: {:?}", log.lock().unwrap());

    // A policy deleted.
    api.send(events(Kind::Policies, vec![("DELETED", with_kind(policy("np"), "NetworkPolicy"))])).unwrap();
    let c = wait_for(&mut source, &mut node, "the policy deletion", |c| c.policies.is_empty());
    assert_eq!(c.endpoints.len(), 2);

    // An object the agent cannot read: named, and in force as a deny-all
    // policy of its namespace (it fails closed); the rest goes on.
    let mut bad = policy("bad");
    bad["spec"]["ingress"] = json!([{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]);
    api.send(events(Kind::Policies, vec![("ADDED", with_kind(bad, "NetworkPolicy"))])).unwrap();
    let c = wait_for(&mut source, &mut node, "the bad policy's stand-in", |c| c.policies.len() == 1);
    assert_eq!(c.policies[0], palisade_model::stand_in::deny_all("x", "bad"));
    let why: Vec<String> = source.unreadable().iter().map(|(o, why)| format!("{o}: {why}")).collect();
    assert!(why.len() == 1 && why[0].contains("kube:NetworkPolicy/x/bad") && why[0].contains("cidr"), "{why:?}");
    api.send(events(
        Kind::Pods,
        vec![("ADDED", with_kind(pod("d", json!({"app": "d"}), "10.1.0.4", json!({})), "Pod"))],
    ))
    .unwrap();
    wait_for(&mut source, &mut node, "a pod added after the bad policy", |c| c.endpoints.len() == 3);
    api.send(events(Kind::Policies, vec![("MODIFIED", with_kind(policy("bad"), "NetworkPolicy"))])).unwrap();
    let c = wait_for(&mut source, &mut node, "the policy fixed", |c| {
        c.policies.first().is_some_and(|p| p.ingress.as_ref().is_some_and(|i| !i.is_empty()))
    });
    assert!(source.unreadable().is_empty());
    assert_eq!(c.policies.len(), 1);

    for uri in log.lock().unwrap().iter() {
        assert!(!uri.contains("labelSelector") || uri.contains("watch"), "plain list/watch calls only: {uri}");
    }
}

/// One view of a cluster, whatever the source: the same objects listed by
/// the API server and written as files give the agent the same endpoints
/// (each pod itself, whatever owns it; finished pods left out), policies,
/// namespaces and nodes.
#[test]
fn the_kube_and_dir_sources_give_the_same_cluster_for_the_same_objects() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (client, api, _) = fake_api_server(&runtime);
    let mut source = KubeSource::start_on(client, runtime.handle());
    let mut node = NodeAgent::new(NodeOptions::default()).unwrap();
    let owner = |kind: &str, name: &str| json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "o", "controller": true}]});
    let mut host = pod("kube-apiserver-n1", json!({"component": "apiserver"}), "192.168.0.1", owner("Node", "n1"));
    host["spec"]["hostNetwork"] = json!(true);
    let mut done = pod("job-x", json!({"app": "a"}), "10.1.0.9", owner("Job", "job"));
    done["status"]["phase"] = json!("Failed");
    let pods = vec![
        pod("a-1", json!({"app": "a", "v": "1"}), "10.1.0.1", owner("ReplicaSet", "a-7d9")),
        pod("a-2", json!({"app": "a", "v": "2"}), "10.1.0.2", owner("ReplicaSet", "a-7d9")),
        pod("b", json!({"app": "b"}), "10.1.0.3", json!({})),
        host,
        done,
    ];
    let namespaces = vec![json!({"metadata": {"name": "x", "labels": {"team": "t"}}})];
    let nodes = vec![json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.1.0.0/24"}})];
    api.send(list(Kind::Pods, "PodList", "10", pods.clone())).unwrap();
    api.send(list(Kind::Namespaces, "NamespaceList", "10", namespaces.clone())).unwrap();
    api.send(list(Kind::Policies, "NetworkPolicyList", "10", vec![policy("np")])).unwrap();
    api.send(list(Kind::Nodes, "NodeList", "10", nodes.clone())).unwrap();
    let live = wait_for(&mut source, &mut node, "the initial lists", |c| c.endpoints.len() == 4);

    let dir = std::env::temp_dir().join(format!("palisade-same-view-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let objects: Vec<Value> = pods
        .into_iter()
        .map(|p| with_kind(p, "Pod"))
        .chain(namespaces.into_iter().map(|n| with_kind(n, "Namespace")))
        .chain(nodes.into_iter().map(|n| with_kind(n, "Node")))
        .chain([with_kind(policy("np"), "NetworkPolicy")])
        .collect();
    let text: String = objects.iter().map(|o| format!("---\n{o}\n")).collect();
    std::fs::write(dir.join("cluster.yaml"), text).unwrap();
    let files = match palisade_agent::source::DirSource::new(&dir).poll() {
        Ok(Some(Update::Full(c))) => c,
        other => panic!("the dir source's first read: {other:?}"),
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(pods_of(&live), ["x/a-1", "x/a-2", "x/b", "x/kube-apiserver-n1"]);
    assert_eq!(live.endpoints, files.endpoints);
    assert_eq!(live.policies, files.policies);
    assert_eq!(live.namespaces, files.namespaces);
    assert_eq!(live.nodes, files.nodes);
}

/// The node state itself (the kernel's table), not just the cluster: the
/// same objects through the API server and through files give a node's
/// agent byte-identical rules, and neither holds other nodes' pods as its
/// own. Each agent programs a network namespace of its own. Needs root.
#[test]
fn the_kube_and_dir_sources_give_the_same_node_state() {
    if !palisade_testkit::privileged("kube and dir sources: the same node state") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (client, api, _) = fake_api_server(&runtime);
    let mut kube = KubeSource::start_on(client, runtime.handle());
    let on = |node: &str, mut p: Value| {
        p["spec"]["nodeName"] = json!(node);
        p
    };
    let pods = vec![
        on("n1", pod("a", json!({"app": "a"}), "10.1.0.1", json!({}))),
        on("n1", pod("b", json!({"app": "b"}), "10.1.0.2", json!({}))),
        on("n2", pod("c", json!({"app": "a"}), "10.2.0.1", json!({}))),
        on("n2", pod("d", json!({"app": "b"}), "10.2.0.2", json!({}))),
    ];
    let namespaces = vec![json!({"metadata": {"name": "x", "labels": {"team": "t"}}})];
    let nodes = vec![
        json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.1.0.0/24"}}),
        json!({"metadata": {"name": "n2"}, "spec": {"podCIDR": "10.2.0.0/24"}}),
    ];
    api.send(list(Kind::Pods, "PodList", "10", pods.clone())).unwrap();
    api.send(list(Kind::Namespaces, "NamespaceList", "10", namespaces.clone())).unwrap();
    api.send(list(Kind::Policies, "NetworkPolicyList", "10", vec![policy("np")])).unwrap();
    api.send(list(Kind::Nodes, "NodeList", "10", nodes.clone())).unwrap();

    let dir = std::env::temp_dir().join(format!("palisade-same-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let objects: Vec<Value> = pods
        .into_iter()
        .map(|p| with_kind(p, "Pod"))
        .chain(namespaces.into_iter().map(|n| with_kind(n, "Namespace")))
        .chain(nodes.into_iter().map(|n| with_kind(n, "Node")))
        .chain([with_kind(policy("np"), "NetworkPolicy")])
        .collect();
    std::fs::write(dir.join("cluster.yaml"), objects.iter().map(|o| format!("---\n{o}\n")).collect::<String>())
        .unwrap();
    let mut files = palisade_agent::source::DirSource::new(&dir);

    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["netns", "delete", &self.0]).status();
        }
    }
    let mut tables = Vec::new();
    let mut locals = Vec::new();
    for (tag, source) in [("k", &mut kube as &mut dyn Source), ("d", &mut files as &mut dyn Source)] {
        let ns = Ns(format!("palisade-test-{}-same{tag}", std::process::id()));
        assert!(std::process::Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
        let options = NodeOptions { netns: Some(ns.0.clone()), node_name: Some("n1".into()), ..NodeOptions::default() };
        let mut node = NodeAgent::new(options).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while node.cluster().endpoints.len() < 4 {
            if let Ok(Some(update)) = source.poll() {
                node.update(update);
            }
            assert!(Instant::now() < deadline, "{tag}: the source did not give the cluster");
            std::thread::sleep(Duration::from_millis(5));
        }
        node.apply().unwrap();
        let listed = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.0, "nft", "list", "table", "inet", "palisade"])
            .output()
            .unwrap();
        tables.push(String::from_utf8(listed.stdout).unwrap());
        locals.push(node.local_pods().keys().map(|k| k.to_string()).collect::<Vec<_>>());
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(tables[0].contains("chain forward"), "{}", tables[0]);
    assert_eq!(tables[0], tables[1], "the kube source's table, then the dir source's");
    assert_eq!(locals[0], locals[1]);
    // Only n1's pods have per-pod state on n1: c and d (n2) are peers only.
    for other in ["10.2.0.1", "10.2.0.2"] {
        let lines: Vec<&str> = tables[1].lines().filter(|l| l.contains(other)).collect();
        assert!(lines.iter().all(|l| !l.contains("pal")), "n2's pod {other} has local state on n1: {lines:?}");
    }
}

/// A watch that fails in a quiet cluster (no event would ever follow) is
/// stale until the agent has listed again, and then current: the source
/// starts a new watcher, which lists.
#[test]
fn a_failed_watch_is_stale_until_listed_again() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (client, api, log) = fake_api_server(&runtime);
    let mut source = KubeSource::start_on(client, runtime.handle());
    let mut node = NodeAgent::new(NodeOptions::default()).unwrap();
    let namespaces = vec![json!({"metadata": {"name": "x", "labels": {"team": "t"}}})];
    api.send(list(Kind::Pods, "PodList", "10", vec![])).unwrap();
    api.send(list(Kind::Namespaces, "NamespaceList", "10", namespaces.clone())).unwrap();
    api.send(list(Kind::Policies, "NetworkPolicyList", "10", vec![])).unwrap();
    api.send(list(Kind::Nodes, "NodeList", "10", vec![])).unwrap();
    wait_for(&mut source, &mut node, "the initial lists", |c| c.namespaces.contains_key("x"));
    assert!(source.stale().is_none());

    let broken = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "internal error", "reason": "InternalError", "code": 500});
    api.send(events(Kind::Namespaces, vec![("ERROR", broken)])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let why = loop {
        if let Some((why, _)) = source.stale() {
            break why;
        }
        assert!(Instant::now() < deadline, "a failed watch was not reported stale");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(why.contains("Namespaces") && why.contains("internal error"), "{why}");
    // Nothing else happens in the cluster; the agent lists again by itself.
    std::thread::sleep(Duration::from_millis(300));
    assert!(source.stale().is_some(), "not current before the new list is answered");
    api.send(list(Kind::Namespaces, "NamespaceList", "11", namespaces)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while source.stale().is_some() {
        assert!(Instant::now() < deadline, "still stale after the new list");
        std::thread::sleep(Duration::from_millis(5));
    }
    let lists = log
        .lock()
        .unwrap()
        .iter()
        .filter(|u| u.starts_with("/api/v1/namespaces?") && !u.contains("watch=true"))
        .count();
    assert_eq!(lists, 2, "one list at start, one after the failure: {:?}", log.lock().unwrap());
}
