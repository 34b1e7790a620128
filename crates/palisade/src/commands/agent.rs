//! `palisade agent`: the node daemon, in `dir` mode. Runs until SIGTERM or
//! SIGINT, and leaves enforcement in place when it stops.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use palisade_agent::daemon::{run_with, Config, Event};
use palisade_agent::kube_source::KubeSource;
use palisade_agent::node::NodeOptions;
use palisade_agent::ops::{serve, Metrics};
use palisade_agent::source::{DirSource, Source};
use serde_json::json;

use super::lab::{deny_action, require_root};
use crate::cli::{AgentArgs, LogFormat};

/// One log line: text for people, JSON lines for collectors. A warning or
/// error identical to one written in the last 30 s is held back and
/// counted (a state that persists: a stale view, a node not ready); the
/// next time it is written it says how many were held back. Events (a pod
/// confirmed) are always written.
struct Logger {
    json: bool,
    /// `PALISADE_LOG=debug`: also the lines nobody needs to act on.
    debug: bool,
    recent: std::cell::RefCell<std::collections::HashMap<String, (Instant, u64)>>,
}

const REPEAT_WINDOW: Duration = Duration::from_secs(30);

impl Logger {
    fn new(json: bool) -> Self {
        let debug = std::env::var("PALISADE_LOG").is_ok_and(|v| v == "debug");
        Logger { json, debug, recent: Default::default() }
    }

    fn log(&self, level: &str, msg: &str, fields: serde_json::Value) {
        let key = format!("{level}\0{msg}\0{fields}");
        self.log_keyed(level, msg, fields, key)
    }

    /// A state that lasts while its details change (which watches fail,
    /// and how): repeated by its message alone.
    fn log_state(&self, level: &str, msg: &str, fields: serde_json::Value) {
        let key = format!("{level}\0{msg}");
        self.log_keyed(level, msg, fields, key)
    }

    fn log_keyed(&self, level: &str, msg: &str, mut fields: serde_json::Value, key: String) {
        if level == "debug" && !self.debug {
            return;
        }
        if matches!(level, "warn" | "error") {
            let mut recent = self.recent.borrow_mut();
            let now = Instant::now();
            recent.retain(|_, (at, held)| now.duration_since(*at) < REPEAT_WINDOW || *held > 0);
            match recent.get_mut(&key) {
                Some((at, held)) if now.duration_since(*at) < REPEAT_WINDOW => {
                    *held += 1;
                    return;
                }
                Some((at, held)) => {
                    if let serde_json::Value::Object(f) = &mut fields {
                        f.insert("repeated".into(), json!(*held));
                    }
                    *at = now;
                    *held = 0;
                }
                None => {
                    recent.insert(key, (now, 0));
                }
            }
        }
        if self.json {
            let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            let mut line = json!({"ts": ts, "level": level, "msg": msg});
            if let (Some(l), serde_json::Value::Object(f)) = (line.as_object_mut(), fields) {
                l.extend(f);
            }
            eprintln!("{line}");
        } else if fields.as_object().is_none_or(|f| f.is_empty()) {
            eprintln!("palisade agent: {level}: {msg}");
        } else {
            eprintln!("palisade agent: {level}: {msg} {fields}");
        }
    }
}

fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
        });
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

pub fn run(args: &AgentArgs) -> Result<()> {
    require_root()?;
    let logger = Logger::new(match args.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    });
    let stop = stop_on_signal();
    let dir = args.dir.clone().unwrap_or_default();
    let mut config = Config::new(dir.clone(), args.socket.clone(), palisade_cni::plugin::host_ifname);
    config.node = NodeOptions {
        netns: args.netns.clone(),
        deny: Some(deny_action(args.deny)),
        keep_established: args.keep_established,
        state_file: Some(args.state_file.clone()),
        node_name: args.node_name.clone(),
    };
    // The kube source is a queue its watches fill: reading it costs a lock,
    // so it is read on every turn of the loop (at most 2 ms apart).
    config.poll = if args.kube { Duration::ZERO } else { Duration::from_millis(args.poll_ms) };
    let debounce_ms = args.debounce_ms.unwrap_or(if args.kube { 5 } else { 50 });
    config.debounce = Duration::from_millis(debounce_ms);
    config.max_delay = Duration::from_millis(debounce_ms * 10).max(config.poll);
    config.owner_pid = args.owner_pid;
    config.node_setup = palisade_dataplane::node_ready::NodeSetup { sysctl_root: args.sysctl_dir.clone() };
    let metrics = Arc::new(Metrics::new());
    let addr = serve(args.metrics_addr, metrics.clone())
        .with_context(|| format!("serving metrics on {}", args.metrics_addr))?;
    logger.log(
        "info",
        "started",
        json!({"source": if args.kube { "kube".to_string() } else { dir.display().to_string() }, "socket": args.socket, "metrics": addr.to_string(), "netns": args.netns}),
    );
    let mut report = |event: Event, node: &palisade_agent::node::NodeAgent| {
        metrics.observe(&event, node);
        match event {
            Event::Applied { latency, changed: true } => logger.log(
                "info",
                "applied",
                json!({"latency_ms": latency.as_secs_f64() * 1e3, "endpoints": node.engine().endpoints().count()}),
            ),
            Event::Applied { .. } | Event::Tick => {}
            Event::ApplyFailed { error, retry_in } => logger.log(
                "error",
                "apply failed; the kernel keeps the last good state",
                json!({"error": format!("{error}: {:?}", std::error::Error::source(error)), "retry_in_ms": retry_in.as_millis() as u64}),
            ),
            Event::SourceInvalid(e) => {
                logger.log("error", "source refused; the last good state stays in force", json!({"error": e}))
            }
            Event::PodConfirmed(pod) => logger.log("info", "pod confirmed: its policy is in the kernel", json!({"pod": pod})),
            Event::PodRefused(pod, e) => logger.log("warn", "pod refused", json!({"pod": pod, "error": e})),
            Event::PodDeleted(pod, host_if) => logger.log("info", "pod deleted", json!({"pod": pod, "veth": host_if})),
            Event::PodDeleteIgnored(host_if) => logger.log(
                "debug",
                "DEL for a pod this node does not hold (never confirmed, or deleted already): nothing to do",
                json!({"veth": host_if}),
            ),
            Event::PodWaiting(pod, why) => logger.log(
                "info",
                "ADD waits for the source to show the pod",
                json!({"pod": pod, "why": why}),
            ),
            Event::PodUnheard(pod) => logger.log(
                "info",
                "the plugin gave up before the pod's policy was confirmed; the pod did not start and its DEL follows",
                json!({"pod": pod}),
            ),
            Event::Warning(w) => logger.log("warn", w, json!({})),
            Event::Unreadable { object, why } => logger.log(
                "error",
                "object cannot be read; it fails closed where it could have had an effect",
                json!({"kind": object.kind, "namespace": object.namespace, "name": object.name, "error": why}),
            ),
            Event::Readable(object) => logger.log(
                "info",
                "object readable again",
                json!({"kind": object.kind, "namespace": object.namespace, "name": object.name}),
            ),
            Event::Stale(Some((why, _))) => logger.log_state(
                "warn",
                "the cluster view may be stale; the last state stays in force",
                json!({"error": why}),
            ),
            Event::NodeReadiness(r) => {
                for change in &r.changed {
                    logger.log("info", "node made ready for pods", json!({"change": change}));
                }
                for problem in &r.problems {
                    logger.log("error", "the node is not ready for pods; new pods are refused", json!({"error": problem}));
                }
                if r.problems.is_empty() && r.changed.is_empty() {
                    logger.log("info", "the node is ready for pods again", json!({}));
                }
            }
            Event::FlowsEnded(n) => {
                logger.log("info", "established flows the policy now forbids were ended", json!({"flows": n}))
            }
            Event::Stale(None) => logger.log("info", "the cluster view is current again", json!({})),
        }
    };
    let source: Box<dyn Source> = if args.kube {
        Box::new(KubeSource::connect(args.context.as_deref())?)
    } else {
        Box::new(DirSource::new(&dir))
    };
    run_with(&config, source, &stop, &mut report)?;
    logger.log("info", "stopped; the rules stay in the kernel", json!({}));
    Ok(())
}
