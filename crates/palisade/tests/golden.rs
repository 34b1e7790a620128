//! Golden output of every format, on the example shop. A change to any
//! output shows as a snapshot diff to review (`cargo insta review`).

use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO_BIN_EXE_palisade")).args(args).current_dir(root).output().unwrap();
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

macro_rules! golden {
    ($name:ident, $($arg:expr),+) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(run(&[$($arg),+]));
        }
    };
}

golden!(analyze_table, "analyze", "examples/shop");
golden!(analyze_json, "analyze", "examples/shop", "-o", "json");
golden!(analyze_tsv, "analyze", "examples/shop", "-o", "tsv");
golden!(analyze_dot, "analyze", "examples/shop", "-o", "dot");
golden!(analyze_html, "analyze", "examples/shop", "-o", "html");
golden!(analyze_port_table, "analyze", "examples/shop", "--port", "tcp/5432", "--port", "udp/53", "--from", "shop/*");
golden!(analyze_port_tsv, "analyze", "examples/shop", "--port", "tcp/8080", "-o", "tsv");
golden!(analyze_port_json, "analyze", "examples/shop", "--port", "tcp/6379", "-o", "json", "--to", "data/*");
golden!(analyze_port_dot_is_a_usage_error, "analyze", "examples/shop", "--port", "tcp/80", "-o", "dot");
golden!(explain_table, "explain", "shop/api", "data/postgres", "tcp/5432", "examples/shop");
golden!(explain_json, "explain", "shop/web", "data/postgres", "tcp/5432", "examples/shop", "-o", "json");
golden!(lint_table, "lint", "docs/examples/lint-demo.yaml");
golden!(lint_json, "lint", "docs/examples/lint-demo.yaml", "-o", "json", "--fail-on", "never");
golden!(diff_table, "diff", "examples/shop", "examples/shop-v2");
golden!(diff_json, "diff", "examples/shop", "examples/shop-v2", "-o", "json");
golden!(invalid_input, "analyze", "docs/examples/invalid.yaml");
golden!(
    invalid_input_skipped,
    "analyze",
    "docs/examples/invalid.yaml",
    "examples/shop",
    "--skip-invalid",
    "--from",
    "shop/web"
);
golden!(missing_file, "analyze", "no/such/dir");
golden!(bad_probe, "analyze", "examples/shop", "--port", "icmp/1");
// Regression: replicas of one workload are separate pods; policy applies
// between them (was reported as self traffic, always allowed).
golden!(explain_between_replicas, "explain", "shop/web", "shop/web", "tcp/8080", "examples/shop");
golden!(explain_pod_ip_is_the_pod, "explain", "203.0.113.7", "10.244.0.6", "tcp/5432", "docs/examples/lint-demo.yaml");
golden!(skip_invalid_does_not_skip_missing_paths, "analyze", "no/such/dir", "examples/shop", "--skip-invalid");
