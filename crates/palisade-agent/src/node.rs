//! One node's state: the cluster as the source last gave it, the pods the
//! CNI plugin wired here (with their veth and addresses), the engine and
//! the incremental compiler, and the kernel session. Every change becomes
//! one kernel transaction; a failed one leaves the last good state in the
//! kernel, and the next apply replaces the table whole.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use palisade_dataplane::ctnetlink::{BackgroundDump, Conntrack};
use palisade_dataplane::netns::Netns;
use palisade_dataplane::nfnetlink::NetlinkSession;
use palisade_dataplane::{ApplyError, DenyAction, NodeCompiler, Options};
use palisade_engine::{Changes, EndpointId, Engine};
use palisade_model::load::Object;
use palisade_model::{Cluster, EndpointKey, Namespace, ObjectRef};

use crate::source::Update;
use serde::{Deserialize, Serialize};

/// How palisade-cni names the node side of every pod's veth
/// (`palisade_cni::plugin::host_ifname`).
pub const POD_IF_PREFIX: &str = palisade_dataplane::podnet::POD_IF_PREFIX;

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
    #[error("pod {0}'s object cannot be read, so its policy is unknown: {1}")]
    UnreadablePod(EndpointKey, String),
    #[error("{0}")]
    OtherPod(Box<OtherPod>),
    #[error("applying the rules: {0}")]
    Apply(#[from] ApplyError),
    #[error("ending denied connections: {0}")]
    Conntrack(#[from] palisade_dataplane::netns::NetnsError),
    #[error("{path}: {source}")]
    State { path: PathBuf, source: std::io::Error },
    #[error("the sender check on {host_if}: {source}")]
    SenderCheck { host_if: String, source: palisade_dataplane::netns::NetnsError },
}

/// A pod known under the name the runtime gave, but with another UID.
#[derive(Debug, thiserror::Error)]
#[error("pod {key} in this agent's state is another pod of that name (uid {have}; the runtime's is {want}); its policy is unknown")]
pub struct OtherPod {
    pub key: EndpointKey,
    pub have: String,
    pub want: String,
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
    /// The conntrack socket of the node, opened on first use.
    ct: Option<Conntrack>,
    /// Dumps the conntrack table off the agent's loop.
    dumper: Option<BackgroundDump>,
    /// Moves confirmed pods' sender checks from tc filters to tcx, off
    /// the agent's loop (each tcx attach waits an RCU grace period).
    promoter: Option<Promoter>,
    opts: NodeOptions,
    cluster: Cluster,
    local: BTreeMap<EndpointKey, LocalPod>,
    pending: Changes,
    /// The node's own addresses: flows to and from them are never judged.
    node_addrs: Vec<IpAddr>,
    /// The addresses the source gave the local pods (the engine holds
    /// their CNI addresses), restored when a pod stops being local.
    source_ips: HashMap<EndpointKey, Vec<IpAddr>>,
    /// The source changed since the last apply: once the change is in the
    /// kernel, tracked flows may be forbidden. (A new pod cannot forbid a
    /// flow that exists.)
    source_changed: bool,
    /// The kernel holds a change that may forbid tracked flows: they wait
    /// to be judged.
    judge_flows: bool,
    /// (veth, address) of local pods found in the kernel at start.
    adopt: Vec<(String, IpAddr)>,
    /// The local pods taken back at start have their veth's sender check
    /// (a pod wired by an older plugin may lack it).
    checks_ensured: bool,
    /// Addresses of local pods that are gone: their tracked flows are
    /// removed at the start of the next apply, before its kernel change
    /// (see `conntrack::forget_addresses`).
    forget: Vec<IpAddr>,
    warnings: Vec<String>,
    /// Objects the source cannot read (the pods among them are refused).
    unreadable: BTreeMap<ObjectRef, String>,
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
        let mut warnings = Vec::new();
        if let Some(path) = &opts.state_file {
            // A lost or damaged file must not cost running pods their
            // network: the kernel's own record (below) fills in.
            local = load(path).unwrap_or_else(|e| {
                warnings.push(format!("{e}; taking the local pods from the kernel instead"));
                BTreeMap::new()
            });
        }
        // Pods in the kernel's anti-spoofing sets: a previous agent's.
        let adopt = kernel_pods(netns.as_ref());
        // Only a link known to be gone drops a pod (if `ip` fails, keep all).
        let mut forget = Vec::new();
        if let Some(links) = links(netns.as_ref()) {
            local.retain(|_, pod: &mut LocalPod| {
                let up = links.contains(&pod.host_if);
                if !up {
                    forget.extend(pod.ips.iter().copied());
                }
                up
            });
        }
        Ok(NodeAgent {
            engine: Engine::new(),
            compiler: NodeCompiler::new(Options {
                pod_if_prefix: Some(POD_IF_PREFIX.into()),
                ..Options::new(opts.deny.unwrap_or(DenyAction::Drop))
            }),
            session: NetlinkSession::new(opts.netns.as_deref()),
            ct: None,
            dumper: None,
            promoter: None,
            opts,
            cluster: Cluster::default(),
            local,
            pending: Changes::default(),
            node_addrs,
            source_ips: HashMap::new(),
            source_changed: false,
            judge_flows: false,
            adopt,
            checks_ensured: false,
            forget,
            warnings,
            unreadable: BTreeMap::new(),
        })
    }

    /// What the agent could not take back as it was (to be logged).
    pub fn take_warnings(&mut self) -> Vec<String> {
        if let Some(p) = &self.promoter {
            self.warnings.extend(p.failures());
        }
        std::mem::take(&mut self.warnings)
    }

    /// Local pods the kernel knows (veth and address) but the state file
    /// did not: matched to endpoints of the first cluster by address.
    fn adopt_kernel_pods(&mut self, cluster: &Cluster) {
        let adopt = std::mem::take(&mut self.adopt);
        if adopt.is_empty() {
            return;
        }
        let by_ip: HashMap<IpAddr, &EndpointKey> =
            cluster.endpoints.iter().flat_map(|e| e.ips.iter().map(move |ip| (*ip, &e.key))).collect();
        let known: HashSet<&str> = self.local.values().map(|p| p.host_if.as_str()).collect();
        let mut found: BTreeMap<EndpointKey, LocalPod> = BTreeMap::new();
        for (host_if, ip) in &adopt {
            if known.contains(host_if.as_str()) {
                continue;
            }
            match by_ip.get(ip) {
                Some(key) if !self.local.contains_key(*key) => {
                    let pod = found.entry((*key).clone()).or_insert(LocalPod { host_if: host_if.clone(), ips: vec![] });
                    pod.ips.push(*ip);
                }
                _ => self.warnings.push(format!("{host_if} ({ip}) in the kernel matches no pod of the cluster")),
            }
        }
        if !found.is_empty() {
            self.checks_ensured = false;
            self.local.extend(found);
            if let Err(e) = self.save() {
                self.warnings.push(e.to_string());
            }
        }
    }

    /// Attaches the sender check (`palisade_dataplane::sender`) to every
    /// local pod's veth, idempotently: pods taken back from the state file
    /// or the kernel may have been wired before the check existed. A pod
    /// whose veth is gone is skipped; any other failure is an error, and
    /// the kernel keeps its previous table.
    fn ensure_sender_checks(&mut self) -> Result<(), NodeError> {
        let netns = self.opts.netns.as_deref().map(Netns::named);
        let mut isolate = Vec::new();
        for (key, pod) in &self.local {
            if let Err(source) = self.attach_check(&pod.host_if, &pod.ips) {
                // A vanished veth is not a failure: its pod is on its way out.
                let present = links(netns.as_ref()).is_none_or(|l| l.contains(&pod.host_if));
                if !present {
                    continue;
                }
                // One veth whose programs cannot be told apart: that pod
                // alone is cut off, not the node.
                if is_unverifiable(&source) {
                    isolate.push((key.clone(), source.to_string()));
                    continue;
                }
                return Err(NodeError::SenderCheck { host_if: pod.host_if.clone(), source });
            }
        }
        for (key, why) in isolate {
            if let Some(pod) = self.local.remove(&key) {
                self.warnings.push(format!(
                    "pod {key} is cut off (its veth {} matches no confirmed pod now): {why}",
                    pod.host_if
                ));
                self.forget.extend(pod.ips);
                self.refresh_endpoint(&key);
            }
            self.save()?;
        }
        self.checks_ensured = true;
        Ok(())
    }

    /// Attaches the sender check to a local pod's veth, in the node's
    /// namespace.
    fn attach_check(
        &self,
        host_if: &str,
        ips: &[std::net::IpAddr],
    ) -> Result<(), palisade_dataplane::netns::NetnsError> {
        let ns = Netns::named(self.opts.netns.as_deref().unwrap_or("/proc/thread-self/ns/net"));
        // On tcx, and a plugin's tc filter (if any) removed.
        palisade_dataplane::sender::promote_in(&ns, host_if, ips)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The cluster as the source gave it (local pods with their CNI
    /// addresses).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
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

    /// A new state from the source. The engine holds it with the
    /// addresses the CNI plugin gave the local pods.
    pub fn set_cluster(&mut self, mut cluster: Cluster) {
        self.adopt_kernel_pods(&cluster);
        self.source_ips.clear();
        for ep in &mut cluster.endpoints {
            if let Some(pod) = self.local.get(&ep.key) {
                let source = std::mem::replace(&mut ep.ips, pod.ips.clone());
                self.source_ips.insert(ep.key.clone(), source);
            }
        }
        let changes = self.engine.sync_cluster(&cluster);
        self.pending.merge(changes);
        self.cluster = cluster;
        self.source_changed = true;
    }

    /// The objects the source cannot read now.
    pub fn set_unreadable(&mut self, unreadable: BTreeMap<ObjectRef, String>) {
        self.unreadable = unreadable;
    }

    /// A new state from the source, whole or as changed objects.
    pub fn update(&mut self, update: Update) {
        match update {
            Update::Full(cluster) => self.set_cluster(cluster),
            Update::Objects { upserts, deletes } => self.apply_objects(upserts, deletes),
        }
    }

    /// Plain objects changed: the cluster and the engine take exactly
    /// them (no whole-cluster comparison).
    fn apply_objects(&mut self, upserts: Vec<Object>, deletes: Vec<ObjectRef>) {
        let c = &mut self.cluster;
        for r in deletes {
            let ns = r.namespace.clone().unwrap_or_default();
            match r.kind.as_str() {
                "Pod" => {
                    let key = EndpointKey::pod(&ns, &r.name);
                    if let Ok(i) = c.endpoints.binary_search_by(|e| e.key.cmp(&key)) {
                        c.endpoints.remove(i);
                    }
                    self.source_ips.remove(&key);
                    self.engine.remove_endpoint(&key);
                }
                "NetworkPolicy" => {
                    c.policies.retain(|p| !(p.namespace == ns && p.name == r.name));
                    self.engine.remove_policy(&ns, &r.name);
                }
                "Namespace" => {
                    // Objects may still be in it: it keeps the API server's label.
                    let implied = Namespace::implied(&r.name);
                    self.engine.upsert_namespace(&implied);
                    c.namespaces.insert(r.name.clone(), implied);
                }
                "Node" => c.nodes.retain(|n| n.name != r.name),
                "Service" => c.services.retain(|s| !(s.namespace == ns && s.name == r.name)),
                _ => {}
            }
        }
        for object in upserts {
            match object {
                Object::Endpoint(mut ep) => {
                    let key = ep.key.clone();
                    if let Some(pod) = self.local.get(&key) {
                        let source = std::mem::replace(&mut ep.ips, pod.ips.clone());
                        self.source_ips.insert(key.clone(), source);
                    }
                    self.engine.upsert_endpoint(ep.clone());
                    match c.endpoints.binary_search_by(|e| e.key.cmp(&key)) {
                        Ok(i) => c.endpoints[i] = ep,
                        Err(i) => c.endpoints.insert(i, ep),
                    }
                }
                Object::NetworkPolicy(p) => {
                    self.engine.upsert_policy(p.clone());
                    let at = c.policies.binary_search_by(|q| (&q.namespace, &q.name).cmp(&(&p.namespace, &p.name)));
                    match at {
                        Ok(i) => c.policies[i] = p,
                        Err(i) => c.policies.insert(i, p),
                    }
                }
                Object::Namespace(ns) => {
                    self.engine.upsert_namespace(&ns);
                    c.namespaces.insert(ns.name.clone(), ns);
                }
                Object::Node(n) => {
                    c.nodes.retain(|m| m.name != n.name);
                    c.nodes.push(n);
                }
                Object::Service(svc) => {
                    c.services.retain(|t| !(t.namespace == svc.namespace && t.name == svc.name));
                    c.services.push(svc);
                }
            }
        }
        let changes = self.engine.compile();
        self.pending.merge(changes);
        self.source_changed = true;
    }

    /// Puts endpoint `key` into the engine as the source has it, with its
    /// CNI addresses if it is local (one endpoint: no whole-cluster sync).
    fn refresh_endpoint(&mut self, key: &EndpointKey) {
        let Ok(i) = self.cluster.endpoints.binary_search_by(|e| e.key.cmp(key)) else { return };
        let ep = &mut self.cluster.endpoints[i];
        match self.local.get(key) {
            Some(pod) => {
                let source = std::mem::replace(&mut ep.ips, pod.ips.clone());
                self.source_ips.entry(key.clone()).or_insert(source);
            }
            None => {
                if let Some(source) = self.source_ips.remove(key) {
                    ep.ips = source;
                }
            }
        }
        self.engine.upsert_endpoint(ep.clone());
        let changes = self.engine.compile();
        self.pending.merge(changes);
        self.touch(key);
    }

    /// The CNI plugin wired `key` here. Fails if the source does not know
    /// the pod (or, given the runtime's `uid`, knows another pod of that
    /// name): its policy cannot be known, so it must not start. A local
    /// pod holding the same veth or one of the same addresses is stale
    /// (its DEL never reached us: the IPAM hands an address out once) and
    /// is forgotten.
    pub fn pod_added(
        &mut self,
        key: EndpointKey,
        uid: Option<&str>,
        pod: LocalPod,
        check_attached: bool,
    ) -> Result<(), NodeError> {
        let found = self.cluster.endpoints.binary_search_by(|e| e.key.cmp(&key));
        if let (Ok(i), Some(want)) = (found, uid) {
            // A pod created again under the same name, its old object
            // still here: the new one's policy is not known yet.
            if let Some(have) = self.cluster.endpoints[i].uid.as_deref().filter(|have| *have != want) {
                return Err(NodeError::OtherPod(Box::new(OtherPod {
                    key,
                    have: have.to_string(),
                    want: want.to_string(),
                })));
            }
        }
        if found.is_err() {
            let object =
                ObjectRef { kind: "Pod".into(), namespace: Some(key.namespace.clone()), name: key.name.clone() };
            return Err(match self.unreadable.get(&object) {
                Some(why) => NodeError::UnreadablePod(key, why.clone()),
                None => NodeError::UnknownPod(key),
            });
        }
        let stale: Vec<EndpointKey> = self
            .local
            .iter()
            .filter(|(k, p)| **k != key && (p.host_if == pod.host_if || p.ips.iter().any(|ip| pod.ips.contains(ip))))
            .map(|(k, _)| k.clone())
            .collect();
        // Confirmed means checked: established packets pass the forward
        // chain unchecked. Our plugin attaches the sender check before the
        // pod's end comes up and says so (`check_attached`); for any other
        // plugin the agent attaches it, or refuses the pod.
        if !check_attached {
            self.attach_check(&pod.host_if, &pod.ips)
                .map_err(|source| NodeError::SenderCheck { host_if: pod.host_if.clone(), source })?;
        }
        for k in &stale {
            if let Some(old) = self.local.remove(k) {
                // The DEL was missed: its flows go before the new pod is
                // confirmed (`apply` forgets first).
                self.forget.extend(old.ips);
            }
        }
        if check_attached {
            // Our plugin attached it as a tc filter: to tcx, in the background.
            let netns = self.opts.netns.clone();
            self.promoter.get_or_insert_with(|| Promoter::spawn(netns)).promote(&pod.host_if, &pod.ips);
        }
        self.local.insert(key.clone(), pod);
        self.save()?;
        for k in stale.iter().chain([&key]) {
            self.refresh_endpoint(k);
        }
        Ok(())
    }

    /// `key` became local or stopped being local: its veth and dispatch
    /// elements change even when the engine's view of it does not.
    fn touch(&mut self, key: &EndpointKey) {
        if let Some(id) = self.engine.endpoint_id(key) {
            self.pending.endpoints_changed.insert(id);
        }
    }

    /// The pod whose node-side veth is `host_if` is gone; returns which
    /// (none: never confirmed here, or deleted already).
    pub fn pod_deleted(&mut self, host_if: &str) -> Result<Vec<EndpointKey>, NodeError> {
        let gone: Vec<EndpointKey> =
            self.local.iter().filter(|(_, p)| p.host_if == host_if).map(|(k, _)| k.clone()).collect();
        if gone.is_empty() {
            return Ok(gone);
        }
        let forget = &mut self.forget;
        self.local.retain(|_, p| {
            if p.host_if == host_if {
                forget.extend(p.ips.iter().copied());
            }
            p.host_if != host_if
        });
        self.save()?;
        for k in &gone {
            self.refresh_endpoint(k);
        }
        Ok(gone)
    }

    fn save(&self) -> Result<(), NodeError> {
        let Some(path) = &self.opts.state_file else { return Ok(()) };
        let err = |source| NodeError::State { path: path.clone(), source };
        let entries: Vec<(&EndpointKey, &LocalPod)> = self.local.iter().collect();
        let text = serde_json::to_string(&entries).expect("serializable");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Puts everything pending into the kernel in one transaction. On
    /// failure the kernel keeps its previous state, and the next call
    /// replaces the whole table. Returns whether anything changed. The
    /// tracked flows the new policy forbids are ended by
    /// [`end_denied_flows_in_background`](Self::end_denied_flows_in_background), right after.
    pub fn apply(&mut self) -> Result<bool, NodeError> {
        if !self.checks_ensured {
            self.ensure_sender_checks()?;
        }
        // Flows of pods that are gone go first: a pod confirmed by this
        // apply may have been given one of their addresses.
        if !self.forget.is_empty() {
            let forget = std::mem::take(&mut self.forget);
            let failed = match self.conntrack() {
                Ok(ct) => palisade_dataplane::conntrack::forget_addresses_on(ct, &forget),
                Err(e) => vec![format!("removing the flows of {forget:?}: {e}")],
            };
            if !failed.is_empty() {
                self.ct = None; // opened again next time
            }
            self.warnings.extend(failed);
        }
        let local = &self.local;
        let engine = &self.engine;
        let node_name = self.opts.node_name.as_deref();
        // A pod scheduled here but not wired yet is local without a veth:
        // its chains are in the kernel before its CNI ADD, which then only
        // adds set elements (netlink, no `nft` run). Its veth stays
        // dropped until then (the `pal*` rule).
        let iface = |id: EndpointId| {
            let ep = engine.endpoint(id);
            match local.get(&ep.key) {
                Some(p) => Some(p.host_if.clone()),
                None => (node_name.is_some() && ep.node.as_deref() == node_name).then(String::new),
            }
        };
        let update = self.compiler.update(engine, &self.pending, &iface);
        let changed = !update.transaction.ops.is_empty();
        if let Err(e) = update.apply(&mut self.session) {
            self.compiler.reset();
            return Err(e.into());
        }
        self.pending = Changes::default();
        // Only now may the flows be judged: judged earlier (the change
        // still in the debounce), flows the old rules still accept would
        // be ended, come back as new under those rules, and stay.
        if std::mem::take(&mut self.source_changed) {
            self.judge_flows = true;
        }
        Ok(changed)
    }

    /// Ends the tracked flows the policy in the kernel forbids (unless
    /// established flows are kept), without waiting: starts a dump on a
    /// thread when flows wait to be judged (it walks the kernel's whole
    /// conntrack hash, shared by every namespace: ~10 ms here, which new
    /// rules need not wait for), and judges the dump that has arrived with
    /// the policy in the kernel by then (a dump that arrives while a newer
    /// change waits to be applied is dropped and taken again after it).
    /// `Some(ended)` once a judgement is done; on failure the flows are
    /// judged again next time.
    pub fn end_denied_flows_in_background(&mut self) -> Result<Option<usize>, NodeError> {
        let netns = self.opts.netns.as_deref().map(Netns::named);
        let dumper = self.dumper.get_or_insert_with(|| BackgroundDump::spawn(netns));
        if let Some(dumped) = dumper.poll() {
            let entries = match dumped {
                Ok(entries) => entries,
                Err(e) => {
                    self.judge_flows = true; // again, next time
                    let source = std::io::Error::other(e);
                    return Err(
                        palisade_dataplane::netns::NetnsError::Io { what: "conntrack dump".into(), source }.into()
                    );
                }
            };
            if !self.pending.is_empty() || self.source_changed {
                // The engine is ahead of the kernel: judge after the next apply.
                self.judge_flows = true;
                return Ok(None);
            }
            self.conntrack()?;
            let ct = self.ct.as_mut().expect("opened");
            let denies = palisade_dataplane::conntrack::engine_denies(&self.engine, self.node_addrs.clone());
            let ended = palisade_dataplane::conntrack::delete_denied(ct, &entries, denies).inspect_err(|_| {
                self.ct = None;
                self.judge_flows = true;
            })?;
            return Ok(Some(ended));
        }
        // Dumped only while the kernel holds what the engine holds: flows
        // opened after the dump went through the new rules.
        let wanted = self.judge_flows && !self.opts.keep_established && self.pending.is_empty() && !self.source_changed;
        if wanted && dumper.request() {
            self.judge_flows = false;
        }
        Ok(None)
    }

    /// The node's conntrack socket, kept open (closing one costs an RCU
    /// grace period, ~10 ms).
    fn conntrack(&mut self) -> Result<&mut Conntrack, palisade_dataplane::netns::NetnsError> {
        if self.ct.is_none() {
            self.ct = Some(Conntrack::open(self.opts.netns.as_deref().map(Netns::named).as_ref())?);
        }
        Ok(self.ct.as_mut().expect("just opened"))
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

/// Link names in the node's namespace (`None` if they cannot be listed).
fn links(netns: Option<&Netns>) -> Option<HashSet<String>> {
    let v = ip_json(netns, &["-j", "link", "show"]);
    let links = v.as_array()?;
    Some(links.iter().filter_map(|l| l["ifname"].as_str().map(str::to_string)).collect())
}

/// (veth, address) pairs of the table's anti-spoofing sets: the local pods
/// the kernel enforces for, whoever programmed it.
fn kernel_pods(netns: Option<&Netns>) -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    for set in ["pod_src_v4", "pod_src_v6"] {
        let args = ["-j", "list", "set", "inet", "palisade", set];
        let text = match netns {
            Some(ns) => ns.exec("nft", &args, None),
            None => palisade_dataplane::netns::run("nft", &args, None),
        };
        let Ok(v) = text.map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap_or_default()) else { continue };
        for item in v["nftables"].as_array().into_iter().flatten() {
            for elem in item["set"]["elem"].as_array().into_iter().flatten() {
                let concat = if elem["concat"].is_array() { &elem["concat"] } else { &elem["elem"]["val"]["concat"] };
                if let (Some(iface), Some(ip)) =
                    (concat[0].as_str(), concat[1].as_str().and_then(|s| s.parse::<IpAddr>().ok()))
                {
                    out.push((iface.to_string(), ip));
                }
            }
        }
    }
    out
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

/// The sender check's failure because a veth carries several programs
/// whose names cannot be read (no CAP_SYS_ADMIN).
fn is_unverifiable(e: &palisade_dataplane::netns::NetnsError) -> bool {
    let palisade_dataplane::netns::NetnsError::Io { source, .. } = e else { return false };
    let bpf = source.get_ref().and_then(|inner| inner.downcast_ref::<palisade_dataplane::bpf::BpfError>());
    matches!(bpf, Some(palisade_dataplane::bpf::BpfError::Unverifiable { .. }))
}

/// A thread that moves sender checks to tcx ([`palisade_dataplane::sender::promote`]).
/// It waits for a pause in pod starts: a tcx attach holds the kernel's
/// rtnl lock through an RCU grace period (~10 ms here), which would stall
/// the wiring of the pods starting meanwhile.
struct Promoter {
    jobs: std::sync::mpsc::Sender<(String, Vec<IpAddr>)>,
    failed: std::sync::mpsc::Receiver<String>,
    last_add: std::sync::Arc<std::sync::Mutex<std::time::Instant>>,
}

/// How long pod starts must pause before checks move to tcx.
const PROMOTE_AFTER_QUIET: std::time::Duration = std::time::Duration::from_millis(300);

impl Promoter {
    fn spawn(netns: Option<String>) -> Promoter {
        let (jobs, incoming) = std::sync::mpsc::channel::<(String, Vec<IpAddr>)>();
        let (report, failed) = std::sync::mpsc::channel();
        let last_add = std::sync::Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
        let quiet_since = last_add.clone();
        std::thread::spawn(move || {
            let ns = Netns::named(netns.as_deref().unwrap_or("/proc/thread-self/ns/net"));
            for (dev, ips) in incoming {
                loop {
                    let since = quiet_since.lock().expect("lock").elapsed();
                    match PROMOTE_AFTER_QUIET.checked_sub(since) {
                        Some(wait) if !wait.is_zero() => std::thread::sleep(wait),
                        _ => break,
                    }
                }
                if let Err(e) = palisade_dataplane::sender::promote_in(&ns, &dev, &ips) {
                    // A veth gone meanwhile is its pod's end, not a failure.
                    let present = std::path::Path::new(&format!("/sys/class/net/{dev}")).exists();
                    if present
                        && report
                            .send(format!("moving the sender check of {dev} to tcx (it stays a tc filter): {e}"))
                            .is_err()
                    {
                        break;
                    }
                }
            }
        });
        Promoter { jobs, failed, last_add }
    }

    fn promote(&self, dev: &str, ips: &[IpAddr]) {
        *self.last_add.lock().expect("lock") = std::time::Instant::now();
        let _ = self.jobs.send((dev.to_string(), ips.to_vec()));
    }

    fn failures(&self) -> Vec<String> {
        self.failed.try_iter().collect()
    }
}
