//! Connection sets: which protocols and ports one endpoint may open to
//! another. The result type of every reachability query and the cell type of
//! the connectivity matrix.

use std::fmt;

use palisade_model::Protocol;
use serde::{Serialize, Serializer};

/// Sorted, non-overlapping, non-adjacent inclusive port ranges of one protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRanges(Vec<(u16, u16)>);

impl PortRanges {
    pub fn full() -> Self {
        PortRanges(vec![(1, 65535)])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.0 == [(1, 65535)]
    }

    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(a, b)| a <= port && port <= b)
    }

    pub fn insert(&mut self, start: u16, end: u16) {
        let mut merged = Vec::with_capacity(self.0.len() + 1);
        let (mut s, mut e) = (start, end);
        let mut placed = false;
        for &(a, b) in &self.0 {
            if (b as u32) + 1 < s as u32 {
                merged.push((a, b));
            } else if (e as u32) + 1 < a as u32 {
                if !placed {
                    merged.push((s, e));
                    placed = true;
                }
                merged.push((a, b));
            } else {
                s = s.min(a);
                e = e.max(b);
            }
        }
        if !placed {
            merged.push((s, e));
        }
        merged.sort_unstable();
        self.0 = merged;
    }

    pub fn union(&mut self, other: &PortRanges) {
        for &(a, b) in &other.0 {
            self.insert(a, b);
        }
    }

    pub fn intersection(&self, other: &PortRanges) -> PortRanges {
        let mut out = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() && j < other.0.len() {
            let (a1, b1) = self.0[i];
            let (a2, b2) = other.0[j];
            let (lo, hi) = (a1.max(a2), b1.min(b2));
            if lo <= hi {
                out.push((lo, hi));
            }
            if b1 < b2 {
                i += 1;
            } else {
                j += 1;
            }
        }
        PortRanges(out)
    }
}

/// Allowed connections: port ranges per protocol, plus whether protocols
/// without ports (ICMP and others) are allowed, which only a rule with no
/// `ports` does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnSet {
    tcp: PortRanges,
    udp: PortRanges,
    sctp: PortRanges,
    other_protocols: bool,
}

impl ConnSet {
    pub fn none() -> Self {
        ConnSet::default()
    }

    pub fn all() -> Self {
        ConnSet { tcp: PortRanges::full(), udp: PortRanges::full(), sctp: PortRanges::full(), other_protocols: true }
    }

    pub fn is_all(&self) -> bool {
        self.other_protocols && self.tcp.is_full() && self.udp.is_full() && self.sctp.is_full()
    }

    pub fn is_none(&self) -> bool {
        !self.other_protocols && self.tcp.is_empty() && self.udp.is_empty() && self.sctp.is_empty()
    }

    pub fn ports(&self, protocol: Protocol) -> &PortRanges {
        match protocol {
            Protocol::Tcp => &self.tcp,
            Protocol::Udp => &self.udp,
            Protocol::Sctp => &self.sctp,
        }
    }

    fn ports_mut(&mut self, protocol: Protocol) -> &mut PortRanges {
        match protocol {
            Protocol::Tcp => &mut self.tcp,
            Protocol::Udp => &mut self.udp,
            Protocol::Sctp => &mut self.sctp,
        }
    }

    pub fn other_protocols(&self) -> bool {
        self.other_protocols
    }

    pub fn contains(&self, protocol: Protocol, port: u16) -> bool {
        self.ports(protocol).contains(port)
    }

    pub fn add_range(&mut self, protocol: Protocol, start: u16, end: u16) {
        self.ports_mut(protocol).insert(start, end);
    }

    pub fn union(&mut self, other: &ConnSet) {
        if other.is_all() {
            *self = ConnSet::all();
            return;
        }
        for p in Protocol::ALL {
            self.ports_mut(p).union(other.ports(p));
        }
        self.other_protocols |= other.other_protocols;
    }

    pub fn intersection(&self, other: &ConnSet) -> ConnSet {
        if self.is_all() {
            return other.clone();
        }
        if other.is_all() {
            return self.clone();
        }
        ConnSet {
            tcp: self.tcp.intersection(&other.tcp),
            udp: self.udp.intersection(&other.udp),
            sctp: self.sctp.intersection(&other.sctp),
            other_protocols: self.other_protocols && other.other_protocols,
        }
    }

    /// What `self` has and `other` lacks, by protocol (for `diff`).
    pub fn difference(&self, other: &ConnSet) -> ConnSet {
        let mut out = ConnSet::none();
        for p in Protocol::ALL {
            let theirs = other.ports(p);
            for &(a, b) in self.ports(p).ranges() {
                let mut start = a as u32;
                for &(c, d) in theirs.ranges() {
                    let (c, d) = (c as u32, d as u32);
                    if d < start || c > b as u32 {
                        continue;
                    }
                    if c > start {
                        out.add_range(p, start as u16, (c - 1) as u16);
                    }
                    start = d + 1;
                }
                if start <= b as u32 {
                    out.add_range(p, start as u16, b);
                }
            }
        }
        out.other_protocols = self.other_protocols && !other.other_protocols;
        out
    }
}

impl fmt::Display for ConnSet {
    /// `all`, `none`, or e.g. `TCP 80-81,443, UDP 53`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("all");
        }
        if self.is_none() {
            return f.write_str("none");
        }
        let mut parts = Vec::new();
        for p in Protocol::ALL {
            let r = self.ports(p);
            if r.is_empty() {
                continue;
            }
            if r.is_full() {
                parts.push(format!("{p} all ports"));
                continue;
            }
            let ranges: Vec<String> =
                r.ranges().iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
            parts.push(format!("{p} {}", ranges.join(",")));
        }
        if self.other_protocols {
            parts.push("other protocols".into());
        }
        f.write_str(&parts.join(", "))
    }
}

impl Serialize for ConnSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_when_adjacent_or_overlapping() {
        let mut r = PortRanges::default();
        r.insert(80, 80);
        r.insert(82, 90);
        r.insert(81, 81);
        r.insert(100, 100);
        assert_eq!(r.ranges(), &[(80, 90), (100, 100)]);
        r.insert(1, 65535);
        assert!(r.is_full());
    }

    #[test]
    fn intersection_and_difference() {
        let mut a = ConnSet::none();
        a.add_range(Protocol::Tcp, 80, 90);
        a.add_range(Protocol::Udp, 53, 53);
        let mut b = ConnSet::none();
        b.add_range(Protocol::Tcp, 85, 100);
        assert_eq!(a.intersection(&b).to_string(), "TCP 85-90");
        assert_eq!(a.difference(&b).to_string(), "TCP 80-84, UDP 53");
        assert_eq!(ConnSet::all().intersection(&a), a);
        assert_eq!(a.difference(&ConnSet::all()), ConnSet::none());
    }

    #[test]
    fn display_reads_like_the_docs() {
        assert_eq!(ConnSet::all().to_string(), "all");
        assert_eq!(ConnSet::none().to_string(), "none");
        let mut c = ConnSet::none();
        c.add_range(Protocol::Tcp, 80, 81);
        c.add_range(Protocol::Tcp, 443, 443);
        c.add_range(Protocol::Sctp, 1, 65535);
        assert_eq!(c.to_string(), "TCP 80-81,443, SCTP all ports");
    }
}
