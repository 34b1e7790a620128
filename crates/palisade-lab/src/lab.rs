//! A running lab: topology, servers, the engine judging the lab's cluster,
//! and the rules each node's kernel holds. Probes every ordered pair of pods
//! and compares what the kernel did with what the engine says.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_dataplane::netns::Netns;
use palisade_dataplane::nfnetlink::NetlinkSession;
use palisade_dataplane::{ApplyError, DenyAction, NodeCompiler, Options};
use palisade_engine::{Changes, EndpointId, Engine, Flow, FlowEnd};
use palisade_model::{Cluster, EndpointKey, Protocol};
use serde::Serialize;

use crate::agents::{AgentSetup, Agents, AgentsError};
use crate::plan::{Plan, PlanError};
use crate::probe::{Outcome, Probe};
use crate::server::{ServeError, Servers};
use crate::topology::Topology;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("building the lab: {0}")]
    Netns(#[from] palisade_dataplane::netns::NetnsError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("applying the rules on node {node}")]
    Apply {
        node: String,
        #[source]
        source: ApplyError,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Agents(#[from] AgentsError),
}

#[derive(Debug, Clone)]
pub struct LabOptions {
    pub nodes: usize,
    pub deny: DenyAction,
    /// Per probe.
    pub timeout: Duration,
    /// Probes in flight at once.
    pub concurrency: usize,
    /// Keep connections a policy change forbids (default: end them, by
    /// removing exactly their conntrack entries).
    pub keep_established: bool,
    /// Run a `palisade agent` per node and wire pods with `palisade-cni`,
    /// as a deployment does. `None`: the lab wires pods and programs the
    /// kernels itself (the library's tests and benchmarks).
    pub agents: Option<AgentSetup>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            nodes: 2,
            deny: DenyAction::Drop,
            timeout: Duration::from_millis(1000),
            concurrency: 256,
            keep_established: false,
            agents: None,
        }
    }
}

/// One probe's result next to the engine's prediction.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub src: EndpointKey,
    pub dst: EndpointKey,
    pub protocol: Protocol,
    pub port: u16,
    pub address: IpAddr,
    pub outcome: Outcome,
    pub engine_allows: bool,
}

impl ProbeResult {
    /// The kernel did what the engine says. A probe that failed locally or
    /// reached the wrong pod never agrees: it proves nothing about policy.
    pub fn agrees(&self) -> bool {
        !matches!(self.outcome, Outcome::Error(_) | Outcome::WrongPeer(_))
            && self.outcome.allowed() == self.engine_allows
    }
}

pub struct Lab {
    runtime: tokio::runtime::Runtime,
    // Dropped in field order: servers and agents stop before the
    // namespaces go.
    servers: Servers,
    agents: Option<Agents>,
    /// Pods planned by `update` that `apply` starts (agents only).
    new_pods: Vec<usize>,
    pub topology: Topology,
    pub engine: Engine,
    pub cluster: Cluster,
    /// One incremental compiler per node, holding what its kernel has.
    compilers: Vec<NodeCompiler>,
    /// One netfilter netlink socket per node, kept open (see `nfnetlink`).
    sessions: Vec<NetlinkSession>,
    /// Engine changes not yet in the kernels.
    pending: Changes,
    opts: LabOptions,
    served: BTreeSet<(Protocol, u16)>,
    /// Patches the kernel refused, each followed by a full replace.
    pub resyncs: usize,
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The async runtime probes and servers run on.
pub fn runtime() -> Result<tokio::runtime::Runtime, LabError> {
    raise_fd_limit();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(LabError::Runtime)
}

/// Which endpoints run on node `node`, with the node side of their veth
/// (for anti-spoofing).
pub fn pod_iface<'a>(plan: &'a Plan, engine: &'a Engine, node: usize) -> impl Fn(EndpointId) -> Option<String> + 'a {
    move |id| {
        let pod = &plan.pods[plan.pod(&engine.endpoint(id).key)?];
        (pod.node == node).then(|| pod.host_if.clone())
    }
}

/// Compiles node `node`'s whole ruleset and replaces its table atomically.
pub fn apply_node(plan: &Plan, engine: &Engine, node: usize, deny: DenyAction) -> Result<(), LabError> {
    let mut compiler = NodeCompiler::new(Options::new(deny));
    let tx = compiler.resync(engine, &pod_iface(plan, engine, node));
    tx.apply_in(Some(&plan.nodes[node].netns))
        .map_err(|e| LabError::Apply { node: plan.nodes[node].name.clone(), source: e.into() })
}

/// Ends established flows the engine now denies, on every node.
pub fn end_denied_flows(plan: &Plan, engine: &Engine) -> Result<usize, LabError> {
    let mut removed = 0;
    for node in &plan.nodes {
        let own: Vec<IpAddr> = vec![
            node.underlay_v4.into(),
            node.underlay_v6.into(),
            palisade_dataplane::podnet::GATEWAY_V4.parse().expect("gateway address"),
            palisade_dataplane::podnet::GATEWAY_V6.parse().expect("gateway address"),
        ];
        let denies = palisade_dataplane::conntrack::engine_denies(engine, own);
        removed += palisade_dataplane::conntrack::flush_denied(Some(&Netns::named(&node.netns)), &denies)?;
    }
    Ok(removed)
}

impl Lab {
    /// Builds the cluster's network, starts a server in every pod on its
    /// declared ports and on `probe_ports`. Without agents no policy is
    /// applied yet; with agents (`opts.agents`), every pod is wired through
    /// `palisade-cni`, so the cluster's policies are in force on return.
    pub fn start(
        cluster: &Cluster,
        run_id: &str,
        probe_ports: &[(Protocol, u16)],
        opts: LabOptions,
        progress: impl FnMut(usize, usize),
    ) -> Result<Lab, LabError> {
        let runtime = runtime()?;
        let (mut plan, lab_cluster) = Plan::new(cluster, opts.nodes, run_id)?;
        if opts.agents.is_some() {
            for pod in &mut plan.pods {
                pod.host_if = palisade_cni::plugin::host_ifname(&crate::agents::container_id(pod), "eth0");
            }
        }
        // Before the first namespace exists: Ctrl-C during a long build
        // must not leave half a lab behind.
        teardown_on_signal(&runtime, plan.clone());
        let topology = Topology::build_with(plan, progress, opts.agents.is_none())?;
        // Every pod serves every port any pod declares, and the probe ports:
        // a probe that fails then fails because of policy, never for want
        // of a listener.
        let mut served: BTreeSet<(Protocol, u16)> = probe_ports.iter().copied().collect();
        for ep in &lab_cluster.endpoints {
            served.extend(ep.ports.iter().map(|p| (p.protocol, p.port)));
        }
        let mut servers = Servers::default();
        {
            let _guard = runtime.enter();
            for ep in &lab_cluster.endpoints {
                let Some(i) = topology.plan.pod(&ep.key) else { continue };
                servers.serve(&topology.pod_netns(i), &ep.key.to_string(), &served)?;
            }
        }
        let agents = match &opts.agents {
            None => None,
            Some(setup) => {
                let plan = &topology.plan;
                let agents = Agents::start(setup.clone(), plan, &lab_cluster, opts.deny, opts.keep_established)?;
                agents.wire(plan, &(0..plan.pods.len()).collect::<Vec<_>>())?;
                Some(agents)
            }
        };
        let engine = Engine::from_cluster(&lab_cluster);
        let table = Options::new(opts.deny);
        let compilers = topology.plan.nodes.iter().map(|_| NodeCompiler::new(table.clone())).collect();
        let sessions = topology.plan.nodes.iter().map(|n| NetlinkSession::new(Some(&n.netns))).collect();
        Ok(Lab {
            runtime,
            servers,
            agents,
            new_pods: Vec::new(),
            topology,
            engine,
            cluster: lab_cluster,
            compilers,
            sessions,
            pending: Changes::default(),
            opts,
            served,
            resyncs: 0,
        })
    }

    /// Every (protocol, port) some pod serves.
    pub fn served_ports(&self) -> &BTreeSet<(Protocol, u16)> {
        &self.served
    }

    /// Puts the engine's current decisions into every node's kernel: the
    /// first time as a full table, then as patches of what changed. One
    /// transaction per node.
    pub fn apply(&mut self) -> Result<Duration, LabError> {
        let started = Instant::now();
        let changes = std::mem::take(&mut self.pending);
        if self.agents.is_some() {
            // The agents patch their kernels and end denied flows. New pods
            // start after their objects are published, as in a cluster:
            // their namespace and server first, then CNI ADD.
            self.publish()?;
            let new = self.start_new_pods()?;
            self.wire_pods(&new)?;
            return Ok(started.elapsed());
        }
        let plan = &self.topology.plan;
        for (node, (compiler, session)) in self.compilers.iter_mut().zip(&mut self.sessions).enumerate() {
            let iface = pod_iface(plan, &self.engine, node);
            let update = compiler.update(&self.engine, &changes, &iface);
            let netns = &plan.nodes[node].netns;
            let error = |e: ApplyError| LabError::Apply { node: plan.nodes[node].name.clone(), source: e };
            match update.apply(session) {
                Ok(()) => {}
                // A refused patch changed nothing (one transaction): resync
                // by replacing the table atomically, and say so.
                Err(e) if update.full.is_none() => {
                    self.resyncs += 1;
                    eprintln!(
                        "palisade lab: patch refused, replacing the table: {e}: {:?}",
                        std::error::Error::source(&e)
                    );
                    compiler.reset();
                    compiler.resync(&self.engine, &iface).apply_in(Some(netns)).map_err(|e| error(e.into()))?;
                }
                Err(e) => {
                    compiler.reset();
                    return Err(error(e));
                }
            }
        }
        if !self.opts.keep_established {
            end_denied_flows(&self.topology.plan, &self.engine)?;
        }
        Ok(started.elapsed())
    }

    /// Replaces the cluster's namespaces, labels and policies (same pods):
    /// the engine recompiles and the next [`apply`](Self::apply) patches
    /// the kernels.
    /// With agents, pods may come and go too: a pod no longer in `cluster`
    /// is deleted at once (CNI DEL, namespace gone); a new one is planned
    /// here and started by `apply`.
    pub fn update(&mut self, cluster: &Cluster) -> Result<(), LabError> {
        if let Some(agents) = &self.agents {
            let wanted: BTreeSet<&EndpointKey> =
                cluster.endpoints.iter().filter(|e| !e.host_network).map(|e| &e.key).collect();
            let gone: Vec<EndpointKey> =
                self.topology.plan.pods.iter().filter(|p| !wanted.contains(&p.key)).map(|p| p.key.clone()).collect();
            for key in gone {
                let plan = &mut self.topology.plan;
                let i = plan.pod(&key).expect("planned");
                agents.unwire(plan, &plan.pods[i])?;
                self.servers.stop(&key.to_string());
                let pod = plan.remove_pod(&key).expect("planned");
                self.new_pods.retain(|&n| n != i);
                self.new_pods.iter_mut().filter(|n| **n > i).for_each(|n| *n -= 1);
                self.topology.remove_pod(&pod)?;
            }
            let plan = &mut self.topology.plan;
            for ep in cluster.endpoints.iter().filter(|e| !e.host_network) {
                if plan.pod(&ep.key).is_none() {
                    let i = plan.add_pod(ep)?;
                    let pod = &mut plan.pods[i];
                    pod.host_if = palisade_cni::plugin::host_ifname(&crate::agents::container_id(pod), "eth0");
                    self.new_pods.push(i);
                }
            }
        }
        let next = self.topology.plan.adopt(cluster)?;
        self.pending.merge(self.engine.sync_cluster(&next));
        self.cluster = next;
        Ok(())
    }

    /// Forgets what the kernels hold, as a freshly started process would:
    /// the next [`apply`](Self::apply) replaces each table atomically.
    /// With agents: kills each node's agent (SIGKILL) and starts a new one,
    /// which takes the node over.
    pub fn forget_rules(&mut self) -> Result<(), LabError> {
        self.compilers.iter_mut().for_each(NodeCompiler::reset);
        if let Some(agents) = &mut self.agents {
            for node in 0..self.topology.plan.nodes.len() {
                agents.restart(node)?;
            }
        }
        Ok(())
    }

    /// With agents: writes the lab's cluster for them and waits until
    /// every node's kernel holds it.
    pub fn publish(&mut self) -> Result<(), LabError> {
        self.pending = Changes::default();
        if let Some(agents) = &self.agents {
            agents.publish(&self.cluster)?;
        }
        Ok(())
    }

    /// Creates the namespaces of the pods `update` added, with their
    /// servers running, but no network yet; returns their indices.
    pub fn start_new_pods(&mut self) -> Result<Vec<usize>, LabError> {
        let new = std::mem::take(&mut self.new_pods);
        for &i in &new {
            let ns = self.topology.add_pod(i)?;
            let _guard = self.runtime.enter();
            self.servers.serve(&ns, &self.topology.plan.pods[i].key.to_string(), &self.served)?;
        }
        Ok(new)
    }

    /// CNI ADD for pods `pods` (plan indices), through the agents.
    pub fn wire_pods(&self, pods: &[usize]) -> Result<(), LabError> {
        if let Some(agents) = &self.agents {
            agents.wire(&self.topology.plan, pods)?;
        }
        Ok(())
    }

    /// The agents, when the lab runs them.
    pub fn agents(&mut self) -> Option<&mut Agents> {
        self.agents.as_mut()
    }

    /// Probes every ordered pair of distinct pods on every port, in
    /// parallel, and judges each with the engine.
    pub fn probe(&self, ports: &[(Protocol, u16)]) -> Vec<ProbeResult> {
        probe_pairs(&self.runtime, &self.topology.plan, &self.engine, ports, &self.opts)
    }
}

/// On SIGINT or SIGTERM: delete the lab's namespaces and exit 130, so an
/// interrupted run leaves nothing behind.
fn teardown_on_signal(runtime: &tokio::runtime::Runtime, plan: Plan) {
    runtime.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        eprintln!("\ninterrupted: removing the lab's network namespaces");
        crate::topology::delete_plan(&plan);
        std::process::exit(130);
    });
}

/// Probes every ordered pair of distinct pods of `plan` on every port, in
/// parallel, each bounded by `opts.timeout`, and judges each with `engine`.
pub fn probe_pairs(
    runtime: &tokio::runtime::Runtime,
    plan: &Plan,
    engine: &Engine,
    ports: &[(Protocol, u16)],
    opts: &LabOptions,
) -> Vec<ProbeResult> {
    let ids: Vec<Option<EndpointId>> = plan.pods.iter().map(|p| engine.endpoint_id(&p.key)).collect();
    let mut jobs = Vec::new();
    for (s, src) in plan.pods.iter().enumerate() {
        for (d, dst) in plan.pods.iter().enumerate() {
            if s == d {
                continue;
            }
            let src_v4 = src.ips.iter().any(IpAddr::is_ipv4);
            let Some(address) = dst.ips.iter().find(|ip| ip.is_ipv4() == src_v4).copied() else { continue };
            for &(protocol, port) in ports {
                let engine_allows = match (ids[s], ids[d]) {
                    (Some(a), Some(b)) => {
                        engine.allows(&Flow { src: FlowEnd::Endpoint(a), dst: FlowEnd::Endpoint(b), protocol, port })
                    }
                    _ => false,
                };
                let probe =
                    Probe { src: Netns::named(&src.netns), dst: address, protocol, port, expect: dst.key.to_string() };
                jobs.push((src.key.clone(), dst.key.clone(), probe, engine_allows));
            }
        }
    }
    let timeout = opts.timeout;
    let limit = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    runtime.block_on(async move {
        let mut handles = Vec::with_capacity(jobs.len());
        for (src, dst, probe, engine_allows) in jobs {
            let limit = limit.clone();
            handles.push(tokio::spawn(async move {
                let _permit = limit.acquire_owned().await.expect("semaphore open");
                let outcome = probe.run(timeout).await;
                ProbeResult {
                    src,
                    dst,
                    protocol: probe.protocol,
                    port: probe.port,
                    address: probe.dst,
                    outcome,
                    engine_allows,
                }
            }));
        }
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.expect("probe task"));
        }
        out
    })
}
