//! Real probes from one pod to another: TCP connect and read the server's
//! name, UDP datagram and its answer, SCTP INIT and its INIT-ACK. Sockets
//! are created inside the source pod's namespace; every probe is bounded by
//! its timeout.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use palisade_dataplane::netns::Netns;
use palisade_model::Protocol;
use serde::Serialize;
use socket2::{Domain, Socket, Type};
use tokio::io::AsyncReadExt;

use crate::sctp;

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome", content = "detail")]
pub enum Outcome {
    /// The destination answered with its own name.
    Connected,
    /// No answer within the timeout (dropped).
    Timeout,
    /// Refused: a TCP reset or an ICMP error (rejected: every lab pod
    /// serves every probed port, so only policy refuses).
    Refused,
    /// Something else answered: a routing fault, never a policy verdict.
    WrongPeer(String),
    /// The probe itself failed locally.
    Error(String),
}

impl Outcome {
    pub fn allowed(&self) -> bool {
        matches!(self, Outcome::Connected)
    }
}

/// One probe: from a pod's namespace to an address and port.
#[derive(Debug, Clone)]
pub struct Probe {
    pub src: Netns,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    /// The name the destination answers with.
    pub expect: String,
}

fn domain(ip: &IpAddr) -> Domain {
    if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

fn socket_in(ns: &Netns, ip: &IpAddr, ty: Type, proto: socket2::Protocol) -> Result<Socket, String> {
    let s =
        ns.enter(|| Socket::new(domain(ip), ty, Some(proto))).map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    Ok(s)
}

impl Probe {
    pub async fn run(&self, timeout: Duration) -> Outcome {
        match self.protocol {
            Protocol::Tcp => self.tcp(timeout).await,
            Protocol::Udp => self.udp(timeout).await,
            Protocol::Sctp => {
                let p = self.clone();
                tokio::task::spawn_blocking(move || p.sctp(timeout))
                    .await
                    .unwrap_or_else(|e| Outcome::Error(e.to_string()))
            }
        }
    }

    fn check(&self, reply: &[u8]) -> Outcome {
        let got = String::from_utf8_lossy(reply).trim().to_string();
        if got == self.expect {
            Outcome::Connected
        } else {
            Outcome::WrongPeer(got)
        }
    }

    async fn tcp(&self, timeout: Duration) -> Outcome {
        let s = match socket_in(&self.src, &self.dst, Type::STREAM, socket2::Protocol::TCP) {
            Ok(s) => s,
            Err(e) => return Outcome::Error(e),
        };
        if let Err(e) = s.set_nonblocking(true) {
            return Outcome::Error(e.to_string());
        }
        let socket = tokio::net::TcpSocket::from_std_stream(s.into());
        let addr = SocketAddr::new(self.dst, self.port);
        let work = async {
            let mut stream = socket.connect(addr).await?;
            // The greeting line; the server would echo after it.
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while stream.read(&mut byte).await? == 1 && byte[0] != b'\n' && buf.len() < 512 {
                buf.push(byte[0]);
            }
            Ok::<_, std::io::Error>(buf)
        };
        match tokio::time::timeout(timeout, work).await {
            Err(_) => Outcome::Timeout,
            Ok(Ok(reply)) => self.check(&reply),
            Ok(Err(e)) => refused_or_error(e),
        }
    }

    async fn udp(&self, timeout: Duration) -> Outcome {
        let s = match socket_in(&self.src, &self.dst, Type::DGRAM, socket2::Protocol::UDP) {
            Ok(s) => s,
            Err(e) => return Outcome::Error(e),
        };
        if let Err(e) = s.set_nonblocking(true) {
            return Outcome::Error(e.to_string());
        }
        let socket = match tokio::net::UdpSocket::from_std(s.into()) {
            Ok(s) => s,
            Err(e) => return Outcome::Error(e.to_string()),
        };
        if let Err(e) = socket.connect(SocketAddr::new(self.dst, self.port)).await {
            return Outcome::Error(e.to_string());
        }
        // Three tries inside the timeout: a datagram may be queued behind
        // neighbour resolution.
        let tries = 3;
        let mut buf = [0u8; 512];
        for _ in 0..tries {
            if let Err(e) = socket.send(b"probe").await {
                return refused_or_error(e);
            }
            match tokio::time::timeout(timeout / tries, socket.recv(&mut buf)).await {
                Err(_) => continue,
                Ok(Ok(n)) => return self.check(&buf[..n]),
                Ok(Err(e)) => return refused_or_error(e),
            }
        }
        Outcome::Timeout
    }

    fn sctp(&self, timeout: Duration) -> Outcome {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let seed = std::process::id().wrapping_mul(2_654_435_761) ^ n.wrapping_mul(40503);
        let src_port = 32768 + (seed % 28000) as u16;
        let tag = seed | 1;
        let socket = match crate::server::raw_sctp_socket(&self.src, self.dst.is_ipv4()) {
            Ok(s) => s,
            Err(e) => return Outcome::Error(e.to_string()),
        };
        let deadline = Instant::now() + timeout;
        let dst = SocketAddr::new(self.dst, 0);
        if let Err(e) = socket.send_to(&sctp::init(src_port, self.port, tag), dst) {
            return refused_or_error(e);
        }
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Outcome::Timeout;
            }
            if socket.set_read_timeout(Some(left)).is_err() {
                return Outcome::Error("set_read_timeout".into());
            }
            let Ok((len, from)) = socket.recv_from(&mut buf) else { continue };
            if from.ip() != self.dst {
                continue;
            }
            let data = &buf[..len];
            let payload = if self.dst.is_ipv4() { sctp::strip_ipv4_header(data) } else { Some(data) };
            if let Some(sctp::Packet::InitAck { src_port: sp, dst_port: dp, vtag }) = payload.and_then(sctp::parse) {
                if sp == self.port && dp == src_port && vtag == tag {
                    return Outcome::Connected;
                }
            }
        }
    }
}

fn refused_or_error(e: std::io::Error) -> Outcome {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused | ConnectionReset | HostUnreachable | NetworkUnreachable => Outcome::Refused,
        _ => match e.raw_os_error() {
            // EHOSTUNREACH, ENETUNREACH, EACCES (ICMP admin-prohibited), EPERM
            Some(113) | Some(101) | Some(13) | Some(1) => Outcome::Refused,
            _ => Outcome::Error(e.to_string()),
        },
    }
}

/// A long-lived TCP connection from a pod (blocking, for tests of
/// established flows): connected, greeting read. Returns the stream and
/// the greeting.
pub fn connect_tcp(src: &Netns, dst: SocketAddr, timeout: Duration) -> std::io::Result<(std::net::TcpStream, String)> {
    use std::io::BufRead;
    let s = src
        .enter(|| Socket::new(domain(&dst.ip()), Type::STREAM, Some(socket2::Protocol::TCP)))
        .map_err(std::io::Error::other)??;
    s.connect_timeout(&dst.into(), timeout)?;
    let stream: std::net::TcpStream = s.into();
    stream.set_read_timeout(Some(timeout))?;
    let mut greeting = String::new();
    std::io::BufReader::new(stream.try_clone()?).read_line(&mut greeting)?;
    Ok((stream, greeting.trim().to_string()))
}

/// Sends a line on an established connection and waits for its echo.
pub fn echo(stream: &mut std::net::TcpStream, line: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut got = vec![0u8; line.len() + 1];
    stream.read_exact(&mut got)?;
    if got != format!("{line}\n").as_bytes() {
        return Err(std::io::Error::other(format!("echo mismatch: {:?}", String::from_utf8_lossy(&got))));
    }
    Ok(())
}
