//! The local socket the CNI plugin (and the lab) talk to: one JSON line in,
//! one line out.
//! - `{"op": "add", "containerID", "netns", "ifname", "ips", "podNamespace",
//!   "podName", "senderCheck"}` → `{"ok": true}` once the pod's policy is in
//!   the kernel, or `{"error": "..."}`; `"senderCheck": "attached"` says the
//!   plugin put the veth's sender check in place (else the agent does);
//!   `"podUID"` (`K8S_POD_UID`) tells pods of one name apart; `"waitMs"`
//!   is how long the agent may wait for its source to show the pod;
//! - `{"op": "del", "containerID", "ifname"}` → `{"ok": true}`;
//! - `{"op": "status"}` → `{"ok": true, "ready", "applied", ...}`;
//! - `{"op": "podCIDRs"}` → `{"ok": true, "podCIDRs": [...]}` (the Node's).
//!
//! A connection that sends nothing is a liveness check (the plugin's STATUS).
//!
//! Only root (or the agent's own user) may talk to it: the socket is 0600
//! in a directory the agent creates 0700, and every connection's peer
//! credentials (SO_PEERCRED) are checked, so nothing else on the node can
//! tell the agent to forget a pod.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use palisade_model::EndpointKey;
use serde_json::{json, Value};

/// A pod the plugin has wired and wants confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddRequest {
    pub pod: EndpointKey,
    pub container_id: String,
    pub ifname: String,
    pub ips: Vec<IpAddr>,
    /// The plugin attached the veth's sender check itself.
    pub sender_check_attached: bool,
    /// `K8S_POD_UID`, when the runtime passed it: which pod of that name.
    pub uid: Option<String>,
    /// How long the agent may wait for its source to show the pod (the
    /// runtime's ADD usually follows the pod's creation by milliseconds).
    pub wait: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Add(AddRequest),
    Del {
        container_id: String,
        ifname: String,
    },
    Status,
    /// The node's pod CIDRs (from its Node object), for the plugin's IPAM
    /// when its config names no ranges.
    PodCidrs,
}

pub struct CniSocket {
    listener: UnixListener,
}

impl CniSocket {
    /// Listens at `path`, replacing a stale socket file. A directory it
    /// creates is 0700; the socket is 0600 whatever the umask.
    pub fn bind(path: &Path) -> std::io::Result<CniSocket> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(CniSocket { listener })
    }

    /// Waits up to `timeout` for a connection (the loop's idle sleep, cut
    /// short when the plugin calls: ADD waits on us).
    pub fn wait(&self, timeout: Duration) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }

    /// Serves the connections waiting now, calling `handle` for each
    /// request (its `Ok` value is merged into `{"ok": true}`); returns at
    /// once if there are none.
    pub fn serve_pending(&self, mut handle: impl FnMut(Request) -> Result<Value, String>) {
        for call in self.accept_pending() {
            let answer = handle(call.request.clone());
            let _ = call.answer(answer);
        }
    }

    /// The requests waiting now, each to be answered (now or later) with
    /// [`Call::answer`]. Bad requests and callers that are not allowed are
    /// answered here.
    pub fn accept_pending(&self) -> Vec<Call> {
        let mut calls = Vec::new();
        while let Ok((stream, _)) = self.listener.accept() {
            if let Ok(Some(call)) = read_call(stream) {
                calls.push(call);
            }
        }
        calls
    }
}

/// One request, with the connection its answer goes back on.
pub struct Call {
    stream: UnixStream,
    pub request: Request,
}

impl Call {
    /// Sends the answer: `Ok` values are merged into `{"ok": true}`. An
    /// error here means the caller is gone (it gave up waiting).
    pub fn answer(self, result: Result<Value, String>) -> std::io::Result<()> {
        let answer = match result {
            Ok(extra) => {
                let mut answer = json!({"ok": true});
                if let (Some(a), Value::Object(extra)) = (answer.as_object_mut(), extra) {
                    a.extend(extra);
                }
                answer
            }
            Err(e) => json!({"error": e}),
        };
        // A caller that gave up has closed its end (it sends nothing after
        // its one line, so the only thing to read before our answer is
        // that end).
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::AsRawFd;
        let mut byte = [0u8; 1];
        if let Ok(0) = recv(self.stream.as_raw_fd(), &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
            return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the caller closed the connection"));
        }
        self.stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        writeln!(&self.stream, "{answer}")
    }
}

/// Root, or the user the agent runs as (an unprivileged agent in tests).
fn caller_allowed(stream: &UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    match getsockopt(stream, PeerCredentials) {
        Ok(cred) => cred.uid() == 0 || cred.uid() == nix::unistd::geteuid().as_raw(),
        Err(_) => false,
    }
}

/// Reads one request. `None`: a liveness check, or a request answered
/// here (not parsable, or from a caller that is not allowed).
fn read_call(stream: UnixStream) -> std::io::Result<Option<Call>> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line)? == 0 {
        return Ok(None); // a liveness check
    }
    if !caller_allowed(&stream) {
        // Read first, then refuse: the caller sees why, not a broken pipe.
        writeln!(&stream, "{}", json!({"error": "only root may talk to the palisade agent"}))?;
        return Ok(None);
    }
    match parse(&line) {
        Ok(request) => Ok(Some(Call { stream, request })),
        Err(e) => {
            writeln!(&stream, "{}", json!({"error": e}))?;
            Ok(None)
        }
    }
}

fn parse(line: &str) -> Result<Request, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
    let text = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| format!("request without {k}"));
    match v["op"].as_str() {
        Some("add") => {
            let (namespace, name) = (text("podNamespace")?, text("podName")?);
            let ips = v["ips"]
                .as_array()
                .ok_or("request without ips")?
                .iter()
                .map(|ip| ip.as_str().and_then(|s| s.parse().ok()).ok_or(format!("bad address {ip}")))
                .collect::<Result<_, _>>()?;
            Ok(Request::Add(AddRequest {
                pod: EndpointKey::pod(&namespace, &name),
                container_id: text("containerID")?,
                ifname: text("ifname")?,
                ips,
                sender_check_attached: v["senderCheck"] == "attached",
                uid: v["podUID"].as_str().filter(|u| !u.is_empty()).map(str::to_string),
                wait: Duration::from_millis(v["waitMs"].as_u64().unwrap_or(0).min(60_000)),
            }))
        }
        Some("del") => Ok(Request::Del { container_id: text("containerID")?, ifname: text("ifname")? }),
        Some("status") => Ok(Request::Status),
        Some("podCIDRs") => Ok(Request::PodCidrs),
        _ => Err(format!("unknown op {}", v["op"])),
    }
}

/// One request to the agent at `socket`, bounded by `timeout`: the
/// answer, or why there is none. (The lab's side of the protocol; the
/// plugin has its own copy so it needs nothing from this crate.)
pub fn call(socket: &Path, request: &Value, timeout: Duration) -> Result<Value, String> {
    let stream = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    writeln!(&stream, "{request}").map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).map_err(|e| format!("{}: {e}", socket.display()))?;
    let answer: Value = serde_json::from_str(&line).map_err(|e| format!("bad answer {line:?}: {e}"))?;
    match answer["error"].as_str() {
        Some(e) => Err(e.to_string()),
        None => Ok(answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_op_and_refuses_the_rest() {
        let add = r#"{"op":"add","containerID":"c","netns":"/n","ifname":"eth0","ips":["10.0.0.1"],"podNamespace":"x","podName":"a"}"#;
        let Request::Add(a) = parse(add).unwrap() else { panic!("not an add") };
        assert_eq!(a.pod, EndpointKey::pod("x", "a"));
        assert_eq!(a.ips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            parse(r#"{"op":"del","containerID":"c","ifname":"eth0"}"#).unwrap(),
            Request::Del { container_id: "c".into(), ifname: "eth0".into() }
        );
        assert_eq!(parse(r#"{"op":"status"}"#).unwrap(), Request::Status);
        assert_eq!(parse(r#"{"op":"podCIDRs"}"#).unwrap(), Request::PodCidrs);
        assert!(parse(r#"{"op":"add","containerID":"c"}"#).unwrap_err().contains("podNamespace"));
        assert!(parse(r#"{"op":"nope"}"#).unwrap_err().contains("unknown op"));
        assert!(parse("{").unwrap_err().contains("bad request"));
    }

    /// The socket is private (0600 in a 0700 directory, whatever the
    /// umask), and a caller that is neither root nor the agent's user is
    /// refused by its credentials even where the file modes would let it in.
    #[test]
    fn only_root_may_talk_to_the_agent() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let dir = std::env::temp_dir().join(format!("palisade-cni-socket-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("run").join("cni.sock");
        let socket = CniSocket::bind(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&dir.join("run")), mode(&path)), (0o700, 0o600));
        if !palisade_testkit::privileged("only_root_may_talk_to_the_agent") {
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        // Open the modes: only the credentials check stands in the way.
        for (p, m) in [(&dir, 0o755), (&dir.join("run"), 0o755), (&path, 0o666)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        }
        let client = format!(
            "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?}); \
             s.sendall(b'{{\"op\": \"del\", \"containerID\": \"c\", \"ifname\": \"eth0\"}}\\n'); \
             print(s.makefile().readline(), end='')",
            path.display().to_string()
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &client])
            .uid(65534)
            .gid(65534)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut handled = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            socket.wait(Duration::from_millis(50));
            socket.serve_pending(|_| {
                handled += 1;
                Ok(json!({}))
            });
        }
        let out = child.wait_with_output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let answer = String::from_utf8_lossy(&out.stdout);
        assert!(answer.contains("only root"), "{answer} {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(handled, 0, "the request never reached the agent");
    }
}
