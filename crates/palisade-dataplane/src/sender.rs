//! The sender check on a pod's veth: a packet the pod sends must carry one
//! of the pod's own addresses. It runs on every packet, so it lives where
//! it costs least: a BPF program on the node side's tcx ingress (the
//! kernel runs it before anything else sees the packet), attached when the
//! pod is wired, gone with the veth. The forward chain keeps the same
//! check (`from_pod`) for packets that open a connection.
//!
//! The program, for IPv4 addresses A and IPv6 addresses B:
//! - ARP passes (the pod resolves its gateway);
//! - any other non-IP frame drops: a frame with two VLAN tags reaches the
//!   hook with the outer one removed and 0x8100 in place of the EtherType,
//!   and the kernel would route the IP packet inside once the tags are gone;
//! - IPv4: source in A, or dropped;
//! - IPv6: source in B, link-local (`fe80::/10`, neighbour discovery) or
//!   unspecified (`::`, duplicate address detection), or dropped.
//!
//! It is written as a classic BPF program ([`program`]: small, and easy to
//! check with the interpreter in the tests) and loaded as its one-to-one
//! eBPF translation ([`ebpf`]), which the tests run against it frame by
//! frame. A frame too short for a load ends the program with 0, "pass":
//! such a frame has no complete IP header, and the IP layer drops it.
//!
//! At tcx ingress the frame's Ethernet header is in place: the EtherType
//! is at byte 12, the IPv4 source at 26, the IPv6 source at 22..38. An
//! outer VLAN tag has already been removed by then (a single priority tag
//! therefore shows the real EtherType).

use std::net::IpAddr;

use crate::bpf::{self, BpfError};
use crate::netns::{Netns, NetnsError};

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

/// The program as eBPF instructions for tcx (8 bytes each, as the kernel
/// lays them out): each classic instruction mapped to a few, with the
/// classic accumulator in r0. A classic absolute load becomes a direct
/// packet load (r7 = data, r8 = data_end) behind its own bounds check, and
/// a load past the frame ends the program with 0, as in classic BPF.
/// Direct loads, not eBPF's own `LD_ABS`: that one calls a helper per
/// load, which cost 1.3% of the request/response rate here. Compares are
/// 32-bit (`JMP32`): a 64-bit compare would sign-extend constants such as
/// 0xfe80_0000 and never match.
pub fn ebpf(insns: &[Insn]) -> Vec<u8> {
    const LDX_W: u8 = 0x61;
    const LDX_H: u8 = 0x69;
    const MOV64_X: u8 = 0xbf;
    const ADD64_K: u8 = 0x07;
    const JGT_X: u8 = 0x2d;
    const TO_BE: u8 = 0xdc;
    const MOV32_K: u8 = 0xb4;
    const JEQ32_K: u8 = 0x16;
    const EBPF_JA: u8 = 0x05;
    const EXIT: u8 = 0x95;
    /// `struct __sk_buff`: where `data` and `data_end` are.
    const SKB_DATA: i32 = 76;
    const SKB_DATA_END: i32 = 80;
    const PROLOGUE: i32 = 2;
    let size = |i: &Insn| match i.code {
        LD_H_ABS | LD_W_ABS => 5,
        JEQ_K if i.jf != 0 => 2,
        RET_K => 2,
        _ => 1,
    };
    // Where each classic instruction starts; after the last, the shared
    // "too short: pass" exit.
    let mut starts = Vec::with_capacity(insns.len() + 1);
    let mut at = PROLOGUE;
    for i in insns {
        starts.push(at);
        at += size(i);
    }
    let short_exit = at;
    let mut out = Vec::with_capacity((at as usize + 2) * 8);
    let mut emit = |code: u8, dst: u8, src: u8, off: i32, imm: u32| {
        out.push(code);
        out.push((src << 4) | dst);
        out.extend((off as i16).to_le_bytes());
        out.extend(imm.to_le_bytes());
    };
    emit(LDX_W, 7, 1, SKB_DATA, 0);
    emit(LDX_W, 8, 1, SKB_DATA_END, 0);
    for (n, i) in insns.iter().enumerate() {
        let here = starts[n];
        // A jump from the instruction at `from` to eBPF instruction `to`.
        let rel = |from: i32, to: i32| to - (from + 1);
        let classic = |k: usize| starts[k];
        match i.code {
            LD_H_ABS | LD_W_ABS => {
                let (width, load) = if i.code == LD_H_ABS { (2, LDX_H) } else { (4, LDX_W) };
                emit(MOV64_X, 2, 7, 0, 0); // r2 = data
                emit(ADD64_K, 2, 0, 0, i.k + width); // r2 += k + width
                emit(JGT_X, 2, 8, rel(here + 2, short_exit), 0); // past data_end: pass
                emit(load, 0, 7, i.k as i32, 0); // r0 = *(data + k)
                emit(TO_BE, 0, 0, 0, width * 8); // network order, as classic BPF reads it
            }
            AND_K => emit(AND_K as u8, 0, 0, 0, i.k),
            JA => emit(EBPF_JA, 0, 0, rel(here, classic(n + 1 + i.k as usize)), 0),
            JEQ_K => {
                emit(JEQ32_K, 0, 0, rel(here, classic(n + 1 + usize::from(i.jt))), i.k);
                if i.jf != 0 {
                    emit(EBPF_JA, 0, 0, rel(here + 1, classic(n + 1 + usize::from(i.jf))), 0);
                }
            }
            RET_K => {
                emit(MOV32_K, 0, 0, 0, i.k);
                emit(EXIT, 0, 0, 0, 0);
            }
            other => unreachable!("program() emits no opcode {other:#x}"),
        }
    }
    emit(MOV32_K, 0, 0, 0, TC_ACT_OK);
    emit(EXIT, 0, 0, 0, 0);
    out
}

/// Our programs' names start with this; the rest is a hash of the code,
/// so a check for other addresses has another name.
const NAME_PREFIX: &str = "palsnd_";

fn name_of(code: &[u8]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in code {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    format!("{NAME_PREFIX}{h:08x}")
}

/// Attaches the sender check for `ips` to `dev` (a pod's node side, in
/// this thread's network namespace) on its tcx ingress, then removes any
/// earlier check: the new one is in front before the old one goes, so no
/// packet ever passes unchecked. Idempotent.
///
/// tcx, not a tc filter: tc's classifier layer (cls_bpf on an `ingress`
/// or `clsact` qdisc) cost 1.5-2% of the request/response and
/// new-connection rates even with a one-instruction program; tcx runs the
/// program directly (`palisade bench dataplane --paired --part checks`).
pub fn attach(dev: &str, ips: &[IpAddr]) -> Result<(), BpfError> {
    let code = ebpf(&program(ips));
    let name = name_of(&code);
    let before = bpf::attached(dev)?;
    let ours = |p: &bpf::Attached| p.name.as_deref().is_some_and(|n| n.starts_with(NAME_PREFIX));
    if before.first().is_some_and(|p| p.name.as_deref() == Some(name.as_str()))
        && before.iter().skip(1).all(|p| !ours(p))
    {
        return Ok(());
    }
    // Without CAP_SYS_ADMIN the programs' names cannot be read: one program
    // on a pod's veth is the check its plugin attached (nothing else
    // attaches there, and a pod's addresses do not change).
    if before.iter().any(|p| p.name.is_none()) {
        return match before.len() {
            1 => Ok(()),
            n => Err(BpfError::Unverifiable { dev: dev.into(), programs: n }),
        };
    }
    let prog = bpf::load(&name, &code)?;
    bpf::attach_first(dev, &prog)?;
    for old in before.iter().filter(|p| ours(p)) {
        bpf::detach(dev, old.id)?;
    }
    Ok(())
}

/// Whether `dev` carries the check for exactly `ips`: its first tcx
/// ingress program, or (before [`promote`]) its tc filter.
pub fn is_attached(dev: &str, ips: &[IpAddr]) -> Result<bool, BpfError> {
    let name = name_of(&ebpf(&program(ips)));
    let tcx = bpf::attached(dev)?;
    if tcx.first().is_some_and(|p| p.name.as_deref() == Some(name.as_str())) {
        return Ok(true);
    }
    let ours = |p: &bpf::Attached| p.name.as_deref().is_some_and(|n| n.starts_with(NAME_PREFIX));
    Ok(!tcx.iter().any(ours) && tc_filters(dev)?.contains(&name))
}

/// The names of `dev`'s ingress tc filters (this thread's namespace).
fn tc_filters(dev: &str) -> Result<Vec<String>, BpfError> {
    let index = bpf::ifindex(dev)?;
    here().and_then(|mut rtnl| rtnl.ingress_bpf_names(index)).map_err(|e| BpfError::Call {
        what: "tc filters",
        dev: dev.into(),
        source: std::io::Error::other(e),
    })
}

fn here() -> Result<crate::rtnl::Rtnl, crate::netns::NetnsError> {
    crate::rtnl::Rtnl::open(&Netns::named("/proc/thread-self/ns/net"))
}

/// Attaches the check for `ips` to `dev` fast: as a tc filter, which
/// costs no RCU grace period (a tcx attach waits one, ~10 ms here, which
/// a pod's start need not pay). [`promote`] then moves it to tcx, where it
/// costs less per packet. Idempotent (either form counts).
pub fn attach_fast(dev: &str, ips: &[IpAddr]) -> Result<(), BpfError> {
    if is_attached(dev, ips)? {
        return Ok(());
    }
    let code = ebpf(&program(ips));
    let name = name_of(&code);
    let prog = bpf::load(&name, &code)?;
    let index = bpf::ifindex(dev)?;
    here()
        .and_then(|mut rtnl| rtnl.add_ingress_bpf(index, std::os::fd::AsRawFd::as_raw_fd(&prog), &name))
        .map_err(|e| BpfError::Call { what: "tc filter", dev: dev.into(), source: std::io::Error::other(e) })
}

/// Moves the check for `ips` to `dev`'s tcx ingress ([`attach`]), then
/// removes its tc filter: the tcx program is in place before the filter
/// goes, so no packet passes unchecked.
pub fn promote(dev: &str, ips: &[IpAddr]) -> Result<(), BpfError> {
    attach(dev, ips)?;
    let filters = tc_filters(dev)?;
    if !filters.is_empty() && filters.iter().all(|n| n.starts_with(NAME_PREFIX)) {
        remove_tc_filter(dev)?;
    }
    Ok(())
}

/// Removes `dev`'s clsact qdisc, which holds the check's tc filter.
fn remove_tc_filter(dev: &str) -> Result<(), BpfError> {
    let index = bpf::ifindex(dev)?;
    here().and_then(|mut rtnl| rtnl.delete_clsact(index)).map_err(|e| BpfError::Call {
        what: "removing the tc filter",
        dev: dev.into(),
        source: std::io::Error::other(e),
    })?;
    Ok(())
}

/// [`attach_fast`] in `ns`.
pub fn attach_fast_in(ns: &Netns, dev: &str, ips: &[IpAddr]) -> Result<(), NetnsError> {
    in_netns(ns, dev, || attach_fast(dev, ips))
}

/// [`promote`] in `ns`.
pub fn promote_in(ns: &Netns, dev: &str, ips: &[IpAddr]) -> Result<(), NetnsError> {
    in_netns(ns, dev, || promote(dev, ips))
}

/// Removes the sender check from `dev`. Only for measuring without it and
/// for tests: a pod's veth never loses its check.
pub fn detach(dev: &str) -> Result<(), BpfError> {
    if tc_filters(dev)?.iter().any(|n| n.starts_with(NAME_PREFIX)) {
        remove_tc_filter(dev)?;
    }
    for p in bpf::attached(dev)?.into_iter().filter(|p| p.name.as_deref().is_some_and(|n| n.starts_with(NAME_PREFIX))) {
        bpf::detach(dev, p.id)?;
    }
    Ok(())
}

fn in_netns<T>(ns: &Netns, dev: &str, f: impl FnOnce() -> Result<T, BpfError>) -> Result<T, NetnsError> {
    ns.enter(f)?.map_err(|e| NetnsError::Io {
        what: format!("{}: the sender check on {dev}", ns.name),
        source: std::io::Error::other(e),
    })
}

/// [`attach`] in `ns`.
pub fn attach_in(ns: &Netns, dev: &str, ips: &[IpAddr]) -> Result<(), NetnsError> {
    in_netns(ns, dev, || attach(dev, ips))
}

/// [`is_attached`] in `ns`.
pub fn is_attached_in(ns: &Netns, dev: &str, ips: &[IpAddr]) -> Result<bool, NetnsError> {
    in_netns(ns, dev, || is_attached(dev, ips))
}

/// [`detach`] in `ns`.
pub fn detach_in(ns: &Netns, dev: &str) -> Result<(), NetnsError> {
    in_netns(ns, dev, || detach(dev))
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

    /// The eBPF translation run as the kernel would, for the opcodes
    /// `ebpf` emits: r1 the context, packet pointers as frame offsets.
    fn run_ebpf(code: &[u8], frame: &[u8]) -> u32 {
        let insn = |pc: usize| {
            let b = &code[pc * 8..pc * 8 + 8];
            (
                b[0],
                b[1] & 0xf,
                b[1] >> 4,
                i16::from_le_bytes([b[2], b[3]]),
                u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            )
        };
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let (op, dst, src, off, imm) = insn(pc);
            let (dst, src) = (usize::from(dst), usize::from(src));
            pc += 1;
            let jump = |pc: usize| (pc as i64 + i64::from(off)) as usize;
            match op {
                0x61 | 0x69 if src == 1 => {
                    r[dst] = match off {
                        76 => 0,
                        80 => frame.len() as u64,
                        other => panic!("context field {other}"),
                    }
                }
                0x61 | 0x69 => {
                    assert_eq!(src, 7, "packet loads go through r7");
                    let at = (r[7] as i64 + i64::from(off)) as usize;
                    let n = if op == 0x61 { 4 } else { 2 };
                    let bytes = frame.get(at..at + n).expect("the verifier would refuse an unchecked load");
                    // The host's (little-endian) view of the bytes.
                    r[dst] = bytes.iter().rev().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                }
                0xdc => {
                    r[dst] = match imm {
                        16 => u64::from((r[dst] as u16).swap_bytes()),
                        32 => u64::from((r[dst] as u32).swap_bytes()),
                        other => panic!("be{other}"),
                    }
                }
                0xbf => r[dst] = r[src],
                0x07 => r[dst] = r[dst].wrapping_add(u64::from(imm)),
                0x2d => {
                    if r[dst] > r[src] {
                        pc = jump(pc);
                    }
                }
                0x54 => r[dst] = u64::from(r[dst] as u32 & imm),
                0xb4 => r[dst] = u64::from(imm),
                0x16 => {
                    if r[dst] as u32 == imm {
                        pc = jump(pc);
                    }
                }
                0x05 => pc = jump(pc),
                0x95 => return r[0] as u32,
                other => panic!("unexpected eBPF opcode {other:#x}"),
            }
        }
    }

    /// The classic program's verdict, checked against its eBPF translation.
    fn verdict(ips: &[&str], ethertype: u16, src: &str) -> u32 {
        let ips: Vec<IpAddr> = ips.iter().map(|s| s.parse().unwrap()).collect();
        let (prog, f) = (program(&ips), frame(ethertype, src.parse().unwrap()));
        let classic = run(&prog, &f);
        assert_eq!(run_ebpf(&ebpf(&prog), &f), classic, "eBPF and classic disagree on {src} ({ethertype:#06x})");
        for short in [0, 13, 20, 30] {
            let cut = &f[..short.min(f.len())];
            assert_eq!(run_ebpf(&ebpf(&prog), cut), run(&prog, cut), "{short}-byte frame");
        }
        classic
    }

    #[test]
    fn the_ebpf_translation_is_named_by_its_code() {
        let a = ebpf(&program(&["10.0.0.1".parse().unwrap()]));
        let b = ebpf(&program(&["10.0.0.2".parse().unwrap()]));
        assert_eq!(a.len() % 8, 0);
        assert!(name_of(&a).len() <= 15 && name_of(&a).starts_with(NAME_PREFIX));
        assert_ne!(name_of(&a), name_of(&b));
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
}
