//! `palisade-cni` and `palisade agent` under a real container runtime:
//! containerd 1.6's CRI plugin (Debian's), driven as kubelet drives it
//! (RunPodSandbox, PodSandboxStatus, StopPodSandbox, RemovePodSandbox over
//! its gRPC socket), running inside a network namespace that plays a bare
//! node: no default route, IP forwarding off. The agent runs there with
//! the DaemonSet's capabilities only. Covered:
//! - the agent makes the bare node ready: pods talk across it, as their
//!   policy says (an allowed and a denied peer);
//! - a sandbox whose pod the agent does not know fails (fail closed);
//! - a sandbox started before its pod reaches the agent's source waits
//!   for it instead of failing;
//! - a pod created again under the same name (another UID) is not
//!   confirmed with its predecessor's object;
//! - stop and remove (containerd's two DELs) end cleanly, logged as what
//!   they are.
//!
//! The harness (scripts/real-runtime: containerd in the namespace, a busybox
//! pause image, a small CRI client) is built once and cached outside the
//! checkout. Needs root.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade_dataplane::netns::Netns;
use palisade_testkit::privileged;
use serde_json::Value;

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/real-runtime")
}

/// containerd, the agent and the node namespace of one test, all gone on drop.
struct Node {
    netns: String,
    dir: PathBuf,
    cri: PathBuf,
    socket: PathBuf,
    agent: Option<Child>,
    containerd: bool,
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.containerd {
            let _ = Command::new("bash").arg(scripts().join("stop.sh")).arg(self.dir.join("containerd")).status();
        }
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        let _ = Command::new("ip").args(["netns", "delete", &self.netns]).status();
        if std::env::var("PALISADE_KEEP_LOGS").is_err() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Node {
    /// The CRI client's JSON answer, or its error message.
    fn cri(&self, args: &[&str]) -> Result<Value, String> {
        let out =
            Command::new(&self.cri).arg(args[0]).arg("--socket").arg(&self.socket).args(&args[1..]).output().unwrap();
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    fn runp(&self, name: &str, uid: &str) -> Result<String, String> {
        let v = self.cri(&["runp", "--name", name, "--namespace", "shop", "--uid", uid])?;
        Ok(v["id"].as_str().unwrap().to_string())
    }

    /// (address, network namespace path) of a running sandbox.
    fn inspect(&self, id: &str) -> (String, String) {
        let v = self.cri(&["inspectp", id]).unwrap();
        (v["ip"].as_str().unwrap().to_string(), v["netns"].as_str().unwrap().to_string())
    }

    fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    /// Writes a pod of namespace shop on node n1 into the agent's source.
    fn write_pod(&self, name: &str, uid: &str, app: &str) {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, uid: {uid}, labels: {{app: {app}}}}}\nspec: {{nodeName: n1, containers: [{{name: c, image: i}}]}}\n"
        );
        let tmp = self.dir.join("pod.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.manifests().join(format!("pod-{name}.yaml"))).unwrap();
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

const CLUSTER: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDR: 10.61.0.0/24, podCIDRs: [10.61.0.0/24]}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
";

fn start() -> Node {
    let built = Command::new("bash").arg(scripts().join("build.sh")).stderr(Stdio::inherit()).output().unwrap();
    assert!(built.status.success(), "building the runtime harness failed (scripts/real-runtime/build.sh)");
    let cache = String::from_utf8_lossy(&built.stdout).lines().last().unwrap_or_default().trim().to_string();
    let pid = std::process::id();
    let dir = PathBuf::from(format!("/tmp/palisade-rt-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    let mut node = Node {
        netns: format!("pal-{pid}rt-node"),
        cri: Path::new(&cache).join("cri"),
        socket: dir.join("containerd/containerd.sock"),
        dir,
        agent: None,
        containerd: false,
    };
    assert!(Command::new("ip").args(["netns", "add", &node.netns]).status().unwrap().success());
    // Bare, but with its loopback up, as any node has.
    assert!(Command::new("ip").args(["-n", &node.netns, "link", "set", "lo", "up"]).status().unwrap().success());
    std::fs::write(node.manifests().join("cluster.yaml"), CLUSTER).unwrap();

    // The agent, as the DaemonSet runs it: in the node's namespace, with
    // its capabilities only. The node is bare: it must make it ready.
    let socket = node.dir.join("agent.sock");
    let bounding: Vec<String> = palisade_agent::CAPABILITIES.iter().map(|c| format!("+{}", c.to_lowercase())).collect();
    let log = std::fs::File::create(node.dir.join("agent.log")).unwrap();
    node.agent = Some(
        Command::new("ip")
            .args(["netns", "exec", &node.netns, "setpriv"])
            .arg(format!("--bounding-set=-all,{}", bounding.join(",")))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_palisade"))
            .args(["agent", "--dir"])
            .arg(node.manifests())
            .arg("--socket")
            .arg(&socket)
            .arg("--state-file")
            .arg(node.dir.join("pods.json"))
            .args(["--node-name", "n1", "--poll-ms", "20", "--log-format", "json", "--metrics-addr", "127.0.0.1:0"])
            .env("PALISADE_LOG", "debug")
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // The plugins containerd runs: ours, and the loopback it always adds.
    let bin = node.dir.join("cni-bin");
    let conf = node.dir.join("cni-conf");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    // The palisade binary is the plugin when named palisade-cni (as the image installs it).
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_palisade"), bin.join("palisade-cni")).unwrap();
    std::os::unix::fs::symlink("/usr/lib/cni/loopback", bin.join("loopback")).unwrap();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0", "name": "palisade",
        "plugins": [{"type": "palisade-cni", "agentSocket": socket, "agentTimeoutMs": 2500,
                     "ipam": {"dataDir": node.dir.join("ipam")}}],
    });
    std::fs::write(conf.join("10-palisade.conflist"), conflist.to_string()).unwrap();
    let started = Command::new("bash")
        .arg(scripts().join("start.sh"))
        .arg(node.dir.join("containerd"))
        .arg(&node.netns)
        .arg(&bin)
        .arg(&conf)
        .output()
        .unwrap();
    node.containerd = true;
    assert!(started.status.success(), "start.sh: {}", String::from_utf8_lossy(&started.stderr));
    node
}

fn connects(from: &str, to: SocketAddr) -> bool {
    Netns::named(from).enter(|| TcpStream::connect_timeout(&to, Duration::from_millis(800)).is_ok()).unwrap()
}

#[test]
fn pods_under_containerd_are_wired_and_enforced_and_fail_closed() {
    if !privileged("palisade-cni under containerd's CRI") {
        return;
    }
    let node = start();
    for (name, app) in [("web", "web"), ("client", "client"), ("other", "other")] {
        node.write_pod(name, &format!("uid-{name}"), app);
    }
    std::thread::sleep(Duration::from_millis(300)); // the agent reads them

    // Three sandboxes: each gets an address from the Node's pod CIDR.
    let started = Instant::now();
    let web = node.runp("web", "uid-web").unwrap_or_else(|e| panic!("web: {e}\n{}", node.agent_log()));
    let runp_ms = started.elapsed();
    let client = node.runp("client", "uid-client").unwrap();
    let other = node.runp("other", "uid-other").unwrap();
    let (web_ip, web_ns) = node.inspect(&web);
    let (_, client_ns) = node.inspect(&client);
    let (_, other_ns) = node.inspect(&other);
    assert!(web_ip.starts_with("10.61.0."), "{web_ip}");
    eprintln!("RunPodSandbox with palisade-cni: {runp_ms:?}");

    // The plugin attached web's sender check as a tc filter; the agent
    // moves it to tcx (in place before the filter goes).
    let node_ns = Netns::named(&node.netns);
    let host_if = palisade_cni::plugin::host_ifname(&web, "eth0");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tcx = node_ns.enter(|| palisade_dataplane::bpf::attached(&host_if)).unwrap().unwrap();
        let filters = node_ns.exec("tc", &["filter", "show", "dev", &host_if, "ingress"], None).unwrap_or_default();
        if tcx.len() == 1 && !filters.contains("palsnd_") {
            break;
        }
        assert!(Instant::now() < deadline, "web's check is not on tcx: {tcx:?}, tc: {filters}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The bare node was made ready by the agent: the allowed peer gets
    // through it, the denied one does not.
    let server = Netns::named(&web_ns).enter(|| TcpListener::bind("0.0.0.0:80").unwrap()).unwrap();
    let to_web = SocketAddr::new(web_ip.parse().unwrap(), 80);
    assert!(connects(&client_ns, to_web), "client -> web is allowed\n{}", node.agent_log());
    assert!(!connects(&other_ns, to_web), "other -> web is denied");
    drop(server);

    // A pod the agent does not know: the sandbox fails, fail closed.
    let err = node.runp("stranger", "uid-stranger").expect_err("a pod the agent does not know must not start");
    assert!(err.contains("101") || err.contains("not confirmed"), "{err}");

    // A sandbox started 300 ms before its pod reaches the source: it waits.
    let late = std::thread::scope(|s| {
        let run = s.spawn(|| node.runp("late", "uid-late"));
        std::thread::sleep(Duration::from_millis(300));
        node.write_pod("late", "uid-late", "other");
        run.join().unwrap()
    });
    late.unwrap_or_else(|e| panic!("a sandbox started before its pod was known: {e}"));

    // web is created again under its name (another UID) while the source
    // still has the old object: not confirmed until the new one is there.
    node.cri(&["stopp", &web]).unwrap();
    node.cri(&["rmp", &web]).unwrap();
    let again = std::thread::scope(|s| {
        let run = s.spawn(|| node.runp("web", "uid-web-2"));
        std::thread::sleep(Duration::from_millis(500));
        let waiting = node.agent_log().contains("ADD waits for the source to show the pod");
        node.write_pod("web", "uid-web-2", "web");
        (waiting, run.join().unwrap())
    });
    assert!(again.0, "the new web waited for its object:\n{}", node.agent_log());
    again.1.unwrap_or_else(|e| panic!("the new web: {e}"));
    let confirmed =
        node.agent_log().matches("\"pod confirmed: its policy is in the kernel\",\"pod\":\"shop/web\"").count();
    assert_eq!(confirmed, 2, "both webs confirmed, each logged:\n{}", node.agent_log());

    // containerd's two DELs for each stopped and removed sandbox.
    node.cri(&["stopp", &client]).unwrap();
    node.cri(&["rmp", &client]).unwrap();
    let log = node.agent_log();
    assert!(log.contains("\"pod deleted\"") && log.contains("shop/client"), "{log}");
    assert!(log.contains("nothing to do"), "the second DEL is logged as what it is:\n{log}");
    assert!(!log.contains("\"level\":\"error\""), "no errors:\n{log}");
}
