//! State sources. `DirSource` reads a directory of manifests (the embedded
//! default the lab and single-machine users run) and reports a new cluster
//! state when the files change. An object that cannot be read is named
//! with its file and field and stands in the state as its stand-ins
//! (`palisade_model::stand_in`): it fails closed where it could have had
//! an effect, and every other change goes on converging.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use palisade_model::load::Located;
use palisade_model::load::Object;
use palisade_model::{parse_sources, read_paths, Cluster, ObjectRef, Problem};

use crate::ledger::{Ledger, Reading};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{dir}: {count} problem(s), the last good state stays in force:\n{problems}")]
    Invalid { dir: PathBuf, count: usize, problems: String },
    #[error("the API server's objects: {count} problem(s), the last good state stays in force:\n{problems}")]
    InvalidObjects { count: usize, problems: String },
    #[error("watching the API server: {0}")]
    Watch(String),
}

/// A new state of the cluster: whole, or as the objects that changed.
#[derive(Debug, Clone)]
pub enum Update {
    Full(Cluster),
    /// Objects added or changed, and removed. Only objects that stand for
    /// themselves in a [`Cluster`] (namespaces, nodes, services, policies,
    /// pods: not workloads' templates), so applying them one by
    /// one gives the cluster a full read would.
    Objects {
        upserts: Vec<Object>,
        deletes: Vec<ObjectRef>,
    },
}

/// Where the agent learns the cluster: a directory or the API server.
pub trait Source: Send {
    /// `Some(update)` when the state changed since the last call (the
    /// first complete state included, as `Full`), `None` when it did not.
    fn poll(&mut self) -> Result<Option<Update>, SourceError>;
    /// Which state the last `Some` was (for whoever wrote it).
    fn digest(&self) -> Option<&str>;
    /// The objects that cannot be read, with why: each is in the state as
    /// its stand-ins (`palisade_model::stand_in`), failing closed.
    fn unreadable(&self) -> &BTreeMap<ObjectRef, String>;
    /// Why the view may be behind the truth, and since when (the API
    /// server cannot be watched). The last state stays in force meanwhile.
    fn stale(&self) -> Option<(String, std::time::Instant)> {
        None
    }
}

/// A directory of manifests, read again when any file in it changes. Only
/// changed files are parsed again (parsing is most of the cost: 15,000
/// objects take seconds, a file of 100 a few milliseconds), and a change
/// of pods, policies, namespaces, nodes and services is reported as just
/// those objects.
pub struct DirSource {
    dir: PathBuf,
    seen: Option<Fingerprint>,
    files: BTreeMap<PathBuf, ParsedFile>,
    /// The files that declare each object (more than one: unreadable).
    index: HashMap<ObjectRef, Vec<PathBuf>>,
    ledger: Ledger,
    digest: Option<String>,
}

type Fingerprint = Vec<(PathBuf, FileId)>;

/// Size, modification time and inode (a file replaced by rename within
/// one mtime tick still differs).
type FileId = (u64, Option<SystemTime>, u64);

struct ParsedFile {
    id: FileId,
    text_hash: u64,
    objects: BTreeMap<ObjectRef, Located>,
    /// The file's objects that cannot be read, with why.
    unreadable: BTreeMap<ObjectRef, String>,
    /// The objects of each YAML document read without problems, by the
    /// hash of its text: an edit of one document of a file of hundreds
    /// reads only that one again (parsing is most of a change's cost).
    documents: HashMap<u64, Vec<ObjectRef>>,
}

impl ParsedFile {
    fn refs(&self) -> impl Iterator<Item = &ObjectRef> {
        self.objects.keys().chain(self.unreadable.keys())
    }

    /// Reads one file's text. A problem that names no object (the file is
    /// not YAML) makes every object the file held before unreadable: what
    /// it says now is unknown. The file itself is then listed as an
    /// unreadable object of kind `File`.
    fn parse(path: &Path, id: FileId, text: Result<String, std::io::Error>, before: Option<&ParsedFile>) -> Self {
        let name = path.display().to_string();
        let mut file = ParsedFile {
            id,
            text_hash: 0,
            objects: BTreeMap::new(),
            unreadable: BTreeMap::new(),
            documents: HashMap::new(),
        };
        let mut unnamed: Vec<String> = Vec::new();
        match text {
            Ok(text) => {
                file.text_hash = fnv(text.bytes(), FNV_START);
                let source = palisade_model::Source { name: name.clone(), text };
                let manifests = match palisade_model::load::yaml_documents(&source) {
                    Some(docs) => Self::parse_documents(&name, &docs, before, &mut file.documents),
                    None => parse_sources(std::slice::from_ref(&source)).per_pod(),
                };
                for p in manifests.problems {
                    match &p {
                        Problem::Invalid { object, .. } => {
                            add_reason(&mut file.unreadable, object.clone(), p.to_string())
                        }
                        _ => unnamed.push(p.to_string()),
                    }
                }
                for l in manifests.objects {
                    if file.unreadable.contains_key(&l.object_ref) {
                        continue;
                    }
                    if let Some(first) = file.objects.get(&l.object_ref) {
                        let why = format!("{}: declared twice: first at {}", l.location, first.location);
                        file.objects.remove(&l.object_ref);
                        add_reason(&mut file.unreadable, l.object_ref, why);
                    } else {
                        file.objects.insert(l.object_ref.clone(), l);
                    }
                }
            }
            Err(e) => unnamed.push(Problem::Read { file: name.clone(), reason: e.to_string() }.to_string()),
        }
        if !unnamed.is_empty() {
            let why = unnamed.join("\n");
            let held: Vec<ObjectRef> =
                before.into_iter().flat_map(|b| b.refs()).filter(|r| r.kind != FILE).cloned().collect();
            for r in held {
                if !file.objects.contains_key(&r) && !file.unreadable.contains_key(&r) {
                    file.unreadable.insert(r, why.clone());
                }
            }
            file.unreadable.insert(ObjectRef { kind: FILE.into(), namespace: None, name }, why);
        }
        file
    }
}

impl ParsedFile {
    /// Reads the YAML `docs` of file `name`, each as `parse_sources` would,
    /// taking the objects of documents unchanged since `before` from it.
    fn parse_documents(
        name: &str,
        docs: &[&str],
        before: Option<&ParsedFile>,
        cache: &mut HashMap<u64, Vec<ObjectRef>>,
    ) -> palisade_model::Manifests {
        let mut out = palisade_model::Manifests::default();
        for (i, doc) in docs.iter().enumerate() {
            let hash = fnv(doc.bytes(), FNV_START);
            let kept = before.and_then(|b| {
                let refs = b.documents.get(&hash)?;
                refs.iter().map(|r| b.objects.get(r).cloned()).collect::<Option<Vec<Located>>>()
            });
            let objects = match kept {
                Some(mut objects) => {
                    for l in &mut objects {
                        l.location.document = i + 1;
                    }
                    objects
                }
                None => {
                    let read = palisade_model::load::parse_yaml_document(name, i + 1, doc).per_pod();
                    if !read.problems.is_empty() {
                        out.problems.extend(read.problems);
                        out.objects.extend(read.objects);
                        continue;
                    }
                    read.objects
                }
            };
            cache.insert(hash, objects.iter().map(|l| l.object_ref.clone()).collect());
            out.objects.extend(objects);
        }
        out
    }
}

/// The kind under which a file that names no object is listed unreadable.
pub const FILE: &str = "File";

fn add_reason(map: &mut BTreeMap<ObjectRef, String>, object: ObjectRef, why: String) {
    let entry = map.entry(object).or_default();
    if !entry.is_empty() {
        entry.push('\n');
    }
    entry.push_str(&why);
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(bytes: impl IntoIterator<Item = u8>, mut h: u64) -> u64 {
    for b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a over each file's name and the hash of its text, in name order.
fn combine<'a>(files: impl IntoIterator<Item = (&'a str, u64)>) -> String {
    let mut sorted: Vec<(&str, u64)> = files.into_iter().collect();
    sorted.sort();
    let mut h = FNV_START;
    for (name, text_hash) in sorted {
        h = fnv(name.bytes().chain([0]).chain(text_hash.to_le_bytes()), h);
    }
    format!("{h:016x}")
}

/// A digest of manifest texts: which state of the source the agent has
/// applied, computed the same way by whoever wrote the files.
pub fn digest(sources: &[palisade_model::Source]) -> String {
    combine(sources.iter().map(|s| (s.name.as_str(), fnv(s.text.bytes(), FNV_START))))
}

/// The digest of what `dir` holds now.
pub fn digest_dir(dir: &Path) -> String {
    digest(&read_paths(&[dir.to_path_buf()]).0)
}

impl DirSource {
    pub fn new(dir: &Path) -> Self {
        DirSource {
            dir: dir.to_path_buf(),
            seen: None,
            files: BTreeMap::new(),
            index: HashMap::new(),
            ledger: Ledger::default(),
            digest: None,
        }
    }

    /// The manifest files (those `read_paths` reads) and their ids. A
    /// directory or file that cannot be listed is an error, never an empty
    /// state: that would drop every policy.
    fn fingerprint(&self) -> Result<Fingerprint, SourceError> {
        let unreadable = |path: &Path, e: std::io::Error| {
            refused(&self.dir, &[Problem::Read { file: path.display().to_string(), reason: e.to_string() }])
        };
        let mut out = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(|e| unreadable(&dir, e))? {
                let path = entry.map_err(|e| unreadable(&dir, e))?.path();
                let meta = match std::fs::metadata(&path) {
                    Ok(m) => m,
                    // Removed between listing and looking: not there.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(unreadable(&path, e)),
                };
                if meta.is_dir() {
                    stack.push(path);
                } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
                    let id = (meta.len(), meta.modified().ok(), std::os::unix::fs::MetadataExt::ino(&meta));
                    out.push((path, id));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// How `object` reads across all files now.
    fn reading<'a>(
        files: &'a BTreeMap<PathBuf, ParsedFile>,
        index: &'a HashMap<ObjectRef, Vec<PathBuf>>,
        object: &ObjectRef,
        twice: &'a mut String,
    ) -> Reading<'a> {
        match index.get(object).map(Vec::as_slice).unwrap_or_default() {
            [] => Reading::Absent,
            [path] => {
                let f = &files[path];
                match (f.objects.get(object), f.unreadable.get(object)) {
                    (Some(l), None) => Reading::Readable(l),
                    (_, Some(why)) => Reading::Unreadable(why),
                    (None, None) => Reading::Absent,
                }
            }
            paths => {
                let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                *twice = format!("{object}: declared in more than one file: {}", names.join(", "));
                Reading::Unreadable(twice)
            }
        }
    }
}

/// An object that is itself in a [`Cluster`]: anything but a workload's
/// template (on a node, every pod is its own endpoint: `per_pod`).
fn plain(object: &Located) -> bool {
    !matches!(&object.object, Object::Endpoint(ep) if ep.key.kind.is_some())
}

fn refused(dir: &Path, problems: &[Problem]) -> SourceError {
    let text: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
    SourceError::Invalid { dir: dir.to_path_buf(), count: problems.len(), problems: text.join("\n") }
}

impl Source for DirSource {
    /// `Some(update)` when the directory changed since the last call (the
    /// first call always reads), `None` when nothing changed.
    fn poll(&mut self) -> Result<Option<Update>, SourceError> {
        let now = self.fingerprint()?;
        if self.seen.as_ref() == Some(&now) {
            return Ok(None);
        }
        self.seen = Some(now.clone());
        // The files that differ from the last read, read again.
        let mut fresh: BTreeMap<PathBuf, ParsedFile> = BTreeMap::new();
        for (path, id) in &now {
            let before = self.files.get(path);
            if before.is_some_and(|f| f.id == *id) {
                continue;
            }
            let file = ParsedFile::parse(path, *id, std::fs::read_to_string(path), before);
            fresh.insert(path.clone(), file);
        }
        let listed: HashSet<&PathBuf> = now.iter().map(|(p, _)| p).collect();
        let removed: Vec<PathBuf> = self.files.keys().filter(|p| !listed.contains(p)).cloned().collect();
        // Every object the changed files held or hold.
        let mut affected: BTreeSet<ObjectRef> = BTreeSet::new();
        let mut templates = false;
        for path in fresh.keys().chain(&removed) {
            if let Some(old) = self.files.remove(path) {
                templates |= !old.objects.values().all(plain);
                for r in old.refs() {
                    if let Some(paths) = self.index.get_mut(r) {
                        paths.retain(|p| p != path);
                        if paths.is_empty() {
                            self.index.remove(r);
                        }
                    }
                    affected.insert(r.clone());
                }
            }
        }
        for (path, f) in fresh {
            templates |= !f.objects.values().all(plain);
            for r in f.refs() {
                self.index.entry(r.clone()).or_default().push(path.clone());
                affected.insert(r.clone());
            }
            self.files.insert(path, f);
        }
        if self.digest.is_none() {
            // At start, what a file that cannot be read held is unknown:
            // any state without it could be looser than the kernel's (the
            // table the previous agent left). Nothing is applied until it
            // can be read.
            let unknown: Vec<Problem> = self
                .files
                .iter()
                .filter_map(|(path, f)| {
                    let why = f.unreadable.iter().find(|(r, _)| r.kind == FILE)?.1;
                    Some(Problem::Read { file: path.display().to_string(), reason: why.clone() })
                })
                .collect();
            if !unknown.is_empty() {
                return Err(refused(&self.dir, &unknown));
            }
        }
        let update = if self.digest.is_none() || templates {
            // Workloads' templates are grouped with their pods: read whole.
            let refs: Vec<&ObjectRef> = self.index.keys().collect();
            let mut scratch: Vec<String> = vec![String::new(); refs.len()];
            let readings =
                refs.iter().zip(scratch.iter_mut()).map(|(r, s)| (*r, Self::reading(&self.files, &self.index, r, s)));
            let objects = self.ledger.full(readings);
            let (cluster, _problems, _) = Cluster::assemble(objects);
            // (Nothing is declared twice in `objects`: those are unreadable.)
            Update::Full(cluster)
        } else {
            let (mut upserts, mut deletes) = (Vec::new(), Vec::new());
            for r in &affected {
                let mut scratch = String::new();
                let reading = Self::reading(&self.files, &self.index, r, &mut scratch);
                self.ledger.change(r, reading, &mut upserts, &mut deletes);
            }
            Update::Objects { upserts, deletes }
        };
        let names: Vec<(String, u64)> =
            self.files.iter().map(|(p, f)| (p.display().to_string(), f.text_hash)).collect();
        self.digest = Some(combine(names.iter().map(|(n, h)| (n.as_str(), *h))));
        Ok(Some(update))
    }

    fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    fn unreadable(&self) -> &BTreeMap<ObjectRef, String> {
        self.ledger.unreadable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(u: Option<Update>) -> Cluster {
        match u {
            Some(Update::Full(c)) => c,
            other => panic!("expected a full state, got {other:?}"),
        }
    }

    #[test]
    fn reports_changes_and_names_unreadable_objects() {
        let dir = std::env::temp_dir().join(format!("palisade-dirsource-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pod =
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, image: i}]}\n";
        std::fs::write(dir.join("a.yaml"), pod).unwrap();
        let mut source = DirSource::new(&dir);
        assert_eq!(full(source.poll().unwrap()).endpoints.len(), 1, "the first read is whole");
        assert!(source.poll().unwrap().is_none(), "no change, no new state");

        // A plain object added in a new file: just that object.
        std::fs::write(dir.join("b.yaml"), pod.replace("name: a", "name: b")).unwrap();
        let Some(Update::Objects { upserts, deletes }) = source.poll().unwrap() else { panic!("not incremental") };
        assert_eq!((upserts.len(), deletes.len()), (1, 0));
        let good = source.digest().unwrap().to_string();
        assert_eq!(good, digest_dir(&dir), "the writer can compute what the agent read");

        // An unreadable object: named with its file and field, and left
        // out (a pod); nothing else changes.
        std::fs::write(dir.join("bad.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: c}\nspec: {containers: 7}\n")
            .unwrap();
        let Some(Update::Objects { upserts, deletes }) = source.poll().unwrap() else { panic!("not incremental") };
        assert_eq!(
            (upserts.len(), deletes.iter().map(|r| r.to_string()).collect::<Vec<_>>()),
            (0, vec!["Pod default/c".to_string()])
        );
        let why: Vec<String> = source.unreadable().iter().map(|(o, why)| format!("{o}: {why}")).collect();
        assert!(why.len() == 1 && why[0].contains("bad.yaml") && why[0].contains("spec.containers"), "{why:?}");
        assert_eq!(source.digest().unwrap(), digest_dir(&dir));

        // A file that is not YAML at all: listed as such.
        std::fs::write(dir.join("junk.yaml"), "kind: [\n").unwrap();
        source.poll().unwrap();
        assert!(source.unreadable().keys().any(|o| o.kind == FILE && o.name.ends_with("junk.yaml")));
        std::fs::remove_file(dir.join("junk.yaml")).unwrap();
        source.poll().unwrap();

        // Fixed, and a.yaml's pod renamed meanwhile: compared with the last
        // good state, so the old a goes.
        std::fs::remove_file(dir.join("bad.yaml")).unwrap();
        std::fs::write(dir.join("a.yaml"), pod.replace("namespace: x", "namespace: y")).unwrap();
        let Some(Update::Objects { upserts, deletes }) = source.poll().unwrap() else { panic!("not incremental") };
        assert_eq!(upserts.len(), 1);
        assert_eq!(deletes.iter().map(|r| r.to_string()).collect::<Vec<_>>(), ["Pod default/c", "Pod x/a"]);
        assert!(source.unreadable().is_empty());
        assert_eq!(source.digest().unwrap(), digest_dir(&dir));

        // A workload's replica is a pod like any other on a node: just that object.
        let replica = "apiVersion: v1\nkind: Pod\nmetadata: {name: w-1, namespace: x, ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: w-7d, uid: u, controller: true}]}\nspec: {containers: [{name: c, image: i}]}\n";
        std::fs::write(dir.join("c.yaml"), replica).unwrap();
        let Some(Update::Objects { upserts, .. }) = source.poll().unwrap() else { panic!("not incremental") };
        assert!(matches!(&upserts[..], [Object::Endpoint(ep)] if ep.key.to_string() == "x/w-1"), "{upserts:?}");

        // A workload (a template, not a pod) is not plain: the whole state again.
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w, namespace: x}\nspec: {selector: {}, template: {metadata: {labels: {app: w}}}}\n";
        std::fs::write(dir.join("e.yaml"), deployment).unwrap();
        assert_eq!(full(source.poll().unwrap()).endpoints.len(), 4);

        // A directory that cannot be read is refused, not read as empty.
        let gone = dir.join("gone");
        std::fs::create_dir_all(&gone).unwrap();
        let mut missing = DirSource::new(&dir.join("nope"));
        assert!(missing.poll().unwrap_err().to_string().contains("nope"));

        // Declared in two files: unreadable, so left out, until one goes.
        std::fs::write(dir.join("d.yaml"), pod.replace("name: a", "name: b")).unwrap();
        let Some(Update::Objects { deletes, .. }) = source.poll().unwrap() else { panic!("not incremental") };
        assert_eq!(deletes.iter().map(|r| r.to_string()).collect::<Vec<_>>(), ["Pod x/b"]);
        let why: Vec<String> = source.unreadable().values().cloned().collect();
        assert!(why.iter().any(|w| w.contains("more than one file") && w.contains("d.yaml")), "{why:?}");
        std::fs::remove_file(dir.join("d.yaml")).unwrap();
        let Some(Update::Objects { upserts, .. }) = source.poll().unwrap() else { panic!("not incremental") };
        assert_eq!(upserts.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// At start (a restart: the kernel holds the previous agent's table),
    /// a file that cannot be read at all keeps the source from giving any
    /// state: what it held is unknown, and leaving it out could loosen.
    #[test]
    fn an_unreadable_file_at_start_gives_no_state() {
        let dir = std::env::temp_dir().join(format!("palisade-dirsource-start-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n";
        std::fs::write(dir.join("a.yaml"), policy).unwrap();
        std::fs::write(dir.join("b.yaml"), "kind: [\n").unwrap();
        let mut source = DirSource::new(&dir);
        let err = source.poll().unwrap_err().to_string();
        assert!(err.contains("b.yaml") && err.contains("last good state"), "{err}");
        assert!(source.poll().unwrap().is_none(), "unchanged: still nothing");
        std::fs::write(dir.join("b.yaml"), policy.replace("name: p", "name: q")).unwrap();
        assert_eq!(full(source.poll().unwrap()).policies.len(), 2, "readable again: the whole state");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
