//! `palisade agent` as a daemon: it programs its node's kernel from a
//! manifests directory, and on SIGTERM stops with the rules left in place.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod scenario;
use scenario::privileged;

#[test]
fn agent_programs_the_node_and_stops_cleanly_on_sigterm() {
    if !privileged("palisade agent") {
        return;
    }
    let ns = format!("pal-{}g-node", std::process::id());
    assert!(Command::new("ip").args(["netns", "add", &ns]).status().unwrap().success());
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
        }
    }
    let _gone = Gone(ns.clone());
    let socket = std::env::temp_dir().join(format!("palisade-agent-{}.sock", std::process::id()));
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["agent", "--dir"])
        .arg(&shop)
        .arg("--socket")
        .arg(&socket)
        .args(["--netns", &ns, "--poll-ms", "50"])
        .spawn()
        .unwrap();
    let listed =
        || Command::new("ip").args(["netns", "exec", &ns, "nft", "list", "table", "inet", "palisade"]).output();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(socket.exists() && listed().unwrap().status.success()) {
        assert!(Instant::now() < deadline, "the agent did not program its node within 10 s");
        assert!(agent.try_wait().unwrap().is_none(), "the agent exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let table = String::from_utf8(listed().unwrap().stdout).unwrap();
    assert!(table.contains("chain forward"), "{table}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = agent.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    assert!(listed().unwrap().status.success(), "enforcement stays after the agent stops");
    assert!(!socket.exists(), "the socket is removed");
}
