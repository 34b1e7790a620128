//! Palisade's dataplane: the engine's compiled policy for the endpoints of
//! one node, as nftables state in the node's network namespace.
//!
//! Decides nothing: it compiles the engine's decisions (see `ruleset.rs` for
//! the shape). Costs: per packet, conntrack plus one verdict-map lookup per
//! direction and one identity's rules; per change, one `nft -f` transaction
//! touching only the sets and chains that changed.

pub mod bpf;
mod chains;
pub mod conntrack;
pub mod ctnetlink;
mod incremental;
pub mod link;
pub mod netns;
pub mod nfnetlink;
mod nfobjects;
pub mod nft;
pub mod node_ready;
pub mod podnet;
pub mod rtnl;
pub mod ruleset;
pub mod sender;

pub use incremental::{ApplyError, NodeCompiler, Update};
pub use ruleset::{compile, compile_node, DenyAction, Options, Ruleset};
