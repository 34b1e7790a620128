//! The manifest loader, the API-object reader and everything after them
//! (assembly, the engine, the matrix, grouping) on damaged real inputs:
//! bytes flipped, cut, duplicated lines, stray YAML syntax. They never
//! panic; every problem names the file it came from. (Issue #13, point 3:
//! the loader part. Stable Rust: proptest over mutations of real files.)

use palisade_engine::{Engine, Matrix};
use palisade_model::{parse_sources, parse_values, Cluster, Source};
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

/// Characters that change YAML's and JSON's structure.
const SPECIAL: &[u8] = b":- \n\t{}[],\"'&*!|>#%@`0a~.";

#[derive(Debug, Clone)]
enum Mutation {
    Replace { at: usize, byte: u8 },
    Insert { at: usize, byte: u8 },
    Cut { at: usize, len: usize },
    DuplicateLine { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop::sample::select(SPECIAL);
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(at, byte)| Mutation::Replace { at, byte }),
        (any::<usize>(), byte).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        (any::<usize>(), 1..40usize).prop_map(|(at, len)| Mutation::Cut { at, len }),
        any::<usize>().prop_map(|at| Mutation::DuplicateLine { at }),
    ]
}

fn apply(text: &str, mutations: &[Mutation]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for m in mutations {
        let n = bytes.len().max(1);
        match *m {
            Mutation::Replace { at, byte } if !bytes.is_empty() => bytes[at % n] = byte,
            Mutation::Insert { at, byte } => bytes.insert(at % (bytes.len() + 1), byte),
            Mutation::Cut { at, len } if !bytes.is_empty() => {
                let start = at % n;
                bytes.drain(start..(start + len).min(bytes.len()));
            }
            Mutation::DuplicateLine { at } => {
                let text = String::from_utf8_lossy(&bytes).to_string();
                let lines: Vec<&str> = text.split_inclusive('\n').collect();
                if !lines.is_empty() {
                    let k = at % lines.len();
                    let mut out: Vec<&str> = lines[..=k].to_vec();
                    out.extend(&lines[k..]);
                    bytes = out.concat().into_bytes();
                }
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).to_string()
}

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
