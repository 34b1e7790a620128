//! State sources. `DirSource` reads a directory of manifests (the embedded
//! default the lab and single-machine users run) and reports a new cluster
//! state when the files change. Invalid input is an error naming the file,
//! object and field; the caller keeps the last good state.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use std::collections::BTreeMap;

use palisade_model::load::Object;
use palisade_model::{parse_sources, read_paths, Cluster, Manifests, ObjectRef, Problem};

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
}

/// A directory of manifests, read again when any file in it changes. Only
/// changed files are parsed again (parsing is most of the cost: 15,000
/// objects take seconds, a file of 100 a few milliseconds), and a change
/// of plain objects is reported as just those objects.
pub struct DirSource {
    dir: PathBuf,
    seen: Option<Fingerprint>,
    /// The last state read without problems, per file.
    files: BTreeMap<PathBuf, ParsedFile>,
    digest: Option<String>,
}

type Fingerprint = Vec<(PathBuf, FileId)>;

/// Size, modification time and inode (a file replaced by rename within
/// one mtime tick still differs).
type FileId = (u64, Option<SystemTime>, u64);

struct ParsedFile {
    id: FileId,
    text_hash: u64,
    manifests: Manifests,
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
        DirSource { dir: dir.to_path_buf(), seen: None, files: BTreeMap::new(), digest: None }
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

    /// The whole cluster of `files`, or its problems.
    fn assemble<'a>(files: impl Iterator<Item = &'a ParsedFile>) -> (Cluster, Vec<Problem>) {
        let mut objects = Vec::new();
        let mut problems = Vec::new();
        for f in files {
            objects.extend(f.manifests.objects.iter().cloned());
            problems.extend(f.manifests.problems.iter().cloned());
        }
        let (cluster, more, _) = Cluster::assemble(objects);
        problems.extend(more);
        (cluster, problems)
    }
}

/// An object that is itself in a [`Cluster`]: anything but a workload's
/// template (on a node, every pod is its own endpoint: `per_pod`).
fn plain(object: &Object) -> bool {
    !matches!(object, Object::Endpoint(ep) if ep.key.kind.is_some())
}

fn refused(dir: &Path, problems: &[Problem]) -> SourceError {
    let text: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
    SourceError::Invalid { dir: dir.to_path_buf(), count: problems.len(), problems: text.join("\n") }
}

impl Source for DirSource {
    /// `Some(update)` when the directory changed since the last call (the
    /// first call always reads), `None` when nothing changed. A refused
    /// state changes nothing: the next change is compared with the last
    /// good one.
    fn poll(&mut self) -> Result<Option<Update>, SourceError> {
        let now = self.fingerprint()?;
        if self.seen.as_ref() == Some(&now) {
            return Ok(None);
        }
        self.seen = Some(now.clone());
        let mut problems = Vec::new();
        // The files that differ from the last good state, read again.
        let mut fresh: BTreeMap<PathBuf, ParsedFile> = BTreeMap::new();
        for (path, id) in &now {
            if self.files.get(path).is_some_and(|f| f.id == *id) {
                continue;
            }
            let name = path.display().to_string();
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let text_hash = fnv(text.bytes(), FNV_START);
                    let manifests = parse_sources(&[palisade_model::Source { name, text }]).per_pod();
                    fresh.insert(path.clone(), ParsedFile { id: *id, text_hash, manifests });
                }
                Err(e) => problems.push(Problem::Read { file: name, reason: e.to_string() }),
            }
        }
        let listed: std::collections::HashSet<&PathBuf> = now.iter().map(|(p, _)| p).collect();
        let removed: Vec<PathBuf> = self.files.keys().filter(|p| !listed.contains(p)).cloned().collect();
        for f in fresh.values() {
            problems.extend(f.manifests.problems.iter().cloned());
        }
        if !problems.is_empty() {
            return Err(refused(&self.dir, &problems));
        }
        let old: Vec<&Object> = fresh
            .keys()
            .chain(&removed)
            .filter_map(|p| self.files.get(p))
            .flat_map(|f| f.manifests.objects.iter().map(|l| &l.object))
            .collect();
        let new: Vec<&palisade_model::load::Located> = fresh.values().flat_map(|f| &f.manifests.objects).collect();
        let incremental =
            self.digest.is_some() && old.iter().all(|o| plain(o)) && new.iter().all(|l| plain(&l.object)) && {
                // Declared twice (here or in an unchanged file) is a problem
                // only a full read reports.
                let unchanged: std::collections::HashSet<&ObjectRef> = self
                    .files
                    .iter()
                    .filter(|(p, _)| !fresh.contains_key(*p) && !removed.contains(p))
                    .flat_map(|(_, f)| f.manifests.objects.iter().map(|l| &l.object_ref))
                    .collect();
                let mut seen = std::collections::HashSet::new();
                new.iter().all(|l| !unchanged.contains(&l.object_ref) && seen.insert(&l.object_ref))
            };
        let update = if incremental {
            let new_refs: std::collections::HashSet<&ObjectRef> = new.iter().map(|l| &l.object_ref).collect();
            let deletes: Vec<ObjectRef> = fresh
                .keys()
                .chain(&removed)
                .filter_map(|p| self.files.get(p))
                .flat_map(|f| &f.manifests.objects)
                .filter(|l| !new_refs.contains(&l.object_ref))
                .map(|l| l.object_ref.clone())
                .collect();
            let upserts: Vec<Object> = new.iter().map(|l| l.object.clone()).collect();
            Update::Objects { upserts, deletes }
        } else {
            let unchanged = self.files.iter().filter(|(p, _)| !fresh.contains_key(*p) && !removed.contains(p));
            let (cluster, problems) = Self::assemble(unchanged.map(|(_, f)| f).chain(fresh.values()));
            if !problems.is_empty() {
                return Err(refused(&self.dir, &problems));
            }
            Update::Full(cluster)
        };
        for p in &removed {
            self.files.remove(p);
        }
        self.files.extend(fresh);
        let names: Vec<(String, u64)> =
            self.files.iter().map(|(p, f)| (p.display().to_string(), f.text_hash)).collect();
        self.digest = Some(combine(names.iter().map(|(n, h)| (n.as_str(), *h))));
        Ok(Some(update))
    }

    /// The digest of the last state read without problems.
    fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
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
    fn reports_changes_and_refuses_invalid_input() {
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

        // Invalid input: refused, naming the file; nothing changes.
        std::fs::write(dir.join("bad.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: c}\nspec: {containers: 7}\n")
            .unwrap();
        let err = source.poll().unwrap_err().to_string();
        assert!(err.contains("bad.yaml") && err.contains("last good state"), "{err}");
        assert_eq!(source.digest(), Some(good.as_str()), "a refused state is not reported as read");

        // Fixed, and a.yaml's pod renamed meanwhile: compared with the last
        // good state, so the old a goes.
        std::fs::remove_file(dir.join("bad.yaml")).unwrap();
        std::fs::write(dir.join("a.yaml"), pod.replace("namespace: x", "namespace: y")).unwrap();
        let Some(Update::Objects { upserts, deletes }) = source.poll().unwrap() else { panic!("not incremental") };
        assert_eq!(upserts.len(), 1);
        assert_eq!(deletes.iter().map(|r| r.to_string()).collect::<Vec<_>>(), ["Pod x/a"]);
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

        // Declared twice across files: refused.
        std::fs::write(dir.join("d.yaml"), pod.replace("name: a", "name: b")).unwrap();
        let err = source.poll().unwrap_err().to_string();
        assert!(err.contains("declared twice"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
