//! The small server in every lab pod: on each port it serves, TCP greets a
//! connection with the pod's name and then echoes, UDP answers a datagram
//! with the pod's name; SCTP INITs
//! are answered with an INIT-ACK by a raw-socket responder. Probes check
//! the name, so a reply from the wrong pod is caught.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_dataplane::netns::Netns;
use palisade_model::Protocol;
use socket2::{Domain, Socket, Type};
use tokio::io::AsyncWriteExt;

use crate::sctp;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("pod {pod}: cannot serve {what}: {source}")]
    Bind {
        pod: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Netns(#[from] palisade_dataplane::netns::NetnsError),
}

/// Stops the blocking SCTP responders when dropped; the async servers stop
/// with their runtime.
#[derive(Default)]
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Each pod's async servers, to stop one pod's (its pod is removed).
    tasks: std::collections::HashMap<String, Vec<tokio::task::AbortHandle>>,
}

impl Servers {
    /// Stops the TCP and UDP servers of pod `name` (its sockets close).
    pub fn stop(&mut self, name: &str) {
        for task in self.tasks.remove(name).unwrap_or_default() {
            task.abort();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn dual_stack(ty: Type, port: u16) -> io::Result<Socket> {
    let proto = if ty == Type::STREAM { socket2::Protocol::TCP } else { socket2::Protocol::UDP };
    let s = Socket::new(Domain::IPV6, ty, Some(proto))?;
    s.set_only_v6(false)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    if ty == Type::STREAM {
        s.listen(1024)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

impl Servers {
    /// Starts serving `ports` in `pod`'s namespace, answering with `name`.
    /// Must be called inside a tokio runtime.
    pub fn serve(&mut self, pod: &Netns, name: &str, ports: &BTreeSet<(Protocol, u16)>) -> Result<(), ServeError> {
        let bind_err = |what: String| {
            let pod = name.to_string();
            move |source| ServeError::Bind { pod, what, source }
        };
        let reply: Arc<[u8]> = Arc::from(format!("{name}\n").into_bytes());
        let mut sctp_ports = BTreeSet::new();
        for &(proto, port) in ports {
            match proto {
                Protocol::Tcp => {
                    let s = pod.enter(|| dual_stack(Type::STREAM, port))?.map_err(bind_err(format!("tcp/{port}")))?;
                    let listener =
                        tokio::net::TcpListener::from_std(s.into()).map_err(bind_err(format!("tcp/{port}")))?;
                    let reply = reply.clone();
                    let task = tokio::spawn(async move {
                        while let Ok((mut conn, _)) = listener.accept().await {
                            let reply = reply.clone();
                            // The name, then an echo of whatever the client sends until it
                            // closes: probes read one line; long-lived flows keep talking.
                            tokio::spawn(async move {
                                if conn.write_all(&reply).await.is_err() {
                                    return;
                                }
                                let (mut rd, mut wr) = conn.split();
                                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                            });
                        }
                    });
                    self.tasks.entry(name.to_string()).or_default().push(task.abort_handle());
                }
                Protocol::Udp => {
                    let s = pod.enter(|| dual_stack(Type::DGRAM, port))?.map_err(bind_err(format!("udp/{port}")))?;
                    let socket = tokio::net::UdpSocket::from_std(s.into()).map_err(bind_err(format!("udp/{port}")))?;
                    let reply = reply.clone();
                    let task = tokio::spawn(async move {
                        let mut buf = [0u8; 512];
                        while let Ok((_, from)) = socket.recv_from(&mut buf).await {
                            let _ = socket.send_to(&reply, from).await;
                        }
                    });
                    self.tasks.entry(name.to_string()).or_default().push(task.abort_handle());
                }
                Protocol::Sctp => {
                    sctp_ports.insert(port);
                }
            }
        }
        if !sctp_ports.is_empty() {
            for v4 in [true, false] {
                let s = raw_sctp_socket(pod, v4)?;
                s.set_read_timeout(Some(Duration::from_millis(100))).map_err(bind_err("sctp".into()))?;
                let stop = self.stop.clone();
                let ports = sctp_ports.clone();
                self.threads.push(std::thread::spawn(move || sctp_responder(s, v4, &ports, &stop)));
            }
        }
        Ok(())
    }
}

fn sctp_responder(socket: std::net::UdpSocket, v4: bool, ports: &BTreeSet<u16>, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    let mut tag: u32 = 0x5a5a_0001;
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
        let data = &buf[..n];
        let payload = if v4 { sctp::strip_ipv4_header(data) } else { Some(data) };
        let Some(sctp::Packet::Init { src_port, dst_port, tag: peer }) = payload.and_then(sctp::parse) else {
            continue;
        };
        if !ports.contains(&dst_port) {
            continue;
        }
        tag = tag.wrapping_mul(1_103_515_245).wrapping_add(12345) | 1;
        let _ = socket.send_to(&sctp::init_ack(dst_port, src_port, peer, tag), from);
    }
}

/// A raw SCTP socket in `ns`, used through `UdpSocket`'s datagram calls
/// (recvfrom/sendto work on any datagram-like socket, without unsafe).
pub fn raw_sctp_socket(ns: &Netns, v4: bool) -> Result<std::net::UdpSocket, ServeError> {
    let domain = if v4 { Domain::IPV4 } else { Domain::IPV6 };
    let s = ns
        .enter(|| Socket::new(domain, Type::RAW, Some(socket2::Protocol::from(sctp::PROTO))))?
        .map_err(|source| ServeError::Bind { pod: ns.name.clone(), what: "raw SCTP socket".into(), source })?;
    Ok(s.into())
}
