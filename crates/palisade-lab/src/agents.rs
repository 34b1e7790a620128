//! The lab as a real deployment runs: one `palisade agent` process per
//! node (in `dir` mode, all reading the manifests the lab writes, as
//! agents of one cluster read one API server), and pods wired by executing
//! the `palisade-cni` plugin the way a container runtime does (CNI_*
//! environment, network config on stdin, run in the node's namespace,
//! found by its type name in CNI_PATH).
//!
//! Everything lives under one directory per lab run: the manifests, each
//! agent's socket, state file and log, the plugin's IPAM store.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade_dataplane::DenyAction;
use palisade_model::{Cluster, EndpointKey};
use serde_json::{json, Value};

use crate::plan::{LabPod, Plan};

/// Where the runs' directories are.
pub const AGENTS_DIR: &str = "/run/palisade/lab-agents";

#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("starting the agent of node {node}: {source}")]
    Spawn { node: String, source: std::io::Error },
    #[error("the agent of node {node} {what} (log: {log})")]
    Agent { node: String, what: String, log: PathBuf },
    #[error("palisade-cni {command} for pod {pod} failed: {message}")]
    Cni { command: &'static str, pod: String, message: String },
    #[error("pods {0} and {1} would have the same name as Pods; rename one")]
    NameClash(Box<EndpointKey>, Box<EndpointKey>),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AgentsError + '_ {
    move |source| AgentsError::Io { path: path.to_path_buf(), source }
}

/// How the lab runs its agents.
#[derive(Debug, Clone)]
pub struct AgentSetup {
    /// The `palisade` binary: `palisade agent`, and (invoked as
    /// `palisade-cni`) the CNI plugin.
    pub palisade: PathBuf,
}

/// The Pod name an endpoint runs as: a workload `web[Deployment]` becomes
/// the Pod `web-deployment`; a variant of it (`web[Deployment:track=canary]`)
/// adds a hash of the variant, so two variants are two pods.
pub fn pod_name(key: &EndpointKey) -> String {
    match (&key.kind, &key.variant) {
        (None, _) => key.name.clone(),
        (Some(kind), None) => format!("{}-{}", key.name, kind.to_lowercase()),
        (Some(kind), Some(variant)) => {
            let hash =
                variant.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
            format!("{}-{}-{:08x}", key.name, kind.to_lowercase(), hash as u32)
        }
    }
}

/// The container id the lab gives a pod (its namespace name: unique).
pub fn container_id(pod: &LabPod) -> String {
    pod.netns.clone()
}

/// A run's directory and its agents' sockets: what another process (`lab
/// apply`) needs to publish a new state to a running lab's agents.
pub struct RunDir {
    dir: PathBuf,
    /// (node name, node namespace)
    nodes: Vec<(String, String)>,
}

pub struct Agents {
    run: RunDir,
    setup: AgentSetup,
    deny: DenyAction,
    keep_established: bool,
    procs: Vec<Option<Child>>,
}

impl std::ops::Deref for Agents {
    type Target = RunDir;
    fn deref(&self) -> &RunDir {
        &self.run
    }
}

impl RunDir {
    pub fn of(plan: &Plan) -> RunDir {
        RunDir {
            dir: Path::new(AGENTS_DIR).join(&plan.run_id),
            nodes: plan.nodes.iter().map(|n| (n.name.clone(), n.netns.clone())).collect(),
        }
    }

    fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    fn socket(&self, node: usize) -> PathBuf {
        self.dir.join(format!("n{node}.sock"))
    }

    /// Where node `node`'s agent remembers its pods.
    pub fn state_file(&self, node: usize) -> PathBuf {
        self.dir.join(format!("n{node}-pods.json"))
    }

    fn log(&self, node: usize) -> PathBuf {
        self.dir.join(format!("agent-n{node}.log"))
    }

    /// Writes `cluster` (as the API server would serve it) atomically;
    /// returns its digest. Does not wait for the agents (`publish` does).
    pub fn write(&self, cluster: &Cluster) -> Result<String, AgentsError> {
        let mut seen: std::collections::HashMap<(String, String), EndpointKey> = Default::default();
        for ep in &cluster.endpoints {
            if let Some(other) = seen.insert((ep.key.namespace.clone(), pod_name(&ep.key)), ep.key.clone()) {
                return Err(AgentsError::NameClash(Box::new(other), Box::new(ep.key.clone())));
            }
        }
        let dir = self.manifests();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let objects = palisade_model::render::to_objects(cluster, pod_name);
        let text = palisade_model::render::to_yaml_stream(&objects);
        let tmp = self.dir.join("cluster.yaml.tmp");
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        let path = dir.join("cluster.yaml");
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(palisade_agent::source::digest_dir(&dir))
    }

    /// Publishes `cluster` and waits until every node's kernel holds it.
    pub fn publish(&self, cluster: &Cluster) -> Result<(), AgentsError> {
        let digest = self.write(cluster)?;
        self.wait_applied(&digest, Duration::from_secs(20))
    }

    fn status(&self, node: usize) -> Result<Value, String> {
        palisade_agent::cni_socket::call(&self.socket(node), &json!({"op": "status"}), Duration::from_secs(5))
    }

    fn wait_applied(&self, digest: &str, limit: Duration) -> Result<(), AgentsError> {
        let deadline = Instant::now() + limit;
        for node in 0..self.nodes.len() {
            loop {
                let status = self.status(node);
                if let Ok(s) = &status {
                    if s["applied"] == json!(digest) && s["ready"] == json!(true) {
                        break;
                    }
                }
                if Instant::now() > deadline {
                    let what = format!("did not apply the lab's state within {limit:?} (last status: {status:?})");
                    return Err(self.agent_error(node, what));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    }

    fn agent_error(&self, node: usize, what: String) -> AgentsError {
        AgentsError::Agent { node: self.nodes[node].0.clone(), what, log: self.log(node) }
    }

    /// Runs the plugin for `pod` as a runtime does; returns its stdout.
    fn cni(&self, command: &'static str, plan: &Plan, pod: &LabPod) -> Result<Value, AgentsError> {
        let node = pod.node;
        let fail = |message: String| AgentsError::Cni { command, pod: pod.key.to_string(), message };
        let conf = netconf(plan, pod, &self.dir, &self.socket(node));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.nodes[node].1])
            .arg(self.dir.join("bin/palisade-cni"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id(pod))
            .env("CNI_NETNS", format!("/run/netns/{}", pod.netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.dir.join("bin"))
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}", pod.key.namespace, pod_name(&pod.key)),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run the plugin: {e}")))?;
        child.stdin.take().expect("piped").write_all(conf.to_string().as_bytes()).map_err(|e| fail(e.to_string()))?;
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(fail(format!("{} {}", text.trim(), String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(serde_json::from_str(text.trim()).unwrap_or(Value::Null))
    }

    /// CNI ADD for each pod (a few at a time); each returns once its
    /// policy is in its node's kernel, with exactly its planned addresses.
    pub fn wire(&self, plan: &Plan, pods: &[usize]) -> Result<(), AgentsError> {
        let results: Vec<Result<(), AgentsError>> = std::thread::scope(|s| {
            let chunks: Vec<&[usize]> = pods.chunks(pods.len().div_ceil(4).max(1)).collect();
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| s.spawn(move || chunk.iter().try_for_each(|&i| self.add(plan, &plan.pods[i]))))
                .collect();
            handles.into_iter().map(|h| h.join().expect("CNI thread")).collect()
        });
        results.into_iter().collect()
    }

    fn add(&self, plan: &Plan, pod: &LabPod) -> Result<(), AgentsError> {
        let result = self.cni("ADD", plan, pod)?;
        let mut got: Vec<IpAddr> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["address"].as_str()?.split('/').next()?.parse().ok())
            .collect();
        let mut want = pod.ips.clone();
        got.sort();
        want.sort();
        if got != want {
            return Err(AgentsError::Cni {
                command: "ADD",
                pod: pod.key.to_string(),
                message: format!("got addresses {got:?}, the lab planned {want:?}"),
            });
        }
        Ok(())
    }

    /// CNI DEL for one pod.
    pub fn unwire(&self, plan: &Plan, pod: &LabPod) -> Result<(), AgentsError> {
        self.cni("DEL", plan, pod).map(|_| ())
    }
}

impl Agents {
    /// Writes `cluster` for the agents and starts one per node; returns
    /// once each has put it into its node's kernel.
    pub fn start(
        setup: AgentSetup,
        plan: &Plan,
        cluster: &Cluster,
        deny: DenyAction,
        keep_established: bool,
    ) -> Result<Agents, AgentsError> {
        let run = RunDir::of(plan);
        let dir = run.dir.clone();
        let _ = std::fs::remove_dir_all(&dir);
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).map_err(io(&bin))?;
        let plugin = bin.join("palisade-cni");
        std::os::unix::fs::symlink(&setup.palisade, &plugin).map_err(io(&plugin))?;
        let mut agents = Agents { run, setup, deny, keep_established, procs: Vec::new() };
        let digest = agents.write(cluster)?;
        for node in 0..plan.nodes.len() {
            let child = agents.spawn(node)?;
            agents.procs.push(Some(child));
        }
        agents.wait_applied(&digest, Duration::from_secs(30))?;
        Ok(agents)
    }

    fn spawn(&self, node: usize) -> Result<Child, AgentsError> {
        let log = self.log(node);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(io(&log))?;
        // As the DaemonSet runs it: inside its node's namespace, with the
        // manifest's capabilities and no others (root's bounding set cut).
        let bounding: Vec<String> =
            palisade_agent::CAPABILITIES.iter().map(|c| format!("+{}", c.to_lowercase())).collect();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.nodes[node].1, "setpriv"])
            .arg(format!("--bounding-set=-all,{}", bounding.join(",")))
            .arg("--")
            .arg(&self.setup.palisade)
            .arg("agent")
            .arg("--dir")
            .arg(self.manifests())
            .arg("--socket")
            .arg(self.socket(node))
            .args(["--node-name", &self.nodes[node].0])
            .args(["--deny", if self.deny == DenyAction::Reject { "reject" } else { "drop" }])
            .args(["--poll-ms", "10", "--debounce-ms", "0", "--log-format", "json"])
            .arg("--state-file")
            .arg(self.state_file(node))
            .args(["--metrics-addr", "127.0.0.1:0", "--owner-pid", &std::process::id().to_string()]);
        if self.keep_established {
            cmd.arg("--keep-established");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|source| AgentsError::Spawn { node: self.nodes[node].0.clone(), source })
    }

    /// Kills node `node`'s agent without warning (SIGKILL) and starts a new
    /// one, which takes back the node's pods and kernel state; returns once
    /// it has applied the current state.
    pub fn restart(&mut self, node: usize) -> Result<(), AgentsError> {
        if let Some(mut child) = self.procs[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.procs[node] = Some(self.spawn(node)?);
        let digest = palisade_agent::source::digest_dir(&self.manifests());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = self.status(node) {
                if s["applied"] == json!(digest) && s["ready"] == json!(true) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(self.agent_error(node, "did not come back within 20 s".into()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The process id of node `node`'s agent.
    pub fn pid(&self, node: usize) -> Option<u32> {
        self.procs.get(node)?.as_ref().map(Child::id)
    }

    /// Whether every agent process still runs.
    pub fn all_running(&mut self) -> bool {
        self.procs.iter_mut().all(|p| p.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None))))
    }
}

impl Drop for Agents {
    /// SIGTERM (the agents leave the rules; the namespaces go next anyway),
    /// then the run's directory.
    fn drop(&mut self) {
        for child in self.procs.iter_mut().flatten() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM);
        }
        for child in self.procs.iter_mut().flatten() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.run.dir);
    }
}

/// The network config the lab hands the plugin for `pod`: its node's
/// range for each family it has (a manifest address outside the node's
/// CIDR gets its own /24 or /64 range), and the planned addresses asked
/// for by the CNI `ips` convention.
fn netconf(plan: &Plan, pod: &LabPod, dir: &Path, socket: &Path) -> Value {
    let node = &plan.nodes[pod.node];
    let ranges: Vec<String> = pod
        .ips
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) if node.pod_cidr.contains(v4) => node.pod_cidr.to_string(),
            IpAddr::V4(v4) => ipnet::Ipv4Net::new(*v4, 24).expect("prefix").trunc().to_string(),
            IpAddr::V6(v6) => ipnet::Ipv6Net::new(*v6, 64).expect("prefix").trunc().to_string(),
        })
        .collect();
    json!({
        "cniVersion": "1.1.0",
        "name": "palisade-lab",
        "type": "palisade-cni",
        "ipam": {"ranges": ranges, "dataDir": dir.join(format!("ipam-n{}", pod.node))},
        "agentSocket": socket,
        "agentTimeoutMs": 3000,
        "args": {"cni": {"ips": pod.ips}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_of_a_workload_run_as_distinct_valid_pods() {
        let names: Vec<String> =
            ["shop/web[Deployment]", "shop/web[Deployment:track=canary]", "shop/web[Deployment:track=stable]"]
                .iter()
                .map(|k| pod_name(&EndpointKey::parse(k)))
                .collect();
        assert_eq!(names[0], "web-deployment");
        assert!(names[1] != names[2] && names[1].starts_with("web-deployment-"), "{names:?}");
        for n in &names {
            assert!(palisade_model::names::dns_subdomain(n).is_ok(), "{n}");
        }
    }
}
