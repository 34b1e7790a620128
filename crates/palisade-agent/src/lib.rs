//! `palisade agent`: one per node. It reads the cluster from a state source
//! (a directory of manifests now; the Kubernetes API next), keeps the
//! node's nftables table in step through the engine and the incremental
//! compiler, and answers the CNI plugin: a pod's ADD is confirmed only once
//! its policy is in the kernel.
//!

pub mod cni_socket;
pub mod daemon;
pub mod kube_source;
pub mod ledger;
pub mod node;
pub mod ops;
pub mod source;

/// The capabilities the agent needs, and all it gets in the DaemonSet
/// (deploy/30-daemonset.yaml; the deploy test holds them equal, and the
/// lab runs its agents with exactly these): nftables, conntrack, links,
/// routes and tcx attachments need NET_ADMIN; loading the sender check's
/// BPF program needs BPF. It never enters another namespace in a cluster
/// (no SYS_ADMIN).
pub const CAPABILITIES: &[&str] = &["NET_ADMIN", "BPF"];
