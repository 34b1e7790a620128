//! Named network namespaces (`ip netns`, bind-mounted in /run/netns), and
//! running code inside one from this process.
//!
//! Sockets keep the namespace they were created in, so [`Netns::enter`]
//! only needs to hold the calling thread in the namespace while sockets are
//! created; traffic then flows from any thread, never from the root
//! namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nix::sched::{setns, CloneFlags};

const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Command { command: String, stderr: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetnsError {
    let what = what.into();
    move |source| NetnsError::Io { what, source }
}

/// The namespace this process started in, to come back to.
fn home() -> &'static File {
    static HOME: OnceLock<File> = OnceLock::new();
    HOME.get_or_init(|| {
        // Opened before any thread of ours moves elsewhere: the first call
        // comes from `Netns::enter` on a thread still at home.
        File::open("/proc/thread-self/ns/net").expect("/proc/thread-self/ns/net is readable")
    })
}

/// A named network namespace (in /run/netns), or one given by an absolute
/// path (`/proc/<pid>/ns/net`, a CNI runtime's `CNI_NETNS`). Dropping it
/// does not delete it: owners do (see [`OwnedNetns`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn named(name: &str) -> Netns {
        Netns { name: name.to_string() }
    }

    pub fn path(&self) -> PathBuf {
        if self.is_path() {
            PathBuf::from(&self.name)
        } else {
            Path::new(NETNS_DIR).join(&self.name)
        }
    }

    /// Given by path rather than by name: `ip -n` and `ip netns exec` do
    /// not take those, so commands run from a thread inside it instead.
    fn is_path(&self) -> bool {
        self.name.starts_with('/')
    }

    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Creates it with loopback up.
    pub fn create(name: &str) -> Result<Netns, NetnsError> {
        run("ip", &["netns", "add", name], None)?;
        let ns = Netns::named(name);
        ns.ip_batch("link set lo up\n")?;
        Ok(ns)
    }

    pub fn delete(&self) -> Result<(), NetnsError> {
        if !self.exists() {
            return Ok(());
        }
        run("ip", &["netns", "delete", &self.name], None).map(|_| ())
    }

    /// Runs `f` on this thread inside the namespace, then comes back, also
    /// if `f` panics.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let home = home();
        let target = File::open(self.path()).map_err(io_err(format!("open netns {}", self.name)))?;
        // Already there (an agent in its node's namespace): no setns, which
        // would need CAP_SYS_ADMIN even to stay where we are.
        let here = std::fs::metadata("/proc/thread-self/ns/net").ok();
        let there = target.metadata().ok();
        if let (Some(here), Some(there)) = (here, there) {
            use std::os::unix::fs::MetadataExt;
            if (here.dev(), here.ino()) == (there.dev(), there.ino()) {
                return Ok(f());
            }
        }
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetnsError::Io { what: format!("enter netns {}", self.name), source: e.into() })?;
        struct Back(&'static File);
        impl Drop for Back {
            fn drop(&mut self) {
                setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET).expect("return to the original network namespace");
            }
        }
        let _back = Back(home);
        Ok(f())
    }

    /// Writes a sysctl of this namespace (`net.ipv4.ip_forward` -> /proc/sys/net/ipv4/ip_forward).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))?.map_err(io_err(format!("{}: write {path}", self.name)))
    }

    /// Runs `ip -n NAME -batch -` with one command per line: one process
    /// for any number of links, addresses and routes.
    pub fn ip_batch(&self, script: &str) -> Result<(), NetnsError> {
        if script.trim().is_empty() {
            return Ok(());
        }
        if self.is_path() {
            // A child process starts in the network namespace of the thread
            // that forks it.
            return self.enter(|| run("ip", &["-batch", "-"], Some(script)))?.map(|_| ());
        }
        run("ip", &["-n", &self.name, "-batch", "-"], Some(script)).map(|_| ())
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetnsError> {
        if self.is_path() {
            return self.enter(|| run(program, args, stdin))?;
        }
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run("ip", &full, stdin)
    }
}

/// Namespaces whose names start with `prefix`.
pub fn list(prefix: &str) -> Vec<Netns> {
    let mut out: Vec<Netns> = std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .map(|n| Netns::named(&n))
        .collect();
    out.sort();
    out
}

/// Runs a program; stdout on success, stderr in the error.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetnsError> {
    use std::io::Write;
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(resolve(program))
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("cannot run {program}")))?;
    if let Some(input) = stdin {
        child.stdin.take().expect("piped").write_all(input.as_bytes()).map_err(io_err(command.clone()))?;
    }
    let out = child.wait_with_output().map_err(io_err(command.clone()))?;
    if !out.status.success() {
        return Err(NetnsError::Command { command, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where `program` is: found on PATH, else in the system directories. A
/// CNI runtime may start the plugin with an empty environment, and `tc`,
/// `nft` and `conntrack` live in sbin, which no default search path has.
fn resolve(program: &str) -> std::path::PathBuf {
    if program.contains('/') {
        return program.into();
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let system = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(system)
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| program.into())
}

/// A namespace deleted when dropped (tests, the lab).
#[derive(Debug)]
pub struct OwnedNetns(pub Netns);

impl OwnedNetns {
    pub fn create(name: &str) -> Result<OwnedNetns, NetnsError> {
        Netns::create(name).map(OwnedNetns)
    }
}

impl std::ops::Deref for OwnedNetns {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.0
    }
}

impl Drop for OwnedNetns {
    fn drop(&mut self) {
        let _ = self.0.delete();
    }
}
