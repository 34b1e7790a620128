//! `palisade bench analyze`: every output format of `palisade analyze` on a
//! generated cluster, each run as its own process (as a user runs it),
//! with its wall time, peak memory and output size, and the ratio of its
//! wall time to the parse time of the same input measured in the same run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use palisade_model::{parse_sources, Cluster, Source};

use crate::cli::BenchAnalyzeArgs;
use crate::gen::{generate, Spec};

/// The targets of the analyzer at scale (issue 12).
const MAX_WALL_OVER_PARSE: f64 = 3.0;
const MAX_PEAK_MIB: f64 = 300.0;

/// (label, `analyze` arguments after the file, grouped?)
const RUNS: &[(&str, &[&str], bool)] = &[
    ("table", &["-o", "table"], true),
    ("json", &["-o", "json"], true),
    ("jsonl", &["-o", "jsonl"], true),
    ("tsv", &["-o", "tsv"], true),
    ("dot", &["-o", "dot"], true),
    ("html", &["-o", "html"], true),
    ("tsv --pairs", &["-o", "tsv", "--pairs"], false),
    ("jsonl --pairs", &["-o", "jsonl", "--pairs"], false),
];

struct Measured {
    wall: Duration,
    peak_kib: u64,
    bytes: u64,
}

pub fn run(args: &BenchAnalyzeArgs, out: &mut dyn Write) -> Result<()> {
    if let Some(file) = &args.measure {
        return measure_here(file, &args.analyze_args, out);
    }
    let spec =
        Spec { namespaces: args.gen.namespaces, pods: args.gen.pods, policies: args.gen.policies, seed: args.gen.seed };
    let text = generate(&spec);
    let dir = std::env::temp_dir().join(format!("palisade-bench-analyze-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure_all(args, &spec, text, &dir, out);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure_all(args: &BenchAnalyzeArgs, spec: &Spec, text: String, dir: &Path, out: &mut dyn Write) -> Result<()> {
    let input = dir.join("cluster.yaml");
    std::fs::write(&input, &text)?;
    writeln!(out, "{}", spec.describe(text.len()))?;
    let sources = vec![Source { name: input.display().to_string(), text }];
    let mut parses: Vec<Duration> = (0..args.rounds.max(1))
        .map(|_| {
            let start = Instant::now();
            let (cluster, problems, _) = Cluster::from_manifests(parse_sources(&sources));
            assert!(problems.is_empty() && !cluster.endpoints.is_empty());
            start.elapsed()
        })
        .collect();
    drop(sources);
    parses.sort();
    let parse = parses[parses.len() / 2];
    writeln!(
        out,
        "parse (YAML -> validated objects), median of {}: {:.0} ms",
        parses.len(),
        parse.as_secs_f64() * 1e3
    )?;
    writeln!(
        out,
        "{:<15} {:>8} {:>12} {:>10} {:>12}  targets",
        "format", "wall s", "wall/parse", "peak MiB", "output MB"
    )?;
    let exe = std::env::current_exe().context("the palisade binary")?;
    let mut missed = Vec::new();
    for &(label, extra, grouped) in RUNS {
        let mut runs: Vec<Measured> = (0..args.rounds.max(1))
            .map(|_| measure_child(&exe, &input, extra, &dir.join("out")))
            .collect::<Result<_>>()?;
        runs.sort_by_key(|m| m.wall);
        let m = &runs[runs.len() / 2];
        let ratio = m.wall.as_secs_f64() / parse.as_secs_f64();
        let peak = m.peak_kib as f64 / 1024.0;
        let mut verdict = Vec::new();
        if grouped && ratio > MAX_WALL_OVER_PARSE {
            verdict.push(format!("wall > {MAX_WALL_OVER_PARSE}x parse"));
        }
        if peak >= MAX_PEAK_MIB {
            verdict.push(format!("peak >= {MAX_PEAK_MIB} MiB"));
        }
        let shown = if verdict.is_empty() { "met".to_string() } else { format!("MISSED: {}", verdict.join(", ")) };
        if !verdict.is_empty() {
            missed.push(label);
        }
        writeln!(
            out,
            "{label:<15} {:>8.2} {ratio:>11.2}x {peak:>10.1} {:>12.1}  {shown}",
            m.wall.as_secs_f64(),
            m.bytes as f64 / 1e6
        )?;
    }
    writeln!(
        out,
        "targets: grouped formats wall <= {MAX_WALL_OVER_PARSE}x parse; every format peak < {MAX_PEAK_MIB} MiB (per-pair forms: memory only)"
    )?;
    if args.check && !missed.is_empty() {
        bail!("targets missed: {}", missed.join(", "));
    }
    Ok(())
}

/// Runs `palisade bench analyze --measure FILE -- ARGS` so that the only
/// child whose resource use the intermediate process reports is the analysis.
fn measure_child(exe: &Path, input: &Path, extra: &[&str], output: &Path) -> Result<Measured> {
    let result = std::process::Command::new(exe)
        .args(["bench", "analyze", "--measure"])
        .arg(input)
        .arg("--")
        .args(extra)
        .env("PALISADE_BENCH_OUTPUT", output)
        .output()?;
    let text = String::from_utf8_lossy(&result.stdout);
    if !result.status.success() {
        bail!("analyze {extra:?}: {}{}", text, String::from_utf8_lossy(&result.stderr));
    }
    let fields: Vec<u64> = text.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let [micros, peak_kib, bytes] = fields[..] else { bail!("unexpected measurement: {text}") };
    Ok(Measured { wall: Duration::from_micros(micros), peak_kib, bytes })
}

/// In the intermediate process: one `palisade analyze FILE ARGS`, its
/// stdout to a file; prints wall microseconds, peak KiB and bytes written.
fn measure_here(input: &PathBuf, extra: &[String], out: &mut dyn Write) -> Result<()> {
    let output = std::env::var_os("PALISADE_BENCH_OUTPUT").map(PathBuf::from).context("PALISADE_BENCH_OUTPUT")?;
    let file = std::fs::File::create(&output)?;
    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let status = std::process::Command::new(exe)
        .arg("analyze")
        .arg(input)
        .args(extra)
        .stdout(file)
        .stderr(std::process::Stdio::null())
        .status()?;
    let wall = start.elapsed();
    if !status.success() {
        bail!("palisade analyze {extra:?} failed: {status}");
    }
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    let bytes = std::fs::metadata(&output)?.len();
    let _ = std::fs::remove_file(&output);
    writeln!(out, "{} {} {bytes}", wall.as_micros(), usage.max_rss())?;
    Ok(())
}
