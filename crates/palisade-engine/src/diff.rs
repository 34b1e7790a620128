//! Connections gained and lost between two cluster states: the review
//! question of a pull request that changes policies or workloads.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::connset::ConnSet;
use crate::engine::Engine;
use crate::matrix::Matrix;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PairChange {
    pub source: String,
    pub destination: String,
    pub before: ConnSet,
    pub after: ConnSet,
    pub gained: ConnSet,
    pub lost: ConnSet,
}

/// The two states' matrices, their outside world cut by the union of
/// their ipBlocks, so both have the same outside ranges.
pub fn matrices(old: &Engine, new: &Engine) -> (Matrix, Matrix) {
    let mut blocks = old.ip_blocks();
    let mut seen: std::collections::HashSet<_> = blocks.iter().cloned().collect();
    blocks.extend(new.ip_blocks().into_iter().filter(|b| seen.insert(b.clone())));
    (Matrix::compute_cut_by(old, blocks.clone()), Matrix::compute_cut_by(new, blocks))
}

/// How `diff` names an outside range: as `analyze` writes it.
pub fn outside_name(range: &crate::ExternalRange) -> String {
    format!("({})", range.name)
}

/// Every ordered pair whose connections differ, outside ranges included
/// (compare matrices from [`matrices`]): endpoint to endpoint, a workload
/// with itself (its replicas), endpoint to outside and back, never two
/// outside ranges. An endpoint present on one side only counts as having
/// no connections on the other.
pub fn diff(old: (&Engine, &Matrix), new: (&Engine, &Matrix)) -> Vec<PairChange> {
    // name -> (member index, stands for replicas that talk to each other)
    let index = |(engine, matrix): (&Engine, &Matrix)| -> BTreeMap<String, (usize, bool)> {
        let endpoints = matrix.endpoints.iter().enumerate().map(|(i, id)| {
            let e = engine.endpoint(*id);
            (e.key.to_string(), (i, !e.is_one_pod()))
        });
        let n = matrix.endpoints.len();
        let outside = matrix.externals.iter().enumerate().map(|(k, r)| (outside_name(r), (n + k, false)));
        endpoints.chain(outside).collect()
    };
    let (old_index, new_index) = (index(old), index(new));
    let mut names: Vec<&String> = old_index.keys().chain(new_index.keys()).collect();
    names.sort();
    names.dedup();
    let outside = |name: &str| name.starts_with('(');
    let endpoints: Vec<&String> = names.iter().copied().filter(|n| !outside(n)).collect();
    let replicas = |name: &String| [&old_index, &new_index].iter().any(|idx| idx.get(name).is_some_and(|x| x.1));
    let none = ConnSet::none();
    let mut out = Vec::new();
    for src in &names {
        let destinations = if outside(src) { &endpoints } else { &names };
        for dst in destinations {
            if src == dst && !replicas(src) {
                continue;
            }
            let lookup = |idx: &BTreeMap<String, (usize, bool)>, m: &Matrix| match (idx.get(*src), idx.get(*dst)) {
                (Some(&(i, _)), Some(&(j, _))) => m.get(i, j).clone(),
                _ => none.clone(),
            };
            let before = lookup(&old_index, old.1);
            let after = lookup(&new_index, new.1);
            if before != after {
                out.push(PairChange {
                    source: src.to_string(),
                    destination: dst.to_string(),
                    gained: after.difference(&before),
                    lost: before.difference(&after),
                    before,
                    after,
                });
            }
        }
    }
    out
}
