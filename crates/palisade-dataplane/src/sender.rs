//! The sender check on a pod's veth: a packet the pod sends must carry one
//! of the pod's own addresses. It runs on every packet, so it lives where
//! it costs least: a classic BPF program in direct-action mode on the node
//! side's tc ingress hook (cls_bpf; the kernel translates and JITs it),
//! attached when the pod is wired, gone with the veth. The forward chain
//! keeps the same check (`from_pod`) for packets that open a connection.
//!
//! The program, for IPv4 addresses A and IPv6 addresses B:
//! - ARP passes (the pod resolves its gateway);
//! - any other non-IP frame drops: a frame with two VLAN tags reaches tc
//!   with the outer one removed and 0x8100 in place of the EtherType, and
//!   the kernel would route the IP packet inside once the tags are gone;
//! - IPv4: source in A, or dropped;
//! - IPv6: source in B, link-local (`fe80::/10`, neighbour discovery) or
//!   unspecified (`::`, duplicate address detection), or dropped.
//!
//! A frame too short for a load ends the program with 0, which is "pass":
//! such a frame has no complete IP header, and the IP layer drops it.
//!
//! At tc ingress, cls_bpf runs the program with the frame's Ethernet header
//! in place: the EtherType is at byte 12, the IPv4 source at 26, the IPv6
//! source at 22..38. An outer VLAN tag has already been removed by then
//! (a single priority tag therefore shows the real EtherType).

use std::net::IpAddr;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const LD_H_ABS: u16 = 0x28;
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JA: u16 = 0x05;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;
/// tc verdicts in direct-action mode.
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

fn op(code: u16, k: u32) -> Insn {
    Insn { code, jt: 0, jf: 0, k }
}

/// `A == k`: on to the next instruction, else skip `skip` instructions.
fn jeq_else_skip(k: u32, skip: u8) -> Insn {
    Insn { code: JEQ_K, jt: 0, jf: skip, k }
}

/// The program for a pod with addresses `ips` (in any order: the program
/// is the same). Conditional jumps are all short (the next instruction or
/// the end of a small block) and long ones are `ja`, so any number of
/// addresses fits.
pub fn program(ips: &[IpAddr]) -> Vec<Insn> {
    let mut ips = ips.to_vec();
    ips.sort();
    ips.dedup();
    let v4: Vec<u32> = ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(u32::from(*v4)),
            IpAddr::V6(_) => None,
        })
        .collect();
    // `::` first (duplicate address detection), then the pod's own.
    let mut v6: Vec<[u32; 4]> = vec![[0; 4]];
    v6.extend(ips.iter().filter_map(|ip| match ip {
        IpAddr::V6(v6) => {
            let o = v6.octets();
            Some(std::array::from_fn(|i| u32::from_be_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])))
        }
        IpAddr::V4(_) => None,
    }));

    // Dispatch on the EtherType. Anything but ARP, IPv4 and IPv6 is
    // dropped: a second VLAN tag (0x8100, 0x88a8) would hide an IP packet
    // the kernel still routes once the tags are gone.
    let v4_len = 1 + 2 * v4.len() + 1;
    let mut code = vec![
        op(LD_H_ABS, 12),
        jeq_else_skip(0x0806, 1),
        op(RET_K, TC_ACT_OK),
        jeq_else_skip(0x0800, 1),
        op(JA, 3), // to the IPv4 block, after the next three
        jeq_else_skip(0x86dd, 1),
        op(JA, v4_len as u32 + 1), // over the drop and the IPv4 block
        op(RET_K, TC_ACT_SHOT),
    ];
    // IPv4: each address, then drop.
    code.push(op(LD_W_ABS, 26));
    for a in &v4 {
        code.push(jeq_else_skip(*a, 1));
        code.push(op(RET_K, TC_ACT_OK));
    }
    code.push(op(RET_K, TC_ACT_SHOT));
    // IPv6: link-local passes, then each address, then drop.
    code.extend([op(LD_W_ABS, 22), op(AND_K, 0xffc0_0000), jeq_else_skip(0xfe80_0000, 1), op(RET_K, TC_ACT_OK)]);
    for w in &v6 {
        // Four words, each a load and a compare that skips to the next block.
        for (i, word) in w.iter().enumerate() {
            code.push(op(LD_W_ABS, 22 + 4 * i as u32));
            code.push(jeq_else_skip(*word, (8 - 2 * i - 2 + 1) as u8));
        }
        code.push(op(RET_K, TC_ACT_OK));
    }
    code.push(op(RET_K, TC_ACT_SHOT));
    code
}

/// The program as tc's `bytecode` argument: `N,code jt jf k,...`.
pub fn tc_bytecode(insns: &[Insn]) -> String {
    let mut s = insns.len().to_string();
    for i in insns {
        s.push_str(&format!(",{} {} {} {}", i.code, i.jt, i.jf, i.k));
    }
    s
}

/// The tc ingress filter's identity on a pod veth: preference 1, handle 1.
/// Fixed, so that `replace` is idempotent and `del` needs no lookup.
const FILTER: &str = "ingress pref 1 handle 1 protocol all";

/// A `tc -batch` script attaching the sender check to `dev` (a pod's node
/// side) for addresses `ips`; idempotent. The `ingress` qdisc, not
/// `clsact`: clsact also hooks the veth's egress (packets to the pod),
/// which costs every packet to the pod a pass through an empty classifier
/// (`palisade bench dataplane --paired --part checks`: new connections on
/// one node at 0.970 of the floor with clsact, 0.983 with ingress).
pub fn attach_script(dev: &str, ips: &[IpAddr]) -> String {
    format!(
        "qdisc replace dev {dev} ingress\nfilter replace dev {dev} {FILTER} bpf da bytecode \"{}\"\n",
        tc_bytecode(&program(ips))
    )
}

/// A `tc -batch` line removing the sender check from `dev`, and its tc
/// hook with it (run with `-force`: a missing one is not an error). Only
/// for measuring without it: a pod's veth never loses its check.
pub fn detach_script(dev: &str) -> String {
    format!("qdisc del dev {dev} ingress\n")
}

/// Whether `tc filter show dev X ingress` output has our check, for
/// exactly the addresses `ips`.
pub fn is_attached(tc_show: &str, ips: &[IpAddr]) -> bool {
    let code = format!("bytecode '{}'", tc_bytecode(&program(ips)));
    tc_show.lines().any(|l| l.contains("pref 1 bpf") && l.contains("handle 0x1 direct-action") && l.contains(&code))
}

/// Runs the program on a frame, as the kernel does: the verdict.
#[cfg(test)]
fn run(insns: &[Insn], frame: &[u8]) -> u32 {
    let (mut a, mut pc) = (0u32, 0usize);
    let load = |off: u32, n: usize| -> Option<u32> {
        let off = off as usize;
        let bytes = frame.get(off..off + n)?;
        Some(bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
    };
    loop {
        let i = insns[pc];
        match i.code {
            LD_H_ABS => match load(i.k, 2) {
                Some(v) => a = v,
                None => return 0,
            },
            LD_W_ABS => match load(i.k, 4) {
                Some(v) => a = v,
                None => return 0,
            },
            AND_K => a &= i.k,
            JA => pc += i.k as usize,
            JEQ_K => {
                pc += usize::from(if a == i.k { i.jt } else { i.jf });
            }
            RET_K => return i.k,
            other => panic!("unknown opcode {other:#x}"),
        }
        pc += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ethertype: u16, src: IpAddr) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        match src {
            IpAddr::V4(v4) => {
                let mut ip = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0];
                ip.extend(v4.octets());
                ip.extend([10, 0, 0, 1]);
                f.extend(ip);
            }
            IpAddr::V6(v6) => {
                let mut ip = vec![0x60, 0, 0, 0, 0, 0, 17, 64];
                ip.extend(v6.octets());
                ip.extend([0u8; 16]);
                f.extend(ip);
            }
        }
        f
    }

    fn verdict(ips: &[&str], ethertype: u16, src: &str) -> u32 {
        let ips: Vec<IpAddr> = ips.iter().map(|s| s.parse().unwrap()).collect();
        run(&program(&ips), &frame(ethertype, src.parse().unwrap()))
    }

    #[test]
    fn own_addresses_pass_and_others_drop() {
        let pod = ["10.250.0.10", "10.250.0.11", "fd00::a", "fd00::b"];
        for own in pod {
            let ethertype = if own.contains(':') { 0x86dd } else { 0x0800 };
            assert_eq!(verdict(&pod, ethertype, own), TC_ACT_OK, "{own}");
        }
        for other in ["10.250.0.12", "0.0.0.0", "10.250.1.10"] {
            assert_eq!(verdict(&pod, 0x0800, other), TC_ACT_SHOT, "{other}");
        }
        for other in ["fd00::c", "fd00:0:0:1::a", "fd01::a", "::1"] {
            assert_eq!(verdict(&pod, 0x86dd, other), TC_ACT_SHOT, "{other}");
        }
    }

    #[test]
    fn neighbour_discovery_and_arp_pass() {
        let pod = ["10.250.0.10", "fd00::a"];
        assert_eq!(verdict(&pod, 0x86dd, "fe80::1"), TC_ACT_OK, "link-local");
        assert_eq!(verdict(&pod, 0x86dd, "febf::1"), TC_ACT_OK, "link-local, end of fe80::/10");
        assert_eq!(verdict(&pod, 0x86dd, "fec0::1"), TC_ACT_SHOT, "site-local is not link-local");
        assert_eq!(verdict(&pod, 0x86dd, "::"), TC_ACT_OK, "duplicate address detection");
        let mut arp = frame(0x0800, "10.250.0.99".parse().unwrap());
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(run(&program(&["10.250.0.10".parse().unwrap()]), &arp), TC_ACT_OK);
    }

    #[test]
    fn other_ethertypes_drop_so_a_second_vlan_tag_hides_nothing() {
        let pod = ["10.250.0.10"];
        for ethertype in [0x8100, 0x88a8, 0x9100, 0x88cc, 0x0000] {
            assert_eq!(verdict(&pod, ethertype, "10.250.0.10"), TC_ACT_SHOT, "{ethertype:#06x}");
        }
    }

    #[test]
    fn any_number_of_addresses_fits() {
        let many: Vec<String> = (0..300)
            .map(|i| format!("fd00::{i:x}"))
            .chain((0..300).map(|i| format!("10.0.{}.{}", i / 256, i % 256)))
            .collect();
        let ips: Vec<&str> = many.iter().map(String::as_str).collect();
        for own in [&ips[0], &ips[299], &ips[300], &ips[599]] {
            let ethertype = if own.contains(':') { 0x86dd } else { 0x0800 };
            assert_eq!(verdict(&ips, ethertype, own), TC_ACT_OK, "{own}");
        }
        assert_eq!(verdict(&ips, 0x86dd, "fd00::1:0"), TC_ACT_SHOT);
        assert_eq!(verdict(&ips, 0x0800, "10.0.2.0"), TC_ACT_SHOT);
    }

    #[test]
    fn a_single_stack_pod_sends_nothing_of_the_other_family() {
        assert_eq!(verdict(&["10.250.0.10"], 0x86dd, "fd00::a"), TC_ACT_SHOT);
        assert_eq!(verdict(&["fd00::a"], 0x0800, "10.250.0.10"), TC_ACT_SHOT);
    }

    #[test]
    fn bytecode_is_tc_syntax() {
        let prog = program(&["10.0.0.1".parse().unwrap()]);
        let s = tc_bytecode(&prog);
        assert!(s.starts_with(&format!("{},40 0 0 12,21 0 ", prog.len())), "{s}");
        assert!(s.contains(",21 0 1 167772161,"), "the address as a constant: {s}");
    }
}
