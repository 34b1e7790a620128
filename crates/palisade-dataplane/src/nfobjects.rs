//! Sets, regular chains and rules as nf_tables netlink messages, so a
//! change that adds a policy chain goes out in the same kind of batch as an
//! element change, without an `nft` process. Why: nft 1.0.6 lists every
//! chain and set of the table before it writes anything (30-50 ms at 1,000
//! chains), which made a single-pod change that needs a new chain miss its
//! 10 ms budget.
//!
//! Rules stay written as nft text (the [`Rule`] model, what `nft list`
//! shows); [`parse_rule`] reads back the small grammar the compiler emits
//! and lays it out exactly as nft 1.0.6 does (`nft --debug=netlink`), so a
//! listing cannot tell which path wrote a rule (`tests/kernel.rs` compares
//! them). Anything outside that grammar returns `None` and the whole change
//! goes through `nft -f`.

use std::net::IpAddr;

use crate::nfnetlink::{cstr, NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_LIST_ELEM, NFTA_VERDICT_CODE};
use crate::nft::{quote, ChainDef, KeyType, Rule, SetDef};

const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_CMP_LTE: u32 = 3;
const NFT_CMP_GTE: u32 = 5;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_RETURN: i32 = -5;
const NFT_REJECT_TCP_RST: u32 = 1;
const NFT_REJECT_ICMPX_UNREACH: u32 = 2;
const NFT_REJECT_ICMPX_ADMIN_PROHIBITED: u8 = 3;
/// nft's register numbers: the 16-byte `reg 1` and `reg 2`, and the
/// 4-byte register right after an IPv4 address in `reg 1`.
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;
const REG32_01: u32 = 9;

/// One nf_tables expression, as nft 1.0.6 generates it for Palisade's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    Meta { key: u32 },
    Cmp { op: u32, data: Vec<u8> },
    Payload { base: u32, offset: u32, len: u32, dreg: u32 },
    Bitwise { mask: Vec<u8> },
    Lookup { set: String },
    Verdict(i32),
    Reject { kind: u32, code: u8 },
}

/// The expressions of `rule`, or `None` if it is outside the grammar the
/// policy compiler emits (then nft must write it).
pub(crate) fn parse_rule(rule: &Rule) -> Option<Vec<Expr>> {
    let text = rule.exprs.join(" ");
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut out = Vec::new();
    let mut family: Option<bool> = None; // Some(true): IPv4
    let mut l4: Option<u8> = None;
    let mut i = 0;
    let tok = |i: usize| tokens.get(i).copied();
    while i < tokens.len() {
        match (tok(i)?, tok(i + 1)) {
            ("meta", Some("nfproto")) => {
                let v4 = match tok(i + 2)? {
                    "ipv4" => true,
                    "ipv6" => false,
                    _ => return None,
                };
                out.push(Expr::Meta { key: NFT_META_NFPROTO });
                out.push(Expr::Cmp { op: NFT_CMP_EQ, data: vec![if v4 { 2 } else { 10 }] });
                family = Some(v4);
                i += 3;
            }
            ("meta", Some("l4proto")) => {
                let proto = match tok(i + 2)? {
                    "tcp" => 6,
                    "udp" => 17,
                    "sctp" => 132,
                    _ => return None,
                };
                out.push(Expr::Meta { key: NFT_META_L4PROTO });
                out.push(Expr::Cmp { op: NFT_CMP_EQ, data: vec![proto] });
                l4 = Some(proto);
                i += 3;
            }
            (ip @ ("ip" | "ip6"), Some(field @ ("saddr" | "daddr"))) => {
                let v4 = ip == "ip";
                if family != Some(v4) {
                    return None; // nft would add a dependency of its own
                }
                let (offset, len) = match (v4, field) {
                    (true, "saddr") => (12, 4),
                    (true, _) => (16, 4),
                    (false, "saddr") => (8, 16),
                    (false, _) => (24, 16),
                };
                let load = |len| Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset, len, dreg: REG_1 };
                match tok(i + 2)? {
                    "." => {
                        if field != "daddr" || l4.is_none() || (tok(i + 3)?, tok(i + 4)?) != ("th", "dport") {
                            return None;
                        }
                        let set = tok(i + 5)?.strip_prefix('@')?;
                        out.push(load(len));
                        let dreg = if v4 { REG32_01 } else { REG_2 };
                        out.push(Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, len: 2, dreg });
                        out.push(Expr::Lookup { set: set.to_string() });
                        i += 6;
                    }
                    set if set.starts_with('@') => {
                        out.push(load(len));
                        out.push(Expr::Lookup { set: set[1..].to_string() });
                        i += 3;
                    }
                    "!=" => {
                        out.extend(prefix_match(tok(i + 3)?, v4, offset, NFT_CMP_NEQ)?);
                        i += 4;
                    }
                    prefix => {
                        out.extend(prefix_match(prefix, v4, offset, NFT_CMP_EQ)?);
                        i += 3;
                    }
                }
            }
            ("th", Some("dport")) => {
                l4?;
                out.push(Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, len: 2, dreg: REG_1 });
                let ports = tok(i + 2)?;
                match ports.split_once('-') {
                    None => out.push(Expr::Cmp { op: NFT_CMP_EQ, data: port(ports)? }),
                    Some((lo, hi)) => {
                        out.push(Expr::Cmp { op: NFT_CMP_GTE, data: port(lo)? });
                        out.push(Expr::Cmp { op: NFT_CMP_LTE, data: port(hi)? });
                    }
                }
                i += 3;
            }
            (verdict @ ("accept" | "drop" | "return"), None) => {
                out.push(Expr::Verdict(match verdict {
                    "accept" => NF_ACCEPT,
                    "drop" => NF_DROP,
                    _ => NFT_RETURN,
                }));
                i += 1;
            }
            ("reject", Some("with")) if i + 4 == tokens.len() => {
                match (tok(i + 2)?, tok(i + 3)?) {
                    ("tcp", "reset") if l4 == Some(6) => out.push(Expr::Reject { kind: NFT_REJECT_TCP_RST, code: 0 }),
                    ("icmpx", "admin-prohibited") => out
                        .push(Expr::Reject { kind: NFT_REJECT_ICMPX_UNREACH, code: NFT_REJECT_ICMPX_ADMIN_PROHIBITED }),
                    _ => return None,
                }
                i += 4;
            }
            _ => return None,
        }
    }
    // A rule ends in its verdict, and has nothing after it.
    matches!(out.last(), Some(Expr::Verdict(_) | Expr::Reject { .. })).then_some(out)
}

fn port(text: &str) -> Option<Vec<u8>> {
    Some(text.parse::<u16>().ok()?.to_be_bytes().to_vec())
}

/// `addr` or `addr/len` compared as nft does: a byte-aligned prefix loads
/// only its bytes; any other loads the whole address and masks it.
fn prefix_match(text: &str, v4: bool, offset: u32, op: u32) -> Option<Vec<Expr>> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, l.parse::<u32>().ok()?),
        None => {
            let a = text.parse::<IpAddr>().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let octets = match addr {
        IpAddr::V4(a) if v4 => a.octets().to_vec(),
        IpAddr::V6(a) if !v4 => a.octets().to_vec(),
        _ => return None,
    };
    let full = octets.len() as u32;
    if len == 0 || len > full * 8 {
        return None;
    }
    let mask: Vec<u8> =
        (0..full).map(|b| (0xffu16 << 8u32.saturating_sub(len.saturating_sub(b * 8)).min(8)) as u8).collect();
    let masked: Vec<u8> = octets.iter().zip(&mask).map(|(o, m)| o & m).collect();
    let load = |len| Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset, len, dreg: REG_1 };
    Some(if len % 8 == 0 {
        vec![load(len / 8), Expr::Cmp { op, data: masked[..(len / 8) as usize].to_vec() }]
    } else {
        vec![load(full), Expr::Bitwise { mask }, Expr::Cmp { op, data: masked }]
    })
}

/// A netlink attribute writer (the framing lives in `nfnetlink`).
pub(crate) trait Attrs {
    fn attr(&mut self, kind: u16, payload: &[u8]);
    fn nested(&mut self, kind: u16, body: &mut dyn FnMut(&mut Vec<u8>));
}

impl Attrs for Vec<u8> {
    fn attr(&mut self, kind: u16, payload: &[u8]) {
        super::nfnetlink::attr(self, kind, payload)
    }
    fn nested(&mut self, kind: u16, body: &mut dyn FnMut(&mut Vec<u8>)) {
        super::nfnetlink::nested(self, kind, body)
    }
}

fn be(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

/// A comment as nft stores it: libnftnl's user-data TLV, NUL-terminated
/// text, cut and unquoted as [`quote`] renders it for `nft -f`.
fn comment_udata(kind: u8, comment: &str) -> Vec<u8> {
    let quoted = quote(comment);
    let text = cstr(&quoted[1..quoted.len() - 1]);
    let mut out = vec![kind, text.len() as u8];
    out.extend(text);
    out
}

/// The body of a NEWRULE message appending `exprs` to `chain`.
/// `set_id` gives the batch id of a set created in the same batch.
pub(crate) fn rule_body(
    m: &mut Vec<u8>,
    table: &str,
    chain: &str,
    exprs: &[Expr],
    comment: Option<&str>,
    set_id: &dyn Fn(&str) -> Option<u32>,
) {
    const NFTA_RULE_TABLE: u16 = 1;
    const NFTA_RULE_CHAIN: u16 = 2;
    const NFTA_RULE_EXPRESSIONS: u16 = 4;
    const NFTA_RULE_USERDATA: u16 = 7;
    m.attr(NFTA_RULE_TABLE, &cstr(table));
    m.attr(NFTA_RULE_CHAIN, &cstr(chain));
    m.nested(NFTA_RULE_EXPRESSIONS, &mut |m| {
        for e in exprs {
            m.nested(NFTA_LIST_ELEM, &mut |m| expr(m, e, set_id));
        }
    });
    if let Some(c) = comment {
        m.attr(NFTA_RULE_USERDATA, &comment_udata(0, c));
    }
}

fn expr(m: &mut Vec<u8>, e: &Expr, set_id: &dyn Fn(&str) -> Option<u32>) {
    let data = |m: &mut Vec<u8>, kind: u16, bytes: &[u8]| m.nested(kind, &mut |m| m.attr(NFTA_DATA_VALUE, bytes));
    let name = match e {
        Expr::Meta { .. } => "meta",
        Expr::Cmp { .. } => "cmp",
        Expr::Payload { .. } => "payload",
        Expr::Bitwise { .. } => "bitwise",
        Expr::Lookup { .. } => "lookup",
        Expr::Verdict(_) => "immediate",
        Expr::Reject { .. } => "reject",
    };
    m.attr(NFTA_EXPR_NAME, &cstr(name));
    m.nested(NFTA_EXPR_DATA, &mut |m| match e {
        Expr::Meta { key } => {
            m.attr(2, &be(*key)); // NFTA_META_KEY
            m.attr(1, &be(REG_1)); // NFTA_META_DREG
        }
        Expr::Cmp { op, data: bytes } => {
            m.attr(1, &be(REG_1)); // NFTA_CMP_SREG
            m.attr(2, &be(*op)); // NFTA_CMP_OP
            data(m, 3, bytes); // NFTA_CMP_DATA
        }
        Expr::Payload { base, offset, len, dreg } => {
            m.attr(1, &be(*dreg)); // NFTA_PAYLOAD_DREG
            m.attr(2, &be(*base));
            m.attr(3, &be(*offset));
            m.attr(4, &be(*len));
        }
        Expr::Bitwise { mask } => {
            m.attr(1, &be(REG_1)); // NFTA_BITWISE_SREG
            m.attr(2, &be(REG_1)); // NFTA_BITWISE_DREG
            m.attr(3, &be(mask.len() as u32));
            data(m, 4, mask); // NFTA_BITWISE_MASK
            data(m, 5, &vec![0; mask.len()]); // NFTA_BITWISE_XOR
        }
        Expr::Lookup { set } => {
            m.attr(2, &be(REG_1)); // NFTA_LOOKUP_SREG
            m.attr(1, &cstr(set)); // NFTA_LOOKUP_SET
            if let Some(id) = set_id(set) {
                m.attr(4, &be(id)); // NFTA_LOOKUP_SET_ID
            }
        }
        Expr::Verdict(code) => {
            m.attr(1, &be(REG_VERDICT)); // NFTA_IMMEDIATE_DREG
            m.nested(2, &mut |m| m.nested(NFTA_DATA_VERDICT, &mut |m| m.attr(NFTA_VERDICT_CODE, &code.to_be_bytes())));
        }
        Expr::Reject { kind, code } => {
            m.attr(1, &be(*kind)); // NFTA_REJECT_TYPE
            m.attr(2, &[*code]); // NFTA_REJECT_ICMP_CODE
        }
    });
}

/// The body of a NEWCHAIN message for a regular (hookless) chain.
pub(crate) fn chain_body(m: &mut Vec<u8>, table: &str, def: &ChainDef) -> Option<()> {
    if def.hook.is_some() {
        return None; // base chains stay with nft
    }
    m.attr(1, &cstr(table)); // NFTA_CHAIN_TABLE
    m.attr(3, &cstr(&def.name)); // NFTA_CHAIN_NAME
    if !def.comment.is_empty() {
        m.attr(12, &comment_udata(0, &def.comment)); // NFTA_CHAIN_USERDATA
    }
    Some(())
}

/// nft's type id of a key type, its length in the kernel, and its byte
/// order for the listing (libnftnl `KEYBYTEORDER`: 1 host, 2 big endian).
fn key_type(name: &str) -> Option<(u32, u32, u32)> {
    Some(match name {
        "ipv4_addr" => (7, 4, 2),
        "ipv6_addr" => (8, 16, 2),
        "inet_service" => (13, 2, 2),
        "ifname" => (41, 16, 1),
        _ => return None,
    })
}

/// The body of a NEWSET message, or `None` for a set nft must create
/// (interval sets, key types this module does not know).
pub(crate) fn set_body(m: &mut Vec<u8>, table: &str, def: &SetDef, id: u32) -> Option<()> {
    const NFT_SET_MAP: u32 = 8;
    const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
    if def.interval || def.map_to.is_some_and(|t| t != "verdict") {
        return None;
    }
    let KeyType(types) = &def.key;
    let fields = types.iter().map(|t| key_type(t)).collect::<Option<Vec<_>>>()?;
    let (type_id, len, order) = match fields.as_slice() {
        [one] => *one,
        many => {
            let id = many.iter().fold(0, |acc, (t, _, _)| (acc << 6) | t);
            (id, many.iter().map(|(_, l, _)| l.div_ceil(4) * 4).sum(), 0)
        }
    };
    let mut udata = vec![0, 4];
    udata.extend(order.to_ne_bytes()); // NFTNL_UDATA_SET_KEYBYTEORDER
    if fields.len() > 1 {
        // What nft 1.0.6 writes for every concatenated key.
        udata.extend([3, 8, 0, 4, 13, 0, 0, 0, 1, 0]);
    }
    if def.map_to.is_some() {
        udata.extend([1, 4, 0, 0, 0, 0]); // NFTNL_UDATA_SET_DATABYTEORDER
        udata.extend([6, 4, 0, 0, 0, 0]); // NFTNL_UDATA_SET_DATA_INTERVAL
    }
    if !def.comment.is_empty() {
        udata.extend(comment_udata(7, &def.comment)); // NFTNL_UDATA_SET_COMMENT
    }
    m.attr(1, &cstr(table)); // NFTA_SET_TABLE
    m.attr(2, &cstr(&def.name)); // NFTA_SET_NAME
    m.attr(3, &be(if def.map_to.is_some() { NFT_SET_MAP } else { 0 })); // NFTA_SET_FLAGS
    m.attr(4, &be(type_id)); // NFTA_SET_KEY_TYPE
    m.attr(5, &be(len)); // NFTA_SET_KEY_LEN
    if def.map_to.is_some() {
        m.attr(6, &be(NFT_DATA_VERDICT)); // NFTA_SET_DATA_TYPE
        m.attr(7, &be(0)); // NFTA_SET_DATA_LEN
    }
    m.attr(10, &be(id)); // NFTA_SET_ID
    m.attr(13, &udata); // NFTA_SET_USERDATA
    Some(())
}

/// The body of a message naming one object of the table: DELCHAIN and
/// DELSET (`name_attr` 3 and 2), or DELRULE of a whole chain (2: flush).
pub(crate) fn named_body(m: &mut Vec<u8>, table: &str, name_attr: u16, name: &str) {
    m.attr(1, &cstr(table));
    m.attr(name_attr, &cstr(name));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Rule {
        Rule { exprs: vec![text.to_string()], comment: None }
    }

    #[test]
    fn the_compilers_rule_forms_parse() {
        for text in [
            "meta nfproto ipv4 ip saddr @sel_1_ab_v4 meta l4proto tcp th dport 5001 accept",
            "meta nfproto ipv6 ip6 saddr @sel_1_ab_v6 meta l4proto udp th dport 5000-5010 return",
            "meta nfproto ipv4 ip daddr 10.0.0.0/8 ip daddr != 10.1.0.0/16 meta l4proto sctp accept",
            "meta nfproto ipv4 meta l4proto tcp ip daddr . th dport @np_1_v4 return",
            "meta nfproto ipv6 meta l4proto tcp ip6 daddr . th dport @np_1_v6 return",
            "meta nfproto ipv4 return",
            "meta l4proto tcp reject with tcp reset",
            "reject with icmpx admin-prohibited",
            "drop",
        ] {
            assert!(parse_rule(&rule(text)).is_some(), "{text}");
        }
        for text in [
            "ip saddr @s accept",                         // no family dependency: nft adds one
            "meta nfproto ipv6 ip saddr @s accept",       // wrong family
            "meta nfproto ipv4 th dport 80 accept",       // no l4proto dependency
            "meta nfproto ipv4 ip saddr @s",              // no verdict
            "accept drop",                                // a verdict in the middle
            "ct state established,related accept",        // not a policy rule
            "meta l4proto udp reject with tcp reset",     // reset needs tcp
            "meta nfproto ipv4 ip saddr 10.0.0.0/0 drop", // nft writes no match at all
        ] {
            assert!(parse_rule(&rule(text)).is_none(), "{text}");
        }
    }

    #[test]
    fn prefixes_load_as_nft_does() {
        // nft --debug=netlink: a /8 loads one byte; a /12 loads 4 and masks.
        let p = |text, op| prefix_match(text, true, 12, op).unwrap();
        assert_eq!(
            p("10.0.0.0/8", NFT_CMP_EQ),
            vec![Expr::Payload { base: 1, offset: 12, len: 1, dreg: 1 }, Expr::Cmp { op: NFT_CMP_EQ, data: vec![10] }]
        );
        assert_eq!(
            p("172.16.0.0/12", NFT_CMP_NEQ),
            vec![
                Expr::Payload { base: 1, offset: 12, len: 4, dreg: 1 },
                Expr::Bitwise { mask: vec![0xff, 0xf0, 0, 0] },
                Expr::Cmp { op: NFT_CMP_NEQ, data: vec![172, 16, 0, 0] }
            ]
        );
        assert_eq!(p("172.17.0.1", NFT_CMP_EQ)[1], Expr::Cmp { op: NFT_CMP_EQ, data: vec![172, 17, 0, 1] });
        let v6 = prefix_match("fd00::/120", false, 24, NFT_CMP_EQ).unwrap();
        assert_eq!(v6[0], Expr::Payload { base: 1, offset: 24, len: 15, dreg: 1 });
        assert!(prefix_match("fd00::/64", true, 12, NFT_CMP_EQ).is_none(), "family mismatch");
    }
}
