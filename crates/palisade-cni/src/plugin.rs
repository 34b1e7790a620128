//! The plugin's commands, as the CNI spec defines them: the runtime's
//! environment and the network config on stdin in, a result or an error on
//! stdout and an exit code out.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use palisade_dataplane::netns::Netns;
use palisade_dataplane::podnet::{PodLink, GATEWAY_V4, GATEWAY_V6};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::ipam::{IpamError, Store};
use crate::protocol::{
    at_least, require_supported, version_info, CniError, CniResult, Code, Interface, IpConfig, Route, CURRENT_VERSION,
};

/// Where the node agent listens for pods being added.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/palisade/cni.sock";
const DEFAULT_DATA_DIR: &str = "/var/lib/palisade/ipam";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ipam {
    /// Pod CIDRs of this node, one address is taken from each.
    #[serde(default)]
    ranges: Vec<IpNet>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
}

/// The network config the runtime passes on stdin.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default = "default_version")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    ipam: Option<Ipam>,
    /// The agent's socket; ADD fails if the agent does not confirm.
    #[serde(default)]
    agent_socket: Option<PathBuf>,
    /// How long ADD waits for the agent to put the pod's policy in place.
    #[serde(default)]
    agent_timeout_ms: Option<u64>,
    #[serde(default)]
    prev_result: Option<Value>,
    /// `args.cni.ips`: static addresses the runtime asks for.
    #[serde(default)]
    args: Option<Value>,
    /// `runtimeConfig.ips` (the `ips` capability).
    #[serde(default)]
    runtime_config: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(default, rename = "cni.dev/attachments")]
    attachments: Option<Vec<Attachment>>,
}

fn default_version() -> String {
    "0.1.0".into()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// What one invocation prints and how it exits.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub stdout: String,
    pub exit: i32,
}

/// Runs one command. `env` holds the CNI_* variables.
pub fn run(env: &HashMap<String, String>, stdin: &str) -> Outcome {
    let command = env.get("CNI_COMMAND").map(String::as_str).unwrap_or("");
    // VERSION answers whatever the config says.
    if command == "VERSION" {
        let version = serde_json::from_str::<Value>(stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
            .unwrap_or_else(|| CURRENT_VERSION.into());
        return Outcome { stdout: version_info(&version).to_string(), exit: 0 };
    }
    let version = serde_json::from_str::<Value>(stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .unwrap_or_else(|| CURRENT_VERSION.into());
    match dispatch(env, stdin) {
        Ok(Some(result)) => Outcome { stdout: result.to_string(), exit: 0 },
        Ok(None) => Outcome { stdout: String::new(), exit: 0 },
        Err(e) => Outcome { stdout: e.to_json(&version).to_string(), exit: 1 },
    }
}

/// One invocation, checked: everything the runtime said, before anything
/// is done. Pure (no I/O), so it can be fuzzed.
#[derive(Debug)]
pub struct Invocation {
    pub command: Command,
    pub conf: NetConf,
    /// `CNI_ARGS` as key=value pairs (`K8S_POD_NAMESPACE`, `K8S_POD_UID`, ...).
    pub args: HashMap<String, String>,
    /// Static addresses asked for (ADD).
    pub requested: Vec<IpAddr>,
}

/// A command with the environment it needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Add { container_id: String, netns: String, ifname: String },
    Del { container_id: String, netns: Option<String>, ifname: String },
    Check { container_id: String, netns: String, ifname: String },
    Gc,
    Status,
}

/// Reads the runtime's environment and stdin (not VERSION).
pub fn parse_invocation(env: &HashMap<String, String>, stdin: &str) -> Result<Invocation, CniError> {
    let command = env.get("CNI_COMMAND").map(String::as_str).unwrap_or("");
    if command.is_empty() {
        return Err(CniError::new(Code::InvalidEnvironment, "missing environment variable", "CNI_COMMAND is required"));
    }
    if !matches!(command, "ADD" | "DEL" | "CHECK" | "GC" | "STATUS") {
        return Err(CniError::new(Code::InvalidEnvironment, "unknown CNI_COMMAND", command));
    }
    let conf: NetConf = serde_json::from_str(stdin)
        .map_err(|e| CniError::new(Code::Decode, "cannot decode the network configuration", e.to_string()))?;
    require_supported(&conf.cni_version)?;
    let var = |name: &str| -> Result<String, CniError> {
        env.get(name).filter(|v| !v.is_empty()).cloned().ok_or_else(|| {
            CniError::new(Code::InvalidEnvironment, "missing environment variable", format!("{name} is required"))
        })
    };
    let needs = |min: &str, what: &str| -> Result<(), CniError> {
        if at_least(&conf.cni_version, min) {
            Ok(())
        } else {
            Err(CniError::new(Code::IncompatibleVersion, format!("{what} needs CNI {min} or later"), &conf.cni_version))
        }
    };
    let command = match command {
        "ADD" => {
            Command::Add { container_id: var("CNI_CONTAINERID")?, netns: var("CNI_NETNS")?, ifname: var("CNI_IFNAME")? }
        }
        "DEL" => Command::Del {
            container_id: var("CNI_CONTAINERID")?,
            netns: env.get("CNI_NETNS").filter(|v| !v.is_empty()).cloned(),
            ifname: var("CNI_IFNAME")?,
        },
        "CHECK" => {
            needs("0.4.0", "CHECK")?;
            Command::Check {
                container_id: var("CNI_CONTAINERID")?,
                netns: var("CNI_NETNS")?,
                ifname: var("CNI_IFNAME")?,
            }
        }
        "GC" => {
            needs("1.1.0", "GC")?;
            Command::Gc
        }
        _ => {
            needs("1.1.0", "STATUS")?;
            Command::Status
        }
    };
    let cni_args = env.get("CNI_ARGS").map(String::as_str).unwrap_or("");
    let mut args = HashMap::new();
    for pair in cni_args.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                "invalid CNI_ARGS",
                format!("{pair:?} is not KEY=VALUE (CNI_ARGS is KEY=VALUE pairs separated by ';')"),
            ));
        };
        args.insert(k.to_string(), v.to_string());
    }
    let requested = if matches!(command, Command::Add { .. }) { requested_ips(&conf, env)? } else { Vec::new() };
    Ok(Invocation { command, conf, args, requested })
}

fn dispatch(env: &HashMap<String, String>, stdin: &str) -> Result<Option<Value>, CniError> {
    let inv = parse_invocation(env, stdin)?;
    match &inv.command {
        Command::Add { container_id, netns, ifname } => add(&inv, container_id, netns, ifname).map(Some),
        Command::Del { container_id, netns, ifname } => {
            del(&inv.conf, container_id, netns.as_deref(), ifname).map(|_| None)
        }
        Command::Check { container_id, netns, ifname } => check(&inv.conf, container_id, netns, ifname).map(|_| None),
        Command::Gc => gc(&inv.conf).map(|_| None),
        Command::Status => status(&inv.conf).map(|_| None),
    }
}

fn ipam_error(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted(range) => CniError::new(Code::PoolExhausted, "address pool exhausted", range.to_string()),
        IpamError::TooSmall(range) => {
            CniError::new(Code::InvalidConfig, "invalid ipam range", e.to_string() + &format!(" ({range})"))
        }
        IpamError::Io { .. } => CniError::new(Code::Io, "ipam store", e.to_string()),
        IpamError::NotInRange(_) => CniError::new(Code::InvalidConfig, "invalid requested address", e.to_string()),
        IpamError::Taken { .. } => CniError::new(Code::AddressInUse, "requested address in use", e.to_string()),
    }
}

/// The static addresses asked for, by every convention the runtime may
/// use: `runtimeConfig.ips`, `args.cni.ips` (CIDR or bare address) and
/// `CNI_ARGS` `IP=a,b` (host-local's).
fn requested_ips(conf: &NetConf, env: &HashMap<String, String>) -> Result<Vec<IpAddr>, CniError> {
    let mut texts: Vec<(String, String)> = Vec::new();
    let mut from = |field: &str, v: Option<&Value>| {
        for ip in v.and_then(Value::as_array).into_iter().flatten() {
            texts.push((field.to_string(), ip.as_str().map(str::to_string).unwrap_or_else(|| ip.to_string())));
        }
    };
    from("runtimeConfig.ips", conf.runtime_config.as_ref().map(|r| &r["ips"]));
    from("args.cni.ips", conf.args.as_ref().map(|a| &a["cni"]["ips"]));
    let cni_args = env.get("CNI_ARGS").map(String::as_str).unwrap_or("");
    for ip in cni_args.split(';').filter_map(|kv| kv.strip_prefix("IP=")) {
        texts.extend(ip.split(',').map(|ip| ("CNI_ARGS IP".to_string(), ip.to_string())));
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for (field, text) in texts {
        let ip = text.split('/').next().unwrap_or("").parse::<IpAddr>().map_err(|_| {
            CniError::new(
                Code::InvalidConfig,
                "invalid requested address",
                format!("{field}: {text:?} is not an address"),
            )
        })?;
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// The address store, and the ranges to allocate from: the config's, or
/// (none configured) the node's pod CIDRs as the agent knows them from
/// the Node object. Only ADD needs the ranges (`need_ranges`).
fn store(conf: &NetConf, need_ranges: bool) -> Result<(Store, Vec<IpNet>), CniError> {
    let default = Ipam { ranges: Vec::new(), data_dir: None };
    let ipam = conf.ipam.as_ref().unwrap_or(&default);
    let dir = ipam.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let store = Store::open(&dir, &conf.name).map_err(ipam_error)?;
    if !ipam.ranges.is_empty() || !need_ranges {
        return Ok((store, ipam.ranges.clone()));
    }
    let socket = conf.agent_socket.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET));
    let no_ranges = |why: String| {
        CniError::new(
            Code::InvalidConfig,
            "no address ranges",
            format!("ipam.ranges is empty and the node's pod CIDRs are unknown: {why}"),
        )
    };
    // An agent that does not answer is the fail-closed case (101), not a
    // configuration error.
    let answer = ask_agent(&socket, &json!({"op": "podCIDRs"}), agent_timeout(conf)).map_err(|e| {
        let why = format!("palisade agent at {}: {e}", socket.display());
        if e.starts_with("cannot connect") || e.starts_with("no answer") {
            CniError::new(Code::PolicyNotReady, "the node agent is not answering; refusing to start the pod", why)
        } else {
            no_ranges(why)
        }
    })?;
    let ranges = answer["podCIDRs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str()?.parse::<IpNet>().ok())
        .collect::<Vec<_>>();
    if ranges.is_empty() {
        return Err(no_ranges(format!("the agent at {} answered {answer}", socket.display())));
    }
    Ok((store, ranges))
}

/// How long ADD waits for the agent (`agentTimeoutMs`, default 5 s).
fn agent_timeout(conf: &NetConf) -> Duration {
    Duration::from_millis(conf.agent_timeout_ms.unwrap_or(5000))
}

/// One request to the agent; its answer, or why there is none.
fn ask_agent(socket: &Path, request: &Value, timeout: Duration) -> Result<Value, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("cannot connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    writeln!(stream, "{request}").map_err(|e| format!("cannot send: {e}"))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("no answer within {} ms: {e}", timeout.as_millis()))?;
    let answer: Value = serde_json::from_str(&line).map_err(|e| format!("bad answer {line:?}: {e}"))?;
    match answer["error"].as_str() {
        Some(e) => Err(e.to_string()),
        None => Ok(answer),
    }
}

/// The node-side interface: stable per attachment, at most 15 bytes.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("pal{:011x}", h & 0xfff_ffff_ffff)
}

fn internal(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(Code::Internal, what.to_string(), e.to_string())
}

fn add(inv: &Invocation, container_id: &str, netns: &str, ifname: &str) -> Result<Value, CniError> {
    let conf = &inv.conf;
    if !Path::new(netns).exists() {
        return Err(CniError::new(Code::InvalidEnvironment, "invalid CNI_NETNS", format!("{netns} does not exist")));
    }
    let (store, ranges) = store(conf, true)?;
    let ips = store.allocate_requested(container_id, ifname, &ranges, &inv.requested).map_err(ipam_error)?;
    let host_if = host_ifname(container_id, ifname);
    let link = PodLink {
        pod: Netns::named(netns),
        node: Netns::named("/proc/thread-self/ns/net"),
        host_if: host_if.clone(),
        pod_if: ifname.to_string(),
        addresses: ips.clone(),
    };
    let wired = || -> Result<(), CniError> {
        // ADD again for the same attachment: the pair is there already; its
        // sender check is put (back) in place, in case an earlier ADD
        // stopped between the two.
        if Path::new(&format!("/sys/class/net/{host_if}")).exists() {
            palisade_dataplane::sender::attach_fast(&host_if, &ips).map_err(|e| internal("wiring the pod", e))?;
            // If the earlier ADD stopped before the pod's end came up, this
            // fails, and the link is removed for the next ADD to redo.
            return palisade_dataplane::link::wait_until_transmitting(
                &link.node,
                &host_if,
                palisade_dataplane::podnet::ACTIVATION_LIMIT,
            )
            .map_err(|e| internal("wiring the pod", e));
        }
        // The check as a tc filter (no RCU grace period on the pod's start);
        // the agent moves it to tcx once the pod is confirmed.
        link.attach_with(true).map_err(|e| internal("wiring the pod", e))
    };
    let result = wired().and_then(|_| confirm_policy(conf, container_id, netns, ifname, &ips, &inv.args));
    if let Err(e) = result {
        // Fail closed and leave nothing behind: no address, no link.
        let _ = link.detach();
        let _ = store.release(container_id, ifname);
        return Err(e);
    }
    let mac = std::fs::read_to_string(format!("/sys/class/net/{host_if}/address")).unwrap_or_default();
    let mut result = CniResult {
        interfaces: vec![
            Interface { name: host_if, mac: mac.trim().to_string(), sandbox: String::new() },
            Interface { name: ifname.to_string(), mac: String::new(), sandbox: netns.to_string() },
        ],
        ips: ips
            .iter()
            .map(|ip| IpConfig { address: IpNet::from(*ip), gateway: Some(gateway(ip)), interface: Some(1) })
            .collect(),
        routes: Vec::new(),
        dns: Value::Null,
    };
    if ips.iter().any(IpAddr::is_ipv4) {
        result.routes.push(Route { dst: "0.0.0.0/0".parse().expect("cidr"), gw: Some(gateway_v4()) });
    }
    if ips.iter().any(IpAddr::is_ipv6) {
        result.routes.push(Route { dst: "::/0".parse().expect("cidr"), gw: Some(GATEWAY_V6.parse().expect("ip")) });
    }
    Ok(result.to_version(&conf.cni_version))
}

fn gateway_v4() -> IpAddr {
    GATEWAY_V4.parse().expect("gateway")
}

fn gateway(ip: &IpAddr) -> IpAddr {
    if ip.is_ipv4() {
        gateway_v4()
    } else {
        GATEWAY_V6.parse().expect("gateway")
    }
}

/// Fail closed: ADD succeeds only once the node agent says the pod's
/// policy is in the kernel. One JSON line each way, bounded in time.
fn confirm_policy(
    conf: &NetConf,
    container_id: &str,
    netns: &str,
    ifname: &str,
    ips: &[IpAddr],
    args: &HashMap<String, String>,
) -> Result<(), CniError> {
    let socket = conf.agent_socket.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET));
    let timeout = agent_timeout(conf);
    let request = json!({
        "op": "add",
        "containerID": container_id,
        "netns": netns,
        "ifname": ifname,
        "ips": ips,
        "podNamespace": args.get("K8S_POD_NAMESPACE"),
        "podName": args.get("K8S_POD_NAME"),
        "podUID": args.get("K8S_POD_UID"),
        // The runtime's ADD usually follows the pod's creation by
        // milliseconds: the agent may wait for its source to catch up,
        // leaving a fifth of the timeout for the answer.
        "waitMs": (timeout * 4 / 5).as_millis() as u64,
        // `PodLink::attach` (or the repeated-ADD path) put it in place.
        "senderCheck": "attached",
    });
    let not_ready = |why: String| {
        CniError::new(
            Code::PolicyNotReady,
            "the pod's network policy is not confirmed; refusing to start it unprotected",
            format!("palisade agent at {}: {why}", socket.display()),
        )
    };
    ask_agent(&socket, &request, timeout).map(|_| ()).map_err(not_ready)
}

fn del(conf: &NetConf, container_id: &str, netns: Option<&str>, ifname: &str) -> Result<(), CniError> {
    let (store, _) = store(conf, false)?;
    let host_if = host_ifname(container_id, ifname);
    let _ = netns;
    remove_link(&host_if)?;
    // The agent first (it removes the pod's tracked flows), then the
    // addresses: a pod given one of them must not meet the old flows.
    tell_agent_deleted(conf, container_id, ifname);
    store.release(container_id, ifname).map_err(ipam_error)?;
    Ok(())
}

/// Best effort: DEL succeeds without the agent (the spec wants DEL to
/// succeed whatever is missing); the agent then forgets the pod when it
/// sees its link gone, or when the address is handed out again.
fn tell_agent_deleted(conf: &NetConf, container_id: &str, ifname: &str) {
    let socket = conf.agent_socket.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET));
    let Ok(mut stream) = UnixStream::connect(&socket) else { return };
    let timeout = Some(Duration::from_millis(conf.agent_timeout_ms.unwrap_or(5000).min(2000)));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let request = json!({"op": "del", "containerID": container_id, "ifname": ifname});
    if writeln!(stream, "{request}").is_ok() {
        let _ = BufReader::new(&stream).read_line(&mut String::new());
    }
}

/// Deletes the node side of a pod's veth (which deletes the pair). Gone
/// already is fine: the kernel removes the pair by itself, a moment after
/// the pod's namespace is deleted, so it can vanish under us.
fn remove_link(host_if: &str) -> Result<(), CniError> {
    let exists = || Path::new(&format!("/sys/class/net/{host_if}")).exists();
    if !exists() {
        return Ok(());
    }
    let deleted = palisade_dataplane::rtnl::Rtnl::open(&Netns::named("/proc/thread-self/ns/net"))
        .and_then(|mut rtnl| rtnl.delete_link(host_if));
    match deleted {
        Err(e) if exists() => Err(internal("removing the pod's link", e)),
        _ => Ok(()),
    }
}

fn check(conf: &NetConf, container_id: &str, netns: &str, ifname: &str) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(Code::InvalidConfig, "CHECK needs prevResult", "prevResult is missing"))?;
    let prev = CniResult::from_json(prev)?;
    let (store, _) = store(conf, false)?;
    let held = store.lookup(container_id, ifname).map_err(ipam_error)?;
    for ip in prev.ips.iter().map(|c| c.address.addr()) {
        if !held.contains(&ip) {
            return Err(internal("CHECK", format!("{ip} of prevResult is not allocated to {container_id}/{ifname}")));
        }
    }
    let host_if = host_ifname(container_id, ifname);
    if !Path::new(&format!("/sys/class/net/{host_if}")).exists() {
        return Err(internal("CHECK", format!("the node side {host_if} is missing")));
    }
    // The exact program for the held addresses, on the node side.
    if !palisade_dataplane::sender::is_attached(&host_if, &held).map_err(|e| internal("CHECK", e))? {
        return Err(internal("CHECK", format!("the sender check on {host_if} is missing or not for {held:?}")));
    }
    let addrs = palisade_dataplane::rtnl::Rtnl::open(&Netns::named(netns))
        .and_then(|mut rtnl| {
            let dev = rtnl.index(ifname)?;
            rtnl.addresses(Some(dev))
        })
        .map_err(|e| internal("CHECK", e))?;
    for ip in &held {
        if !addrs.contains(ip) {
            return Err(internal("CHECK", format!("{ip} is not on {ifname} in {netns}")));
        }
    }
    Ok(())
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    let (store, _) = store(conf, false)?;
    let Some(valid) = conf.valid_attachments.as_ref().or(conf.attachments.as_ref()) else {
        return Ok(()); // nothing said: nothing to collect
    };
    let valid: Vec<(String, String)> = valid.iter().map(|a| (a.container_id.clone(), a.ifname.clone())).collect();
    for gone in store.gc(&valid).map_err(ipam_error)? {
        remove_link(&host_ifname(&gone.container_id, &gone.ifname))?;
        tell_agent_deleted(conf, &gone.container_id, &gone.ifname);
    }
    Ok(())
}

/// Ready when the agent answers and says its kernel holds the cluster's
/// current state.
fn status(conf: &NetConf) -> Result<(), CniError> {
    let socket = conf.agent_socket.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET));
    let not_ready = |why: String| {
        CniError::new(
            Code::NotAvailable,
            "the palisade agent is not ready; new pods cannot be started",
            format!("{}: {why}", socket.display()),
        )
    };
    let answer = ask_agent(&socket, &json!({"op": "status"}), Duration::from_millis(2000)).map_err(not_ready)?;
    if answer["ready"] == json!(true) {
        Ok(())
    } else {
        Err(not_ready(format!("the kernel does not hold the current state yet ({answer})")))
    }
}
