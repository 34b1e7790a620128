//! `palisade bench agent`: the node agent as deployed, at scale. A real
//! `palisade agent` process (dir source) programs a node namespace for a
//! generated cluster; measured: the first full sync, confirming local pods
//! over the CNI socket, single-pod changes from file write to kernel, the
//! agent's memory, and full CNI ADDs (the plugin executed as a runtime
//! does, into real pod namespaces) including the agent's confirmation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use palisade_agent::cni_socket::call;
use palisade_agent::source::digest_dir;
use palisade_dataplane::netns::OwnedNetns;
use serde_json::{json, Value};

use super::lab::require_root;
use crate::cli::BenchAgentArgs;
use crate::gen::{generate, Spec};

/// Percentile of sorted samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
        pct(&v, 0.5),
        pct(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN),
        v.len()
    )
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until the agent reports `digest` applied; returns how long it took.
fn wait_applied(socket: &Path, digest: &str, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if let Ok(s) = call(socket, &json!({"op": "status"}), Duration::from_secs(10)) {
            if s["applied"] == json!(digest) && s["ready"] == json!(true) {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > limit {
            bail!("the agent did not apply state {digest} within {limit:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Writes `text` atomically (the agent never reads half a file).
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

struct Cleanup(PathBuf, Option<std::process::Child>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut child) = self.1.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: &BenchAgentArgs, out: &mut dyn Write) -> Result<()> {
    require_root()?;
    let pid = std::process::id();
    let work = std::env::temp_dir().join(format!("palisade-bench-agent-{pid}"));
    let _ = std::fs::remove_dir_all(&work);
    let manifests = work.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let mut cleanup = Cleanup(work.clone(), None);

    // The cluster, in files of 100 objects (a directory of exported
    // manifests); remember where each of node-0's pods is.
    let spec = Spec { namespaces: args.namespaces, pods: args.pods, policies: args.policies, seed: 1 };
    let text = generate(&spec);
    let docs: Vec<&str> = text.split("---\n").filter(|d| !d.trim().is_empty()).collect();
    let mut files: Vec<Vec<String>> = Vec::new();
    for chunk in docs.chunks(100) {
        files.push(chunk.iter().map(|d| d.to_string()).collect());
    }
    let path_of = |i: usize| manifests.join(format!("part-{i:04}.yaml"));
    let render = |docs: &[String]| docs.iter().map(|d| format!("---\n{d}")).collect::<String>();
    for (i, docs) in files.iter().enumerate() {
        std::fs::write(path_of(i), render(docs))?;
    }
    // (file, doc) of every pod on node-0, with its namespace, name and IP.
    let mut local: Vec<(usize, usize, String, String, String)> = Vec::new();
    for (f, docs) in files.iter().enumerate() {
        for (d, doc) in docs.iter().enumerate() {
            if doc.starts_with("apiVersion: v1\nkind: Pod\n") && doc.contains("\n  nodeName: node-0\n") {
                let field = |k: &str| doc.split(k).nth(1).and_then(|r| r.lines().next()).unwrap_or("").to_string();
                local.push((f, d, field("\n  namespace: "), field("\n  name: "), field("\n  podIP: ")));
            }
        }
    }
    local.truncate(args.local);

    let node = OwnedNetns::create(&format!("pal-{pid}ba-node"))?;
    let socket = work.join("cni.sock");
    let log = std::fs::File::create(work.join("agent.log"))?;
    let started = Instant::now();
    let child = Command::new(std::env::current_exe()?)
        .arg("agent")
        .arg("--dir")
        .arg(&manifests)
        .arg("--socket")
        .arg(&socket)
        .args(["--netns", &node.0.name, "--poll-ms", "5", "--debounce-ms", "0", "--node-name", "node-0"])
        .arg("--state-file")
        .arg(work.join("local-pods.json"))
        .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "json", "--owner-pid", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the agent")?;
    let agent_pid = child.id();
    cleanup.1 = Some(child);
    let digest = digest_dir(&manifests);
    wait_applied(&socket, &digest, Duration::from_secs(300))?;
    let first_sync = started.elapsed();
    writeln!(
        out,
        "agent bench: {} pods, {} policies, {} namespaces; node-0 runs {} of the pods",
        args.pods,
        args.policies,
        args.namespaces,
        local.len()
    )?;
    writeln!(out, "first sync (start, read, compile, full apply): {:.0} ms", first_sync.as_secs_f64() * 1e3)?;

    // Local pods confirmed over the socket (what ADD waits for), without
    // the plugin: the agent's part of ADD. There is no veth, so the request
    // says, as palisade-cni does, that the sender check is attached.
    let mut confirms = Vec::new();
    for (i, (_, _, ns, name, ip)) in local.iter().enumerate() {
        let request = json!({"op": "add", "containerID": format!("bench-{i}"), "netns": "/dev/null", "ifname": "eth0",
            "ips": [ip], "podNamespace": ns, "podName": name, "senderCheck": "attached"});
        let t = Instant::now();
        call(&socket, &request, Duration::from_secs(10)).map_err(|e| anyhow::anyhow!("confirming {ns}/{name}: {e}"))?;
        confirms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    writeln!(out, "pod confirmed by the agent (socket round trip, kernel patch): {}", summary(confirms))?;
    let rss_after_pods = status_kib(agent_pid, "VmRSS:");

    // Single-pod changes: a relabel written to its file, until the kernel
    // holds it. Alternating versions moves pods between policies.
    let mut latencies = Vec::new();
    for i in 0..args.changes {
        let (f, d, ..) = local[i * 7 % local.len()].clone();
        let doc = &mut files[f][d];
        let version = doc.split("\n    version: ").nth(1).and_then(|r| r.lines().next()).unwrap_or("v1").to_string();
        let next = format!("v{}", 1 + (version.trim_start_matches('v').parse::<usize>().unwrap_or(1) % 3));
        *doc = doc.replacen(&format!("\n    version: {version}\n"), &format!("\n    version: {next}\n"), 1);
        // The digest the agent will report, computed before the clock
        // starts (reading every file back would be timed otherwise).
        let sources: Vec<palisade_model::Source> = (0..files.len())
            .map(|g| palisade_model::Source { name: path_of(g).display().to_string(), text: render(&files[g]) })
            .collect();
        let digest = palisade_agent::source::digest(&sources);
        let text = render(&files[f]);
        let t = Instant::now();
        write_atomically(&path_of(f), &text)?;
        wait_applied(&socket, &digest, Duration::from_secs(30))?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    writeln!(out, "single-pod change, file written -> kernel: {}", summary(latencies))?;
    let (rss, hwm) = (status_kib(agent_pid, "VmRSS:"), status_kib(agent_pid, "VmHWM:"));
    writeln!(
        out,
        "agent memory: {} MiB resident ({} MiB after confirming pods), peak {} MiB",
        rss.map_or("?".into(), |k| (k / 1024).to_string()),
        rss_after_pods.map_or("?".into(), |k| (k / 1024).to_string()),
        hwm.map_or("?".into(), |k| (k / 1024).to_string())
    )?;

    // Full CNI ADD: the plugin executed in the node namespace with a real
    // pod namespace, as a runtime does; the floor is the same exec of
    // `true`.
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::os::unix::fs::symlink(std::env::current_exe()?, bin.join("palisade-cni"))?;
    let exec_in_node = |program: &Path, env: &[(&str, String)], stdin: &str| -> Result<(f64, std::process::Output)> {
        let t = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &node.0.name])
            .arg(program)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().expect("piped").write_all(stdin.as_bytes())?;
        let output = child.wait_with_output()?;
        Ok((t.elapsed().as_secs_f64() * 1e3, output))
    };
    let mut floor = Vec::new();
    for _ in 0..args.adds {
        floor.push(exec_in_node(Path::new("/bin/true"), &[], "")?.0);
    }
    let mut adds = Vec::new();
    let mut pods = Vec::new();
    for (i, (_, _, ns, name, ip)) in local.iter().take(args.adds).enumerate() {
        let pod = OwnedNetns::create(&format!("pal-{pid}ba-p{i}"))?;
        let conf = json!({"cniVersion": "1.1.0", "name": "bench", "type": "palisade-cni",
            "ipam": {"ranges": ["10.0.0.0/8"], "dataDir": work.join("ipam")},
            "agentSocket": socket, "args": {"cni": {"ips": [ip]}}});
        let env = [
            ("CNI_COMMAND", "ADD".to_string()),
            ("CNI_CONTAINERID", format!("bench-add-{i}")),
            ("CNI_NETNS", pod.0.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", bin.display().to_string()),
            ("CNI_ARGS", format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}")),
        ];
        let (ms, output) = exec_in_node(&bin.join("palisade-cni"), &env, &conf.to_string())?;
        let result: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        if !output.status.success() {
            bail!("CNI ADD of {ns}/{name} failed: {result}");
        }
        adds.push(ms);
        pods.push(pod);
    }
    writeln!(out, "exec floor (ip netns exec true): {}", summary(floor))?;
    writeln!(out, "CNI ADD (exec, IPAM, veth, agent confirmation): {}", summary(adds))?;
    drop(pods);
    let kept = std::env::temp_dir().join("palisade-bench-agent.log");
    let _ = std::fs::copy(work.join("agent.log"), &kept);
    writeln!(out, "(the agent's log: {})", kept.display())?;
    Ok(())
}
