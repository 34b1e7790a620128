//! The few bpf(2) calls the sender check needs: load a tc program, attach
//! it to a device's tcx ingress, list, name and detach what is attached.
//! This is the workspace's one module with `unsafe` (STYLE.md): the kernel
//! takes these requests as raw structs with pointers. The attach is the
//! plain one, not a bpf link: it lasts after the process exits, like a tc
//! filter, where a link would have to be pinned in bpffs and its pin
//! cleaned up when the pod goes.
//!
//! Every call works on the network namespace of the calling thread.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_ATTACH: i64 = 8;
const BPF_PROG_DETACH: i64 = 9;
const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_PROG_QUERY: i64 = 16;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
/// Attach in front of every program already there.
const BPF_F_BEFORE: u32 = 1 << 3;
/// `union bpf_attr` is larger; the kernel zero-checks what we leave out.
const ATTR_SIZE: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("no device {0:?} in this network namespace")]
    NoDevice(String),
    #[error("the kernel refused to load the program: {source}; verifier: {log}")]
    Load { source: std::io::Error, log: String },
    #[error("{what} on {dev}: {source}")]
    Call { what: &'static str, dev: String, source: std::io::Error },
    #[error("{dev} has {programs} tcx programs and their names cannot be read without CAP_SYS_ADMIN: which is the sender check is unknown")]
    Unverifiable { dev: String, programs: usize },
}

/// One program attached to a device: its kernel id and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub id: u32,
    /// `None`: not readable here (opening a program by id needs
    /// CAP_SYS_ADMIN, which the agent does not have).
    pub name: Option<String>,
}

fn put_u32(attr: &mut [u8; ATTR_SIZE], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; ATTR_SIZE], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// bpf(cmd, attr): the returned value, or the error.
fn bpf(cmd: i64, attr: &mut [u8; ATTR_SIZE]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a live, writable buffer of ATTR_SIZE bytes, and
    // every pointer the caller put in it refers to a buffer that outlives
    // this call (the kernel only reads or fills them during it).
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), ATTR_SIZE) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret)
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us; nothing else
    // owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

pub(crate) fn ifindex(dev: &str) -> Result<u32, BpfError> {
    let name = CString::new(dev).map_err(|_| BpfError::NoDevice(dev.into()))?;
    nix::net::if_::if_nametoindex(name.as_c_str()).map_err(|_| BpfError::NoDevice(dev.into()))
}

/// Loads a tc (`sched_cls`) program of eBPF instructions, each 8 bytes as
/// the kernel lays them out, under `name` (at most 15 bytes). Without a
/// verifier log first (a large program's log overflows any buffer), and
/// again with one only to explain a refusal.
pub fn load(name: &str, insns: &[u8]) -> Result<OwnedFd, BpfError> {
    let license = c"GPL";
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = [0u8; ATTR_SIZE];
        put_u32(&mut attr, 0, BPF_PROG_TYPE_SCHED_CLS);
        put_u32(&mut attr, 4, (insns.len() / 8) as u32);
        put_u64(&mut attr, 8, insns.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        if let Some(log) = log {
            put_u32(&mut attr, 24, 1); // log_level
            put_u32(&mut attr, 28, log.len() as u32);
            put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
        }
        let n = name.len().min(15);
        attr[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
        bpf(BPF_PROG_LOAD, &mut attr).map(owned)
    };
    attempt(None).map_err(|source| {
        let mut log = vec![0u8; 256 * 1024];
        let _ = attempt(Some(&mut log));
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        // The end of the log says why.
        let text = String::from_utf8_lossy(&log[..end]);
        let tail: String =
            text.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("; ");
        BpfError::Load { source, log: tail }
    })
}

/// Attaches `prog` to the tcx ingress of `dev`, in front of what is there.
/// Without a link: it stays until detached or the device goes away.
pub fn attach_first(dev: &str, prog: &OwnedFd) -> Result<(), BpfError> {
    let mut attr = [0u8; ATTR_SIZE];
    put_u32(&mut attr, 0, ifindex(dev)?);
    put_u32(&mut attr, 4, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 8, BPF_TCX_INGRESS);
    put_u32(&mut attr, 12, BPF_F_BEFORE);
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|source| BpfError::Call { what: "attach", dev: dev.into(), source })?;
    Ok(())
}

/// The programs on the tcx ingress of `dev`, first to last.
pub fn attached(dev: &str) -> Result<Vec<Attached>, BpfError> {
    let call = |what| move |source| BpfError::Call { what, dev: dev.into(), source };
    let index = ifindex(dev)?;
    let mut ids = [0u32; 64];
    let mut attr = [0u8; ATTR_SIZE];
    put_u32(&mut attr, 0, index);
    put_u32(&mut attr, 4, BPF_TCX_INGRESS);
    put_u64(&mut attr, 16, ids.as_mut_ptr() as u64);
    put_u32(&mut attr, 24, ids.len() as u32);
    bpf(BPF_PROG_QUERY, &mut attr).map_err(call("query"))?;
    let count = u32::from_ne_bytes(attr[24..28].try_into().expect("4 bytes")) as usize;
    let mut out = Vec::new();
    for id in ids.iter().take(count.min(ids.len())) {
        let name = match prog_fd(*id) {
            Ok(fd) => Some(prog_name(&fd).map_err(call("program info"))?),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => None,
            Err(e) => return Err(call("open program")(e)),
        };
        out.push(Attached { id: *id, name });
    }
    Ok(out)
}

/// Detaches the program `id` from the tcx ingress of `dev`.
pub fn detach(dev: &str, id: u32) -> Result<(), BpfError> {
    let call = |what| move |source| BpfError::Call { what, dev: dev.into(), source };
    let fd = prog_fd(id).map_err(call("open program"))?;
    let mut attr = [0u8; ATTR_SIZE];
    put_u32(&mut attr, 0, ifindex(dev)?);
    put_u32(&mut attr, 4, fd.as_raw_fd() as u32);
    put_u32(&mut attr, 8, BPF_TCX_INGRESS);
    bpf(BPF_PROG_DETACH, &mut attr).map_err(call("detach"))?;
    Ok(())
}

fn prog_fd(id: u32) -> std::io::Result<OwnedFd> {
    let mut attr = [0u8; ATTR_SIZE];
    put_u32(&mut attr, 0, id);
    bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(owned)
}

fn prog_name(fd: &OwnedFd) -> std::io::Result<String> {
    // struct bpf_prog_info: the name is 16 bytes at offset 64.
    let mut info = [0u8; 256];
    let mut attr = [0u8; ATTR_SIZE];
    put_u32(&mut attr, 0, fd.as_raw_fd() as u32);
    put_u32(&mut attr, 4, info.len() as u32);
    put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let name = &info[64..80];
    let end = name.iter().position(|b| *b == 0).unwrap_or(16);
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}
