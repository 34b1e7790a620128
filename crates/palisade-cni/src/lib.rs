//! Palisade's CNI plugin (spec 1.1.0, results for 0.3.0 to 1.1.0).
//!
//! - `protocol`: versions, results and their conversion, errors with the
//!   spec's codes.
//! - `ipam`: per-node address allocation on disk, safe under concurrent
//!   invocations.
//!
//! Work in progress (issue #4): the `palisade-cni` binary (ADD, DEL, CHECK,
//! GC, STATUS, VERSION) and the fail-closed handshake with the node agent
//! come next.

pub mod ipam;
pub mod protocol;
