//! The agent's loop: read the source when it changes, confirm pods to the
//! CNI plugin, and put every change into the kernel. A failed apply keeps
//! the last good state in the kernel and is retried with backoff (as a
//! whole-table replace); a pod is confirmed only by a successful apply.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use palisade_dataplane::DenyAction;

use crate::cni_socket::CniSocket;
use crate::node::{LocalPod, NodeAgent};
use crate::source::DirSource;

pub struct Config {
    /// The manifests directory (the `dir` source).
    pub dir: PathBuf,
    /// Where the CNI plugin connects.
    pub socket: PathBuf,
    /// The network namespace whose kernel is programmed (`None`: this one).
    pub netns: Option<String>,
    pub deny: DenyAction,
    /// How often the source is checked for changes.
    pub poll: Duration,
    /// Names the node side of a pod's veth from (container id, ifname),
    /// as the CNI plugin does.
    pub host_ifname: fn(&str, &str) -> String,
}

/// Runs until `stop` is set. Leaves the kernel's state in place on exit:
/// enforcement outlives the agent.
pub fn run(config: &Config, stop: &AtomicBool, log: &mut dyn FnMut(&str)) -> std::io::Result<()> {
    let mut source = DirSource::new(&config.dir);
    let mut node = NodeAgent::new(config.netns.as_deref(), config.deny);
    let socket = CniSocket::bind(&config.socket)?;
    let mut next_poll = Instant::now();
    let mut dirty = false;
    let mut backoff = Duration::from_millis(100);
    let mut retry_at = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next_poll {
            next_poll = Instant::now() + config.poll;
            match source.poll() {
                Ok(Some(cluster)) => {
                    node.set_cluster(cluster);
                    dirty = true;
                }
                Ok(None) => {}
                Err(e) => log(&format!("source: {e}")),
            }
        }
        if dirty && Instant::now() >= retry_at {
            match node.apply() {
                Ok(()) => {
                    dirty = false;
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    log(&format!("apply failed, the kernel keeps the last good state; retrying in {backoff:?}: {e}"));
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        socket.serve_pending(|req| {
            let host_if = (config.host_ifname)(&req.container_id, &req.ifname);
            node.pod_added(req.pod.clone(), LocalPod { host_if, ips: req.ips }).map_err(|e| e.to_string())?;
            node.apply().map_err(|e| {
                dirty = true;
                e.to_string()
            })?;
            log(&format!("pod {} confirmed: its policy is in the kernel", req.pod));
            Ok(())
        });
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}
