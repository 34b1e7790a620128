//! Operations: Prometheus metrics, and the /healthz, /readyz and /metrics
//! endpoints on a small HTTP server (one thread, one request per
//! connection: scrapers and probes need no more).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::daemon::Event;
use crate::node::NodeAgent;

/// The agent's metrics, updated by the loop, read by the HTTP thread.
pub struct Metrics {
    registry: Registry,
    endpoints: Gauge,
    local_pods: Gauge,
    policies: Gauge,
    rules: Gauge,
    set_elements: Gauge,
    reconcile_seconds: Histogram,
    apply_errors: Counter,
    source_errors: Counter,
    pods_confirmed: Counter,
    pods_refused: Counter,
    last_sync: Gauge<f64, AtomicU64>,
    unreadable: Family<Vec<(String, String)>, Gauge>,
    stale_seconds: Gauge<f64, AtomicU64>,
    ready: AtomicBool,
    /// Why the source's view may be behind (none: current).
    stale: Mutex<Option<String>>,
    /// What the node lacks for its pods (empty: ready).
    node_problems: Mutex<Vec<String>>,
    node_ready: Gauge,
    /// Milliseconds since `started` of the loop's last report: liveness.
    heartbeat_ms: AtomicU64,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("palisade_agent");
        let m = Metrics {
            endpoints: Gauge::default(),
            local_pods: Gauge::default(),
            policies: Gauge::default(),
            rules: Gauge::default(),
            set_elements: Gauge::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            apply_errors: Counter::default(),
            source_errors: Counter::default(),
            pods_confirmed: Counter::default(),
            pods_refused: Counter::default(),
            last_sync: Gauge::default(),
            unreadable: Family::default(),
            stale_seconds: Gauge::default(),
            ready: AtomicBool::new(false),
            stale: Mutex::new(None),
            node_problems: Mutex::new(Vec::new()),
            node_ready: Gauge::default(),
            heartbeat_ms: AtomicU64::new(0),
            started: Instant::now(),
            registry: Registry::default(),
        };
        registry.register("endpoints", "Endpoints (pods) in the cluster state", m.endpoints.clone());
        registry.register("local_pods", "Pods wired on this node by the CNI plugin", m.local_pods.clone());
        registry.register("policies", "NetworkPolicies in the cluster state", m.policies.clone());
        registry.register("rules", "Rules in this node's nftables table", m.rules.clone());
        registry.register("set_elements", "Set and map elements in this node's table", m.set_elements.clone());
        registry.register(
            "reconcile_seconds",
            "From a change seen to the kernel holding it (source changes and CNI adds)",
            m.reconcile_seconds.clone(),
        );
        registry.register("apply_errors", "Kernel transactions refused", m.apply_errors.clone());
        registry.register("source_errors", "Source states refused as invalid", m.source_errors.clone());
        registry.register("pods_confirmed", "CNI ADDs confirmed", m.pods_confirmed.clone());
        registry.register("pods_refused", "CNI ADDs refused", m.pods_refused.clone());
        registry.register(
            "unreadable_objects",
            "Objects the source cannot read (1 each, by kind, namespace and name): each fails closed where it could have had an effect",
            m.unreadable.clone(),
        );
        registry.register(
            "node_ready",
            "1 when the node has what its pods need (IP forwarding, a route for the pods' gateway)",
            m.node_ready.clone(),
        );
        registry.register(
            "source_stale_seconds",
            "How long the source's view may have been behind the API server (0: current)",
            m.stale_seconds.clone(),
        );
        registry.register("last_sync_timestamp_seconds", "Unix time of the last successful apply", m.last_sync.clone());
        Metrics { registry, ..m }
    }

    /// Takes one event of the loop into account.
    pub fn observe(&self, event: &Event, node: &NodeAgent) {
        self.heartbeat_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        match event {
            Event::Applied { latency, .. } => {
                self.reconcile_seconds.observe(latency.as_secs_f64());
                self.ready.store(true, Ordering::Relaxed);
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                self.last_sync.set(now.as_secs_f64());
            }
            Event::ApplyFailed { .. } => {
                self.apply_errors.inc();
                self.ready.store(false, Ordering::Relaxed);
            }
            Event::SourceInvalid(_) => {
                self.source_errors.inc();
            }
            Event::PodConfirmed(_) => {
                self.pods_confirmed.inc();
            }
            Event::PodRefused(..) => {
                self.pods_refused.inc();
            }
            Event::Unreadable { object, .. } => {
                self.unreadable.get_or_create(&object_labels(object)).set(1);
            }
            Event::Readable(object) => {
                self.unreadable.remove(&object_labels(object));
            }
            Event::NodeReadiness(readiness) => {
                self.node_ready.set(readiness.problems.is_empty() as i64);
                *self.node_problems.lock().expect("lock") = readiness.problems.clone();
            }
            Event::Stale(stale) => {
                self.stale_seconds.set(stale.map_or(0.0, |s| s.1.as_secs_f64()));
                *self.stale.lock().expect("lock") = stale.map(|s| s.0.to_string());
            }
            Event::PodDeleted(..)
            | Event::PodDeleteIgnored(_)
            | Event::PodWaiting(..)
            | Event::PodUnheard(_)
            | Event::FlowsEnded(_)
            | Event::Tick
            | Event::Warning(_) => {}
        }
        self.endpoints.set(node.engine().endpoints().count() as i64);
        self.policies.set(node.engine().policies().count() as i64);
        self.local_pods.set(node.local_pods().len() as i64);
        let (rules, elements) = node.rule_count();
        self.rules.set(rules as i64);
        self.set_elements.set(elements as i64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    fn live(&self) -> bool {
        let beat = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(beat) < Duration::from_secs(10)
    }
}

fn object_labels(object: &palisade_model::ObjectRef) -> Vec<(String, String)> {
    vec![
        ("kind".into(), object.kind.clone()),
        ("namespace".into(), object.namespace.clone().unwrap_or_default()),
        ("name".into(), object.name.clone()),
    ]
}

/// Serves /healthz (the loop ran in the last 10 s), /readyz (the kernel
/// holds the current state, and the source's view is not stale) and /metrics at `addr`, until the process ends.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer(stream, &metrics);
        }
    });
    Ok(bound)
}

fn answer(stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/healthz" if metrics.live() => ("200 OK", "ok\n".to_string()),
        "/healthz" => ("503 Service Unavailable", "the agent loop is stuck\n".to_string()),
        "/readyz" => {
            let node = metrics.node_problems.lock().expect("lock").join("; ");
            match (metrics.ready.load(Ordering::Relaxed), metrics.stale.lock().expect("lock").clone()) {
                _ if !node.is_empty() => {
                    ("503 Service Unavailable", format!("the node is not ready for pods: {node}\n"))
                }
                (_, Some(why)) => {
                    ("503 Service Unavailable", format!("the agent's view of the cluster may be stale: {why}\n"))
                }
                (true, None) => ("200 OK", "ok\n".to_string()),
                (false, None) => {
                    ("503 Service Unavailable", "the kernel does not hold the current state yet\n".to_string())
                }
            }
        }
        "/metrics" => ("200 OK", metrics.encode()),
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let content_type =
        if path == "/metrics" { "application/openmetrics-text; version=1.0.0; charset=utf-8" } else { "text/plain" };
    write!(
        &stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
