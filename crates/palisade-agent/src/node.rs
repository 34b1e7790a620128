//! One node's state: the cluster as the source last gave it, the pods the
//! CNI plugin wired here (with their veth and addresses), the engine and
//! the incremental compiler, and the kernel session. Every change becomes
//! one kernel transaction; a failed one leaves the last good state in the
//! kernel, and the next apply replaces the table whole.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use palisade_dataplane::netns::Netns;
use palisade_dataplane::nfnetlink::NetlinkSession;
use palisade_dataplane::{ApplyError, DenyAction, NodeCompiler, Options};
use palisade_engine::{Changes, EndpointId, Engine};
use palisade_model::{Cluster, EndpointKey};
use serde::{Deserialize, Serialize};

/// How palisade-cni names the node side of every pod's veth
/// (`palisade_cni::plugin::host_ifname`).
pub const POD_IF_PREFIX: &str = "pal";

/// A pod the CNI plugin wired on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPod {
    /// The node side of its veth.
    pub host_if: String,
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("pod {0} is not in the cluster state this agent has; its policy is unknown")]
    UnknownPod(EndpointKey),
    #[error("applying the rules: {0}")]
    Apply(#[from] ApplyError),
    #[error("ending denied connections: {0}")]
    Conntrack(#[from] palisade_dataplane::netns::NetnsError),
    #[error("{path}: {source}")]
    State { path: PathBuf, source: std::io::Error },
}

/// How the agent treats the node.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// The network namespace whose kernel is programmed (`None`: this one).
    pub netns: Option<String>,
    pub deny: Option<DenyAction>,
    /// Keep connections a policy change forbids (default: end them).
    pub keep_established: bool,
    /// Where the local pods are remembered across restarts.
    pub state_file: Option<PathBuf>,
    /// This node's name: its Node object gives the pod CIDRs.
    pub node_name: Option<String>,
}

pub struct NodeAgent {
    engine: Engine,
    compiler: NodeCompiler,
    session: NetlinkSession,
    opts: NodeOptions,
    cluster: Cluster,
    local: BTreeMap<EndpointKey, LocalPod>,
    pending: Changes,
    /// The node's own addresses: flows to and from them are never judged.
    node_addrs: Vec<IpAddr>,
    /// The source changed since the last apply: tracked flows may now be
    /// forbidden. (A new pod cannot forbid a flow that exists.)
    judge_flows: bool,
}

impl NodeAgent {
    /// An agent for one node. Local pods remembered in the state file are
    /// taken back (those whose link is gone are dropped); nothing is
    /// applied until [`apply`](Self::apply), which then replaces the table
    /// whole in one transaction: a restart never opens or closes anything
    /// in between.
    pub fn new(opts: NodeOptions) -> Result<Self, NodeError> {
        let netns = opts.netns.as_deref().map(Netns::named);
        let node_addrs = node_addresses(netns.as_ref());
        let mut local = BTreeMap::new();
        if let Some(path) = &opts.state_file {
            local = load(path)?;
            let links = links(netns.as_ref());
            local.retain(|_, pod: &mut LocalPod| links.contains(&pod.host_if));
        }
        Ok(NodeAgent {
            engine: Engine::new(),
            compiler: NodeCompiler::new(Options {
                pod_if_prefix: Some(POD_IF_PREFIX.into()),
                ..Options::new(opts.deny.unwrap_or(DenyAction::Drop))
            }),
            session: NetlinkSession::new(opts.netns.as_deref()),
            opts,
            cluster: Cluster::default(),
            local,
            pending: Changes::default(),
            node_addrs,
            judge_flows: false,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// This node's pod CIDRs, from its Node object (empty if unknown).
    pub fn pod_cidrs(&self) -> Vec<ipnet::IpNet> {
        let name = self.opts.node_name.as_deref();
        self.cluster
            .nodes
            .iter()
            .find(|n| Some(n.name.as_str()) == name)
            .map(|n| n.pod_cidrs.clone())
            .unwrap_or_default()
    }

    pub fn local_pods(&self) -> &BTreeMap<EndpointKey, LocalPod> {
        &self.local
    }

    /// Rules of the node's table (chains, set elements) as last compiled.
    pub fn rule_count(&self) -> (usize, usize) {
        let rs = self.compiler.ruleset();
        (rs.chains.values().map(|(_, r)| r.len()).sum(), rs.sets.values().map(|(_, e)| e.len()).sum())
    }

    /// The state the engine should hold: the source's cluster, with the
    /// addresses the CNI plugin gave the local pods.
    fn resync_engine(&mut self) {
        let mut cluster = self.cluster.clone();
        for ep in &mut cluster.endpoints {
            if let Some(pod) = self.local.get(&ep.key) {
                ep.ips = pod.ips.clone();
            }
        }
        let changes = self.engine.sync_cluster(&cluster);
        self.pending.merge(changes);
    }

    /// A new state from the source.
    pub fn set_cluster(&mut self, cluster: Cluster) {
        self.cluster = cluster;
        self.judge_flows = true;
        self.resync_engine();
    }

    /// The CNI plugin wired `key` here. Fails if the source does not know
    /// the pod: its policy cannot be known, so it must not start. A local
    /// pod holding the same veth or one of the same addresses is stale
    /// (its DEL never reached us: the IPAM hands an address out once) and
    /// is forgotten.
    pub fn pod_added(&mut self, key: EndpointKey, pod: LocalPod) -> Result<(), NodeError> {
        if !self.cluster.endpoints.iter().any(|e| e.key == key) {
            return Err(NodeError::UnknownPod(key));
        }
        let stale: Vec<EndpointKey> = self
            .local
            .iter()
            .filter(|(k, p)| **k != key && (p.host_if == pod.host_if || p.ips.iter().any(|ip| pod.ips.contains(ip))))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &stale {
            self.local.remove(k);
        }
        self.local.insert(key.clone(), pod);
        self.save()?;
        self.resync_engine();
        stale.iter().chain([&key]).for_each(|k| self.touch(k));
        Ok(())
    }

    /// `key` became local or stopped being local: its veth and dispatch
    /// elements change even when the engine's view of it does not.
    fn touch(&mut self, key: &EndpointKey) {
        if let Some(id) = self.engine.endpoint_id(key) {
            self.pending.endpoints_changed.insert(id);
        }
    }

    /// The pod whose node-side veth is `host_if` is gone.
    pub fn pod_deleted(&mut self, host_if: &str) -> Result<(), NodeError> {
        let gone: Vec<EndpointKey> =
            self.local.iter().filter(|(_, p)| p.host_if == host_if).map(|(k, _)| k.clone()).collect();
        if gone.is_empty() {
            return Ok(());
        }
        self.local.retain(|_, p| p.host_if != host_if);
        self.save()?;
        self.resync_engine();
        gone.iter().for_each(|k| self.touch(k));
        Ok(())
    }

    fn save(&self) -> Result<(), NodeError> {
        let Some(path) = &self.opts.state_file else { return Ok(()) };
        let err = |source| NodeError::State { path: path.clone(), source };
        let entries: Vec<(&EndpointKey, &LocalPod)> = self.local.iter().collect();
        let text = serde_json::to_string_pretty(&entries).expect("serializable");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Puts everything pending into the kernel in one transaction, then
    /// (unless established flows are kept) ends the tracked flows the new
    /// policy forbids. On failure the kernel keeps its previous state, and
    /// the next call replaces the whole table. Returns whether anything
    /// changed.
    pub fn apply(&mut self) -> Result<bool, NodeError> {
        let local = &self.local;
        let engine = &self.engine;
        let iface = |id: EndpointId| local.get(&engine.endpoint(id).key).map(|p| p.host_if.clone());
        let update = self.compiler.update(engine, &self.pending, &iface);
        let changed = !update.transaction.ops.is_empty();
        if let Err(e) = update.apply(&mut self.session) {
            self.compiler.reset();
            return Err(e.into());
        }
        self.pending = Changes::default();
        if std::mem::take(&mut self.judge_flows) && !self.opts.keep_established {
            let netns = self.opts.netns.as_deref().map(Netns::named);
            let denies = palisade_dataplane::conntrack::engine_denies(&self.engine, self.node_addrs.clone());
            palisade_dataplane::conntrack::flush_denied(netns.as_ref(), denies)?;
        }
        Ok(changed)
    }
}

/// The local pods remembered by an earlier run (none if never saved).
fn load(path: &Path) -> Result<BTreeMap<EndpointKey, LocalPod>, NodeError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => return Err(NodeError::State { path: path.to_path_buf(), source }),
    };
    let entries: Vec<(EndpointKey, LocalPod)> = serde_json::from_str(&text).map_err(|e| NodeError::State {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    Ok(entries.into_iter().collect())
}

fn ip_json(netns: Option<&Netns>, args: &[&str]) -> serde_json::Value {
    let out = match netns {
        Some(ns) => ns.exec("ip", args, None),
        None => palisade_dataplane::netns::run("ip", args, None),
    };
    out.ok().and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default()
}

/// Link names in the node's namespace.
fn links(netns: Option<&Netns>) -> HashSet<String> {
    let v = ip_json(netns, &["-j", "link", "show"]);
    v.as_array().into_iter().flatten().filter_map(|l| l["ifname"].as_str().map(str::to_string)).collect()
}

/// The node's own addresses, and the pods' gateway addresses it answers for.
fn node_addresses(netns: Option<&Netns>) -> Vec<IpAddr> {
    let v = ip_json(netns, &["-j", "addr", "show"]);
    let mut out: Vec<IpAddr> = v
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
        .collect();
    for gw in [palisade_dataplane::podnet::GATEWAY_V4, palisade_dataplane::podnet::GATEWAY_V6] {
        out.push(gw.parse().expect("gateway address"));
    }
    out
}
