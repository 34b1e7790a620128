//! `analyze --cluster`: the same analysis from a live API server as from
//! manifests. The API server is a small fake on loopback answering the
//! list calls with the JSON a real one sends (no API server can be
//! installed on these machines); the client is kube's, configured by a
//! kubeconfig as a user's would be.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;

use serde_json::{json, Value};

fn objects() -> Vec<(&'static str, &'static str, Value)> {
    let pod = |name: &str, app: &str, ip: &str, owner: Option<&str>| {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": app, "pod-template-hash": "7d9f8"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 8080, "name": "http"}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        });
        if let Some(o) = owner {
            p["metadata"]["ownerReferences"] =
                json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": o, "uid": "u", "controller": true}]);
        }
        p
    };
    let mut finished = pod("migrate-x1", "migrate", "10.0.0.9", None);
    finished["status"]["phase"] = json!("Succeeded");
    vec![
        ("/api/v1/namespaces", "Namespace", json!({"metadata": {"name": "shop", "labels": {"team": "shop"}}})),
        ("/api/v1/nodes", "Node", json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.0.0.0/24"}})),
        (
            "/apis/networking.k8s.io/v1/networkpolicies",
            "NetworkPolicy",
            json!({"metadata": {"name": "api", "namespace": "shop"}, "spec": {
                "podSelector": {"matchLabels": {"app": "api"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "http"}]}]}}),
        ),
        ("/api/v1/pods", "Pod", pod("web-7d9f8-abcde", "web", "10.0.0.2", Some("web-7d9f8"))),
        ("/api/v1/pods", "Pod", pod("web-7d9f8-fghij", "web", "10.0.0.3", Some("web-7d9f8"))),
        ("/api/v1/pods", "Pod", pod("api-1", "api", "10.0.0.4", None)),
        ("/api/v1/pods", "Pod", finished),
    ]
}

/// Answers GET list calls (keep-alive) until the test process ends.
fn fake_api_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut request = String::new();
                    if reader.read_line(&mut request).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 2 {
                        line.clear();
                    }
                    let path = request.split_whitespace().nth(1).unwrap_or("/").split('?').next().unwrap().to_string();
                    let items: Vec<Value> =
                        objects().into_iter().filter(|(p, ..)| *p == path).map(|(.., o)| o).collect();
                    let (status, body) = match objects().iter().find(|(p, ..)| *p == path) {
                        Some((_, kind, _)) => (
                            "200 OK",
                            json!({"kind": format!("{kind}List"), "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": items}),
                        ),
                        None => (
                            "404 Not Found",
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}),
                        ),
                    };
                    let body = body.to_string();
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body.as_bytes())).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_live_cluster_analyzes_as_its_manifests_do() {
    let port = fake_api_server();
    let dir = std::env::temp_dir().join(format!("palisade-cluster-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\nusers: [{{name: u, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: u}}}}]\ncurrent-context: other\n"
        ),
    )
    .unwrap();
    // The same objects as a manifest file, the finished pod included:
    // every source leaves it out the same way.
    let manifests: Vec<Value> = objects()
        .into_iter()
        .map(|(_, kind, mut o)| {
            o["kind"] = json!(kind);
            o["apiVersion"] = json!(if kind == "NetworkPolicy" { "networking.k8s.io/v1" } else { "v1" });
            o
        })
        .collect();
    let file = dir.join("cluster.json");
    std::fs::write(&file, json!({"apiVersion": "v1", "kind": "List", "items": manifests}).to_string()).unwrap();

    let run = |args: &[&str]| {
        let out =
            Command::new(env!("CARGO_BIN_EXE_palisade")).args(args).env("KUBECONFIG", &kubeconfig).output().unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let live = run(&["analyze", "--cluster", "--context", "fake", "-o", "json"]);
    assert_eq!(live.0, Some(0), "{}", live.2);
    let from_files = run(&["analyze", file.to_str().unwrap(), "-o", "json"]);
    assert_eq!(from_files.0, Some(0), "{}", from_files.2);
    assert_eq!(live.1, from_files.1, "the live cluster and its manifests give the same matrix");
    assert!(live.1.contains("shop/web[Deployment]"), "replicas are grouped into their workload:\n{}", live.1);
    assert!(!live.1.contains("migrate"), "a finished pod is not analyzed");

    // lint and explain read the cluster the same way.
    let lint = run(&["lint", "--cluster", "--context", "fake"]);
    let lint_files = run(&["lint", file.to_str().unwrap()]);
    assert_eq!((lint.0, &lint.1), (lint_files.0, &lint_files.1), "{}", lint.2);
    let explain = run(&["explain", "shop/web", "shop/api-1", "tcp/8080", "--cluster", "--context", "fake"]);
    assert_eq!(explain.0, Some(0), "{}", explain.2);
    assert!(explain.1.contains("allow"), "web may reach api on its named port:\n{}", explain.1);
    // An unreachable context is a clear error, not a crash.
    let bad = run(&["analyze", "--cluster", "--context", "nope"]);
    assert_ne!(bad.0, Some(0));
    assert!(bad.2.contains("nope"), "{}", bad.2);
    let _ = std::fs::remove_dir_all(&dir);
}
