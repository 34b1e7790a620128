//! Shared by the lab's kernel tests.
#![allow(dead_code)]

use palisade_model::{parse_sources, Cluster, Source};

/// Root is needed for network namespaces. Skips loudly otherwise, and fails
/// instead when CI=true or PALISADE_REQUIRE_PRIVILEGED=1.
pub use palisade_testkit::privileged;

pub fn cluster(text: &str) -> Cluster {
    let (c, problems, _) =
        Cluster::from_manifests(parse_sources(&[Source { name: "test.yaml".into(), text: text.into() }]));
    assert!(problems.is_empty(), "{problems:?}");
    c
}

/// A unique run id per test in this process (namespaces are `pal-<id>-*`).
pub fn run_id(tag: &str) -> String {
    format!("{}{tag}", std::process::id())
}
