//! The agent's loop: read the source when it changes, confirm pods to the
//! CNI plugin, and put every change into the kernel. Source changes are
//! debounced (a burst of writes becomes one transaction, bounded in delay);
//! a failed apply keeps the last good state in the kernel and is retried
//! with backoff (as a whole-table replace); a pod is confirmed only by a
//! successful apply.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cni_socket::{Call, CniSocket, Request};
use crate::node::{LocalPod, NodeAgent, NodeError, NodeOptions};
use crate::source::{DirSource, Source};
use palisade_dataplane::node_ready::{NodeSetup, Readiness};
use palisade_model::ObjectRef;
use std::collections::BTreeMap;

pub struct Config {
    /// The manifests directory (the `dir` source of [`run`]).
    pub dir: PathBuf,
    /// Where the CNI plugin connects.
    pub socket: PathBuf,
    pub node: NodeOptions,
    /// How often the source is checked for changes.
    pub poll: Duration,
    /// A source change is applied once the source has been quiet this long,
    /// or at the latest `max_delay` after the first change of a burst.
    pub debounce: Duration,
    pub max_delay: Duration,
    /// Names the node side of a pod's veth from (container id, ifname),
    /// as the CNI plugin does.
    pub host_ifname: fn(&str, &str) -> String,
    /// Exit when this process is gone (the lab's agents die with the lab).
    pub owner_pid: Option<i32>,
    /// Makes the node ready for pods (forwarding, the pods' gateway),
    /// checked again every 10 s.
    pub node_setup: NodeSetup,
}

impl Config {
    pub fn new(dir: PathBuf, socket: PathBuf, host_ifname: fn(&str, &str) -> String) -> Self {
        Config {
            dir,
            socket,
            node: NodeOptions::default(),
            poll: Duration::from_millis(200),
            debounce: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            host_ifname,
            owner_pid: None,
            node_setup: NodeSetup::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("listening on {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// What the loop reports as it goes (for logs and metrics).
#[derive(Debug)]
pub enum Event<'a> {
    SourceInvalid(&'a str),
    Applied {
        latency: Duration,
        changed: bool,
    },
    ApplyFailed {
        error: &'a NodeError,
        retry_in: Duration,
    },
    PodConfirmed(&'a str),
    /// The plugin gave up before the confirmation (its timeout): the pod
    /// did not start, and its DEL follows.
    PodUnheard(&'a str),
    /// The source does not show the pod yet (why): its ADD waits, bounded
    /// by the plugin's timeout.
    PodWaiting(&'a str, &'a str),
    PodRefused(&'a str, &'a str),
    /// (pod, veth)
    PodDeleted(&'a str, &'a str),
    /// A DEL for a veth this node holds no pod for: never confirmed, or
    /// deleted already (runtimes DEL twice, and after every failed ADD).
    PodDeleteIgnored(&'a str),
    /// The loop is alive (about once a second).
    Tick,
    /// Something the agent worked around (a damaged state file, a kernel
    /// pod matching no cluster pod).
    Warning(&'a str),
    /// An object cannot be read (or now reads otherwise): it stands as its
    /// stand-ins, failing closed where it could have had an effect.
    Unreadable {
        object: &'a ObjectRef,
        why: &'a str,
    },
    /// An object that could not be read now can.
    Readable(&'a ObjectRef),
    /// The source's view may be behind the truth (why, for how long), or
    /// (`None`) is current again.
    Stale(Option<(&'a str, Duration)>),
    /// What the node lacks for its pods (empty: ready), and what the agent
    /// changed to make it so.
    NodeReadiness(&'a Readiness),
    /// Tracked flows the policy now forbids were ended (how many).
    FlowsEnded(usize),
}

/// Runs until `stop` is set (or the owner process is gone). Leaves the
/// kernel's state in place on exit: enforcement outlives the agent.
pub fn run(config: &Config, stop: &AtomicBool, report: &mut dyn FnMut(Event, &NodeAgent)) -> Result<(), DaemonError> {
    run_with(config, Box::new(DirSource::new(&config.dir)), stop, report)
}

/// [`run`] with another source (the API server).
pub fn run_with(
    config: &Config,
    mut source: Box<dyn Source>,
    stop: &AtomicBool,
    report: &mut dyn FnMut(Event, &NodeAgent),
) -> Result<(), DaemonError> {
    let mut node = NodeAgent::new(config.node.clone())?;
    for w in node.take_warnings() {
        report(Event::Warning(&w), &node);
    }
    let socket = CniSocket::bind(&config.socket)
        .map_err(|source| DaemonError::Socket { path: config.socket.clone(), source })?;
    let mut next_poll = Instant::now();
    // (first change of the burst, last change) not yet applied.
    let mut burst: Option<(Instant, Instant)> = None;
    let mut failing = false;
    let mut backoff = Duration::from_millis(100);
    let mut retry_at = Instant::now();
    // The source state the kernel holds (its digest), once applied.
    let mut applied: Option<String> = None;
    let mut read: Option<String> = None;
    let mut next_tick = Instant::now();
    // What the source could not read, as last reported.
    let mut unreadable: BTreeMap<ObjectRef, String> = BTreeMap::new();
    let mut stale: Option<(String, Instant)> = None;
    let mut next_stale_report = Instant::now();
    let mut parked: Vec<(Call, Option<Instant>)> = Vec::new();
    let mut next_node_check = Instant::now();
    let mut node_problems: Vec<String> = Vec::new();
    // The source gave an update since parked ADDs were last tried.
    let mut source_moved = false;
    while !stop.load(Ordering::Relaxed) && config.owner_pid.is_none_or(alive) {
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + Duration::from_secs(1);
            report(Event::Tick, &node);
            for w in node.take_warnings() {
                report(Event::Warning(&w), &node);
            }
        }
        if now >= next_node_check {
            next_node_check = now + Duration::from_secs(10);
            let netns = config.node.netns.as_deref().map(palisade_dataplane::netns::Netns::named);
            let readiness = config.node_setup.ensure(netns.as_ref());
            if !readiness.changed.is_empty() || readiness.problems != node_problems {
                report(Event::NodeReadiness(&readiness), &node);
            }
            node_problems = readiness.problems;
        }
        if now >= next_poll {
            next_poll = now + config.poll;
            match source.poll() {
                Ok(Some(update)) => {
                    node.update(update);
                    for w in node.take_warnings() {
                        report(Event::Warning(&w), &node);
                    }
                    read = source.digest().map(str::to_string);
                    burst = Some((burst.map_or(now, |b| b.0), now));
                    source_moved = true;
                    if source.unreadable() != &unreadable {
                        for (object, why) in source.unreadable() {
                            if unreadable.get(object) != Some(why) {
                                report(Event::Unreadable { object, why }, &node);
                            }
                        }
                        for object in unreadable.keys().filter(|o| !source.unreadable().contains_key(*o)) {
                            report(Event::Readable(object), &node);
                        }
                        unreadable = source.unreadable().clone();
                        node.set_unreadable(unreadable.clone());
                    }
                }
                Ok(None) => {}
                Err(e) => report(Event::SourceInvalid(&e.to_string()), &node),
            }
            let now_stale = source.stale();
            let changed = now_stale.as_ref().map(|s| &s.0) != stale.as_ref().map(|s| &s.0);
            // While stale, its age is reported once a second (not every turn).
            if changed || (now_stale.is_some() && now >= next_stale_report) {
                next_stale_report = now + Duration::from_secs(1);
                match &now_stale {
                    Some((why, since)) => report(Event::Stale(Some((why, since.elapsed()))), &node),
                    None => report(Event::Stale(None), &node),
                }
            }
            stale = now_stale;
        }
        let due = burst.is_some_and(|(first, last)| {
            now >= last + config.debounce || now >= first + config.max_delay || applied.is_none()
        });
        if (due || failing) && now >= retry_at {
            let started = Instant::now();
            match node.apply() {
                Ok(changed) => {
                    let latency = burst.map_or(started.elapsed(), |(first, _)| first.elapsed());
                    burst = None;
                    failing = false;
                    backoff = Duration::from_millis(100);
                    applied = read.clone();
                    report(Event::Applied { latency, changed }, &node);
                }
                Err(error) => {
                    failing = true;
                    report(Event::ApplyFailed { error: &error, retry_in: backoff }, &node);
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        // ADDs waiting for the source to show their pod: tried again after
        // every source update, refused at their deadline.
        let mut calls: Vec<(Call, Option<Instant>)> = std::mem::take(&mut parked);
        calls.extend(socket.accept_pending().into_iter().map(|c| (c, None)));
        for (call, deadline) in calls {
            let Request::Add(req) = &call.request else {
                let health = Health {
                    applied: &applied,
                    failing,
                    stale: &stale,
                    unreadable: &unreadable,
                    node_problems: &node_problems,
                };
                let answer = answer_other(&call.request, &mut node, config, &health, report);
                if answer.is_err() && matches!(call.request, Request::Del { .. }) {
                    failing = true;
                }
                let _ = call.answer(answer);
                continue;
            };
            if deadline.is_some() && !source_moved && deadline.is_some_and(|d| Instant::now() < d) {
                parked.push((call, deadline));
                continue;
            }
            let pod = req.pod.to_string();
            if !node_problems.is_empty() {
                // Started now, the pod would run without a network.
                let why = format!("the node is not ready for pods: {}", node_problems.join("; "));
                report(Event::PodRefused(&pod, &why), &node);
                let _ = call.answer(Err(why));
                continue;
            }
            let host_if = (config.host_ifname)(&req.container_id, &req.ifname);
            let pod_link = LocalPod { host_if, ips: req.ips.clone() };
            let added = node
                .pod_added(req.pod.clone(), req.uid.as_deref(), pod_link, req.sender_check_attached)
                .and_then(|_| node.apply());
            match added {
                Ok(_) => {
                    if call.answer(Ok(json!({}))).is_ok() {
                        report(Event::PodConfirmed(&pod), &node);
                    } else {
                        report(Event::PodUnheard(&pod), &node);
                    }
                }
                Err(e @ (NodeError::UnknownPod(_) | NodeError::OtherPod(_))) => {
                    let deadline = deadline.unwrap_or_else(|| Instant::now() + req.wait);
                    if Instant::now() < deadline {
                        if !parked.iter().any(|(c, _)| c.request == call.request) {
                            report(Event::PodWaiting(&pod, &e.to_string()), &node);
                        }
                        parked.push((call, Some(deadline)));
                    } else {
                        report(Event::PodRefused(&pod, &e.to_string()), &node);
                        let _ = call.answer(Err(e.to_string()));
                    }
                }
                Err(e) => {
                    if !matches!(e, NodeError::UnreadablePod(..)) {
                        // The kernel did not take it: the loop retries as a whole.
                        failing = true;
                        report(Event::ApplyFailed { error: &e, retry_in: backoff }, &node);
                    }
                    report(Event::PodRefused(&pod, &e.to_string()), &node);
                    let _ = call.answer(Err(e.to_string()));
                }
            }
        }
        source_moved = false;
        // Established flows the new policy forbids end right after it is
        // in the kernel (the dump runs on a thread; see NodeAgent).
        if !failing {
            match node.end_denied_flows_in_background() {
                Ok(Some(ended)) if ended > 0 => report(Event::FlowsEnded(ended), &node),
                Ok(_) => {}
                Err(e) => report(Event::Warning(&format!("ending denied flows (tried again): {e}")), &node),
            }
        }
        socket.wait(Duration::from_millis(2));
    }
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// What the status request reports.
struct Health<'a> {
    applied: &'a Option<String>,
    failing: bool,
    stale: &'a Option<(String, Instant)>,
    unreadable: &'a BTreeMap<ObjectRef, String>,
    node_problems: &'a [String],
}

/// Answers every request but ADD.
fn answer_other(
    request: &Request,
    node: &mut NodeAgent,
    config: &Config,
    health: &Health,
    report: &mut dyn FnMut(Event, &NodeAgent),
) -> Result<serde_json::Value, String> {
    match request {
        Request::Add(_) => unreachable!("ADD is answered by the loop"),
        Request::Del { container_id, ifname } => {
            let host_if = (config.host_ifname)(container_id, ifname);
            let gone = node.pod_deleted(&host_if).map_err(|e| e.to_string())?;
            if gone.is_empty() {
                report(Event::PodDeleteIgnored(&host_if), node);
                return Ok(json!({}));
            }
            node.apply().map_err(|e| e.to_string())?;
            for key in gone {
                report(Event::PodDeleted(&key.to_string(), &host_if), node);
            }
            Ok(json!({}))
        }
        Request::PodCidrs => {
            let cidrs: Vec<String> = node.pod_cidrs().iter().map(|c| c.to_string()).collect();
            if cidrs.is_empty() {
                Err(format!(
                        "no pod CIDR known for node {:?} (is the agent's --node-name right, and does its Node have spec.podCIDRs?)",
                        config.node.node_name.as_deref().unwrap_or("(unnamed)")
                    ))
            } else {
                Ok(json!({ "podCIDRs": cidrs }))
            }
        }
        Request::Status => Ok(json!({
            "ready": health.applied.is_some() && !health.failing && health.stale.is_none() && health.node_problems.is_empty(),
            "stale": health.stale.as_ref().map(|s| &s.0),
            "unreadable": health.unreadable.keys().map(|o| o.to_string()).collect::<Vec<_>>(),
            "nodeProblems": health.node_problems,
            "applied": health.applied,
            "localPods": node.local_pods().len(),
            "endpoints": node.engine().endpoints().count(),
        })),
    }
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
