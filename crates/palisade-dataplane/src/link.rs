//! Whether a network device transmits yet, read over rtnetlink.
//!
//! A veth end whose peer has just come up drops every packet it sends
//! until the kernel's link watcher activates it (its transmit queue keeps
//! the `noop` qdisc until then; the root qdisc `ip link` shows is attached
//! earlier and says nothing). The watcher runs later, on a work queue and
//! under the rtnl lock, so on a busy host (namespaces being torn down hold
//! that lock) it comes tens of milliseconds late or more. A pod that sends
//! in that window loses its first ARP exchange and retries only a second
//! later: its first connections fail. Wiring therefore waits for it.
//!
//! The signal is the operational state: the watcher sets it to up
//! (RFC 2863) and activates the queues right after, in one step under
//! rtnl. Before the watcher's first run a new device reads "unknown",
//! which is not up.

use std::io::Read;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::{Netns, NetnsError};

const NETLINK_ROUTE: i32 = 0;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_QDISC: u16 = 6;
const IFLA_OPERSTATE: u16 = 16;
const IFLA_CARRIER: u16 = 33;
/// RFC 2863 operational state "up", as the kernel numbers it.
const IF_OPER_UP: u8 = 6;

/// What the kernel says of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// RFC 2863 operational state (0 unknown, 2 down, 6 up, 7 lower layer down).
    pub operstate: u8,
    /// The peer (for a veth) is up.
    pub carrier: bool,
    /// The root queueing discipline (for messages only: see the module doc).
    pub qdisc: String,
}

impl LinkState {
    /// Packets sent on the device now leave it.
    pub fn transmits(&self) -> bool {
        self.operstate == IF_OPER_UP && self.carrier
    }
}

fn io_error(ns: &Netns, dev: &str, source: std::io::Error) -> NetnsError {
    NetnsError::Io { what: format!("{}: reading the state of {dev}", ns.name), source }
}

/// A route netlink socket in `ns`: it keeps its namespace wherever it is used.
fn route_socket(ns: &Netns, dev: &str) -> Result<Socket, NetnsError> {
    let open = || Socket::new(Domain::from(libc::AF_NETLINK), Type::RAW, Some(Protocol::from(NETLINK_ROUTE)));
    ns.enter(open)?.map_err(|e| io_error(ns, dev, e))
}

/// Reads `dev`'s state in `ns`.
pub fn state(ns: &Netns, dev: &str) -> Result<LinkState, NetnsError> {
    let socket = route_socket(ns, dev)?;
    query(&socket, dev, 1, Duration::from_secs(2)).map_err(|e| io_error(ns, dev, e))
}

/// One GETLINK for `dev` with sequence number `seq`; replies to earlier
/// requests (answered after their caller gave up) are skipped.
fn query(socket: &Socket, dev: &str, seq: u32, timeout: Duration) -> std::io::Result<LinkState> {
    socket.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let mut name = dev.as_bytes().to_vec();
    name.push(0);
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(&[0; 4]); // length, patched below
    msg.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    msg.extend_from_slice(&[0; 16]); // ifinfomsg: any family, index 0 (by name)
    crate::nfnetlink::attr(&mut msg, IFLA_IFNAME, &name);
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    socket.send(&msg)?;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = (&*socket).read(&mut buf)?;
        let reply = &buf[..n];
        if reply.get(8..12).is_some_and(|s| s == seq.to_ne_bytes()) {
            return parse(reply);
        }
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// The reply to a GETLINK: one NEWLINK message, or an error.
fn parse(reply: &[u8]) -> std::io::Result<LinkState> {
    let u16_at = |at: usize| reply.get(at..at + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let u32_at = |at: usize| reply.get(at..at + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let (Some(len), Some(kind)) = (u32_at(0), u16_at(4)) else { return Err(invalid("short netlink reply")) };
    let end = (len as usize).min(reply.len());
    if kind == NLMSG_ERROR {
        let code = u32_at(16).ok_or_else(|| invalid("short netlink error"))? as i32;
        return Err(std::io::Error::from_raw_os_error(-code));
    }
    if kind != RTM_NEWLINK || end < 32 {
        return Err(invalid("unexpected netlink reply"));
    }
    let (mut operstate, mut carrier, mut qdisc) = (None, None, String::new());
    let mut at = 32; // after nlmsghdr and ifinfomsg
    while let (Some(len), Some(kind)) = (u16_at(at), u16_at(at + 2)) {
        let len = usize::from(len);
        if len < 4 || at + len > end {
            break;
        }
        let payload = &reply[at + 4..at + len];
        match kind & 0x3fff {
            IFLA_OPERSTATE => operstate = payload.first().copied(),
            IFLA_CARRIER => carrier = payload.first().map(|c| *c != 0),
            IFLA_QDISC => qdisc = String::from_utf8_lossy(payload).trim_end_matches('\0').to_string(),
            _ => {}
        }
        at += (len + 3) & !3;
    }
    match (operstate, carrier) {
        (Some(operstate), Some(carrier)) => Ok(LinkState { operstate, carrier, qdisc }),
        _ => Err(invalid("a link without operational state or carrier")),
    }
}

/// Waits until `dev` in `ns` transmits; an error after `limit` (the device
/// never became usable). Polls on one socket, every 1 ms at first and
/// then less often, so the wait itself does not crowd the rtnl lock the
/// link watcher needs.
pub fn wait_until_transmitting(ns: &Netns, dev: &str, limit: Duration) -> Result<(), NetnsError> {
    let started = Instant::now();
    let socket = route_socket(ns, dev)?;
    let mut pause = Duration::from_millis(1);
    let mut last = None;
    for seq in 1u32.. {
        let left = limit.saturating_sub(started.elapsed());
        match query(&socket, dev, seq, left) {
            Ok(now) if now.transmits() => return Ok(()),
            Ok(now) => last = Some(now),
            // Still busy (rtnl held): not an answer yet.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(io_error(ns, dev, e)),
        }
        if started.elapsed() >= limit {
            break;
        }
        std::thread::sleep(pause.min(limit.saturating_sub(started.elapsed())));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    let seen = match last {
        Some(s) => format!("operational state {}, carrier {}, qdisc {}", s.operstate, s.carrier, s.qdisc),
        None => "no answer from the kernel".into(),
    };
    Err(NetnsError::Io {
        what: format!("{}: {dev}", ns.name),
        source: std::io::Error::other(format!("still not transmitting after {} ms ({seen})", limit.as_millis())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut out = vec![0; 32];
        out[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        for (kind, payload) in attrs {
            crate::nfnetlink::attr(&mut out, *kind, payload);
        }
        let len = out.len() as u32;
        out[..4].copy_from_slice(&len.to_ne_bytes());
        out
    }

    #[test]
    fn a_device_transmits_once_operationally_up_with_carrier() {
        let up = parse(&reply(&[(IFLA_QDISC, b"noqueue\0"), (IFLA_OPERSTATE, &[IF_OPER_UP]), (IFLA_CARRIER, &[1])]));
        let up = up.unwrap();
        assert_eq!(up, LinkState { operstate: IF_OPER_UP, carrier: true, qdisc: "noqueue".into() });
        assert!(up.transmits());
        // What a veth end reads between its peer coming up and the link
        // watcher's run: the root qdisc is attached, the state not yet up.
        let unknown = parse(&reply(&[(IFLA_QDISC, b"noqueue\0"), (IFLA_OPERSTATE, &[0]), (IFLA_CARRIER, &[1])]));
        assert!(!unknown.unwrap().transmits(), "unknown is not up");
        let lower_down = parse(&reply(&[(IFLA_OPERSTATE, &[7]), (IFLA_CARRIER, &[0])])).unwrap();
        assert!(!lower_down.transmits(), "peer down");
        assert!(parse(&reply(&[(IFLA_QDISC, b"noqueue\0")])).is_err(), "no state: malformed, not a guess");
    }

    #[test]
    fn an_error_reply_is_the_kernel_error() {
        let mut out = vec![0; 36];
        out[..4].copy_from_slice(&36u32.to_ne_bytes());
        out[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        out[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        assert_eq!(parse(&out).unwrap_err().raw_os_error(), Some(libc::ENODEV));
        assert!(parse(&[1, 2]).is_err());
        let mut truncated = reply(&[(IFLA_OPERSTATE, &[IF_OPER_UP]), (IFLA_CARRIER, &[1])]);
        truncated.truncate(20);
        assert!(parse(&truncated).is_err());
    }
}
