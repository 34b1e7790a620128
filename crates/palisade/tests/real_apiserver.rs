//! `palisade agent --kube` against a real kube-apiserver and etcd (built
//! from Debian's registry by scripts/real-apiserver/build.sh, cached
//! outside the checkout; see ../shared/REAL-APISERVER.md), on loopback,
//! programming a network namespace of its own:
//! - API write to kernel, per object (p50 < 30 ms, p99 < 60 ms);
//! - the API server killed and restarted mid-test: `/readyz` says the
//!   view is stale meanwhile, the log does not repeat itself, and a policy
//!   created once the server is back is in the kernel within 2 s.
//!
//! Needs root (the namespace) and the build (network to Debian's registry
//! the first time).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use palisade_testkit::privileged;
use serde_json::{json, Value};

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/real-apiserver")
}

/// The API server and etcd of one test, stopped and removed on drop.
struct Server {
    dir: PathBuf,
}

impl Server {
    fn start() -> Server {
        let built = Command::new("bash").arg(scripts().join("build.sh")).stderr(Stdio::inherit()).output().unwrap();
        assert!(built.status.success(), "building kube-apiserver failed (scripts/real-apiserver/build.sh)");
        let dir = std::env::temp_dir().join(format!("palisade-apiserver-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let server = Server { dir };
        let started = Command::new("bash").arg(scripts().join("start.sh")).arg(&server.dir).output().unwrap();
        assert!(started.status.success(), "start.sh: {}", String::from_utf8_lossy(&started.stderr));
        server
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.join("apiserver.pid")).unwrap();
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL).unwrap();
    }

    /// Starts the API server again and returns once it is ready.
    fn restart(&self) {
        let out = Command::new("bash").arg(self.dir.join("apiserver.sh")).arg("--wait").output().unwrap();
        assert!(out.status.success(), "apiserver.sh: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(scripts().join("stop.sh")).arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test's network namespace and agent process, gone on drop.
struct TestNode {
    netns: String,
    agent: Option<Child>,
    files: Vec<PathBuf>,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        let _ = Command::new("ip").args(["netns", "delete", &self.netns]).status();
        for f in &self.files {
            if std::env::var("PALISADE_KEEP_LOGS").is_err() {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
}

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn policy(name: &str, cidr: &str) -> NetworkPolicy {
    obj(json!({
        "metadata": {"name": name, "namespace": "team"},
        "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"from": [{"ipBlock": {"cidr": cidr}}]}]},
    }))
}

/// Waits for a line of `nft monitor` containing `needle`.
fn seen(monitor: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match monitor.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn the_agent_follows_a_real_api_server_through_a_restart() {
    if !privileged("palisade agent against a real kube-apiserver") {
        return;
    }
    let server = Server::start();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let client: Client = runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
        Client::try_from(config).unwrap()
    });
    let pp = PostParams::default();
    runtime.block_on(async {
        let nodes: Api<Node> = Api::all(client.clone());
        nodes.create(&pp, &obj(json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.30.0.0/24", "podCIDRs": ["10.30.0.0/24"]}}))).await.unwrap();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces.create(&pp, &obj(json!({"metadata": {"name": "team", "labels": {"team": "t"}}}))).await.unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
        for (name, app, ip) in [("a", "a", "10.30.0.10"), ("b", "b", "10.30.0.11")] {
            let pod = obj(json!({
                "metadata": {"name": name, "labels": {"app": app}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox:1"}]},
            }));
            pods.create(&pp, &pod).await.unwrap();
            let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
            pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
        }
    });

    let pid = std::process::id();
    let mut node = TestNode { netns: format!("pal-{pid}k-node"), agent: None, files: Vec::new() };
    assert!(Command::new("ip").args(["netns", "add", &node.netns]).status().unwrap().success());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::env::temp_dir().join(format!("palisade-kube-agent-{pid}.log"));
    let socket = std::env::temp_dir().join(format!("palisade-kube-agent-{pid}.sock"));
    let state = std::env::temp_dir().join(format!("palisade-kube-agent-{pid}.json"));
    node.files.extend([log.clone(), socket.clone(), state.clone()]);
    node.agent = Some(
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["agent", "--kube", "--node-name", "n1", "--netns", &node.netns, "--log-format", "json"])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .arg("--socket")
            .arg(&socket)
            .arg("--state-file")
            .arg(&state)
            .env("KUBECONFIG", server.kubeconfig())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until("the agent is ready", Duration::from_secs(20), || http_get(port, "/readyz").starts_with("HTTP/1.1 200"));

    // Every change the kernel takes, as it takes it.
    let mut monitor = Command::new("ip")
        .args(["netns", "exec", &node.netns, "nft", "monitor"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, changes) = mpsc::channel();
    let stdout = monitor.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(200));

    // API write to kernel: one policy at a time.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), "team");
    let mut latencies = Vec::new();
    for i in 0..40 {
        let cidr = format!("10.200.{i}.0/24");
        let started = Instant::now();
        runtime.block_on(policies.create(&pp, &policy(&format!("p{i}"), &cidr))).unwrap();
        assert!(
            seen(&changes, &format!("10.200.{i}.0/24"), Duration::from_secs(5)),
            "policy p{i} never reached the kernel"
        );
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (pct(&latencies, 0.5), pct(&latencies, 0.99));
    eprintln!(
        "API write -> kernel: p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms (n={})",
        latencies[latencies.len() - 1],
        latencies.len()
    );

    // The API server dies: the agent says its view is stale, and keeps the kernel.
    server.kill();
    let noticed = wait_until("/readyz reports the stale view", Duration::from_secs(10), || {
        let r = http_get(port, "/readyz");
        r.starts_with("HTTP/1.1 503") && r.contains("stale")
    });
    std::thread::sleep(Duration::from_secs(3));
    let during = std::fs::read_to_string(&log).unwrap();
    server.restart();
    let back = Instant::now();
    runtime.block_on(policies.create(&pp, &policy("after-restart", "10.201.0.0/24"))).unwrap();
    let in_kernel = seen(&changes, "10.201.0.0/24", Duration::from_secs(10));
    let caught_up = back.elapsed();
    wait_until("/readyz is 200 again", Duration::from_secs(10), || {
        http_get(port, "/readyz").starts_with("HTTP/1.1 200")
    });
    let ready_again = back.elapsed();
    let _ = monitor.kill();
    let _ = monitor.wait();
    eprintln!(
        "outage: stale noticed in {noticed:?}; after the restart: the new policy in the kernel {caught_up:?}, ready {ready_again:?}"
    );
    let stale_lines = during.lines().filter(|l| l.contains("stale")).count();

    assert!(in_kernel, "a policy created after the restart never reached the kernel");
    assert!(caught_up < Duration::from_secs(2), "the kernel reflected the API {caught_up:?} after the server was back");
    assert!(stale_lines <= 3, "the stale view was logged {stale_lines} times in a 3 s outage:\n{during}");
    assert!(p50 < 30.0 && p99 < 60.0, "API write -> kernel: p50 {p50:.1} ms, p99 {p99:.1} ms (targets 30 and 60)");
    let metrics = http_get(port, "/metrics");
    assert!(metrics.contains("palisade_agent_source_stale_seconds 0"), "{metrics}");
}
