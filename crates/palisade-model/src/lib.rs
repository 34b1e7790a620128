//! Palisade's model: the Kubernetes objects it reads, validated once at the
//! edge into types that are always valid inside.
//!
//! Decides: what an object means after the API server's defaulting (policy
//! types, protocols, namespaces), and whether it is valid by the API server's
//! rules. Costs: one pass over the input; errors name the file, the document,
//! the object and the field path. No decision about traffic is made here.

pub mod cluster;
pub mod endpoint;
pub mod field;
pub mod labels;
pub mod load;
pub mod names;
pub mod objects;
pub mod policy;
pub mod render;
pub mod replicas;
pub mod stand_in;

pub use cluster::{Cluster, Notice};
pub use endpoint::{ContainerPort, Endpoint, EndpointKey};
pub use field::{FieldError, FieldPath};
pub use labels::{LabelSelector, Labels, Requirement};
pub use load::{parse_sources, parse_values, read_paths, Location, Manifests, ObjectRef, Problem, Source};
pub use objects::{Namespace, Node, Service, NAMESPACE_NAME_LABEL};
pub use policy::{
    Direction, IpBlock, NamespaceScope, NetworkPolicy, Peer, PeerSelector, PolicyPort, PortSpec, Protocol, Rule,
};
pub use replicas::Visibility;
