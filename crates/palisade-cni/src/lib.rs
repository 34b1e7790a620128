//! Palisade's CNI plugin (spec 1.1.0, results for 0.3.0 to 1.1.0).
//!
//! - `protocol`: versions, results and their conversion, errors with the
//!   spec's codes.
//! - `ipam`: per-node address allocation on disk, safe under concurrent
//!   invocations.
//!
//! - `plugin`: the commands (ADD, DEL, CHECK, GC, STATUS, VERSION). ADD
//!   fails closed: it succeeds only when the node agent confirms the pod's
//!   policy is in the kernel.

pub mod ipam;
pub mod plugin;
pub mod protocol;
