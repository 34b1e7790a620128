//! Links, addresses and routes over rtnetlink: what wiring a pod needs,
//! without the `ip` tool. Why: each `ip` process cost 2-4 ms of a CNI ADD,
//! and a node without iproute2 could not start pods at all.
//!
//! One socket per namespace (a socket keeps the namespace it was opened
//! in); every request is acknowledged, and a refusal is an error naming
//! what was asked.

use std::io::Read;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::{Netns, NetnsError};
use crate::nfnetlink::{attr, attrs, cstr, nested};

const NETLINK_ROUTE: i32 = 0;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_NET_NS_FD: u16 = 28;
const IFF_UP: u32 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
/// The clsact qdisc's handle and parent, and its ingress hook.
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
const CLSACT_INGRESS: u32 = 0xFFFF_FFF2;
/// Priority 1, every protocol (`ETH_P_ALL` in network order).
const FILTER_INFO: u32 = (1 << 16) | 0x0300;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A route netlink socket in one namespace.
pub struct Rtnl {
    socket: Socket,
    ns: String,
    seq: u32,
}

fn family(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

fn octets(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn ifinfomsg(out: &mut Vec<u8>, index: i32, flags: u32, change: u32) {
    out.extend_from_slice(&[0, 0]); // family, pad
    out.extend_from_slice(&0u16.to_ne_bytes()); // type
    out.extend_from_slice(&index.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&change.to_ne_bytes());
}

impl Rtnl {
    /// Opens a socket in `ns`.
    pub fn open(ns: &Netns) -> Result<Rtnl, NetnsError> {
        let open = || Socket::new(Domain::from(libc::AF_NETLINK), Type::RAW, Some(Protocol::from(NETLINK_ROUTE)));
        let socket = ns
            .enter(open)?
            .map_err(|e| NetnsError::Io { what: format!("{}: rtnetlink socket", ns.name), source: e })?;
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| NetnsError::Io { what: format!("{}: rtnetlink socket", ns.name), source: e })?;
        Ok(Rtnl { socket, ns: ns.name.clone(), seq: 0 })
    }

    /// Sends one request and waits for its acknowledgement (or, with
    /// `dump`, collects every reply message's body until the end).
    fn request(
        &mut self,
        what: &str,
        kind: u16,
        flags: u16,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Vec<(u16, Vec<u8>)>, NetnsError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut msg = Vec::with_capacity(128);
        msg.extend_from_slice(&[0; 4]);
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        body(&mut msg);
        let len = msg.len() as u32;
        msg[..4].copy_from_slice(&len.to_ne_bytes());
        let fail = |source: std::io::Error| NetnsError::Io { what: format!("{}: {what}", self.ns), source };
        self.socket.send(&msg).map_err(fail)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = (&self.socket).read(&mut buf).map_err(fail)?;
            let mut at = 0;
            while at + 16 <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
                if len < 16 || at + len > n {
                    break;
                }
                let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
                let their_seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().expect("4 bytes"));
                let body = &buf[at + 16..at + len];
                at += (len + 3) & !3;
                if their_seq != seq {
                    continue;
                }
                match kind {
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(body.get(..4).unwrap_or(&[0; 4]).try_into().expect("4 bytes"));
                        if code != 0 {
                            return Err(fail(std::io::Error::from_raw_os_error(-code)));
                        }
                        if !dump {
                            return Ok(out);
                        }
                    }
                    NLMSG_DONE => return Ok(out),
                    _ => out.push((kind, body.to_vec())),
                }
            }
        }
    }

    /// Creates a veth pair: `name` here, `peer` in the namespace `peer_ns`.
    pub fn add_veth(&mut self, name: &str, peer: &str, peer_ns: &Netns) -> Result<(), NetnsError> {
        let fd = std::fs::File::open(peer_ns.path())
            .map_err(|source| NetnsError::Io { what: format!("open netns {}", peer_ns.name), source })?;
        let what = format!("creating veth {name} (peer {peer} in {})", peer_ns.name);
        self.request(&what, RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, |m| {
            ifinfomsg(m, 0, 0, 0);
            attr(m, IFLA_IFNAME, &cstr(name));
            nested(m, IFLA_LINKINFO, |m| {
                attr(m, IFLA_INFO_KIND, b"veth");
                nested(m, IFLA_INFO_DATA, |m| {
                    nested(m, VETH_INFO_PEER, |m| {
                        ifinfomsg(m, 0, 0, 0);
                        attr(m, IFLA_IFNAME, &cstr(peer));
                        attr(m, IFLA_NET_NS_FD, &(fd.as_raw_fd() as u32).to_ne_bytes());
                    });
                });
            });
        })?;
        Ok(())
    }

    /// Sets `name` up.
    pub fn set_up(&mut self, name: &str) -> Result<(), NetnsError> {
        self.request(&format!("setting {name} up"), RTM_NEWLINK, NLM_F_ACK, |m| {
            ifinfomsg(m, 0, IFF_UP, IFF_UP);
            attr(m, IFLA_IFNAME, &cstr(name));
        })?;
        Ok(())
    }

    /// Deletes `name` (a veth takes its peer along). `Ok(false)`: no such device.
    pub fn delete_link(&mut self, name: &str) -> Result<bool, NetnsError> {
        let done = self.request(&format!("deleting {name}"), RTM_DELLINK, NLM_F_ACK, |m| {
            ifinfomsg(m, 0, 0, 0);
            attr(m, IFLA_IFNAME, &cstr(name));
        });
        match done {
            Ok(_) => Ok(true),
            Err(NetnsError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The index of device `name`.
    pub fn index(&mut self, name: &str) -> Result<u32, NetnsError> {
        let replies = self.request(&format!("looking up {name}"), RTM_GETLINK, NLM_F_ACK, |m| {
            ifinfomsg(m, 0, 0, 0);
            attr(m, IFLA_IFNAME, &cstr(name));
        })?;
        let body = replies.iter().find(|(k, _)| *k == RTM_NEWLINK).map(|(_, b)| b);
        let index = body.and_then(|b| b.get(4..8)).map(|i| i32::from_ne_bytes(i.try_into().expect("4 bytes")));
        index.map(|i| i as u32).ok_or_else(|| NetnsError::Io {
            what: format!("{}: looking up {name}", self.ns),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no link in the reply"),
        })
    }

    /// The names of every device.
    pub fn link_names(&mut self) -> Result<Vec<String>, NetnsError> {
        let replies = self.request("listing links", RTM_GETLINK, NLM_F_DUMP, |m| ifinfomsg(m, 0, 0, 0))?;
        Ok(replies
            .iter()
            .filter(|(k, _)| *k == RTM_NEWLINK)
            .filter_map(|(_, b)| attrs(b.get(16..)?).into_iter().find(|(k, _)| *k == IFLA_IFNAME).map(|(_, v)| v))
            .map(|v| String::from_utf8_lossy(v).trim_end_matches('\0').to_string())
            .collect())
    }

    /// Every address of every device (and of the device `only`, if given).
    pub fn addresses(&mut self, only: Option<u32>) -> Result<Vec<IpAddr>, NetnsError> {
        let replies = self.request("listing addresses", RTM_GETADDR, NLM_F_DUMP, |m| m.extend_from_slice(&[0; 8]))?;
        let mut out = Vec::new();
        for (_, body) in replies.iter().filter(|(k, _)| *k == RTM_NEWADDR) {
            let (Some(fam), Some(index)) = (body.first(), body.get(4..8)) else { continue };
            let index = u32::from_ne_bytes(index.try_into().expect("4 bytes"));
            if only.is_some_and(|o| o != index) {
                continue;
            }
            let found = attrs(&body[8..]).into_iter().find(|(k, _)| *k == IFA_LOCAL || *k == IFA_ADDRESS);
            let ip = match (*fam, found.map(|(_, v)| v)) {
                (AF_INET, Some(v)) => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
                (AF_INET6, Some(v)) => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
                _ => None,
            };
            out.extend(ip);
        }
        Ok(out)
    }

    /// Adds `ip/prefix` to device `index` (IPv6: without duplicate address
    /// detection, usable at once).
    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), NetnsError> {
        self.request(&format!("adding {ip}/{prefix}"), RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, |m| {
            m.extend_from_slice(&[family(&ip), prefix, 0, RT_SCOPE_UNIVERSE]);
            m.extend_from_slice(&index.to_ne_bytes());
            attr(m, IFA_LOCAL, &octets(&ip));
            attr(m, IFA_ADDRESS, &octets(&ip));
            if ip.is_ipv6() {
                attr(m, IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
            }
        })?;
        Ok(())
    }

    /// Adds (or replaces) a main-table route to `dst/len` out of device
    /// `index`, through `gateway` or (none) directly on the link.
    pub fn add_route(&mut self, index: u32, dst: IpAddr, len: u8, gateway: Option<IpAddr>) -> Result<(), NetnsError> {
        let what = format!("adding the route {dst}/{len}");
        let scope = if gateway.is_some() { RT_SCOPE_UNIVERSE } else { RT_SCOPE_LINK };
        self.request(&what, RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, |m| {
            m.extend_from_slice(&[family(&dst), len, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST]);
            m.extend_from_slice(&0u32.to_ne_bytes());
            if len > 0 {
                attr(m, RTA_DST, &octets(&dst));
            }
            if let Some(gw) = gateway {
                attr(m, RTA_GATEWAY, &octets(&gw));
            }
            attr(m, RTA_OIF, &index.to_ne_bytes());
        })?;
        Ok(())
    }
}

fn tcmsg(out: &mut Vec<u8>, index: u32, handle: u32, parent: u32, info: u32) {
    out.extend_from_slice(&[0, 0, 0, 0]); // family, pads
    out.extend_from_slice(&index.to_ne_bytes());
    out.extend_from_slice(&handle.to_ne_bytes());
    out.extend_from_slice(&parent.to_ne_bytes());
    out.extend_from_slice(&info.to_ne_bytes());
}

impl Rtnl {
    /// Puts BPF program `prog` (a file descriptor) on device `index`'s
    /// ingress as a direct-action tc filter, on a clsact qdisc made for it.
    /// Attaching costs no RCU grace period (tcx's does, ~10 ms here).
    pub fn add_ingress_bpf(&mut self, index: u32, prog: i32, name: &str) -> Result<(), NetnsError> {
        let qdisc = self.request("adding a clsact qdisc", RTM_NEWQDISC, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, |m| {
            tcmsg(m, index, CLSACT_HANDLE, TC_H_CLSACT, 0);
            attr(m, TCA_KIND, &cstr("clsact"));
        });
        match qdisc {
            Err(NetnsError::Io { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {}
            other => {
                other?;
            }
        }
        self.request(
            &format!("adding the tc filter {name}"),
            RTM_NEWTFILTER,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            |m| {
                tcmsg(m, index, 1, CLSACT_INGRESS, FILTER_INFO);
                attr(m, TCA_KIND, &cstr("bpf"));
                nested(m, TCA_OPTIONS, |m| {
                    attr(m, TCA_BPF_FD, &(prog as u32).to_ne_bytes());
                    attr(m, TCA_BPF_NAME, &cstr(name));
                    attr(m, TCA_BPF_FLAGS, &TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes());
                });
            },
        )?;
        Ok(())
    }

    /// The names of the BPF tc filters on device `index`'s ingress (none
    /// without a clsact qdisc).
    pub fn ingress_bpf_names(&mut self, index: u32) -> Result<Vec<String>, NetnsError> {
        let replies = match self
            .request("listing tc filters", RTM_GETTFILTER, NLM_F_DUMP, |m| tcmsg(m, index, 0, CLSACT_INGRESS, 0))
        {
            Ok(r) => r,
            Err(NetnsError::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for (_, body) in replies.iter().filter(|(k, _)| *k == RTM_NEWTFILTER) {
            let Some(attributes) = body.get(20..) else { continue };
            for (kind, payload) in attrs(attributes) {
                if kind == TCA_OPTIONS {
                    if let Some((_, name)) = attrs(payload).into_iter().find(|(k, _)| *k == TCA_BPF_NAME) {
                        out.push(String::from_utf8_lossy(name).trim_end_matches('\0').to_string());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes device `index`'s clsact qdisc and its filters; `Ok(false)`:
    /// there was none.
    pub fn delete_clsact(&mut self, index: u32) -> Result<bool, NetnsError> {
        let done = self.request("removing the clsact qdisc", RTM_DELQDISC, NLM_F_ACK, |m| {
            tcmsg(m, index, CLSACT_HANDLE, TC_H_CLSACT, 0)
        });
        match done {
            Ok(_) => Ok(true),
            Err(NetnsError::Io { source, .. })
                if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}
