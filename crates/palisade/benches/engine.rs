//! Criterion benchmarks of the engine at the scale: 10,000 pods and
//! 5,000 policies in 100 namespaces (`palisade bench gen` cluster, seed 1).
//! `cargo bench -p palisade --bench engine`; docs/PERFORMANCE.md has results.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use palisade::gen::{generate, random_flows, Rng, Spec};
use palisade_engine::{Engine, Matrix};
use palisade_model::{parse_sources, Cluster, Source};

const SPEC: Spec = Spec { namespaces: 100, pods: 10_000, policies: 5_000, seed: 1 };

fn sources() -> Vec<Source> {
    vec![Source { name: "generated.yaml".into(), text: generate(&SPEC) }]
}

fn parse(sources: &[Source]) -> Cluster {
    let (cluster, problems, _) = Cluster::from_manifests(parse_sources(sources));
    assert!(problems.is_empty());
    cluster
}

fn benches(c: &mut Criterion) {
    let sources = sources();
    let cluster = parse(&sources);
    let mut g = c.benchmark_group("10k-pods-5k-policies");
    g.sample_size(10);
    g.bench_function("parse", |b| b.iter(|| parse(black_box(&sources))));
    g.bench_function("compile", |b| b.iter(|| Engine::from_cluster(black_box(&cluster))));
    let engine = Engine::from_cluster(&cluster);
    g.bench_function("analysis (matrix + grouping)", |b| {
        b.iter(|| {
            let m = Matrix::compute(&engine);
            black_box(m.grouped(&engine).len())
        })
    });
    g.finish();

    let mut engine = Engine::from_cluster(&cluster);
    let (id, _) = engine.endpoints().next().unwrap();
    let original = engine.endpoint(id).clone();
    let mut relabelled = original.clone();
    relabelled.labels.insert("tier".into(), "relabelled".into());
    let mut flip = false;
    c.bench_function("one pod label change, incremental compile", |b| {
        b.iter(|| {
            flip = !flip;
            engine.upsert_endpoint(if flip { relabelled.clone() } else { original.clone() });
            black_box(engine.compile());
        })
    });

    let flows = random_flows(&engine, 4096, 7);
    let mut rng = Rng::new(7);
    let mut i = 0;
    c.bench_function("verdict query", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(engine.allows(&flows[i]))
        })
    });
    c.bench_function("verdict with explanation", |b| {
        b.iter_batched(|| flows[rng.below(flows.len())], |f| black_box(engine.verdict(&f)), BatchSize::SmallInput)
    });
}

criterion_group!(engine_benches, benches);
criterion_main!(engine_benches);
