//! Palisade's engine: the one decision procedure.
//!
//! Decides: whether a flow is allowed, and why, under Kubernetes
//! NetworkPolicy semantics. Everything else (analyzer, dataplane, lab)
//! prints or compiles its decisions. Costs: endpoints with identical
//! namespace, labels and ports share an identity and compile once; each
//! distinct selector is evaluated once and then updated per identity change,
//! so a label change costs work proportional to what it touches. Pure: no
//! I/O, no clock, no Linux.

pub mod bitset;
pub mod connset;
pub mod diff;
pub mod engine;
pub mod explain;
pub mod external;
pub mod identity;
pub mod lint;
pub mod matrix;
pub mod selector;
mod slots;
pub mod verdict;

pub use bitset::BitSet;
pub use connset::{ConnSet, PortRanges};
pub use engine::{
    AllowEntry, Changes, CompiledIdentity, DirectionPolicy, EndpointId, Engine, PeerMatch, PolicyId, PortMatch,
    RuleOrigin,
};
pub use explain::Explanation;
pub use external::ExternalRange;
pub use identity::{Identity, IdentityId};
pub use matrix::{GroupRow, Matrix};
pub use selector::SelectorId;
pub use verdict::{Flow, FlowEnd, SideVerdict, Verdict};
