//! `palisade-cni`: executed by the container runtime with the CNI_*
//! environment and the network config on stdin.

use std::collections::HashMap;
use std::io::Read;

fn main() {
    let env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("CNI_")).collect();
    let mut stdin = String::new();
    if env.get("CNI_COMMAND").map(String::as_str) != Some("VERSION") || !atty_stdin() {
        let _ = std::io::stdin().read_to_string(&mut stdin);
    }
    let outcome = palisade_cni::plugin::run(&env, &stdin);
    if !outcome.stdout.is_empty() {
        println!("{}", outcome.stdout);
    }
    std::process::exit(outcome.exit);
}

/// VERSION may be called with nothing on stdin: do not wait on a terminal.
fn atty_stdin() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}
