//! One node's state: the cluster as the source last gave it, the pods the
//! CNI plugin wired here (with their veth and addresses), the engine and
//! the incremental compiler, and the kernel session. Every change becomes
//! one kernel transaction; a failed one leaves the last good state in the
//! kernel, and the next apply replaces the table whole.

use std::collections::HashMap;
use std::net::IpAddr;

use palisade_dataplane::nfnetlink::NetlinkSession;
use palisade_dataplane::{ApplyError, DenyAction, NodeCompiler, Options};
use palisade_engine::{Changes, EndpointId, Engine};
use palisade_model::{Cluster, EndpointKey};

/// A pod the CNI plugin wired on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

pub struct NodeAgent {
    engine: Engine,
    compiler: NodeCompiler,
    session: NetlinkSession,
    cluster: Cluster,
    local: HashMap<EndpointKey, LocalPod>,
    pending: Changes,
}

impl NodeAgent {
    /// An agent for the node whose kernel `netns` is (this namespace if
    /// `None`). Nothing is applied until [`apply`](Self::apply).
    pub fn new(netns: Option<&str>, deny: DenyAction) -> Self {
        NodeAgent {
            engine: Engine::new(),
            compiler: NodeCompiler::new(Options { table: "palisade".into(), deny }),
            session: NetlinkSession::new(netns),
            cluster: Cluster::default(),
            local: HashMap::new(),
            pending: Changes::default(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
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
        self.resync_engine();
    }

    /// The CNI plugin wired `key` here. Fails if the source does not know
    /// the pod: its policy cannot be known, so it must not start.
    pub fn pod_added(&mut self, key: EndpointKey, pod: LocalPod) -> Result<(), NodeError> {
        if !self.cluster.endpoints.iter().any(|e| e.key == key) {
            return Err(NodeError::UnknownPod(key));
        }
        self.local.insert(key, pod);
        self.resync_engine();
        Ok(())
    }

    pub fn pod_deleted(&mut self, key: &EndpointKey) {
        if self.local.remove(key).is_some() {
            self.resync_engine();
        }
    }

    /// Puts everything pending into the kernel in one transaction. On
    /// failure the kernel keeps its previous state, and the next call
    /// replaces the whole table.
    pub fn apply(&mut self) -> Result<(), NodeError> {
        let local = &self.local;
        let engine = &self.engine;
        let iface = |id: EndpointId| local.get(&engine.endpoint(id).key).map(|p| p.host_if.clone());
        let update = self.compiler.update(engine, &self.pending, &iface);
        match update.apply(&mut self.session) {
            Ok(()) => {
                self.pending = Changes::default();
                Ok(())
            }
            Err(e) => {
                self.compiler.reset();
                Err(e.into())
            }
        }
    }
}
