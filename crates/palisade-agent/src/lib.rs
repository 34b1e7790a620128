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
