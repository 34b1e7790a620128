//! Shared by the lab's kernel tests.
#![allow(dead_code)]

use std::process::Command;

use palisade_model::{parse_sources, Cluster, Source};

/// Root is needed for network namespaces. Skips loudly otherwise, and fails
/// instead when CI=true or PALISADE_REQUIRE_PRIVILEGED=1.
pub fn privileged(test: &str) -> bool {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    let required = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("PALISADE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
    if !root {
        assert!(!required, "{test} needs root (CI=true or PALISADE_REQUIRE_PRIVILEGED=1 forbids skipping)");
        eprintln!("\n*** SKIPPED: {test} needs root to create network namespaces ***\n");
    }
    root
}

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
