//! The interactive lab: `up` starts a background `lab serve` process that
//! builds the lab, serves the pods and holds the namespaces; `apply`,
//! `probe` and `exec` find it through its state file; `down` stops it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use palisade_engine::Engine;
use palisade_lab::agents::RunDir;
use palisade_lab::lab::{apply_node, end_denied_flows, probe_pairs, runtime};
use palisade_lab::state::{log_path, LabState};
use palisade_lab::topology::delete_plan;
use palisade_lab::LabOptions;

use super::lab::{deny_action, live_palisade, print_results, report, require_root, start};
use crate::cli::{DenyArg, LabApplyArgs, LabExecArgs, LabProbeArgs, LabUpArgs, Wiring};
use crate::input::{load_cluster, parse_probe, Failure, Ui};

fn running(name: &str) -> Result<LabState> {
    let state = LabState::load(name)?;
    if !live_palisade(state.pid) {
        bail!("lab {name:?}: its process {} is gone; run palisade lab down to clean up", state.pid);
    }
    Ok(state)
}

pub fn up(args: &LabUpArgs, ui: &Ui, out: &mut dyn Write) -> Result<()> {
    // Check the input here, where the user sees the errors.
    load_cluster(&args.build.paths, args.build.skip_invalid, ui)?;
    require_root()?;
    if let Ok(state) = LabState::load(&args.name) {
        if live_palisade(state.pid) {
            return Err(Failure::Usage(format!(
                "lab {:?} is already up (process {}); palisade lab down --name {} stops it",
                args.name, state.pid, args.name
            ))
            .into());
        }
        LabState::remove(&args.name);
    }
    std::fs::create_dir_all(palisade_lab::state::STATE_DIR)?;
    let log = log_path(&args.name);
    let log_file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let exe = std::env::current_exe()?;
    let mut cmd = if std::path::Path::new("/usr/bin/setsid").exists() {
        let mut c = Command::new("/usr/bin/setsid");
        c.arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(["lab", "serve", "--name", &args.name, "--nodes", &args.build.nodes.to_string()]);
    cmd.args(["--deny", if args.build.deny == DenyArg::Drop { "drop" } else { "reject" }]);
    cmd.args(["--wiring", if args.build.wiring == Wiring::Agents { "agents" } else { "direct" }]);
    if args.build.skip_invalid {
        cmd.arg("--skip-invalid");
    }
    if args.build.keep_established {
        cmd.arg("--keep-established");
    }
    for p in &args.build.paths {
        cmd.arg("-f").arg(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
    }
    for p in &args.build.ports {
        cmd.args(["--port", p]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("starting the lab process")?;
    let started = Instant::now();
    loop {
        if let Ok(state) = LabState::load(&args.name) {
            writeln!(
                out,
                "lab {:?} is up: {} pods on {} nodes, process {} (log {})",
                args.name,
                state.plan.pods.len(),
                state.plan.nodes.len(),
                state.pid,
                log.display()
            )?;
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("the lab process exited ({status}) before the lab was up:\n{}", text.trim());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the lab was not up after 10 minutes; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The background process: builds, applies, writes the state file, then
/// serves until SIGTERM or SIGINT, and tears everything down.
pub fn serve(args: &LabUpArgs, ui: &Ui) -> Result<()> {
    let (mut lab, _) = start(&args.build, ui, Duration::from_millis(1000))?;
    lab.apply().context("applying the policies")?;
    let state = LabState {
        name: args.name.clone(),
        pid: std::process::id(),
        plan: lab.topology.plan.clone(),
        paths: args.build.paths.clone(),
        skip_invalid: args.build.skip_invalid,
        served: lab.served_ports().iter().copied().collect(),
        deny: if args.build.deny == DenyArg::Drop { "drop" } else { "reject" }.into(),
        keep_established: args.build.keep_established,
        agents: args.build.wiring == Wiring::Agents,
    };
    state.save()?;
    eprintln!("lab {:?} up: process {}", args.name, state.pid);
    // `Lab::start` set up the signal handler: it deletes the namespaces and exits.
    loop {
        std::thread::park();
    }
}

pub fn apply(args: &LabApplyArgs, ui: &Ui, out: &mut dyn Write) -> Result<()> {
    require_root()?;
    let mut state = running(&args.name)?;
    let cluster = load_cluster(&args.paths, args.skip_invalid, ui)?;
    let lab_cluster = state.plan.adopt(&cluster)?;
    let engine = Engine::from_cluster(&lab_cluster);
    let deny = deny_action(if state.deny == "reject" { DenyArg::Reject } else { DenyArg::Drop });
    let started = Instant::now();
    if state.agents {
        // The lab's agents patch their kernels (and end denied flows).
        RunDir::of(&state.plan).publish(&lab_cluster)?;
    } else {
        for node in 0..state.plan.nodes.len() {
            apply_node(&state.plan, &engine, node, deny)?;
        }
        if !state.keep_established {
            end_denied_flows(&state.plan, &engine)?;
        }
    }
    state.paths = args.paths.iter().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())).collect();
    state.skip_invalid = args.skip_invalid;
    state.save()?;
    writeln!(
        out,
        "applied {} policies to {} nodes in {} ms",
        lab_cluster.policies.len(),
        state.plan.nodes.len(),
        started.elapsed().as_millis()
    )?;
    Ok(())
}

pub fn probe(args: &LabProbeArgs, ui: &Ui, out: &mut dyn Write) -> Result<()> {
    require_root()?;
    let state = running(&args.name)?;
    let mut ports = args.ports.iter().map(|p| parse_probe(p)).collect::<Result<Vec<_>, _>>()?;
    if ports.is_empty() {
        ports = state.served.clone();
    }
    let cluster = load_cluster(&state.paths, state.skip_invalid, ui)?;
    let engine = Engine::from_cluster(&state.plan.adopt(&cluster)?);
    let opts = LabOptions { timeout: Duration::from_millis(args.timeout_ms), ..LabOptions::default() };
    let results = probe_pairs(&runtime()?, &state.plan, &engine, &ports, &opts);
    print_results(args.format, &ports, &results, out)?;
    out.flush()?;
    let wrong = report(&results, ui);
    ui.note(&format!("{} probes; {} disagreement(s) with the engine", results.len(), wrong.len()));
    if !wrong.is_empty() {
        return Err(Failure::Findings(format!("{} probe(s) disagree with the engine", wrong.len())).into());
    }
    Ok(())
}

pub fn exec(args: &LabExecArgs) -> Result<()> {
    require_root()?;
    let state = running(&args.name)?;
    let plan = &state.plan;
    let netns = if args.target == "external" {
        plan.external.clone()
    } else if let Some(node) = plan.nodes.iter().find(|n| n.name == args.target) {
        node.netns.clone()
    } else {
        let key = palisade_model::EndpointKey::parse(&args.target);
        let pod = plan
            .pods
            .iter()
            .find(|p| p.key == key || (p.key.namespace == key.namespace && p.key.name == key.name))
            .ok_or_else(|| {
                Failure::Usage(format!("{}: no such pod, node or `external` in lab {:?}", args.target, args.name))
            })?;
        pod.netns.clone()
    };
    let status = Command::new("ip").args(["netns", "exec", &netns]).args(&args.command).status()?;
    if !status.success() {
        return Err(Failure::Findings(format!("{}: {status}", args.command.join(" "))).into());
    }
    Ok(())
}

/// Stops the named lab if its state file exists: SIGTERM to its process,
/// then its namespaces are deleted whatever happened to the process.
pub fn stop(name: &str, ui: &Ui, out: &mut dyn Write) -> Result<()> {
    let Ok(state) = LabState::load(name) else { return Ok(()) };
    if live_palisade(state.pid) {
        let pid = nix::unistd::Pid::from_raw(state.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while live_palisade(state.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if live_palisade(state.pid) {
            ui.warn(&format!("lab process {} did not stop; killing it", state.pid));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    delete_plan(&state.plan);
    LabState::remove(name);
    writeln!(out, "lab {name:?} stopped")?;
    Ok(())
}
