//! A cluster described by manifests: the objects of [`Manifests`] joined
//! into namespaces, endpoints and policies, ready to feed the engine.

use std::collections::{BTreeMap, HashMap};

use crate::endpoint::{Endpoint, EndpointKey};
use crate::field::{FieldError, FieldPath};
use crate::load::{Located, Manifests, Object, ObjectRef, Problem};
use crate::objects::{Namespace, Node, Service};
use crate::policy::NetworkPolicy;
use crate::replicas::{self, Read, Visibility};

#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Namespace>,
    /// Sorted by key; replicas of one workload that agree on what policy
    /// sees merged into one endpoint.
    pub endpoints: Vec<Endpoint>,
    /// Sorted by namespace and name.
    pub policies: Vec<NetworkPolicy>,
    pub nodes: Vec<Node>,
    pub services: Vec<Service>,
}

/// Facts about the input worth telling the user that do not stop analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice(pub String);

impl Cluster {
    /// Joins parsed objects. An object declared twice is a problem (the
    /// first declaration stays); replicas of a workload are merged where
    /// they agree (see `replicas.rs`).
    pub fn assemble(objects: Vec<Located>) -> (Cluster, Vec<Problem>, Vec<Notice>) {
        let visibility = Visibility::of(&objects);
        Cluster::assemble_seeing(objects, &visibility)
    }

    /// As `assemble`, replicas told apart by what `visibility` sees (for two
    /// states compared: the union of what each one's policies see).
    pub fn assemble_seeing(objects: Vec<Located>, visibility: &Visibility) -> (Cluster, Vec<Problem>, Vec<Notice>) {
        let mut problems = Vec::new();
        let mut notices = Vec::new();
        let mut seen: HashMap<ObjectRef, crate::load::Location> = HashMap::new();
        let mut cluster = Cluster::default();
        let mut endpoints: BTreeMap<EndpointKey, Vec<Read>> = BTreeMap::new();
        for located in objects {
            if let Some(first) = seen.get(&located.object_ref) {
                problems.push(Problem::Invalid {
                    location: located.location.clone(),
                    object: located.object_ref.clone(),
                    errors: vec![FieldError {
                        path: FieldPath::root("metadata.name"),
                        reason: format!("declared twice: first at {first}"),
                    }],
                });
                continue;
            }
            seen.insert(located.object_ref.clone(), located.location.clone());
            match located.object {
                Object::Namespace(ns) => {
                    cluster.namespaces.insert(ns.name.clone(), ns);
                }
                Object::Endpoint(ep) => {
                    let top_level = ep.key.kind.as_deref() == Some(located.object_ref.kind.as_str());
                    endpoints.entry(ep.key.clone()).or_default().push(Read { endpoint: ep, top_level });
                }
                Object::NetworkPolicy(p) => cluster.policies.push(p),
                Object::Node(n) => cluster.nodes.push(n),
                Object::Service(s) => cluster.services.push(s),
            }
        }
        for (key, reads) in endpoints {
            let (eps, notice) = replicas::endpoints(&key, reads, visibility);
            cluster.endpoints.extend(eps);
            notices.extend(notice.map(Notice));
        }
        cluster.endpoints.sort_by(|a, b| a.key.cmp(&b.key));
        cluster.policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let used = cluster
            .endpoints
            .iter()
            .map(|e| e.key.namespace.clone())
            .chain(cluster.policies.iter().map(|p| p.namespace.clone()))
            .collect::<Vec<_>>();
        for ns in used {
            cluster.namespaces.entry(ns.clone()).or_insert_with(|| Namespace::implied(&ns));
        }
        (cluster, problems, notices)
    }

    /// Reads and joins manifests in one step: the common path for tools.
    pub fn from_manifests(manifests: Manifests) -> (Cluster, Vec<Problem>, Vec<Notice>) {
        let visibility = Visibility::of(&manifests.objects);
        Cluster::from_manifests_seeing(manifests, &visibility)
    }

    /// As `from_manifests`, with `assemble_seeing`.
    pub fn from_manifests_seeing(
        manifests: Manifests,
        visibility: &Visibility,
    ) -> (Cluster, Vec<Problem>, Vec<Notice>) {
        let (cluster, mut problems, notices) = Cluster::assemble_seeing(manifests.objects, visibility);
        let mut all = manifests.problems;
        all.append(&mut problems);
        (cluster, all, notices)
    }
}
