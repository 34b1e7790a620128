//! The conformance suite: every scenario in tests/conformance runs through
//! `palisade analyze --port ... -o tsv`, and every row is compared with the
//! scenario's expected reachability. See tests/conformance/README.md.

mod scenario;

use scenario::{load_dir, run_analyze, Scenario};

fn run_all(dir: &str) {
    let scenarios = load_dir(dir);
    assert!(scenarios.len() >= 10, "{dir}: expected scenarios, found {}", scenarios.len());
    let mut failures = Vec::new();
    let mut checked = 0usize;
    for s in &scenarios {
        match check(s) {
            Ok(n) => checked += n,
            Err(e) => failures.push(format!("--- {}:\n{e}", s.name)),
        }
    }
    eprintln!("{dir}: {} scenarios, {checked} pair/port verdicts checked", scenarios.len());
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        scenarios.len(),
        failures.join("\n")
    );
}

fn check(s: &Scenario) -> Result<usize, String> {
    let mut checked = 0;
    for (step_index, step) in s.materialize()?.iter().enumerate() {
        let rows = run_analyze(&step.manifests, &s.ports, &[])?;
        let mut endpoints: Vec<&str> = rows.iter().flat_map(|r| [r.src.as_str(), r.dst.as_str()]).collect();
        endpoints.sort();
        endpoints.dedup();
        let n = endpoints.len();
        if rows.len() != n * n.saturating_sub(1) * s.ports.len() {
            return Err(format!(
                "step {step_index}: {} rows for {n} endpoints and {} ports",
                rows.len(),
                s.ports.len()
            ));
        }
        let mut wrong = Vec::new();
        for r in &rows {
            let expected = step.expect.verdict(&r.src, &r.dst, &r.probe);
            if expected != r.verdict {
                wrong.push(format!(
                    "  step {step_index}: {} -> {} {}: expected {expected}, analyze says {}",
                    r.src, r.dst, r.probe, r.verdict
                ));
            }
            checked += 1;
        }
        if !wrong.is_empty() {
            return Err(wrong.join("\n"));
        }
    }
    Ok(checked)
}

#[test]
fn upstream_e2e_scenarios() {
    run_all("upstream");
}

#[test]
fn palisade_semantics_scenarios() {
    run_all("semantics");
}
