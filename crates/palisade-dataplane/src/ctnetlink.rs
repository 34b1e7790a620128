//! The conntrack table over netlink (ctnetlink): one dump of every tracked
//! flow, and deletes of exact entries, in one socket of the node's
//! namespace. Why: the `conntrack` tool, run through `ip netns exec`, cost
//! about 25 ms per policy change (two processes, a /sys remount each, and
//! user-space filtering of the whole table), more than everything else an
//! object change costs the agent.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::{Netns, NetnsError};
use crate::nfnetlink::{attr, attrs, nested};

const NETLINK_NETFILTER: i32 = 12;
const AF_NETLINK: i32 = 16;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
const TCP_CONNTRACK_CLOSE: u8 = 8;

/// One direction of a tracked flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, ...).
    pub protocol: u8,
    /// Ports for TCP, UDP and SCTP; 0 otherwise.
    pub sport: u16,
    pub dport: u16,
}

/// A conntrack entry as the kernel dumps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple,
    /// The original tuple's attributes as dumped (what a delete names).
    orig_raw: Vec<u8>,
    pub reply: Option<Tuple>,
    /// The TCP state (`TCP_CONNTRACK_*`), when TCP.
    pub tcp_state: Option<u8>,
    pub zone: Option<u16>,
}

impl Entry {
    /// A TCP connection that is over (TIME_WAIT, CLOSE).
    pub fn closed(&self) -> bool {
        matches!(self.tcp_state, Some(TCP_CONNTRACK_TIME_WAIT | TCP_CONNTRACK_CLOSE))
    }
}

/// A netfilter netlink socket in one namespace.
pub struct Conntrack {
    socket: Socket,
    seq: u32,
}

impl Conntrack {
    /// Opens the socket in `netns` (this namespace if `None`).
    pub fn open(netns: Option<&Netns>) -> Result<Conntrack, NetnsError> {
        let open = || Socket::new(Domain::from(AF_NETLINK), Type::RAW, Some(Protocol::from(NETLINK_NETFILTER)));
        let socket = match netns {
            Some(ns) => ns.enter(open)?,
            None => open(),
        }
        .map_err(|e| io("opening a conntrack netlink socket", e))?;
        socket.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| io("conntrack socket", e))?;
        // A big table is dumped in many messages: room for them.
        let _ = socket.set_recv_buffer_size(4 << 20);
        Ok(Conntrack { socket, seq: 0 })
    }

    /// Every tracked flow, both families.
    pub fn dump(&mut self) -> Result<Vec<Entry>, NetnsError> {
        self.seq = self.seq.wrapping_add(1);
        let mut request = Vec::new();
        message(&mut request, IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0, |_| {});
        self.socket.send(&request).map_err(|e| io("conntrack dump", e))?;
        let mut entries = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = (&self.socket).read(&mut buf).map_err(|e| io("conntrack dump", e))?;
            for (kind, seq, body) in messages(&buf[..n]) {
                if seq != self.seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(entries),
                    NLMSG_ERROR => {
                        let code = body.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                        if code != 0 {
                            return Err(io("conntrack dump", std::io::Error::from_raw_os_error(-code)));
                        }
                    }
                    _ => entries.extend(parse_entry(body)),
                }
            }
        }
    }

    /// Deletes the entry with `entry`'s original tuple (and zone). One that
    /// is gone already (it ended meanwhile) is not an error: `Ok(false)`.
    pub fn delete(&mut self, entry: &Entry) -> Result<bool, NetnsError> {
        self.seq = self.seq.wrapping_add(1);
        let family = if entry.orig.src.is_ipv4() { 2 } else { 10 };
        let mut request = Vec::new();
        message(&mut request, IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, self.seq, family, |m| {
            // The tuple as the kernel gave it: exact for every protocol.
            nested(m, CTA_TUPLE_ORIG, |m| m.extend_from_slice(&entry.orig_raw));
            if let Some(zone) = entry.zone {
                attr(m, CTA_ZONE, &zone.to_be_bytes());
            }
        });
        self.socket.send(&request).map_err(|e| io("conntrack delete", e))?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = (&self.socket).read(&mut buf).map_err(|e| io("conntrack delete", e))?;
            for (kind, seq, body) in messages(&buf[..n]) {
                if kind != NLMSG_ERROR || seq != self.seq {
                    continue;
                }
                let code = body.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                return match code {
                    0 => Ok(true),
                    c if -c == libc::ENOENT => Ok(false),
                    c => Err(io("conntrack delete", std::io::Error::from_raw_os_error(-c))),
                };
            }
        }
    }
}

/// Dumps on a thread of its own, so that the caller's loop goes on while
/// the kernel walks its conntrack hash (shared by every namespace: ~10 ms
/// here whatever the namespace holds).
pub struct BackgroundDump {
    requests: std::sync::mpsc::Sender<()>,
    results: std::sync::mpsc::Receiver<Result<Vec<Entry>, String>>,
    in_flight: bool,
}

impl BackgroundDump {
    /// A dumper for `netns` (this namespace if `None`); its socket is
    /// opened on the thread, at the first request.
    pub fn spawn(netns: Option<Netns>) -> BackgroundDump {
        let (requests, incoming) = std::sync::mpsc::channel::<()>();
        let (reply, results) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ct: Option<Conntrack> = None;
            while incoming.recv().is_ok() {
                let dumped = match ct.as_mut() {
                    Some(ct) => ct.dump(),
                    None => Conntrack::open(netns.as_ref()).and_then(|c| ct.insert(c).dump()),
                };
                if dumped.is_err() {
                    ct = None;
                }
                if reply.send(dumped.map_err(|e| e.to_string())).is_err() {
                    break;
                }
            }
        });
        BackgroundDump { requests, results, in_flight: false }
    }

    /// Asks for a dump unless one is under way; `false` if one was.
    pub fn request(&mut self) -> bool {
        if self.in_flight {
            return false;
        }
        self.in_flight = self.requests.send(()).is_ok();
        self.in_flight
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// The dump, once it is there.
    pub fn poll(&mut self) -> Option<Result<Vec<Entry>, String>> {
        let result = match self.results.try_recv() {
            Ok(r) => r,
            Err(std::sync::mpsc::TryRecvError::Empty) => return None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Err("the conntrack dump thread ended".into()),
        };
        self.in_flight = false;
        Some(result)
    }
}

fn io(what: &str, source: std::io::Error) -> NetnsError {
    NetnsError::Io { what: what.to_string(), source }
}

fn message(out: &mut Vec<u8>, msg: u16, flags: u16, seq: u32, family: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg: family, version, res_id
    body(out);
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// The netlink messages in `buf`: (type, sequence, body after the
/// netlink header).
fn messages(buf: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len < 16 || at + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().expect("4 bytes"));
        out.push((kind, seq, &buf[at + 16..at + len]));
        at += (len + 3) & !3;
    }
    out
}

fn be16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?))
}

fn parse_tuple(buf: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut protocol, mut sport, mut dport) = (None, None, None, 0, 0);
    for (kind, payload) in attrs(buf) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, p) in attrs(payload) {
                    let v4 = || <[u8; 4]>::try_from(p).ok().map(|o| IpAddr::V4(Ipv4Addr::from(o)));
                    let v6 = || <[u8; 16]>::try_from(p).ok().map(|o| IpAddr::V6(Ipv6Addr::from(o)));
                    match k {
                        CTA_IP_V4_SRC => src = v4(),
                        CTA_IP_V4_DST => dst = v4(),
                        CTA_IP_V6_SRC => src = v6(),
                        CTA_IP_V6_DST => dst = v6(),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, p) in attrs(payload) {
                    match k {
                        CTA_PROTO_NUM => protocol = p.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = be16(p).unwrap_or(0),
                        CTA_PROTO_DST_PORT => dport = be16(p).unwrap_or(0),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple { src: src?, dst: dst?, protocol: protocol?, sport, dport })
}

/// One dumped entry (the body after the netlink header: nfgenmsg, then
/// attributes); `None` if it has no original tuple.
fn parse_entry(body: &[u8]) -> Option<Entry> {
    let (mut orig, mut orig_raw, mut reply, mut tcp_state, mut zone) = (None, Vec::new(), None, None, None);
    for (kind, payload) in attrs(body.get(4..)?) {
        match kind {
            CTA_TUPLE_ORIG => {
                orig = parse_tuple(payload);
                orig_raw = payload.to_vec();
            }
            CTA_TUPLE_REPLY => reply = parse_tuple(payload),
            CTA_ZONE => zone = be16(payload),
            CTA_PROTOINFO => {
                for (k, p) in attrs(payload) {
                    if k == CTA_PROTOINFO_TCP {
                        tcp_state = attrs(p)
                            .into_iter()
                            .find(|(k, _)| *k == CTA_PROTOINFO_TCP_STATE)
                            .and_then(|(_, s)| s.first().copied());
                    }
                }
            }
            _ => {}
        }
    }
    Some(Entry { orig: orig?, orig_raw, reply, tcp_state, zone })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_messages_are_skipped_not_read_past_their_end() {
        assert!(messages(&[0xff; 40]).is_empty());
        assert!(attrs(&[9, 0, 1, 0]).is_empty());
        assert_eq!(parse_entry(&[0, 0, 0, 0, 8, 0, 1, 0]), None);
    }
}
