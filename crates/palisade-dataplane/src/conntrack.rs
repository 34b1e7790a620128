//! Established flows after a policy change. The forward chain accepts
//! packets of known connections before any policy rule, so a connection
//! opened under an old allow would live on after the allow is removed.
//! [`flush_denied`] removes exactly the conntrack entries of flows the new
//! policy denies; their next packet is then judged as new, and denied.

use std::collections::HashMap;
use std::net::IpAddr;

use palisade_engine::{EndpointId, Engine, Flow, FlowEnd};
use palisade_model::Protocol;

use crate::netns::{run, Netns, NetnsError};

/// One tracked flow, in its original direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtFlow {
    pub protocol: Protocol,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// A TCP connection that is over (TIME_WAIT, CLOSE): no data flows on
    /// it, so it needs no removal. Half-closed ones (FIN_WAIT, CLOSE_WAIT,
    /// LAST_ACK) can still carry data one way, and are cut like open ones.
    pub closed: bool,
}

/// Parses `conntrack -L` lines (TCP, UDP and SCTP; other protocols are
/// never judged by NetworkPolicy and are skipped).
pub fn parse(text: &str) -> Vec<CtFlow> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let protocol = match fields.next() {
            Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some("sctp") => Protocol::Sctp,
            _ => continue,
        };
        // The first src/dst/sport/dport are the original direction.
        let (mut src, mut dst, mut sport, mut dport) = (None, None, None, None);
        let mut closed = false;
        for f in fields {
            if matches!(f, "TIME_WAIT" | "CLOSE") {
                closed = true;
            }
            let Some((k, v)) = f.split_once('=') else { continue };
            match k {
                "src" if src.is_none() => src = v.parse().ok(),
                "dst" if dst.is_none() => dst = v.parse().ok(),
                "sport" if sport.is_none() => sport = v.parse().ok(),
                "dport" if dport.is_none() => dport = v.parse().ok(),
                _ => {}
            }
        }
        if let (Some(src), Some(dst), Some(sport), Some(dport)) = (src, dst, sport, dport) {
            out.push(CtFlow { protocol, src, dst, sport, dport, closed });
        }
    }
    out
}

fn conntrack(ns: Option<&Netns>, args: &[&str]) -> Result<String, NetnsError> {
    match ns {
        Some(ns) => ns.exec("conntrack", args, None),
        None => run("conntrack", args, None),
    }
}

/// Tracked TCP, UDP and SCTP flows of a namespace (this one if `None`).
/// One dump per family: conntrack 1.4.7 filters protocol and state in
/// user space, so separate filtered calls would each dump the whole table.
pub fn list(ns: Option<&Netns>) -> Result<Vec<CtFlow>, NetnsError> {
    let mut all = Vec::new();
    for family in ["ipv4", "ipv6"] {
        all.extend(parse(&conntrack(ns, &["-L", "-f", family])?));
    }
    Ok(all)
}

/// Deletes the entries of every live tracked flow `denied` says the
/// current policy forbids, and only those. Flows are grouped by (protocol,
/// source, destination, destination port), the unit policy judges, so one
/// `conntrack -D` ends all connections of a forbidden pair. Returns how
/// many groups were removed.
pub fn flush_denied(ns: Option<&Netns>, denied: impl Fn(&CtFlow) -> bool) -> Result<usize, NetnsError> {
    let mut groups: Vec<(Protocol, IpAddr, IpAddr, u16)> =
        list(ns)?.into_iter().filter(|f| !f.closed && denied(f)).map(|f| (f.protocol, f.src, f.dst, f.dport)).collect();
    groups.sort();
    groups.dedup();
    let mut removed = 0;
    for (protocol, src, dst, dport) in groups {
        let (src, dst, dport) = (src.to_string(), dst.to_string(), dport.to_string());
        let args = ["-D", "-p", protocol.as_lower(), "-s", &src, "-d", &dst, "--dport", &dport];
        // Gone already (closed meanwhile) is fine: conntrack exits 1 then.
        if conntrack(ns, &args).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Deletes every tracked flow to or from `addrs`, in either direction
/// (a flow DNAT'd to a pod has the pod only in its reply tuple): the
/// addresses of a pod that is gone. A new pod may get the same address,
/// and an old flow's packets would then reach it as established, past its
/// ingress policy. Returns what failed (nothing matching is not a failure).
pub fn forget_addresses(ns: Option<&Netns>, addrs: &[IpAddr]) -> Vec<String> {
    let mut failed = Vec::new();
    for addr in addrs {
        let family = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
        let addr = addr.to_string();
        for side in ["--orig-src", "--orig-dst", "--reply-src", "--reply-dst"] {
            match conntrack(ns, &["-D", "-f", family, side, &addr]) {
                Ok(_) => {}
                // conntrack exits 1 when nothing matched.
                Err(NetnsError::Command { stderr, .. }) if stderr.contains("0 flow entries") => {}
                Err(e) => failed.push(format!("removing the flows of {addr} ({side}): {e}")),
            }
        }
    }
    failed
}

/// The engine's judgement of a tracked flow: addresses of known endpoints
/// are those endpoints, anything else is an outside address. Flows to or
/// from `node_addrs` (this node's own addresses) are node-local, exempt
/// from policy, and never denied.
pub fn engine_denies(engine: &Engine, node_addrs: Vec<IpAddr>) -> impl Fn(&CtFlow) -> bool + '_ {
    let by_ip: HashMap<IpAddr, EndpointId> =
        engine.endpoints().flat_map(|(id, ep)| ep.ips.iter().map(move |ip| (*ip, id))).collect();
    move |f: &CtFlow| {
        if node_addrs.contains(&f.src) || node_addrs.contains(&f.dst) {
            return false;
        }
        let end = |ip: IpAddr| by_ip.get(&ip).map_or(FlowEnd::Address(ip), |id| FlowEnd::Endpoint(*id));
        !engine.allows(&Flow { src: end(f.src), dst: end(f.dst), protocol: f.protocol, port: f.dport })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_original_direction_of_each_protocol() {
        let text = "\
tcp      6 119 TIME_WAIT src=10.250.0.10 dst=10.250.1.10 sport=39000 dport=80 src=10.250.1.10 dst=10.250.0.10 sport=80 dport=39000 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.250.0.10 dst=10.250.1.10 sport=40000 dport=80 src=10.250.1.10 dst=10.250.0.10 sport=80 dport=40000 [ASSURED] mark=0 use=1
udp      17 29 src=10.250.0.10 dst=10.250.1.10 sport=5000 dport=53 [UNREPLIED] src=10.250.1.10 dst=10.250.0.10 sport=53 dport=5000 mark=0 use=1
icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=1 src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=1 mark=0 use=1
sctp     132 2 COOKIE_WAIT src=fd00::1 dst=fd00::2 sport=33000 dport=81 [UNREPLIED] src=fd00::2 dst=fd00::1 sport=81 dport=33000 mark=0 use=1
";
        let mut flows = parse(text);
        assert!(flows.remove(0).closed, "TIME_WAIT is a closed connection");
        let half = parse("tcp 6 60 CLOSE_WAIT src=10.0.0.1 dst=10.0.0.2 sport=1 dport=80 src=10.0.0.2 dst=10.0.0.1 sport=80 dport=1 [ASSURED]");
        assert!(!half[0].closed, "a half-closed stream still carries data one way");
        assert_eq!(flows.len(), 3, "icmp is not judged by NetworkPolicy");
        assert_eq!(
            flows[0],
            CtFlow {
                protocol: Protocol::Tcp,
                src: "10.250.0.10".parse().unwrap(),
                dst: "10.250.1.10".parse().unwrap(),
                sport: 40000,
                dport: 80,
                closed: false
            }
        );
        assert_eq!(flows[1].dport, 53);
        assert_eq!(flows[2].protocol, Protocol::Sctp);
        assert_eq!(flows[2].src, "fd00::1".parse::<IpAddr>().unwrap());
    }
}
