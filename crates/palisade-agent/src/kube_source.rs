//! The `kube` source: kube-runtime watchers on Pods, Namespaces,
//! NetworkPolicies and Nodes (the standard list and watch calls, nothing
//! else), turned into object updates as the `dir` source makes them. Each
//! watch event is read on arrival through the same parsers and checks as
//! manifest files, so a change costs one object, not a cluster. An object
//! that cannot be read stands as its stand-ins (fails closed where it
//! could have had an effect); the rest keeps converging.
//!
//! Recovery is prompt: after any watch failure (a `410 Gone` included) a
//! new watcher lists again, after a backoff capped at 1 s (kube's default
//! grows to 30 s, which delayed the re-list after an API server restart by
//! half a minute), and a list deletes what it no longer holds. From a
//! failure until that list, the source says its view is stale.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use palisade_model::load::Located;
use palisade_model::{parse_values, Cluster, ObjectRef};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::ledger::{Ledger, Reading};
use crate::source::{Source, SourceError, Update};

/// One object as a watch event left it: read, unreadable (why), or gone.
type Delta = (ObjectRef, Option<Result<Located, String>>);

const KINDS: [&str; 4] = ["Pod", "Namespace", "NetworkPolicy", "Node"];

/// What the watch tasks share with the agent's loop.
#[derive(Default)]
struct Shared {
    deltas: Mutex<Vec<Delta>>,
    /// Per kind: the initial list is complete.
    ready: [AtomicBool; 4],
    /// Per kind: the watch failed (why, since when) and has not listed
    /// again since.
    failing: [Mutex<Option<(String, Instant)>>; 4],
}

pub struct KubeSource {
    shared: Arc<Shared>,
    /// Until the first complete state: every object read so far.
    initial: Option<HashMap<ObjectRef, Result<Located, String>>>,
    ledger: Ledger,
    updates: u64,
    digest: Option<String>,
    _runtime: Option<tokio::runtime::Runtime>,
}

/// Exponential from 100 ms to at most 1 s, with jitter: a watch that
/// failed is retried within a second of the API server coming back.
struct PromptBackoff {
    next: Duration,
    seed: u64,
}

impl PromptBackoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Self {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        PromptBackoff { next: Self::FIRST, seed: (seed as u64) | 1 }
    }
}

impl Iterator for PromptBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        // Up to a quarter less, so that many nodes do not retry in step.
        let jitter = self.next.mul_f64((self.seed % 1000) as f64 / 4000.0);
        let delay = self.next - jitter;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

impl Backoff for PromptBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Reads one object as the API server sent it.
fn read<K>(object: &K) -> Delta
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let kind = K::kind(&());
    let meta = object.meta();
    let name = meta.name.clone().unwrap_or_default();
    let object_ref = ObjectRef { kind: kind.to_string(), namespace: meta.namespace.clone(), name };
    let source = format!(
        "kube:{kind}/{}{}",
        meta.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default(),
        object_ref.name
    );
    let mut value = match serde_json::to_value(object) {
        Ok(v) => v,
        Err(e) => return (object_ref, Some(Err(format!("{source}: {e}")))),
    };
    // Listed objects carry no kind; the readers dispatch on it.
    value["kind"] = Value::from(kind.as_ref());
    value["apiVersion"] = Value::from(K::api_version(&()).as_ref());
    // Finished pods (Succeeded, Failed) are left out by the model's reader,
    // and `per_pod` makes each pod its own endpoint, as for every source.
    let mut manifests = parse_values(vec![(source, value)]).per_pod();
    let reading = match (manifests.objects.pop(), manifests.problems.is_empty()) {
        (_, false) => Some(Err(manifests.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))),
        (Some(located), true) => Some(Ok(located)),
        (None, true) => None,
    };
    (object_ref, reading)
}

/// Watches one kind, sending every object's reading as it changes.
async fn watch<K>(api: Api<K>, kind: usize, shared: Arc<Shared>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug + Send + Sync + 'static,
{
    // What the last complete list and the events since hold.
    let mut known: HashSet<ObjectRef> = HashSet::new();
    let mut backoff = PromptBackoff::new();
    loop {
        // A fresh watcher lists first. After any failure the agent starts
        // one: only a list proves the view current again (a resumed watch
        // in a quiet cluster would say nothing, and the view would read
        // stale for hours).
        let mut stream = std::pin::pin!(watcher(api.clone(), watcher::Config::default()));
        // During a list: what it holds so far.
        let mut listing: Option<HashSet<ObjectRef>> = None;
        while let Some(event) = stream.next().await {
            let mut deltas = Vec::new();
            match event {
                Ok(watcher::Event::Init) => listing = Some(HashSet::new()),
                Ok(watcher::Event::InitApply(object)) => {
                    let delta = read(&object);
                    listing.get_or_insert_with(HashSet::new).insert(delta.0.clone());
                    deltas.push(delta);
                }
                Ok(watcher::Event::InitDone) => {
                    let listed = listing.take().unwrap_or_default();
                    // Deleted while the watch was down: the list is the truth.
                    deltas.extend(known.difference(&listed).map(|r| (r.clone(), None)));
                    known = listed;
                    shared.ready[kind].store(true, Ordering::SeqCst);
                    *shared.failing[kind].lock().expect("lock") = None;
                    backoff.reset();
                }
                Ok(watcher::Event::Apply(object)) => {
                    let delta = read(&object);
                    known.insert(delta.0.clone());
                    deltas.push(delta);
                }
                Ok(watcher::Event::Delete(object)) => {
                    let (object_ref, _) = read(&object);
                    known.remove(&object_ref);
                    deltas.push((object_ref, None));
                }
                // Stale until a new watcher has listed again (a 410 Gone
                // included: its list is that one).
                Err(e) => {
                    let mut failing = shared.failing[kind].lock().expect("lock");
                    let since = failing.as_ref().map_or_else(Instant::now, |f| f.1);
                    *failing = Some((format!("watching {}s: {e}", KINDS[kind]), since));
                    break;
                }
            }
            if !deltas.is_empty() {
                shared.deltas.lock().expect("lock").extend(deltas);
            }
        }
        tokio::time::sleep(backoff.next().unwrap_or(PromptBackoff::MAX)).await;
    }
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
        runtime.spawn(watch(Api::<Pod>::all(client.clone()), 0, shared.clone()));
        runtime.spawn(watch(Api::<Namespace>::all(client.clone()), 1, shared.clone()));
        runtime.spawn(watch(Api::<NetworkPolicy>::all(client.clone()), 2, shared.clone()));
        runtime.spawn(watch(Api::<Node>::all(client), 3, shared.clone()));
        KubeSource {
            shared,
            initial: Some(HashMap::new()),
            ledger: Ledger::default(),
            updates: 0,
            digest: None,
            _runtime: None,
        }
    }

    /// Every kind has been listed once.
    pub fn ready(&self) -> bool {
        self.shared.ready.iter().all(|r| r.load(Ordering::SeqCst))
    }

    /// Why the view may be behind the API server, and since when: a watch
    /// is failing or has not listed again since it failed.
    pub fn stale(&self) -> Option<(String, Instant)> {
        let failing: Vec<(String, Instant)> =
            self.shared.failing.iter().filter_map(|f| f.lock().expect("lock").clone()).collect();
        let since = failing.iter().map(|f| f.1).min()?;
        let why: Vec<String> = failing.into_iter().map(|f| f.0).collect();
        Some((why.join("; "), since))
    }
}

impl Source for KubeSource {
    fn poll(&mut self) -> Result<Option<Update>, SourceError> {
        let deltas = std::mem::take(&mut *self.shared.deltas.lock().expect("lock"));
        if let Some(initial) = &mut self.initial {
            for (object_ref, reading) in deltas {
                match reading {
                    Some(r) => initial.insert(object_ref, r),
                    None => initial.remove(&object_ref),
                };
            }
            if !self.ready() {
                return Ok(None);
            }
            let initial = self.initial.take().expect("checked");
            let mut refs: Vec<&ObjectRef> = initial.keys().collect();
            refs.sort();
            let readings = refs.into_iter().map(|r| {
                let reading = match &initial[r] {
                    Ok(located) => Reading::Readable(located),
                    Err(why) => Reading::Unreadable(why),
                };
                (r, reading)
            });
            let (cluster, _, _) = Cluster::assemble(self.ledger.full(readings));
            self.updates += 1;
            self.digest = Some(format!("kube-{}", self.updates));
            return Ok(Some(Update::Full(cluster)));
        }
        if deltas.is_empty() {
            return Ok(None);
        }
        // The last reading of each object counts.
        let last: BTreeMap<ObjectRef, Option<Result<Located, String>>> = deltas.into_iter().collect();
        let (mut upserts, mut deletes) = (Vec::new(), Vec::new());
        for (object_ref, reading) in &last {
            let reading = match reading {
                None => Reading::Absent,
                Some(Ok(located)) => Reading::Readable(located),
                Some(Err(why)) => Reading::Unreadable(why),
            };
            self.ledger.change(object_ref, reading, &mut upserts, &mut deletes);
        }
        self.updates += 1;
        self.digest = Some(format!("kube-{}", self.updates));
        Ok(Some(Update::Objects { upserts, deletes }))
    }

    fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    fn unreadable(&self) -> &BTreeMap<ObjectRef, String> {
        self.ledger.unreadable()
    }

    fn stale(&self) -> Option<(String, Instant)> {
        KubeSource::stale(self)
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
