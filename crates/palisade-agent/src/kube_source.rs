//! The `kube` source: kube-runtime reflectors on Pods, Namespaces,
//! NetworkPolicies and Nodes (the standard list and watch calls, nothing
//! else), turned into the same cluster states as the `dir` source. Kept
//! thin on purpose: the watcher handles bookmarks, `410 Gone` re-lists and
//! deletions of objects it never saw; this adapter only says when a
//! complete, changed state is there, and reads it through the same
//! parsers and checks as manifest files.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use palisade_model::{parse_values, Cluster};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::source::{Source, SourceError, Update};

/// What the watch tasks share with the agent's loop.
#[derive(Default)]
struct Shared {
    /// Bumped by every event of every kind.
    generation: AtomicU64,
    /// Per kind: the initial list is complete.
    ready: [AtomicBool; 4],
    /// The last watch error, until the next successful event.
    error: Mutex<Option<String>>,
}

pub struct KubeSource {
    shared: Arc<Shared>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    policies: Store<NetworkPolicy>,
    nodes: Store<Node>,
    seen: Option<u64>,
    digest: Option<String>,
    _runtime: Option<tokio::runtime::Runtime>,
}

fn watch<K>(
    api: Api<K>,
    kind: usize,
    shared: Arc<Shared>,
) -> (Store<K>, impl std::future::Future<Output = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let task = stream.for_each(move |event| {
        let shared = shared.clone();
        async move {
            match event {
                Ok(event) => {
                    if matches!(event, watcher::Event::InitDone) {
                        shared.ready[kind].store(true, Ordering::SeqCst);
                    }
                    *shared.error.lock().expect("lock") = None;
                    shared.generation.fetch_add(1, Ordering::SeqCst);
                }
                // The watcher retries with backoff; the agent keeps its
                // last good state meanwhile and reports the error.
                Err(e) => *shared.error.lock().expect("lock") = Some(e.to_string()),
            }
        }
    });
    (reader, task)
}

impl KubeSource {
    /// Connects as the kubeconfig `context` says (default: in a pod, its
    /// service account; elsewhere the current context) and starts
    /// watching, on a runtime of its own (the client's connections live
    /// there).
    pub fn connect(context: Option<&str>) -> Result<KubeSource, SourceError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| SourceError::Watch(e.to_string()))?;
        let client = runtime.block_on(client(context)).map_err(SourceError::Watch)?;
        let mut source = Self::start_on(client, runtime.handle());
        source._runtime = Some(runtime);
        Ok(source)
    }

    /// Starts watching on `runtime` (tests bring their own).
    pub fn start_on(client: Client, runtime: &tokio::runtime::Handle) -> KubeSource {
        let shared = Arc::new(Shared::default());
        let (pods, t0) = watch(Api::<Pod>::all(client.clone()), 0, shared.clone());
        let (namespaces, t1) = watch(Api::<Namespace>::all(client.clone()), 1, shared.clone());
        let (policies, t2) = watch(Api::<NetworkPolicy>::all(client.clone()), 2, shared.clone());
        let (nodes, t3) = watch(Api::<Node>::all(client), 3, shared.clone());
        runtime.spawn(t0);
        runtime.spawn(t1);
        runtime.spawn(t2);
        runtime.spawn(t3);
        KubeSource { shared, pods, namespaces, policies, nodes, seen: None, digest: None, _runtime: None }
    }

    /// Every kind has been listed once.
    pub fn ready(&self) -> bool {
        self.shared.ready.iter().all(|r| r.load(Ordering::SeqCst))
    }

    fn objects(&self) -> Vec<(String, Value)> {
        fn add<K: Serialize + Clone + Resource<DynamicType = ()>>(out: &mut Vec<(String, Value)>, store: &Store<K>) {
            for object in store.state() {
                let meta = object.meta();
                let name = match &meta.namespace {
                    Some(ns) => format!("kube:{}/{ns}/{}", K::kind(&()), meta.name.as_deref().unwrap_or("")),
                    None => format!("kube:{}/{}", K::kind(&()), meta.name.as_deref().unwrap_or("")),
                };
                if let Ok(mut value) = serde_json::to_value(&*object) {
                    // Listed objects carry no kind; the readers dispatch on it.
                    value["kind"] = Value::from(K::kind(&()).as_ref());
                    value["apiVersion"] = Value::from(K::api_version(&()).as_ref());
                    out.push((name, value));
                }
            }
        }
        let mut out = Vec::new();
        add(&mut out, &self.namespaces);
        add(&mut out, &self.nodes);
        add(&mut out, &self.policies);
        // Finished pods (Succeeded, Failed) are left out by the model's
        // reader, and `per_pod` makes each pod its own endpoint, as for
        // every source.
        add(&mut out, &self.pods);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

impl Source for KubeSource {
    fn poll(&mut self) -> Result<Option<Update>, SourceError> {
        if let Some(e) = self.shared.error.lock().expect("lock").clone() {
            return Err(SourceError::Watch(e));
        }
        if !self.ready() {
            return Ok(None);
        }
        let generation = self.shared.generation.load(Ordering::SeqCst);
        if self.seen == Some(generation) {
            return Ok(None);
        }
        self.seen = Some(generation);
        let (cluster, problems, _) = Cluster::from_manifests(parse_values(self.objects()).per_pod());
        if !problems.is_empty() {
            let text: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
            return Err(SourceError::InvalidObjects { count: problems.len(), problems: text.join("\n") });
        }
        self.digest = Some(format!("kube-{generation}"));
        Ok(Some(Update::Full(cluster)))
    }

    fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

/// A client for the kubeconfig `context` (`None`: in a pod, its service
/// account; elsewhere the kubeconfig's current context).
pub async fn client(context: Option<&str>) -> Result<Client, String> {
    let config = match context {
        Some(c) => {
            let options = kube::config::KubeConfigOptions { context: Some(c.to_string()), ..Default::default() };
            kube::Config::from_kubeconfig(&options).await.map_err(|e| e.to_string())?
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    let server = config.cluster_url.to_string();
    Client::try_from(config).map_err(|e| format!("{server}: {e}"))
}

/// One read of the cluster (a list of each kind) for the analysis tools:
/// objects as the API server returns them, pods still grouped into their
/// workloads, as manifests from a repository are. The model's reader
/// leaves finished pods out.
pub async fn list_objects(client: Client) -> Result<Vec<(String, Value)>, kube::Error> {
    use kube::api::ListParams;
    async fn all<K>(client: &Client, out: &mut Vec<(String, Value)>) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    {
        let kind = K::kind(&());
        let api_version = K::api_version(&());
        for object in Api::<K>::all(client.clone()).list(&ListParams::default()).await? {
            let meta = object.meta();
            let name = format!(
                "kube:{kind}/{}{}",
                meta.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default(),
                meta.name.as_deref().unwrap_or("")
            );
            let Ok(mut value) = serde_json::to_value(&object) else { continue };
            // List items carry no kind; the readers dispatch on it.
            value["kind"] = Value::from(kind.as_ref());
            value["apiVersion"] = Value::from(api_version.as_ref());
            out.push((name, value));
        }
        Ok(())
    }
    let mut out = Vec::new();
    all::<Namespace>(&client, &mut out).await?;
    all::<Node>(&client, &mut out).await?;
    all::<NetworkPolicy>(&client, &mut out).await?;
    all::<Pod>(&client, &mut out).await?;
    Ok(out)
}
