//! `palisade agent`: the node daemon, in `dir` mode. Runs until SIGTERM or
//! SIGINT, and leaves enforcement in place when it stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use palisade_agent::daemon::{run as run_daemon, Config};

use super::lab::{deny_action, require_root};
use crate::cli::AgentArgs;
use crate::input::Ui;

pub fn run(args: &AgentArgs, ui: &Ui) -> Result<()> {
    require_root()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
                else {
                    return;
                };
                tokio::select! {
                    _ = int.recv() => {},
                    _ = term.recv() => {},
                }
            });
            stop.store(true, Ordering::Relaxed);
        });
    }
    let config = Config {
        dir: args.dir.clone(),
        socket: args.socket.clone(),
        netns: args.netns.clone(),
        deny: deny_action(args.deny),
        poll: Duration::from_millis(args.poll_ms),
        host_ifname: palisade_cni::plugin::host_ifname,
    };
    ui.note(&format!("agent: reading {}, confirming pods on {}", args.dir.display(), args.socket.display()));
    run_daemon(&config, &stop, &mut |line| eprintln!("palisade agent: {line}"))
        .with_context(|| format!("listening on {}", args.socket.display()))?;
    ui.note("agent: stopped; the rules stay in the kernel");
    Ok(())
}
