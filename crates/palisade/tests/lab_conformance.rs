//! The conformance suite with real packets: every scenario step runs
//! through `palisade lab run` (network namespaces, the nftables dataplane,
//! TCP/UDP/SCTP probes). Each row must match the scenario's expectation and
//! the engine's prediction. Needs root (see `scenario::privileged`).

mod scenario;

use scenario::{load_dir, privileged, run_lab, Scenario};

fn run_all(dir: &str, extra: &[&str]) {
    if !privileged(&format!("lab conformance ({dir})")) {
        return;
    }
    let scenarios = load_dir(dir);
    for s in scenarios.iter().filter(|s| s.lab_note.is_some()) {
        eprintln!("NOTE {}: checked against the engine only: {}", s.name, s.lab_note.as_deref().unwrap_or(""));
    }
    let mut failures = Vec::new();
    let mut checked = 0usize;
    for s in &scenarios {
        match check(s, extra) {
            Ok(n) => checked += n,
            Err(e) => failures.push(format!("--- {}:\n{e}", s.name)),
        }
    }
    eprintln!("{dir} through the lab: {} scenarios, {checked} real probes checked", scenarios.len());
    assert!(checked > 0);
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        scenarios.len(),
        failures.join("\n")
    );
}

fn check(s: &Scenario, extra: &[&str]) -> Result<usize, String> {
    let mut checked = 0;
    for (step_index, step) in s.materialize()?.iter().enumerate() {
        let (rows, agreed, stderr) = run_lab(&step.manifests, &s.ports, extra)?;
        let mut endpoints: Vec<&str> = rows.iter().flat_map(|r| [r.src.as_str(), r.dst.as_str()]).collect();
        endpoints.sort();
        endpoints.dedup();
        let n = endpoints.len();
        if rows.len() != n * n.saturating_sub(1) * s.ports.len() {
            return Err(format!("step {step_index}: {} rows for {n} pods and {} ports", rows.len(), s.ports.len()));
        }
        let mut wrong = Vec::new();
        for r in &rows {
            let expected = step.expect.verdict(&r.src, &r.dst, &r.probe);
            let expected = if s.lab_note.is_some() { r.engine.clone() } else { expected };
            if expected != r.verdict || r.engine != r.verdict {
                wrong.push(format!(
                    "  step {step_index}: {} -> {} {}: expected {expected}, kernel {}, engine {}",
                    r.src, r.dst, r.probe, r.verdict, r.engine
                ));
            }
            checked += 1;
        }
        if !agreed && wrong.is_empty() {
            wrong.push(format!("  step {step_index}: lab run reported a failure:\n{stderr}"));
        }
        if !wrong.is_empty() {
            return Err(wrong.join("\n"));
        }
    }
    Ok(checked)
}

/// Denied packets dropped (the default): denied probes wait for the timeout.
#[test]
fn upstream_e2e_scenarios_with_real_packets() {
    run_all("upstream", &[]);
}

/// Denied packets rejected (TCP reset, ICMP admin-prohibited).
#[test]
fn palisade_semantics_scenarios_with_real_packets() {
    run_all("semantics", &["--deny", "reject"]);
}
