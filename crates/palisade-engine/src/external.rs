//! The outside world as identities: the address space (both families) cut
//! by every CIDR of every ipBlock (`cidr` and `except`) into ranges that no
//! policy can tell apart. Each range is decided once, on one of its
//! addresses that is no endpoint's; its name says at a glance which part of
//! the world it is (`0.0.0.0/0 except 10.0.0.0/8 + ::/0`,
//! `10.0.0.0/8 except 10.1.0.0/16`, `10.1.0.0/16`).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use palisade_model::IpBlock;

/// One range of addresses outside the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRange {
    /// Disjoint inclusive intervals, IPv4 first, each family in order.
    pub intervals: Vec<(IpAddr, IpAddr)>,
    pub name: String,
    /// An address of the range that is no endpoint's: the range's
    /// verdicts are this address's.
    pub representative: IpAddr,
    /// The blocks (indexes into the slice the ranges were cut by) that
    /// hold every address of the range.
    pub blocks: Vec<u32>,
}

impl ExternalRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.intervals.iter().any(|(lo, hi)| same_family(*lo, ip) && *lo <= ip && ip <= *hi)
    }

    /// Does the range share an address with the prefix `net`?
    pub fn overlaps(&self, net: &ipnet::IpNet) -> bool {
        let (start, end) = (net.network(), net.broadcast());
        self.intervals.iter().any(|(lo, hi)| same_family(*lo, start) && *lo <= end && start <= *hi)
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn max(self) -> u128 {
        match self {
            Family::V4 => u32::MAX as u128,
            Family::V6 => u128::MAX,
        }
    }

    fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    fn addr(self, v: u128) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
        }
    }
}

fn value(ip: IpAddr) -> (Family, u128) {
    match ip {
        IpAddr::V4(a) => (Family::V4, u32::from(a) as u128),
        IpAddr::V6(a) => (Family::V6, u128::from(a)),
    }
}

type Interval = (Family, u128, u128);

/// The ranges cut by `blocks`, without the addresses in `endpoint_ips`
/// as representatives (a range of nothing but endpoint addresses is not
/// outside the cluster and is left out).
pub fn external_ranges(blocks: &[Arc<IpBlock>], endpoint_ips: &HashSet<IpAddr>) -> Vec<ExternalRange> {
    // A sweep over every CIDR's first and one-past-last address, per family,
    // keeping the set of blocks the current address is in: the cost follows
    // the number of CIDRs, not CIDRs x blocks.
    #[derive(Clone, Copy)]
    enum Edge {
        CidrIn,
        CidrOut,
        ExceptIn,
        ExceptOut,
    }
    let mut events: Vec<(Family, u128, u32, Edge)> = Vec::new();
    let mut push = |net: &ipnet::IpNet, j: u32, (open, close): (Edge, Edge)| {
        let (family, start) = value(net.network());
        let (_, end) = value(net.broadcast());
        events.push((family, start, j, open));
        if end < family.max() {
            events.push((family, end + 1, j, close));
        }
    };
    for (j, b) in blocks.iter().enumerate() {
        push(&b.cidr, j as u32, (Edge::CidrIn, Edge::CidrOut));
        for e in &b.except {
            push(e, j as u32, (Edge::ExceptIn, Edge::ExceptOut));
        }
    }
    events.sort_by_key(|&(family, at, ..)| (family, at));
    let mut in_cidr = vec![false; blocks.len()];
    let mut excepted = vec![0u32; blocks.len()];
    // Intervals with the same membership in every block are one range.
    let mut by_signature: BTreeMap<Vec<u32>, Vec<Interval>> = BTreeMap::new();
    for family in [Family::V4, Family::V6] {
        let mine: Vec<&(Family, u128, u32, Edge)> = events.iter().filter(|e| e.0 == family).collect();
        let mut members: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
        let mut k = 0;
        let mut start = 0u128;
        loop {
            while k < mine.len() && mine[k].1 == start {
                let (_, _, j, edge) = *mine[k];
                let j = j as usize;
                match edge {
                    Edge::CidrIn => in_cidr[j] = true,
                    Edge::CidrOut => in_cidr[j] = false,
                    Edge::ExceptIn => excepted[j] += 1,
                    Edge::ExceptOut => excepted[j] -= 1,
                }
                if in_cidr[j] && excepted[j] == 0 {
                    members.insert(j as u32);
                } else {
                    members.remove(&(j as u32));
                }
                k += 1;
            }
            let end = mine.get(k).map(|next| next.1 - 1).unwrap_or(family.max());
            let intervals = by_signature.entry(members.iter().copied().collect()).or_default();
            match intervals.last_mut() {
                Some(last) if last.0 == family && last.2.checked_add(1) == Some(start) => last.2 = end,
                _ => intervals.push((family, start, end)),
            }
            match mine.get(k) {
                Some(next) => start = next.1,
                None => break,
            }
        }
    }
    let mut out: Vec<ExternalRange> = by_signature
        .into_iter()
        .filter_map(|(blocks, intervals)| {
            let representative = representative(&intervals, endpoint_ips)?;
            Some(ExternalRange {
                name: name(&intervals),
                intervals: intervals.iter().map(|&(f, lo, hi)| (f.addr(lo), f.addr(hi))).collect(),
                representative,
                blocks,
            })
        })
        .collect();
    out.sort_by(|a, b| a.intervals.cmp(&b.intervals));
    out
}

/// The first address of the range that is no endpoint's.
fn representative(intervals: &[Interval], endpoint_ips: &HashSet<IpAddr>) -> Option<IpAddr> {
    for &(family, lo, hi) in intervals {
        let mut v = lo;
        loop {
            let ip = family.addr(v);
            if !endpoint_ips.contains(&ip) {
                return Some(ip);
            }
            if v == hi {
                break;
            }
            v += 1;
        }
    }
    None
}

/// `a/len` when the interval is one prefix, `a-b` otherwise.
fn interval_text(family: Family, lo: u128, hi: u128) -> String {
    let size = hi - lo;
    if (size == family.max() && lo == 0) || (size.wrapping_add(1).is_power_of_two() && lo & size == 0) {
        let len = family.bits() - (size.wrapping_add(1)).trailing_zeros().min(family.bits());
        let len = if size == family.max() { 0 } else { len };
        format!("{}/{len}", family.addr(lo))
    } else {
        format!("{}-{}", family.addr(lo), family.addr(hi))
    }
}

/// Per family: the intervals, or, when shorter, the smallest prefix that
/// covers them `except` the gaps between them; items joined by `,` as an
/// ipBlock's excepts are written, families by ` + `.
fn name(intervals: &[Interval]) -> String {
    let mut parts = Vec::new();
    for family in [Family::V4, Family::V6] {
        let mine: Vec<&Interval> = intervals.iter().filter(|i| i.0 == family).collect();
        let (Some(first), Some(last)) = (mine.first(), mine.last()) else { continue };
        let listed: Vec<String> = mine.iter().map(|&&(f, lo, hi)| interval_text(f, lo, hi)).collect();
        // The smallest prefix covering first.lo ..= last.hi.
        let (lo, hi) = (first.1, last.2);
        let host_bits = family.bits() - (lo ^ hi).leading_zeros().saturating_sub(128 - family.bits());
        let mask = if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
        let (cover_lo, cover_hi) = (lo & !mask, (lo & !mask) | (mask & family.max()));
        let mut gaps = Vec::new();
        let mut at = cover_lo;
        for &&(_, l, h) in &mine {
            if l > at {
                gaps.push(interval_text(family, at, l - 1));
            }
            at = h.saturating_add(1);
        }
        if at <= cover_hi && last.2 < cover_hi {
            gaps.push(interval_text(family, at, cover_hi));
        }
        if mine.len() >= 2 && gaps.len() < mine.len() {
            parts.push(format!("{} except {}", interval_text(family, cover_lo, cover_hi), gaps.join(",")));
        } else {
            parts.push(listed.join(","));
        }
    }
    parts.join(" + ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(cidr: &str, except: &[&str]) -> Arc<IpBlock> {
        Arc::new(IpBlock { cidr: cidr.parse().unwrap(), except: except.iter().map(|e| e.parse().unwrap()).collect() })
    }

    fn names(blocks: &[Arc<IpBlock>]) -> Vec<String> {
        external_ranges(blocks, &HashSet::new()).into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn no_blocks_is_one_range_of_everything() {
        assert_eq!(names(&[]), ["0.0.0.0/0 + ::/0"]);
    }

    #[test]
    fn a_block_with_an_except_cuts_the_world_in_two() {
        let ranges = external_ranges(&[block("10.0.0.0/8", &["10.1.0.0/16"])], &HashSet::new());
        let shown: Vec<&str> = ranges.iter().map(|r| r.name.as_str()).collect();
        // 10.1.0.0/16 is in no block, as the internet is: no policy can tell them apart.
        assert_eq!(
            shown,
            ["0.0.0.0/0 except 10.0.0.0/16,10.2.0.0-10.255.255.255 + ::/0", "10.0.0.0/8 except 10.1.0.0/16"]
        );
        let inside: IpAddr = "10.2.3.4".parse().unwrap();
        assert!(ranges[1].contains(inside) && !ranges[0].contains(inside));
        assert!(ranges[0].contains("10.1.2.3".parse().unwrap()));
        assert!(ranges[0].contains("203.0.113.7".parse().unwrap()));
        assert!(ranges[0].contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn ranges_are_what_every_block_agrees_on() {
        let blocks = [
            block("0.0.0.0/0", &["10.0.0.0/8", "192.168.0.0/16"]),
            block("192.168.1.0/24", &[]),
            block("2001:db8::/32", &[]),
        ];
        let ranges = external_ranges(&blocks, &HashSet::new());
        // Any two addresses of one range are in the same blocks.
        let probes: Vec<IpAddr> = [
            "0.0.0.1",
            "9.9.9.9",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.0.1",
            "192.168.1.9",
            "192.169.0.0",
            "255.255.255.255",
            "::1",
            "2001:db8::5",
            "2001:db9::",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        for a in &probes {
            let ra: Vec<usize> = (0..ranges.len()).filter(|&i| ranges[i].contains(*a)).collect();
            assert_eq!(ra.len(), 1, "{a} is in exactly one range");
            for b in &probes {
                let same = ranges[ra[0]].contains(*b);
                let agree = blocks.iter().all(|k| k.contains(*a) == k.contains(*b));
                assert_eq!(same, agree, "{a} and {b}");
            }
        }
        let shown: Vec<&str> = ranges.iter().map(|r| r.name.as_str()).collect();
        assert!(
            shown.contains(&"10.0.0.0/8,192.168.0.0/24,192.168.2.0-192.168.255.255 + ::/0 except 2001:db8::/32"),
            "{shown:?}"
        );
    }

    #[test]
    fn representatives_are_no_endpoints_address() {
        let pod: IpAddr = "10.1.0.0".parse().unwrap();
        let ranges = external_ranges(&[block("10.1.0.0/31", &[]), block("10.1.0.0/32", &[])], &HashSet::from([pod]));
        let shown: Vec<(&str, String)> =
            ranges.iter().map(|r| (r.name.as_str(), r.representative.to_string())).collect();
        // 10.1.0.0/32 holds only the pod's address: not outside the cluster.
        assert_eq!(
            shown,
            [("0.0.0.0/0 except 10.1.0.0/31 + ::/0", "0.0.0.0".to_string()), ("10.1.0.1/32", "10.1.0.1".to_string())]
        );
    }
}
