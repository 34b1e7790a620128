//! `palisade bench dataplane` runs end to end on a small configuration
//! (root): every configuration measured, ratios printed, apply timings.

mod scenario;

#[test]
fn bench_dataplane_smoke() {
    if !scenario::privileged("bench dataplane") {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["bench", "dataplane", "--entries", "0", "--entries", "1000", "--rounds", "1", "--seconds", "0.2"])
        .args(["--pods", "500", "--policies", "200"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for needle in ["conntrack only", "palisade, 1000 entries", "cross node", "full apply", "single-pod change"] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

/// `palisade bench analyze` measures every output format end to end (no
/// root needed): each as its own process, against its targets.
#[test]
fn bench_analyze_smoke() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["bench", "analyze", "--namespaces", "5", "--pods", "300", "--policies", "100"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for format in ["table", "json", "jsonl", "tsv", "dot", "html", "tsv --pairs", "jsonl --pairs"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{format} ")))
            .unwrap_or_else(|| panic!("no {format} row:\n{stdout}"));
        let peak: f64 =
            row.split_whitespace().nth(if format.contains("--pairs") { 4 } else { 3 }).unwrap().parse().unwrap();
        assert!(peak > 1.0 && peak < 300.0, "{row}");
    }
}
