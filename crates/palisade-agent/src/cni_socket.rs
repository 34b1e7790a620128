//! The socket the CNI plugin talks to: one JSON line in (`{"op": "add",
//! "containerID", "netns", "ifname", "ips", "podNamespace", "podName"}`),
//! one line out (`{"ok": true}` once the pod's policy is in the kernel, or
//! `{"error": "..."}`). A connection without a line is a readiness check
//! (the plugin's STATUS).

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
}

pub struct CniSocket {
    listener: UnixListener,
}

impl CniSocket {
    /// Listens at `path`, replacing a stale socket file.
    pub fn bind(path: &Path) -> std::io::Result<CniSocket> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(CniSocket { listener })
    }

    /// Serves the connections waiting now, calling `add` for each request;
    /// returns at once if there are none.
    pub fn serve_pending(&self, mut add: impl FnMut(AddRequest) -> Result<(), String>) {
        while let Ok((stream, _)) = self.listener.accept() {
            let _ = serve_one(stream, &mut add);
        }
    }
}

fn serve_one(stream: UnixStream, add: &mut impl FnMut(AddRequest) -> Result<(), String>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line)? == 0 {
        return Ok(()); // a readiness check
    }
    let answer = match parse(&line) {
        Ok(request) => match add(request) {
            Ok(()) => json!({"ok": true}),
            Err(e) => json!({"error": e}),
        },
        Err(e) => json!({"error": e}),
    };
    writeln!(&stream, "{answer}")
}

fn parse(line: &str) -> Result<AddRequest, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
    if v["op"] != "add" {
        return Err(format!("unknown op {}", v["op"]));
    }
    let text = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| format!("request without {k}"));
    let (namespace, name) = (text("podNamespace")?, text("podName")?);
    let ips = v["ips"]
        .as_array()
        .ok_or("request without ips")?
        .iter()
        .map(|ip| ip.as_str().and_then(|s| s.parse().ok()).ok_or(format!("bad address {ip}")))
        .collect::<Result<_, _>>()?;
    Ok(AddRequest {
        pod: EndpointKey::pod(&namespace, &name),
        container_id: text("containerID")?,
        ifname: text("ifname")?,
        ips,
    })
}
