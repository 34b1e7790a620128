//! Whether a network device transmits yet, read over rtnetlink.
//!
//! A veth end whose peer has just come up keeps the `noop` queueing
//! discipline, which drops every packet, until the kernel's link watcher
//! activates it. That runs later, on a work queue and under the rtnl lock,
//! so on a busy host (namespaces being torn down hold that lock) it comes
//! tens of milliseconds late or more. A pod that sends in that window loses
//! its first ARP exchange and retries only a second later: its first
//! connections fail. Wiring therefore waits until the node's end is active.

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
/// RFC 2863 operational states, as the kernel numbers them.
const IF_OPER_UNKNOWN: u8 = 0;
const IF_OPER_UP: u8 = 6;

/// What the kernel says of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// The root queueing discipline: `noop` until the device is activated.
    pub qdisc: String,
    /// RFC 2863 operational state (6: up).
    pub operstate: u8,
}

impl LinkState {
    /// Packets sent on the device now leave it.
    pub fn transmits(&self) -> bool {
        self.qdisc != "noop" && matches!(self.operstate, IF_OPER_UP | IF_OPER_UNKNOWN)
    }
}

fn io_error(ns: &Netns, dev: &str, source: std::io::Error) -> NetnsError {
    NetnsError::Io { what: format!("{}: reading the state of {dev}", ns.name), source }
}

/// Reads `dev`'s state in `ns`.
pub fn state(ns: &Netns, dev: &str) -> Result<LinkState, NetnsError> {
    let socket = ns
        .enter(|| Socket::new(Domain::from(16 /* AF_NETLINK */), Type::RAW, Some(Protocol::from(NETLINK_ROUTE))))?
        .map_err(|e| io_error(ns, dev, e))?;
    query(&socket, dev).map_err(|e| io_error(ns, dev, e))
}

fn query(socket: &Socket, dev: &str) -> std::io::Result<LinkState> {
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut name = dev.as_bytes().to_vec();
    name.push(0);
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(&[0; 4]); // length, patched below
    msg.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    msg.extend_from_slice(&[0; 16]); // ifinfomsg: any family, index 0 (by name)
    crate::nfnetlink::attr(&mut msg, IFLA_IFNAME, &name);
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    socket.send(&msg)?;
    let mut buf = vec![0u8; 65536];
    let n = (&*socket).read(&mut buf)?;
    parse(&buf[..n])
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// The reply to a GETLINK: one NEWLINK message, or an error.
fn parse(reply: &[u8]) -> std::io::Result<LinkState> {
    let u16_at = |at: usize| reply.get(at..at + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let kind = u16_at(4).ok_or_else(|| invalid("short netlink reply"))?;
    if kind == NLMSG_ERROR {
        let code = reply.get(16..20).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(-libc::EIO);
        return Err(std::io::Error::from_raw_os_error(-code));
    }
    if kind != RTM_NEWLINK {
        return Err(invalid("unexpected netlink reply"));
    }
    let end = (u32::from_ne_bytes(reply[..4].try_into().expect("4 bytes")) as usize).min(reply.len());
    let (mut qdisc, mut operstate) = (None, None);
    let mut at = 32; // after nlmsghdr and ifinfomsg
    while at + 4 <= end {
        let len = usize::from(u16_at(at).expect("in bounds"));
        let kind = u16_at(at + 2).expect("in bounds") & 0x3fff;
        if len < 4 || at + len > end {
            break;
        }
        let payload = &reply[at + 4..at + len];
        match kind {
            IFLA_QDISC => qdisc = Some(String::from_utf8_lossy(payload).trim_end_matches('\0').to_string()),
            IFLA_OPERSTATE => operstate = payload.first().copied(),
            _ => {}
        }
        at += (len + 3) & !3;
    }
    // A device with no queueing discipline yet reports none at all.
    Ok(LinkState { qdisc: qdisc.unwrap_or_else(|| "noop".into()), operstate: operstate.unwrap_or(IF_OPER_UNKNOWN) })
}

/// Waits until `dev` in `ns` transmits, polling every millisecond; an
/// error after `limit` (the device never became usable).
pub fn wait_until_transmitting(ns: &Netns, dev: &str, limit: Duration) -> Result<(), NetnsError> {
    let started = Instant::now();
    loop {
        let now = state(ns, dev)?;
        if now.transmits() {
            return Ok(());
        }
        if started.elapsed() >= limit {
            return Err(NetnsError::Io {
                what: format!("{}: {dev}", ns.name),
                source: std::io::Error::other(format!(
                    "still not transmitting after {} ms (qdisc {}, operational state {})",
                    limit.as_millis(),
                    now.qdisc,
                    now.operstate
                )),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
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
    fn a_device_transmits_once_activated_and_up() {
        let active = parse(&reply(&[(IFLA_QDISC, b"noqueue\0"), (IFLA_OPERSTATE, &[IF_OPER_UP])])).unwrap();
        assert_eq!(active, LinkState { qdisc: "noqueue".into(), operstate: IF_OPER_UP });
        assert!(active.transmits());
        let waiting = parse(&reply(&[(IFLA_QDISC, b"noop\0"), (IFLA_OPERSTATE, &[IF_OPER_UP])])).unwrap();
        assert!(!waiting.transmits(), "noop drops everything");
        let down = parse(&reply(&[(IFLA_QDISC, b"noqueue\0"), (IFLA_OPERSTATE, &[2])])).unwrap();
        assert!(!down.transmits(), "operationally down");
        assert!(!parse(&reply(&[])).unwrap().transmits(), "no qdisc reported: not activated");
    }

    #[test]
    fn an_error_reply_is_the_kernel_error() {
        let mut out = vec![0; 36];
        out[..4].copy_from_slice(&36u32.to_ne_bytes());
        out[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        out[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        assert_eq!(parse(&out).unwrap_err().raw_os_error(), Some(libc::ENODEV));
        assert!(parse(&[1, 2]).is_err());
    }
}
