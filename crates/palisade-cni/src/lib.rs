//! Palisade's CNI plugin (spec 1.1.0, results for 0.3.0 to 1.1.0).
//!
//! - `protocol`: versions, results and their conversion, errors with the
//!   spec's codes.
//! - `ipam`: per-node address allocation on disk, safe under concurrent
//!   invocations.
//!
//! - `plugin`: the commands (ADD, DEL, CHECK, GC, STATUS, VERSION). ADD
//!   fails closed: it succeeds only when the node agent confirms the pod's
//!   policy is in the kernel.

pub mod ipam;
pub mod plugin;
pub mod protocol;

/// The plugin's process: reads the CNI_* environment and stdin, prints the
/// result or error, exits with the spec's status. (The `palisade` binary
/// runs this too when invoked as `palisade-cni`.)
pub fn main() -> ! {
    use std::io::{IsTerminal, Read};
    let env: std::collections::HashMap<String, String> =
        std::env::vars().filter(|(k, _)| k.starts_with("CNI_")).collect();
    let mut stdin = String::new();
    // VERSION may be called with nothing on stdin: do not wait on a terminal.
    if env.get("CNI_COMMAND").map(String::as_str) != Some("VERSION") || !std::io::stdin().is_terminal() {
        let _ = std::io::stdin().read_to_string(&mut stdin);
    }
    let outcome = plugin::run(&env, &stdin);
    if !outcome.stdout.is_empty() {
        println!("{}", outcome.stdout);
    }
    std::process::exit(outcome.exit)
}
