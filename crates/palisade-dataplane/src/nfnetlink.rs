//! Incremental changes written to nf_tables over netlink, without the `nft`
//! tool: one batch, which the kernel commits all or nothing, like `nft -f`.
//! Why: `nft` lists every chain and set of the table before any change
//! (~15 ms at 1,300 chains and 700 sets for an element change, 30-50 ms
//! when it adds a chain), while a single-pod change must land in 10 ms.
//!
//! A batch carries set and map elements (this module), and new or deleted
//! sets, regular chains and their rules ([`crate::nfobjects`]). Only what
//! Palisade's incremental compiler emits is encoded: `ipv4_addr`,
//! `ipv6_addr`, `ifname`, `inet_service` keys and their concatenations,
//! `verdict` map data limited to `jump CHAIN`, the policy-chain rule
//! grammar. A transaction with anything else (the table, base chains, a
//! rule outside the grammar) goes through `nft -f` whole.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::Netns;
use crate::nft::{KeyType, Op, Transaction};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(crate) const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
pub(crate) const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NFTA_DATA_VERDICT: u16 = 2;
pub(crate) const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;
const IFNAMSIZ: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("element {element:?} of set {set}: {reason}")]
    Encode { set: String, element: String, reason: String },
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("entering the network namespace: {0}")]
    Netns(#[from] crate::netns::NetnsError),
    #[error("the kernel refused the element batch (nothing was changed): {0}")]
    Refused(std::io::Error),
}

/// A typed element change, ready for the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Element {
    key: Vec<u8>,
    jump: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum BatchOp {
    Elements {
        add: bool,
        set: String,
        elements: Vec<Element>,
    },
    /// A set, chain or rule message: its type, flags and encoded body.
    Object {
        kind: u16,
        flags: u16,
        body: Vec<u8>,
    },
}

/// The changes of one transaction, in order, with their encodings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetlinkBatch {
    table: String,
    ops: Vec<BatchOp>,
}

impl NetlinkBatch {
    /// `tx` encoded for netlink, with the key types of existing sets from
    /// `key_of`; `None` if `tx` does something only `nft` writes here.
    pub fn from_transaction(
        tx: &Transaction,
        key_of: impl Fn(&str) -> Option<KeyType>,
    ) -> Result<Option<NetlinkBatch>, NetlinkError> {
        use crate::nfobjects::{chain_body, named_body, parse_rule, rule_body, set_body};
        let table = tx.table.as_str();
        let mut batch = NetlinkBatch { table: table.to_string(), ops: Vec::new() };
        // Sets created in this batch: their key types and batch ids.
        let mut created: HashMap<String, (KeyType, u32)> = HashMap::new();
        let request = NLM_F_REQUEST | NLM_F_ACK;
        for op in &tx.ops {
            let mut body = Vec::new();
            let (kind, flags) = match op {
                Op::AddElements { set, elements } | Op::DeleteElements { set, elements } => {
                    let key = match created.get(set) {
                        Some((key, _)) => key.clone(),
                        None => match key_of(set) {
                            Some(key) => key,
                            None => return Ok(None),
                        },
                    };
                    let encoded = elements.iter().map(|e| encode(&key, set, e)).collect::<Result<_, _>>()?;
                    let add = matches!(op, Op::AddElements { .. });
                    batch.ops.push(BatchOp::Elements { add, set: set.clone(), elements: encoded });
                    continue;
                }
                Op::AddSet(def) => {
                    let id = created.len() as u32 + 1;
                    if set_body(&mut body, table, def, id).is_none() {
                        return Ok(None);
                    }
                    created.insert(def.name.clone(), (def.key.clone(), id));
                    (NFT_MSG_NEWSET, request | NLM_F_CREATE)
                }
                Op::DeleteSet(name) => {
                    named_body(&mut body, table, 2, name);
                    (NFT_MSG_DELSET, request)
                }
                Op::AddChain(def) => {
                    if chain_body(&mut body, table, def).is_none() {
                        return Ok(None);
                    }
                    (NFT_MSG_NEWCHAIN, request | NLM_F_CREATE)
                }
                Op::FlushChain(name) => {
                    named_body(&mut body, table, 2, name);
                    (NFT_MSG_DELRULE, request)
                }
                Op::DeleteChain(name) => {
                    named_body(&mut body, table, 3, name);
                    (NFT_MSG_DELCHAIN, request)
                }
                Op::AddRule { chain, rule } => {
                    let Some(exprs) = parse_rule(rule) else { return Ok(None) };
                    let set_id = |set: &str| created.get(set).map(|(_, id)| *id);
                    rule_body(&mut body, table, chain, &exprs, rule.comment.as_deref(), &set_id);
                    (NFT_MSG_NEWRULE, request | NLM_F_CREATE | NLM_F_APPEND)
                }
                Op::AddTable | Op::DeleteTable | Op::FlushSet(_) => return Ok(None),
            };
            batch.ops.push(BatchOp::Object { kind, flags, body });
        }
        Ok(Some(batch))
    }

    /// Whether the batch changes anything but set and map elements.
    pub fn writes_objects(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, BatchOp::Object { .. }))
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Sends the batch inside `netns` (this namespace if `None`) on a new
    /// socket. Closing a netfilter socket after a delete waits for the
    /// kernel to free the elements (an RCU grace period, ~10-15 ms here):
    /// keep a [`NetlinkSession`] to apply many batches.
    pub fn apply_in(&self, netns: Option<&str>) -> Result<(), NetlinkError> {
        NetlinkSession::new(netns).apply(self)
    }

    /// The batch on the wire, numbered from `first_seq`, and how many
    /// acknowledgements to wait for.
    fn encode(&self, first_seq: u32) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut seq = first_seq;
        message(&mut out, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, |_| {});
        for op in &self.ops {
            seq += 1;
            let (add, set, elements) = match op {
                BatchOp::Elements { add, set, elements } => (add, set, elements),
                BatchOp::Object { kind, flags, body } => {
                    let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
                    message(&mut out, kind, *flags, seq, NFPROTO_INET, 0, |m| m.extend_from_slice(body));
                    continue;
                }
            };
            let (kind, flags) = if *add {
                (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)
            } else {
                (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
            };
            message(&mut out, (NFNL_SUBSYS_NFTABLES << 8) | kind, flags, seq, NFPROTO_INET, 0, |m| {
                attr(m, NFTA_SET_ELEM_LIST_TABLE, &cstr(&self.table));
                attr(m, NFTA_SET_ELEM_LIST_SET, &cstr(set));
                nested(m, NFTA_SET_ELEM_LIST_ELEMENTS, |m| {
                    for e in elements {
                        nested(m, NFTA_LIST_ELEM, |m| {
                            nested(m, NFTA_SET_ELEM_KEY, |m| attr(m, NFTA_DATA_VALUE, &e.key));
                            if let Some(chain) = &e.jump {
                                nested(m, NFTA_SET_ELEM_DATA, |m| {
                                    nested(m, NFTA_DATA_VERDICT, |m| {
                                        attr(m, NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
                                        attr(m, NFTA_VERDICT_CHAIN, &cstr(chain));
                                    })
                                });
                            }
                        });
                    }
                });
            });
        }
        seq += 1;
        message(&mut out, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, |_| {});
        (out, self.ops.len())
    }
}

/// A netfilter netlink socket in one network namespace, kept open across
/// batches. It is reopened if the namespace behind the name changes (a lab
/// rebuilt under the same name), so it never writes into a stale one.
pub struct NetlinkSession {
    netns: Option<String>,
    socket: Option<(u64, Socket)>,
    seq: u32,
}

impl NetlinkSession {
    pub fn new(netns: Option<&str>) -> Self {
        NetlinkSession { netns: netns.map(str::to_string), socket: None, seq: 0 }
    }

    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    fn socket(&mut self) -> Result<&Socket, NetlinkError> {
        use std::os::unix::fs::MetadataExt;
        let path = match &self.netns {
            Some(name) => Netns::named(name).path(),
            None => "/proc/self/ns/net".into(),
        };
        let inode = std::fs::metadata(&path)?.ino();
        if self.socket.as_ref().is_none_or(|(i, _)| *i != inode) {
            let open = || Socket::new(Domain::from(af_netlink()), Type::RAW, Some(Protocol::from(NETLINK_NETFILTER)));
            let socket = match &self.netns {
                Some(name) => Netns::named(name).enter(open)??,
                None => open()?,
            };
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            self.socket = Some((inode, socket));
        }
        Ok(&self.socket.as_ref().expect("just opened").1)
    }

    /// Sends one batch and waits for the kernel's verdict on each message.
    /// Acknowledgements of earlier batches (left after a refusal) are
    /// recognised by their sequence numbers and skipped.
    pub fn apply(&mut self, batch: &NetlinkBatch) -> Result<(), NetlinkError> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        let first = self.seq.wrapping_add(1);
        let (wire, expected) = batch.encode(first);
        self.seq = first.wrapping_add(expected as u32 + 1);
        let in_batch = |seq: u32| seq.wrapping_sub(first) <= expected as u32 + 1;
        let socket = self.socket()?;
        socket.send(&wire)?;
        let mut acked = 0;
        let mut buf = vec![0u8; 65536];
        while acked < expected {
            let n = (&*socket).read(&mut buf)?;
            let mut at = 0;
            while at + 20 <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
                let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().expect("4 bytes"));
                if kind == NLMSG_ERROR && in_batch(seq) {
                    let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().expect("4 bytes"));
                    if code != 0 {
                        return Err(NetlinkError::Refused(std::io::Error::from_raw_os_error(-code)));
                    }
                    acked += 1;
                }
                if len == 0 {
                    break;
                }
                at += (len + 3) & !3;
            }
        }
        Ok(())
    }
}

fn af_netlink() -> i32 {
    16 // AF_NETLINK
}

/// One netlink message with an nfgenmsg header.
fn message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]); // length, patched below
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    body(out);
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

pub(crate) fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

pub(crate) fn nested(out: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 2]);
    out.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    body(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// The attributes in `buf`: (type without flags, payload). A damaged
/// length ends the list instead of reading past it.
pub(crate) fn attrs(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= buf.len() {
        let len = u16::from_ne_bytes(buf[at..at + 2].try_into().expect("2 bytes")) as usize;
        if len < 4 || at + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes(buf[at + 2..at + 4].try_into().expect("2 bytes")) & 0x3fff;
        out.push((kind, &buf[at + 4..at + len]));
        at += (len + 3) & !3;
    }
    out
}

pub(crate) fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Parses one element as Palisade renders it (`a . b`, `key : jump chain`,
/// interface names quoted) into key bytes: each field of a concatenation
/// padded to 4 bytes, as nft lays out registers.
fn encode(key: &KeyType, set: &str, element: &str) -> Result<Element, NetlinkError> {
    let err = |reason: String| NetlinkError::Encode { set: set.into(), element: element.into(), reason };
    let (key_text, jump) = match element.split_once(" : ") {
        Some((k, verdict)) => {
            let chain = verdict.strip_prefix("jump ").ok_or_else(|| err(format!("unsupported verdict {verdict:?}")))?;
            (k, Some(chain.to_string()))
        }
        None => (element, None),
    };
    let fields: Vec<&str> = key_text.split(" . ").collect();
    if fields.len() != key.0.len() {
        return Err(err(format!("{} fields for key type {key}", fields.len())));
    }
    let mut bytes = Vec::new();
    for (ty, text) in key.0.iter().zip(fields) {
        let mut field = match *ty {
            "ipv4_addr" | "ipv6_addr" => match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) if *ty == "ipv4_addr" => a.octets().to_vec(),
                Ok(IpAddr::V6(a)) if *ty == "ipv6_addr" => a.octets().to_vec(),
                _ => return Err(err(format!("{text:?} is not an {ty}"))),
            },
            "ifname" => {
                let name = text.trim_matches('"');
                if name.len() >= IFNAMSIZ {
                    return Err(err(format!("interface name {name:?} is too long")));
                }
                let mut v = name.as_bytes().to_vec();
                v.resize(IFNAMSIZ, 0);
                v
            }
            "inet_service" => {
                let port: u16 = text.parse().map_err(|_| err(format!("{text:?} is not a port")))?;
                port.to_be_bytes().to_vec()
            }
            other => return Err(err(format!("key type {other} is not supported over netlink"))),
        };
        if key.0.len() > 1 {
            field.resize(field.len().div_ceil(4) * 4, 0);
        }
        bytes.extend(field);
    }
    Ok(Element { key: bytes, jump })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_laid_out_as_nft_registers() {
        let k = |types: &[&'static str]| KeyType(types.to_vec());
        assert_eq!(encode(&k(&["ipv4_addr"]), "s", "10.0.0.1").unwrap().key, vec![10, 0, 0, 1]);
        let e = encode(&k(&["ipv4_addr", "inet_service"]), "s", "10.0.0.1 . 8080").unwrap();
        assert_eq!(e.key, vec![10, 0, 0, 1, 0x1f, 0x90, 0, 0]);
        let e = encode(&k(&["ifname", "ipv4_addr"]), "s", "\"veth1\" . 10.0.0.1").unwrap();
        assert_eq!(e.key.len(), 20);
        assert_eq!(&e.key[..5], b"veth1");
        let e = encode(&k(&["ipv6_addr"]), "m", "fd00::1 : jump ingress_x_id3").unwrap();
        assert_eq!(e.jump.as_deref(), Some("ingress_x_id3"));
        assert_eq!(e.key.len(), 16);
        assert!(encode(&k(&["ipv4_addr"]), "s", "fd00::1").is_err());
        assert!(encode(&k(&["ipv4_addr"]), "m", "10.0.0.1 : drop").is_err());
    }
}
