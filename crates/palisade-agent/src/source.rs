//! State sources. `DirSource` reads a directory of manifests (the embedded
//! default the lab and single-machine users run) and reports a new cluster
//! state when the files change. Invalid input is an error naming the file,
//! object and field; the caller keeps the last good state.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use palisade_model::{parse_sources, read_paths, Cluster};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{dir}: {count} problem(s), the last good state stays in force:\n{problems}")]
    Invalid { dir: PathBuf, count: usize, problems: String },
    #[error("the API server's objects: {count} problem(s), the last good state stays in force:\n{problems}")]
    InvalidObjects { count: usize, problems: String },
    #[error("watching the API server: {0}")]
    Watch(String),
}

/// Where the agent learns the cluster: a directory or the API server.
pub trait Source: Send {
    /// `Some(cluster)` when the state changed since the last call (the
    /// first complete state included), `None` when it did not.
    fn poll(&mut self) -> Result<Option<Cluster>, SourceError>;
    /// Which state the last `Some` was (for whoever wrote it).
    fn digest(&self) -> Option<&str>;
}

/// A directory of manifests, read again when any file in it changes.
pub struct DirSource {
    dir: PathBuf,
    seen: Option<Vec<(PathBuf, u64, Option<SystemTime>)>>,
    digest: Option<String>,
}

/// A digest of manifest texts (FNV-1a over names and contents): which
/// state of the source the agent has applied, comparable by whoever wrote
/// the files.
pub fn digest(sources: &[palisade_model::Source]) -> String {
    let mut sorted: Vec<&palisade_model::Source> = sources.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for s in sorted {
        for b in s.name.bytes().chain([0]).chain(s.text.bytes()).chain([0]) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The digest of what `dir` holds now.
pub fn digest_dir(dir: &Path) -> String {
    digest(&read_paths(&[dir.to_path_buf()]).0)
}

impl DirSource {
    pub fn new(dir: &Path) -> Self {
        DirSource { dir: dir.to_path_buf(), seen: None, digest: None }
    }

    /// Names, sizes and modification times of the files: a change in any
    /// of them means a new read.
    fn fingerprint(&self) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(path);
                } else {
                    out.push((path, meta.len(), meta.modified().ok()));
                }
            }
        }
        out.sort();
        out
    }
}

impl Source for DirSource {
    /// `Some(cluster)` when the directory changed since the last call (the
    /// first call always reads), `None` when nothing changed.
    fn poll(&mut self) -> Result<Option<Cluster>, SourceError> {
        let now = self.fingerprint();
        if self.seen.as_ref() == Some(&now) {
            return Ok(None);
        }
        self.seen = Some(now);
        let (sources, mut problems) = read_paths(std::slice::from_ref(&self.dir));
        let digest = digest(&sources);
        let (cluster, more, _) = Cluster::from_manifests(parse_sources(&sources));
        problems.extend(more);
        if !problems.is_empty() {
            let text: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
            return Err(SourceError::Invalid {
                dir: self.dir.clone(),
                count: problems.len(),
                problems: text.join("\n"),
            });
        }
        self.digest = Some(digest);
        Ok(Some(cluster))
    }

    /// The digest of the last state read without problems.
    fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_changes_and_refuses_invalid_input() {
        let dir = std::env::temp_dir().join(format!("palisade-dirsource-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pod =
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, image: i}]}\n";
        std::fs::write(dir.join("a.yaml"), pod).unwrap();
        let mut source = DirSource::new(&dir);
        assert_eq!(source.poll().unwrap().unwrap().endpoints.len(), 1);
        assert!(source.poll().unwrap().is_none(), "no change, no new state");
        std::fs::write(dir.join("b.yaml"), pod.replace("name: a", "name: b")).unwrap();
        assert_eq!(source.poll().unwrap().unwrap().endpoints.len(), 2);
        let good = source.digest().unwrap().to_string();
        assert_eq!(good, digest_dir(&dir), "the writer can compute what the agent read");
        std::fs::write(dir.join("bad.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: c}\nspec: {containers: 7}\n")
            .unwrap();
        let err = source.poll().unwrap_err().to_string();
        assert!(err.contains("bad.yaml") && err.contains("last good state"), "{err}");
        assert_eq!(source.digest(), Some(good.as_str()), "a refused state is not reported as read");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
