//! Address management for one node's pod CIDRs, on disk, safe under
//! concurrent plugin invocations (after host-local): one file per address
//! holding `<container id>\r\n<ifname>`, created exclusively, under an
//! exclusive `flock` on the network's `lock` file; a `last_reserved_ip.<i>`
//! file per range so addresses are handed out round-robin and a released
//! one is not reused at once.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no free address in {0}")]
    Exhausted(IpNet),
    #[error("{0} is too small to allocate from (a pod range needs at least 4 addresses)")]
    TooSmall(IpNet),
    #[error("the requested address {0} is in none of the ranges")]
    NotInRange(IpAddr),
    #[error("the requested address {ip} is held by {container_id}/{ifname}")]
    Taken { ip: IpAddr, container_id: String, ifname: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IpamError + '_ {
    move |source| IpamError::Io { path: path.to_path_buf(), source }
}

/// The allocations of one network on this node.
pub struct Store {
    dir: PathBuf,
}

/// One address held by an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

impl Store {
    /// The store of `network` under `data_dir` (created if missing).
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, IpamError> {
        let dir = data_dir.join(network);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Store { dir })
    }

    fn lock(&self) -> Result<Flock<File>, IpamError> {
        let path = self.dir.join("lock");
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| IpamError::Io { path, source: e.into() })
    }

    /// Every allocation, by reading the address files.
    pub fn allocations(&self) -> Result<Vec<Allocation>, IpamError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<IpAddr>().ok()) else { continue };
            let text = std::fs::read_to_string(entry.path()).map_err(io(&entry.path()))?;
            let mut lines = text.split("\r\n");
            let container_id = lines.next().unwrap_or("").trim().to_string();
            let ifname = lines.next().unwrap_or("").trim().to_string();
            out.push(Allocation { ip, container_id, ifname });
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    /// One address from each range for (`container_id`, `ifname`). The same
    /// attachment asking again gets the addresses it holds (ADD is
    /// idempotent).
    pub fn allocate(&self, container_id: &str, ifname: &str, ranges: &[IpNet]) -> Result<Vec<IpAddr>, IpamError> {
        self.allocate_requested(container_id, ifname, ranges, &[])
    }

    /// As [`allocate`](Self::allocate), but a range holding one of
    /// `requested` gives exactly that address (the CNI `ips` convention:
    /// static addresses chosen by the runtime), or fails if it is taken.
    pub fn allocate_requested(
        &self,
        container_id: &str,
        ifname: &str,
        ranges: &[IpNet],
        requested: &[IpAddr],
    ) -> Result<Vec<IpAddr>, IpamError> {
        if let Some(ip) = requested.iter().find(|ip| !ranges.iter().any(|r| r.contains(*ip))) {
            return Err(IpamError::NotInRange(*ip));
        }
        let _lock = self.lock()?;
        let held = self.held_by(container_id, ifname)?;
        let mut out = Vec::new();
        let mut taken_now = Vec::new();
        for (i, range) in ranges.iter().enumerate() {
            let wanted = requested.iter().find(|ip| range.contains(*ip));
            if let Some(ip) = held.iter().find(|ip| range.contains(*ip) && wanted.is_none_or(|w| w == *ip)) {
                out.push(*ip);
                continue;
            }
            let reserved = match wanted {
                Some(ip) => self.reserve_exact(*ip, container_id, ifname),
                None => self.reserve(i, range, container_id, ifname),
            };
            match reserved {
                Ok(ip) => {
                    taken_now.push(ip);
                    out.push(ip);
                }
                Err(e) => {
                    // All or nothing: give back what this call took.
                    for ip in taken_now {
                        let _ = std::fs::remove_file(self.dir.join(ip.to_string()));
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    fn held_by(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        Ok(self
            .allocations()?
            .into_iter()
            .filter(|a| a.container_id == container_id && a.ifname == ifname)
            .map(|a| a.ip)
            .collect())
    }

    /// The addresses (`container_id`, `ifname`) holds.
    pub fn lookup(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let _lock = self.lock()?;
        self.held_by(container_id, ifname)
    }

    fn reserve_exact(&self, ip: IpAddr, container_id: &str, ifname: &str) -> Result<IpAddr, IpamError> {
        let path = self.dir.join(ip.to_string());
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                f.write_all(format!("{container_id}\r\n{ifname}").as_bytes()).map_err(io(&path))?;
                Ok(ip)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = self.allocations()?.into_iter().find(|a| a.ip == ip);
                let (container_id, ifname) = holder.map(|a| (a.container_id, a.ifname)).unwrap_or_default();
                Err(IpamError::Taken { ip, container_id, ifname })
            }
            Err(e) => Err(IpamError::Io { path, source: e }),
        }
    }

    fn reserve(&self, index: usize, range: &IpNet, container_id: &str, ifname: &str) -> Result<IpAddr, IpamError> {
        let (first, last) = usable(range)?;
        let last_path = self.dir.join(format!("last_reserved_ip.{index}"));
        let last_reserved = std::fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
            .map(to_u128)
            .filter(|n| (first..=last).contains(n));
        let size = last - first + 1;
        let start = last_reserved.map_or(first, |n| if n >= last { first } else { n + 1 });
        for step in 0..size {
            let n = first + (start - first + step) % size;
            let ip = from_u128(n, range.addr().is_ipv4());
            let path = self.dir.join(ip.to_string());
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(format!("{container_id}\r\n{ifname}").as_bytes()).map_err(io(&path))?;
                    std::fs::write(&last_path, ip.to_string()).map_err(io(&last_path))?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(IpamError::Io { path, source: e }),
            }
        }
        Err(IpamError::Exhausted(*range))
    }

    /// Releases what (`container_id`, `ifname`) holds; nothing held is fine.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let _lock = self.lock()?;
        let held = self.held_by(container_id, ifname)?;
        for ip in &held {
            let path = self.dir.join(ip.to_string());
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        Ok(held)
    }

    /// Releases every allocation whose attachment is not in `valid`.
    pub fn gc(&self, valid: &[(String, String)]) -> Result<Vec<Allocation>, IpamError> {
        let _lock = self.lock()?;
        let mut released = Vec::new();
        for a in self.allocations()? {
            if valid.iter().any(|(id, ifname)| *id == a.container_id && *ifname == a.ifname) {
                continue;
            }
            let path = self.dir.join(a.ip.to_string());
            std::fs::remove_file(&path).map_err(io(&path))?;
            released.push(a);
        }
        Ok(released)
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::from((n as u32).to_be_bytes())
    } else {
        IpAddr::from(n.to_be_bytes())
    }
}

/// The addresses handed out: all but the network address and the last one
/// (the IPv4 broadcast; kept free in IPv6 too, for symmetry).
fn usable(range: &IpNet) -> Result<(u128, u128), IpamError> {
    let (network, broadcast) = (to_u128(range.network()), to_u128(range.broadcast()));
    if broadcast - network < 3 {
        return Err(IpamError::TooSmall(*range));
    }
    Ok((network + 1, broadcast - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(tag: &str) -> (Store, PathBuf) {
        let dir = std::env::temp_dir().join(format!("palisade-ipam-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (Store::open(&dir, "net").unwrap(), dir)
    }

    #[test]
    fn allocates_idempotently_round_robin_and_releases() {
        let (s, dir) = store("basic");
        let ranges: Vec<IpNet> = vec!["10.1.0.0/29".parse().unwrap(), "fd00:1::/125".parse().unwrap()];
        let a = s.allocate("c1", "eth0", &ranges).unwrap();
        assert_eq!(a, vec!["10.1.0.1".parse::<IpAddr>().unwrap(), "fd00:1::1".parse().unwrap()]);
        assert_eq!(s.allocate("c1", "eth0", &ranges).unwrap(), a, "ADD twice: same addresses");
        let b = s.allocate("c2", "eth0", &ranges).unwrap();
        assert_eq!(b[0], "10.1.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(s.release("c1", "eth0").unwrap().len(), 2);
        assert!(s.release("c1", "eth0").unwrap().is_empty(), "DEL twice is fine");
        // Round robin: the released .1 is not handed out next.
        assert_eq!(s.allocate("c3", "eth0", &ranges).unwrap()[0], "10.1.0.3".parse::<IpAddr>().unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn exhaustion_takes_nothing_and_gc_frees_the_unlisted() {
        let (s, dir) = store("full");
        let ranges: Vec<IpNet> = vec!["fd00:2::/126".parse().unwrap(), "10.2.0.0/30".parse().unwrap()];
        s.allocate("a", "eth0", &ranges).unwrap();
        s.allocate("b", "eth0", &ranges).unwrap();
        // The v6 range has room for a third, the v4 one does not: no partial allocation.
        assert!(matches!(s.allocate("c", "eth0", &ranges), Err(IpamError::Exhausted(_))));
        assert!(s.lookup("c", "eth0").unwrap().is_empty());
        let released = s.gc(&[("a".into(), "eth0".into())]).unwrap();
        assert_eq!(released.len(), 2);
        assert!(released.iter().all(|a| a.container_id == "b"));
        assert!(matches!(
            Store::open(&dir, "x").unwrap().allocate("z", "eth0", &["10.0.0.0/31".parse().unwrap()]),
            Err(IpamError::TooSmall(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn requested_addresses_are_given_exactly_or_refused() {
        let (s, dir) = store("requested");
        let ranges: Vec<IpNet> = vec!["10.4.0.0/24".parse().unwrap(), "fd00:4::/64".parse().unwrap()];
        let want: IpAddr = "10.4.0.77".parse().unwrap();
        let got = s.allocate_requested("a", "eth0", &ranges, &[want]).unwrap();
        assert_eq!(got[0], want, "the requested v4 address");
        assert_eq!(got[1], "fd00:4::1".parse::<IpAddr>().unwrap(), "the v6 range, not requested, allocates");
        assert_eq!(s.allocate_requested("a", "eth0", &ranges, &[want]).unwrap(), got, "idempotent");
        let err = s.allocate_requested("b", "eth0", &ranges, &[want]).unwrap_err();
        assert!(matches!(&err, IpamError::Taken { container_id, .. } if container_id == "a"), "{err}");
        assert!(s.lookup("b", "eth0").unwrap().is_empty(), "a refused request takes nothing");
        let outside: IpAddr = "10.9.0.1".parse().unwrap();
        assert!(matches!(s.allocate_requested("c", "eth0", &ranges, &[outside]), Err(IpamError::NotInRange(_))));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn fifty_parallel_allocations_never_share_an_address() {
        let (_, dir) = store("parallel");
        let threads: Vec<_> = (0..50)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let s = Store::open(&dir, "net").unwrap();
                    s.allocate(&format!("c{i}"), "eth0", &["10.3.0.0/24".parse().unwrap()]).unwrap()[0]
                })
            })
            .collect();
        let mut ips: Vec<IpAddr> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 50);
        let _ = std::fs::remove_dir_all(dir);
    }
}
