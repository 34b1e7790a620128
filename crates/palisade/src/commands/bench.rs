//! `palisade bench engine`: one-shot timing of every phase of the analysis
//! on a generated cluster, with ratios to the parse time measured in the
//! same run. Criterion benchmarks (benches/engine.rs) give the careful
//! per-operation numbers; this gives the whole picture in seconds.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;
use palisade_engine::{Engine, Matrix};
use palisade_model::{parse_sources, Cluster, Source};

use crate::cli::GenArgs;
use crate::gen::{generate, random_flows, Spec};

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

pub fn run(args: &GenArgs, out: &mut dyn Write) -> Result<()> {
    let spec = Spec { namespaces: args.namespaces, pods: args.pods, policies: args.policies, seed: args.seed };
    let text = generate(&spec);
    writeln!(out, "{}", spec.describe(text.len()))?;
    let sources = vec![Source { name: "generated.yaml".into(), text }];
    let (cluster, parse) = time(|| {
        let (cluster, problems, _) = Cluster::from_manifests(parse_sources(&sources));
        assert!(problems.is_empty(), "generated cluster is invalid: {:?}", problems.first());
        cluster
    });
    let (mut engine, compile) = time(|| Engine::from_cluster(&cluster));
    let (matrix, matrix_time) = time(|| Matrix::compute(&engine));
    let (rows, grouped) = time(|| matrix.grouped(&engine));
    writeln!(
        out,
        "identities: {}, selectors: {}, classes: {}, table rows: {}",
        engine.identity_count(),
        engine.selector_count(),
        matrix.class_count(),
        rows.len()
    )?;

    // Incremental: relabel one pod back and forth, compile each time.
    let (id, _) = engine.endpoints().next().expect("an endpoint");
    let original = engine.endpoint(id).clone();
    let mut changed = original.clone();
    changed.labels.insert("tier".into(), "relabelled".into());
    let rounds = 200;
    let (_, incremental) = time(|| {
        for i in 0..rounds {
            engine.upsert_endpoint(if i % 2 == 0 { changed.clone() } else { original.clone() });
            engine.compile();
        }
    });

    // Verdicts on random pairs.
    let flows = random_flows(&engine, 100_000, 7);
    let (allowed, verdicts) = time(|| flows.iter().filter(|f| engine.allows(f)).count());

    let analysis = compile + matrix_time + grouped;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    writeln!(out, "parse (YAML -> validated objects):   {:9.1} ms", ms(parse))?;
    writeln!(out, "compile (engine from cluster):       {:9.1} ms", ms(compile))?;
    writeln!(out, "matrix (class x class connections):  {:9.1} ms", ms(matrix_time))?;
    writeln!(out, "grouping (table rows):               {:9.1} ms", ms(grouped))?;
    writeln!(
        out,
        "one pod label change, incremental:   {:9.3} ms (mean of {rounds})",
        ms(incremental) / rounds as f64
    )?;
    writeln!(
        out,
        "verdict query:                       {:9.3} us (mean of {}; {allowed} allowed)",
        ms(verdicts) * 1e3 / flows.len() as f64,
        flows.len()
    )?;
    if let Some(kib) = peak_rss_kib() {
        writeln!(out, "peak resident memory (whole run):    {:9.1} MiB", kib as f64 / 1024.0)?;
    }
    writeln!(out, "analysis after parse / parse:        {:9.2}x", analysis.as_secs_f64() / parse.as_secs_f64())?;
    writeln!(
        out,
        "whole analyze (parse+analysis) / parse: {:6.2}x",
        (parse + analysis).as_secs_f64() / parse.as_secs_f64()
    )?;
    Ok(())
}

/// Peak resident set size of this process (Linux `VmHWM`), if readable.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
