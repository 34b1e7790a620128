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
    let state = std::env::temp_dir().join(format!("palisade-agent-{}-pods.json", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::env::temp_dir().join(format!("palisade-agent-{}.log", std::process::id()));
    // Killed if the test fails before its SIGTERM (it would hold the test's pipes).
    struct Reaper(u32);
    impl Drop for Reaper {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), nix::sys::signal::SIGKILL);
        }
    }
    let mut agent = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["agent", "--dir"])
        .arg(&shop)
        .arg("--socket")
        .arg(&socket)
        .args(["--netns", &ns, "--poll-ms", "50", "--metrics-addr", &format!("127.0.0.1:{port}")])
        .arg("--state-file")
        .arg(&state)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let reaper = Reaper(agent.id());
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

    // Operations: health, readiness, Prometheus metrics.
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(get("/healthz").starts_with("HTTP/1.1 200"), "{}", get("/healthz"));
    // Ready once the first apply has returned (the table appears a moment
    // before: the apply then checks established flows).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !get("/readyz").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "not ready within 5 s: {}", get("/readyz"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics = get("/metrics");
    for needle in [
        "palisade_agent_endpoints 8",
        "palisade_agent_policies ",
        "palisade_agent_rules ",
        "palisade_agent_reconcile_seconds_bucket",
        "palisade_agent_apply_errors_total 0",
        "palisade_agent_last_sync_timestamp_seconds",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from:\n{metrics}");
    }
    assert!(get("/nope").starts_with("HTTP/1.1 404"));
    // Not a terminal: JSON lines.
    let first = std::fs::read_to_string(&log).unwrap().lines().next().unwrap_or_default().to_string();
    let line: serde_json::Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{first:?}: {e}"));
    assert_eq!(line["msg"], "started", "{line}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = agent.wait().unwrap();
    std::mem::forget(reaper); // reaped: its pid may be someone else's now
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    assert!(listed().unwrap().status.success(), "enforcement stays after the agent stops");
    assert!(!socket.exists(), "the socket is removed");
    let _ = std::fs::remove_file(&state);
    let _ = std::fs::remove_file(&log);
}

/// A node the agent cannot make ready for pods (here: IP forwarding off
/// and its sysctl immutable) is not reported ready: `/readyz` names what
/// is missing, and the metric says 0.
#[test]
fn an_agent_on_a_node_it_cannot_make_ready_is_not_ready() {
    if !privileged("palisade agent: node readiness") {
        return;
    }
    let pid = std::process::id();
    let ns = format!("pal-{pid}r-node");
    assert!(Command::new("ip").args(["netns", "add", &ns]).status().unwrap().success());
    let root = std::env::temp_dir().join(format!("palisade-agent-{pid}-sysctl"));
    let file = root.join("net/ipv4/ip_forward");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "0\n").unwrap();
    assert!(Command::new("chattr").arg("+i").arg(&file).status().unwrap().success());
    struct Cleanup(String, std::path::PathBuf, Option<std::process::Child>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(c) = &mut self.2 {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = Command::new("chattr").arg("-i").arg(self.1.join("net/ipv4/ip_forward")).status();
            let _ = std::fs::remove_dir_all(&self.1);
            let pid = std::process::id();
            for f in [format!("palisade-agent-{pid}r.sock"), format!("palisade-agent-{pid}r.json")] {
                let _ = std::fs::remove_file(std::env::temp_dir().join(f));
            }
            let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
        }
    }
    let mut cleanup = Cleanup(ns.clone(), root.clone(), None);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop");
    cleanup.2 = Some(
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["agent", "--dir"])
            .arg(&shop)
            .arg("--socket")
            .arg(std::env::temp_dir().join(format!("palisade-agent-{pid}r.sock")))
            .arg("--state-file")
            .arg(std::env::temp_dir().join(format!("palisade-agent-{pid}r.json")))
            .arg("--sysctl-dir")
            .arg(&root)
            .args(["--netns", &ns, "--poll-ms", "50", "--metrics-addr", &format!("127.0.0.1:{port}")])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let get = |path: &str| {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !get("/metrics").contains("palisade_agent_last_sync_timestamp_seconds ")
        || get("/metrics").contains("last_sync_timestamp_seconds 0")
    {
        assert!(Instant::now() < deadline, "the agent did not apply within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ready = get("/readyz");
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("not ready for pods") && ready.contains("net.ipv4.ip_forward"), "{ready}");
    assert!(get("/metrics").contains("palisade_agent_node_ready 0"));
}
