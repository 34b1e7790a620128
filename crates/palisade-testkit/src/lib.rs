//! Test support shared by the workspace's crates (dev-dependency only):
//! random clusters for property tests, and the guard for tests that need root.

pub mod arb;
pub mod churn;
pub mod mutate;

use std::process::Command;

/// Whether this process may create network namespaces. Outside CI a test
/// without root skips with a loud message; with `CI=true` or
/// `PALISADE_REQUIRE_PRIVILEGED=1` skipping is a failure.
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
