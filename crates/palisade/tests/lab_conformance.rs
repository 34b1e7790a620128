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
        } else if !wrong.is_empty() {
            // What each failed probe saw (timeout, refused, error), and the
            // lab's timings: the TSV verdict alone cannot tell them apart.
            wrong.push(format!("  step {step_index}: the lab said:\n{stderr}"));
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

/// The README's main job: the example shop in the lab, zero disagreements.
#[test]
fn example_shop_runs_in_the_lab_with_zero_disagreements() {
    if !privileged("lab run examples/shop") {
        return;
    }
    let shop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["lab", "run", "-f"])
        .arg(&shop)
        .args(["--port", "tcp/8080", "--port", "tcp/5432", "--port", "udp/53", "-o", "tsv"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("0 disagreement(s)"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // 8 pods: 56 ordered pairs, 3 ports; some allowed, most denied.
    assert_eq!(stdout.lines().count(), 1 + 56 * 3, "{stdout}");
    assert!(stdout.contains("shop/api[Deployment]\tdata/postgres[StatefulSet]\ttcp\t5432\tallow\tallow"), "{stdout}");
    assert!(stdout.contains("shop/web[Deployment]\tdata/postgres[StatefulSet]\ttcp\t5432\tdeny\tdeny"), "{stdout}");
}
