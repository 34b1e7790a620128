//! The manifest loader, the API-object reader and everything after them
//! (assembly, the engine, the matrix, grouping) on damaged real inputs:
//! bytes flipped, cut, duplicated lines, stray YAML syntax. They never
//! panic; every problem names the file it came from. (Issue #13, point 3:
//! the loader part. Stable Rust: proptest over mutations of real files.)

use palisade_engine::{Engine, Matrix};
use palisade_model::{parse_sources, parse_values, Cluster, Source};
use palisade_testkit::mutate::{apply, mutation};
use proptest::prelude::*;

const INPUTS: &[(&str, &str)] = &[
    ("namespaces.yaml", include_str!("../../../examples/shop/namespaces.yaml")),
    ("policies.yaml", include_str!("../../../examples/shop/policies.yaml")),
    ("workloads.yaml", include_str!("../../../examples/shop/workloads.yaml")),
    ("live-dump.json", include_str!("../../../docs/examples/live-dump.json")),
    ("invalid.yaml", include_str!("../../../docs/examples/invalid.yaml")),
    ("lint-demo.yaml", include_str!("../../../docs/examples/lint-demo.yaml")),
    ("web-public.yaml", include_str!("../../../docs/examples/web-public.yaml")),
];

/// Everything after the parse, on whatever came out of it.
fn analyze(cluster: &Cluster) {
    let engine = Engine::from_cluster(cluster);
    let matrix = Matrix::compute(&engine);
    let _ = matrix.grouped(&engine);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn damaged_manifests_never_panic_and_problems_name_their_file(
        input in 0..INPUTS.len(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let (name, text) = INPUTS[input];
        let damaged = apply(text, &mutations);
        let manifests = parse_sources(&[Source { name: name.into(), text: damaged.clone() }]);
        let (cluster, problems, _) = Cluster::from_manifests(manifests);
        for p in &problems {
            let shown = p.to_string();
            prop_assert!(shown.contains(name), "a problem that does not name its file: {shown}");
        }
        analyze(&cluster);
        // The node's view of the same text.
        let manifests = parse_sources(&[Source { name: name.into(), text: damaged }]).per_pod();
        let (cluster, _, _) = Cluster::from_manifests(manifests);
        analyze(&cluster);
    }

    /// The API-object reader (`--cluster`, the agent's kube source): any
    /// JSON value where an object should be.
    #[test]
    fn damaged_api_objects_never_panic(
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let (_, text) = INPUTS[3];
        let damaged = apply(text, &mutations);
        let values: Vec<(String, serde_json::Value)> = serde_json::Deserializer::from_str(&damaged)
            .into_iter::<serde_json::Value>()
            .take_while(Result::is_ok)
            .flatten()
            .flat_map(|list| list["items"].as_array().cloned().unwrap_or_default())
            .enumerate()
            .map(|(i, mut item)| {
                if item.is_object() {
                    item["kind"] = serde_json::json!("Pod");
                    item["apiVersion"] = serde_json::json!("v1");
                }
                (format!("kube:item-{i}"), item)
            })
            .collect();
        let (cluster, problems, _) = Cluster::from_manifests(parse_values(values));
        for p in &problems {
            prop_assert!(p.to_string().contains("kube:item-"), "{p}");
        }
        analyze(&cluster);
    }
}
