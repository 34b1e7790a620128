//! `palisade-cni` executed exactly as a container runtime does it: CNI_*
//! environment, config on stdin, inside a node network namespace made for
//! the test (never the root one), on real pod namespaces.
//!
//! Until the node agent lands (issue #4), the success path is tested with
//! `Confirmer`, a stand-in on the agent's socket that answers only after
//! checking the pod's link exists on the node. It is not a policy: the
//! fail-closed tests use no confirmer at all.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use palisade_cni::ipam::Store;
use serde_json::{json, Value};

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("pal-{}c-{tag}", std::process::id());
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
        Ns(name)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

struct Env {
    node: Ns,
    dir: PathBuf,
    socket: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("palisade-cni-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        Env { node: Ns::new(&format!("{tag}n")), dir, socket }
    }

    fn conf(&self, version: &str, ranges: &[&str]) -> Value {
        json!({
            "cniVersion": version, "name": "podnet", "type": "palisade-cni",
            "ipam": {"ranges": ranges, "dataDir": self.dir.join("ipam")},
            "agentSocket": self.socket, "agentTimeoutMs": 2000,
        })
    }

    /// Runs the plugin in the node namespace: (exit code, stdout as JSON or Null).
    fn cni(&self, command: &str, vars: &[(&str, &str)], stdin: &Value) -> (i32, Value) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node.0, env!("CARGO_BIN_EXE_palisade-cni")]);
        run_plugin(cmd, command, vars, stdin)
    }

    /// [`cni`](Self::cni) with the network tools made unrunnable: in a
    /// mount namespace of its own, `ip`, `tc`, `nft`, `conntrack` and
    /// `sysctl` are /dev/null (whatever the PATH or a fallback finds), and
    /// /sys is the node namespace's (as `ip netns exec` mounts it).
    fn cni_without_tools(&self, command: &str, vars: &[(&str, &str)], stdin: &Value) -> (i32, Value) {
        let script = format!(
            "set -e; for t in ip tc nft conntrack sysctl; do f=$(command -v $t || true); \
             [ -n \"$f\" ] && mount --bind /dev/null \"$(readlink -f \"$f\")\"; done; \
             if ip -V >/dev/null 2>&1; then echo 'ip still runs' >&2; exit 97; fi; \
             exec nsenter --net=/run/netns/{} sh -c 'mount -t sysfs none /sys && exec {}'",
            self.node.0,
            env!("CARGO_BIN_EXE_palisade-cni")
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "sh", "-c", &script]);
        run_plugin(cmd, command, vars, stdin)
    }

    fn store(&self) -> Store {
        Store::open(&self.dir.join("ipam"), "podnet").unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `cmd` (which executes the plugin) as a runtime does: only the
/// CNI variables in its environment, the config on stdin.
fn run_plugin(mut cmd: Command, command: &str, vars: &[(&str, &str)], stdin: &Value) -> (i32, Value) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), serde_json::from_str(text.trim()).unwrap_or(Value::Null))
}

/// Stand-in for the agent's socket (see the module doc): answers `ok` when
/// the pod's node-side link exists in the node namespace.
fn confirmer(env: &Env) -> std::thread::JoinHandle<usize> {
    let listener = UnixListener::bind(&env.socket).unwrap();
    listener.set_nonblocking(false).unwrap();
    let node = env.node.0.clone();
    std::thread::spawn(move || {
        let mut served = 0;
        for stream in listener.incoming().take(64) {
            let Ok(stream) = stream else { break };
            let mut line = String::new();
            if BufReader::new(&stream).read_line(&mut line).unwrap_or(0) == 0 {
                continue; // STATUS only connects
            }
            let request: Value = serde_json::from_str(&line).unwrap();
            if request["op"] == "stop" {
                break;
            }
            if request["op"] == "status" {
                writeln!(&stream, "{}", json!({"ok": true, "ready": true})).unwrap();
                continue;
            }
            let id = request["containerID"].as_str().unwrap();
            let host_if = palisade_cni::plugin::host_ifname(id, request["ifname"].as_str().unwrap());
            let links = Command::new("ip").args(["-n", &node, "-o", "link", "show", &host_if]).output().unwrap();
            let answer = if links.status.success() { json!({"ok": true}) } else { json!({"error": "no link"}) };
            writeln!(&stream, "{answer}").unwrap();
            served += 1;
        }
        served
    })
}

fn stop(env: &Env) {
    if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&env.socket) {
        let _ = writeln!(s, "{}", json!({"op": "stop"}));
    }
}

fn vars<'a>(id: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("CNI_CONTAINERID", id), ("CNI_NETNS", netns), ("CNI_IFNAME", "eth0")]
}

#[test]
fn version_and_bad_input_without_root() {
    let env_dir = std::env::temp_dir();
    let run = |command: &str, stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_palisade-cni"))
            .env_clear()
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .current_dir(&env_dir)
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code().unwrap(), serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null))
    };
    let (code, v) = run("VERSION", r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(code, 0);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
    let (code, v) = run("ADD", "{not json");
    assert_eq!((code, v["code"].as_u64()), (1, Some(6)), "malformed config: decode failure");
    let (code, v) = run("ADD", r#"{"cniVersion":"9.9.9","name":"n","type":"palisade-cni"}"#);
    assert_eq!((code, v["code"].as_u64()), (1, Some(1)), "unknown version");
    assert!(v["details"].as_str().unwrap().contains("9.9.9"));
    let (code, v) = run("ADD", r#"{"cniVersion":"1.0.0","name":"n","type":"palisade-cni"}"#);
    assert_eq!((code, v["code"].as_u64()), (1, Some(4)), "missing CNI_CONTAINERID: {v}");
    let (code, v) = run("FROB", r#"{"cniVersion":"1.0.0","name":"n","type":"palisade-cni"}"#);
    assert_eq!((code, v["code"].as_u64()), (1, Some(4)));
    let (code, v) = run("GC", r#"{"cniVersion":"1.0.0","name":"n","type":"palisade-cni"}"#);
    assert_eq!((code, v["code"].as_u64()), (1, Some(1)), "GC needs 1.1.0");
}

#[test]
fn add_fails_closed_without_the_agent_and_leaves_nothing() {
    if !palisade_testkit::privileged("cni fail closed") {
        return;
    }
    let env = Env::new("closed");
    let pod = Ns::new("closedp");
    let (code, v) = env.cni("ADD", &vars("c1", &pod.path()), &env.conf("1.0.0", &["10.44.0.0/24"]));
    assert_eq!((code, v["code"].as_u64()), (1, Some(101)), "{v}");
    assert!(v["details"].as_str().unwrap().contains("agent"), "{v}");
    assert!(env.store().allocations().unwrap().is_empty(), "the address is given back");
    let links = Command::new("ip").args(["-n", &env.node.0, "-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("pal"), "the link is removed");
    let (code, v) = env.cni("STATUS", &[], &env.conf("1.1.0", &["10.44.0.0/24"]));
    assert_eq!((code, v["code"].as_u64()), (1, Some(50)), "STATUS: not ready while the agent is down");
    let (code, v) = env.cni("ADD", &vars("c1", "/run/netns/no-such-ns"), &env.conf("1.0.0", &["10.44.0.0/24"]));
    assert_eq!((code, v["code"].as_u64()), (1, Some(4)), "missing netns: {v}");
}

#[test]
fn add_check_del_gc_in_every_version_and_chained_before_portmap_bandwidth_tuning() {
    if !palisade_testkit::privileged("cni add/check/del") {
        return;
    }
    let env = Env::new("ok");
    let server = confirmer(&env);
    let ranges = ["10.45.0.0/24", "fd00:45::/120"];
    let (code, v) = env.cni("STATUS", &[], &env.conf("1.1.0", &ranges));
    assert_eq!(code, 0, "STATUS: ready when the agent says so: {v}");
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let pod = Ns::new(&format!("okp{i}"));
        let id = format!("ctr{i}");
        let conf = env.conf(version, &ranges);
        let (code, result) = env.cni("ADD", &vars(&id, &pod.path()), &conf);
        assert_eq!(code, 0, "{version}: {result}");
        assert_eq!(result["cniVersion"], *version);
        assert_eq!(result["ips"].as_array().unwrap().len(), 2, "{result}");
        assert_eq!(result["interfaces"][1]["sandbox"], pod.path());
        assert_eq!(result["ips"][0].get("version").is_some(), !version.starts_with('1'), "{version}: {result}");
        // The pod really has its address and a default route.
        let addr = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
        let shown = Command::new("ip").args(["-n", &pod.0, "-o", "addr", "show", "dev", "eth0"]).output().unwrap();
        assert!(String::from_utf8_lossy(&shown.stdout).contains(&format!(" {addr}/32")));
        // ADD again for the same container and interface: the same result.
        let (code, again) = env.cni("ADD", &vars(&id, &pod.path()), &conf);
        assert_eq!((code, &again["ips"]), (0, &result["ips"]), "idempotent ADD");
        if *version != "0.3.0" && *version != "0.3.1" {
            let mut with_prev = conf.clone();
            with_prev["prevResult"] = result.clone();
            let (code, v) = env.cni("CHECK", &vars(&id, &pod.path()), &with_prev);
            assert_eq!(code, 0, "CHECK {version}: {v}");
            if *version == "1.1.0" {
                // Without the sender check on its veth, the pod could forge
                // packets into other pods' connections: CHECK says so.
                let host_if = result["interfaces"][0]["name"].as_str().unwrap();
                let node = palisade_dataplane::netns::Netns::named(&env.node.0);
                palisade_dataplane::sender::detach_in(&node, host_if).unwrap();
                let (code, v) = env.cni("CHECK", &vars(&id, &pod.path()), &with_prev);
                assert_eq!(code, 1, "CHECK without the sender check: {v}");
                assert!(v["details"].as_str().unwrap().contains("sender check"), "{v}");
            }
        }
        // Chained before Debian's portmap, bandwidth and tuning (which speak
        // CNI up to 1.0.0), each given the previous plugin's result, as a
        // runtime runs a conflist; then DEL in reverse order.
        if *version == "1.0.0" {
            for kind in ["portmap", "bandwidth", "tuning"] {
                let path = format!("/usr/lib/cni/{kind}");
                assert!(
                    std::path::Path::new(&path).exists(),
                    "{path} is missing: scripts/ensure-toolchain.sh installs it"
                );
            }
            let chain = [
                json!({"type": "portmap", "capabilities": {"portMappings": true}}),
                // Ingress shaping only: egress needs ifb, which this kernel lacks.
                json!({"type": "bandwidth", "ingressRate": 8_000_000, "ingressBurst": 100_000}),
                json!({"type": "tuning", "sysctl": {"net.core.somaxconn": "777"}}),
            ];
            let run = |plugin: &Value, command: &str, prev: &Value| {
                let mut conf = plugin.clone();
                conf["cniVersion"] = json!("1.0.0");
                conf["name"] = json!("podnet");
                conf["prevResult"] = prev.clone();
                let kind = plugin["type"].as_str().unwrap();
                let mut child = Command::new("ip")
                    .args(["netns", "exec", &env.node.0, &format!("/usr/lib/cni/{kind}")])
                    .env_clear()
                    .env("CNI_COMMAND", command)
                    .env("CNI_CONTAINERID", &id)
                    .env("CNI_NETNS", pod.path())
                    .env("CNI_IFNAME", "eth0")
                    .env("CNI_PATH", "/usr/lib/cni")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
                let out = child.wait_with_output().unwrap();
                let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                assert!(out.status.success(), "{kind} {command}: {v}");
                v
            };
            let mut prev = result.clone();
            for plugin in &chain {
                let next = run(plugin, "ADD", &prev);
                assert_eq!(next["ips"], result["ips"], "{} passes our result on", plugin["type"]);
                prev = next;
            }
            let host_if = result["interfaces"][0]["name"].as_str().unwrap();
            let qdisc = Command::new("ip")
                .args(["netns", "exec", &env.node.0, "tc", "qdisc", "show", "dev", host_if])
                .output()
                .unwrap();
            assert!(String::from_utf8_lossy(&qdisc.stdout).contains("tbf"), "bandwidth shaped our veth");
            let somaxconn = Command::new("ip")
                .args(["netns", "exec", &pod.0, "cat", "/proc/sys/net/core/somaxconn"])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&somaxconn.stdout).trim(), "777", "tuning set the pod's sysctl");
            for plugin in chain.iter().rev() {
                run(plugin, "DEL", &prev);
            }
        }
        let (code, v) = env.cni("DEL", &vars(&id, &pod.path()), &conf);
        assert_eq!(code, 0, "DEL {version}: {v}");
        let (code, _) = env.cni("DEL", &vars(&id, &pod.path()), &conf);
        assert_eq!(code, 0, "DEL twice");
    }
    // DEL after the pod's namespace is gone.
    let conf = env.conf("1.1.0", &ranges);
    let pod = Ns::new("gone");
    let path = pod.path();
    assert_eq!(env.cni("ADD", &vars("late", &path), &conf).0, 0);
    drop(pod);
    let (code, v) = env.cni("DEL", &vars("late", &path), &conf);
    assert_eq!(code, 0, "DEL of a vanished namespace: {v}");
    assert!(env.store().allocations().unwrap().is_empty());
    // GC releases what the runtime no longer lists.
    let store = env.store();
    store.allocate("keep", "eth0", &["10.45.0.0/24".parse().unwrap()]).unwrap();
    store.allocate("stale", "eth0", &["10.45.0.0/24".parse().unwrap()]).unwrap();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    assert_eq!(env.cni("GC", &[], &gc).0, 0);
    let left: Vec<String> = store.allocations().unwrap().into_iter().map(|a| a.container_id).collect();
    assert_eq!(left, vec!["keep"]);
    // Exhausted pool: a /30 has two addresses.
    let small = env.conf("1.0.0", &["10.46.0.0/30"]);
    let pods: Vec<Ns> = (0..3).map(|i| Ns::new(&format!("full{i}"))).collect();
    assert_eq!(env.cni("ADD", &vars("f0", &pods[0].path()), &small).0, 0);
    assert_eq!(env.cni("ADD", &vars("f1", &pods[1].path()), &small).0, 0);
    let (code, v) = env.cni("ADD", &vars("f2", &pods[2].path()), &small);
    assert_eq!((code, v["code"].as_u64()), (1, Some(100)), "exhausted: {v}");
    stop(&env);
    assert!(server.join().unwrap() >= 8);
}

#[test]
fn fifty_parallel_adds_get_distinct_addresses() {
    if !palisade_testkit::privileged("cni parallel add") {
        return;
    }
    let env = Env::new("par");
    let server = confirmer(&env);
    let conf = env.conf("1.0.0", &["10.47.0.0/24"]);
    let pods: Vec<Ns> = (0..50).map(|i| Ns::new(&format!("par{i}"))).collect();
    let results: Vec<(i32, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (env, conf) = (&env, &conf);
                s.spawn(move || env.cni("ADD", &vars(&format!("p{i}"), &pod.path()), conf))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs: Vec<String> = results
        .iter()
        .map(|(code, v)| {
            assert_eq!(*code, 0, "{v}");
            v["ips"][0]["address"].as_str().unwrap().to_string()
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 50, "no duplicate address");
    stop(&env);
    let _ = server.join();
}

/// The plugin needs no other program: with `ip`, `tc`, `nft`, `conntrack`
/// and `sysctl` unrunnable (a node without iproute2 and friends), ADD,
/// CHECK and DEL work, over rtnetlink. (With the old `ip -batch` wiring
/// this fails: error 102.)
#[test]
fn add_check_del_without_any_other_program() {
    if !palisade_testkit::privileged("cni without iproute2") {
        return;
    }
    let env = Env::new("noip");
    let confirmed = confirmer(&env);
    let pod = Ns::new("noipp");
    let conf = env.conf("1.0.0", &["10.45.0.0/24"]);
    let (code, added) = env.cni_without_tools("ADD", &vars("c1", &pod.path()), &conf);
    assert_eq!(code, 0, "ADD without iproute2: {added}");
    assert_eq!(added["ips"][0]["address"], "10.45.0.1/32", "{added}");
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = added.clone();
    let (code, checked) = env.cni_without_tools("CHECK", &vars("c1", &pod.path()), &with_prev);
    assert_eq!(code, 0, "CHECK: {checked}");
    let (code, deleted) = env.cni_without_tools("DEL", &vars("c1", &pod.path()), &conf);
    assert_eq!(code, 0, "DEL: {deleted}");
    let links = Command::new("ip").args(["-n", &env.node.0, "-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("pal"), "the link is removed");
    stop(&env);
    assert_eq!(confirmed.join().unwrap(), 2, "the ADD confirmed, the DEL told");
}

/// Without ranges in its config the plugin asks the agent for the node's
/// pod CIDRs, and waits for the answer only as long as `agentTimeoutMs`
/// says (it was a fixed 2 s).
#[test]
fn the_pod_cidr_query_honours_the_agent_timeout() {
    if !palisade_testkit::privileged("cni pod CIDR query timeout") {
        return;
    }
    let env = Env::new("cidrt");
    // An agent that accepts and never answers.
    let listener = UnixListener::bind(&env.socket).unwrap();
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let pod = Ns::new("cidrtp");
    let mut conf = env.conf("1.0.0", &[]);
    conf["ipam"].as_object_mut().unwrap().remove("ranges");
    conf["agentTimeoutMs"] = json!(300);
    let started = std::time::Instant::now();
    let (code, v) = env.cni("ADD", &vars("c1", &pod.path()), &conf);
    let took = started.elapsed();
    assert_eq!((code, v["code"].as_u64()), (1, Some(101)), "{v}");
    assert!(took < std::time::Duration::from_millis(1500), "ADD waited {took:?} for a 300 ms timeout");
    drop(held.join());
}
