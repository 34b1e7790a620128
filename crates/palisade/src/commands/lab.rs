//! `palisade lab`: the cluster's network built from network namespaces,
//! enforced by the dataplane, probed with real packets, compared with the
//! engine pair by pair.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use palisade_dataplane::netns;
use palisade_dataplane::DenyAction;
use palisade_lab::plan::PREFIX;
use palisade_lab::{AgentSetup, Lab, LabOptions, ProbeResult};
use palisade_model::Protocol;
use serde_json::json;

use crate::cli::{DenyArg, LabBuildArgs, LabCommand, LabDownArgs, LabRunArgs, ProbeFormat, Wiring};
use crate::input::{load_cluster, parse_probe, Failure, Ui};
use crate::output;

pub fn run(cmd: LabCommand, ui: &Ui, out: &mut dyn Write) -> Result<()> {
    match cmd {
        LabCommand::Run(args) => lab_run(&args, ui, out),
        LabCommand::Up(args) => super::lab_daemon::up(&args, ui, out),
        LabCommand::Serve(args) => super::lab_daemon::serve(&args, ui),
        LabCommand::Apply(args) => super::lab_daemon::apply(&args, ui, out),
        LabCommand::Probe(args) => super::lab_daemon::probe(&args, ui, out),
        LabCommand::Exec(args) => super::lab_daemon::exec(&args),
        LabCommand::Down(args) => lab_down(&args, ui, out),
    }
}

/// Root is needed for network namespaces; say so instead of failing deep inside `ip`.
pub fn require_root() -> Result<(), Failure> {
    let uid = nix::unistd::geteuid();
    if !uid.is_root() {
        return Err(Failure::Usage("palisade lab builds network namespaces and needs root (try sudo)".into()));
    }
    Ok(())
}

fn progress(ui_tty: bool) -> impl FnMut(usize, usize) {
    let mut last = Instant::now();
    move |done, total| {
        if ui_tty && (done == total || last.elapsed() > Duration::from_millis(100)) {
            last = Instant::now();
            let width = 30;
            let filled = done * width / total.max(1);
            eprint!("\rwiring pods [{}{}] {done}/{total}", "#".repeat(filled), ".".repeat(width - filled));
            if done == total {
                eprintln!();
            }
        }
    }
}

pub fn deny_action(arg: DenyArg) -> DenyAction {
    match arg {
        DenyArg::Drop => DenyAction::Drop,
        DenyArg::Reject => DenyAction::Reject,
    }
}

/// Loads the manifests and starts a lab on them (no policy applied yet);
/// returns it with the ports to probe.
pub fn start(build: &LabBuildArgs, ui: &Ui, timeout: Duration) -> Result<(Lab, Vec<(Protocol, u16)>)> {
    let mut ports = build.ports.iter().map(|p| parse_probe(p)).collect::<Result<Vec<_>, _>>()?;
    let cluster = load_cluster(&build.paths, build.skip_invalid, ui)?;
    require_root()?;
    let opts = LabOptions {
        nodes: build.nodes,
        deny: deny_action(build.deny),
        timeout,
        keep_established: build.keep_established,
        agents: match build.wiring {
            Wiring::Agents => Some(AgentSetup { palisade: std::env::current_exe().context("finding this binary")? }),
            Wiring::Direct => None,
        },
        ..LabOptions::default()
    };
    let run_id = std::process::id().to_string();
    let tty = std::io::stderr().is_terminal();
    let lab = Lab::start(&cluster, &run_id, &ports, opts, progress(tty)).context("starting the lab")?;
    for (key, why) in &lab.topology.plan.skipped {
        ui.warn(&format!("{key}: not probed ({why})"));
    }
    if ports.is_empty() {
        ports = lab.served_ports().iter().copied().collect();
        if ports.is_empty() {
            return Err(Failure::Usage("no pod declares a container port: say what to probe with --port".into()).into());
        }
    }
    Ok((lab, ports))
}

/// Prints the disagreements; an error if there are any.
pub fn report(results: &[ProbeResult], ui: &Ui) -> Vec<String> {
    let mut wrong = Vec::new();
    for r in results.iter().filter(|r| !r.agrees()) {
        wrong.push(format!(
            "disagreement: {} -> {} {}/{} ({}): kernel {} ({:?}), engine {}",
            r.src,
            r.dst,
            r.protocol.as_lower(),
            r.port,
            r.address,
            if r.outcome.allowed() { "allowed" } else { "denied" },
            r.outcome,
            if r.engine_allows { "allows" } else { "denies" },
        ));
    }
    for w in &wrong {
        ui.error(w);
    }
    wrong
}

fn lab_run(args: &LabRunArgs, ui: &Ui, out: &mut dyn Write) -> Result<()> {
    let started = Instant::now();
    let (mut lab, ports) = start(&args.build, ui, Duration::from_millis(args.timeout_ms))?;
    let built = started.elapsed();
    let applied = lab.apply().context("applying the policies")?;
    let probing = Instant::now();
    let results = lab.probe(&ports);
    let probed = probing.elapsed();
    print_results(args.format, &ports, &results, out)?;
    out.flush()?;
    let wrong = report(&results, ui);
    let plan = &lab.topology.plan;
    ui.note(&format!(
        "{} pods on {} nodes; built in {:.2} s, rules applied in {} ms, {} probes in {:.2} s; {} disagreement(s) with the engine",
        plan.pods.len(),
        plan.nodes.len(),
        built.as_secs_f64(),
        applied.as_millis(),
        results.len(),
        probed.as_secs_f64(),
        wrong.len()
    ));
    out.flush()?;
    drop(lab);
    if !wrong.is_empty() {
        return Err(Failure::Findings(format!("{} probe(s) disagree with the engine", wrong.len())).into());
    }
    Ok(())
}

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allow"
    } else {
        "deny"
    }
}

pub fn print_results(
    format: ProbeFormat,
    ports: &[(Protocol, u16)],
    results: &[ProbeResult],
    out: &mut dyn Write,
) -> Result<()> {
    match format {
        ProbeFormat::Tsv => {
            writeln!(out, "src\tdst\tprotocol\tport\tverdict\tengine")?;
            for r in results {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    r.src,
                    r.dst,
                    r.protocol.as_lower(),
                    r.port,
                    verdict(r.outcome.allowed()),
                    verdict(r.engine_allows)
                )?;
            }
        }
        ProbeFormat::Json => {
            let rows: Vec<_> = results
                .iter()
                .map(|r| {
                    json!({"src": r.src.to_string(), "dst": r.dst.to_string(), "protocol": r.protocol.as_lower(),
                       "port": r.port, "address": r.address, "verdict": verdict(r.outcome.allowed()),
                       "engine": verdict(r.engine_allows), "probe": r.outcome})
                })
                .collect();
            serde_json::to_writer_pretty(&mut *out, &rows)?;
            writeln!(out)?;
        }
        ProbeFormat::Table => {
            // Results come grouped by (src, dst), ports in order.
            let names: Vec<String> = ports.iter().map(|(p, n)| format!("{}/{n}", p.as_lower())).collect();
            let mut header = vec!["SRC", "DST"];
            header.extend(names.iter().map(String::as_str));
            let rows: Vec<Vec<String>> = results
                .chunks(ports.len())
                .map(|pair| {
                    let mut row = vec![pair[0].src.to_string(), pair[0].dst.to_string()];
                    row.extend(pair.iter().map(|r| {
                        if r.agrees() {
                            verdict(r.outcome.allowed()).to_string()
                        } else {
                            format!("{}!(engine:{})", verdict(r.outcome.allowed()), verdict(r.engine_allows))
                        }
                    }));
                    row
                })
                .collect();
            output::table::write(out, &header, &rows)?;
        }
    }
    Ok(())
}

/// Is `pid` a live palisade process (other than us)?
pub fn live_palisade(pid: u32) -> bool {
    pid != std::process::id()
        && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim().starts_with("palisade"))
}

fn lab_down(args: &LabDownArgs, ui: &Ui, out: &mut dyn Write) -> Result<()> {
    require_root()?;
    super::lab_daemon::stop(&args.name, ui, out)?;
    let mut removed = 0;
    let mut kept = 0;
    for ns in netns::list(PREFIX) {
        // The run id starts with the owning process id (tests append a tag).
        let id = ns.name[PREFIX.len()..].split('-').next().unwrap_or("");
        let owner = id.chars().take_while(char::is_ascii_digit).collect::<String>().parse::<u32>().ok();
        // Any live owner counts, not only `palisade`: test binaries build
        // labs too. A recycled pid keeps a dead run's leftovers until that
        // process ends; `--all` removes them regardless.
        if !args.all
            && owner.is_some_and(|pid| pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists())
        {
            kept += 1;
            continue;
        }
        ns.delete().with_context(|| format!("deleting network namespace {}", ns.name))?;
        removed += 1;
    }
    // Agents' run directories (their agents exit with the lab process).
    for entry in std::fs::read_dir(palisade_lab::agents::AGENTS_DIR).into_iter().flatten().flatten() {
        let id = entry.file_name().to_string_lossy().to_string();
        let owner = id.chars().take_while(char::is_ascii_digit).collect::<String>().parse::<u32>().ok();
        if args.all || owner.is_none_or(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    writeln!(out, "removed {removed} lab network namespace(s)")?;
    if kept > 0 {
        ui.note(&format!("{kept} namespace(s) of running labs kept (--all removes them too)"));
    }
    Ok(())
}
