//! Established flows after a policy change. The forward chain accepts
//! packets of known connections before any policy rule, so a connection
//! opened under an old allow would live on after the allow is removed.
//! [`flush_denied`] removes exactly the conntrack entries of flows the new
//! policy denies; their next packet is then judged as new, and denied.

use std::collections::HashMap;
use std::net::IpAddr;

use palisade_engine::{EndpointId, Engine, Flow, FlowEnd};
use palisade_model::Protocol;

use crate::ctnetlink::{Conntrack, Entry};
use crate::netns::{Netns, NetnsError};

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

impl CtFlow {
    /// A dumped entry as policy sees it: TCP, UDP and SCTP only (other
    /// protocols are never judged by NetworkPolicy).
    pub fn of(entry: &Entry) -> Option<CtFlow> {
        let protocol = match entry.orig.protocol {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            _ => return None,
        };
        let t = &entry.orig;
        Some(CtFlow { protocol, src: t.src, dst: t.dst, sport: t.sport, dport: t.dport, closed: entry.closed() })
    }
}

/// Tracked TCP, UDP and SCTP flows of a namespace (this one if `None`).
pub fn list(ns: Option<&Netns>) -> Result<Vec<CtFlow>, NetnsError> {
    Ok(Conntrack::open(ns)?.dump()?.iter().filter_map(CtFlow::of).collect())
}

/// Deletes the entry of every live tracked flow `denied` says the current
/// policy forbids, and only those (one dump, then one delete per entry,
/// over one netlink socket). Returns how many were removed.
pub fn flush_denied(ns: Option<&Netns>, denied: impl Fn(&CtFlow) -> bool) -> Result<usize, NetnsError> {
    flush_denied_on(&mut Conntrack::open(ns)?, denied)
}

/// [`flush_denied`] on an open socket (closing a netfilter socket waits
/// for an RCU grace period, ~10 ms: a daemon keeps one open).
pub fn flush_denied_on(ct: &mut Conntrack, denied: impl Fn(&CtFlow) -> bool) -> Result<usize, NetnsError> {
    let entries = ct.dump()?;
    delete_denied(ct, &entries, denied)
}

/// Deletes the `entries` (a dump) of live flows `denied` forbids.
pub fn delete_denied(
    ct: &mut Conntrack,
    entries: &[Entry],
    denied: impl Fn(&CtFlow) -> bool,
) -> Result<usize, NetnsError> {
    let mut removed = 0;
    for entry in entries {
        if CtFlow::of(entry).is_some_and(|f| !f.closed && denied(&f)) && ct.delete(entry)? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Deletes every tracked flow to or from `addrs`, in either direction
/// (a flow DNAT'd to a pod has the pod only in its reply tuple), of any
/// protocol: the addresses of a pod that is gone. A new pod may get the
/// same address, and an old flow's packets would then reach it as
/// established, past its ingress policy. Returns what failed.
pub fn forget_addresses(ns: Option<&Netns>, addrs: &[IpAddr]) -> Vec<String> {
    match Conntrack::open(ns) {
        Ok(mut ct) => forget_addresses_on(&mut ct, addrs),
        Err(e) => vec![format!("removing the flows of {addrs:?}: {e}")],
    }
}

/// [`forget_addresses`] on an open socket.
pub fn forget_addresses_on(ct: &mut Conntrack, addrs: &[IpAddr]) -> Vec<String> {
    let gone = |ip: &IpAddr| addrs.contains(ip);
    let result = (|| -> Result<Vec<String>, NetnsError> {
        let mut failed = Vec::new();
        for entry in ct.dump()? {
            let ends = [Some(&entry.orig), entry.reply.as_ref()];
            if ends.iter().flatten().any(|t| gone(&t.src) || gone(&t.dst)) {
                if let Err(e) = ct.delete(&entry) {
                    failed.push(format!("removing the flow {:?}: {e}", entry.orig));
                }
            }
        }
        Ok(failed)
    })();
    result.unwrap_or_else(|e| vec![format!("removing the flows of {addrs:?}: {e}")])
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
