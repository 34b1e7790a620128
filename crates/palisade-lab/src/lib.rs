//! `palisade lab`: a real cluster network on one machine. Nodes, pods, an
//! underlay and an external host are network namespaces; pods are wired
//! like a CNI plugin wires them; each node's kernel holds the dataplane's
//! rules; probes are real TCP, UDP and SCTP packets.
//!
//! Safety: everything lives in namespaces named `pal-<run id>-*` that this
//! process created; nothing is added to the root namespace and no lab
//! address is reachable from it. Namespaces are deleted when the lab is
//! dropped, and `palisade lab down` removes leftovers of a dead run.

pub mod agents;
pub mod lab;
pub mod plan;
pub mod probe;
pub mod sctp;
pub mod server;
pub mod state;
pub mod topology;

pub use agents::AgentSetup;
pub use lab::{Lab, LabError, LabOptions, ProbeResult};
pub use plan::Plan;
