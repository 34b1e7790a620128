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
    for b in new.ip_blocks() {
        if !blocks.contains(&b) {
            blocks.push(b);
        }
    }
    (Matrix::compute_cut_by(old, blocks.clone()), Matrix::compute_cut_by(new, blocks))
}

/// How `diff` names an outside range: as `analyze` writes it.
pub fn outside_name(range: &crate::ExternalRange) -> String {
    format!("({})", range.name)
}

/// Every ordered pair whose connections differ, outside ranges included
/// (compare matrices from [`matrices`]). An endpoint present on one side
/// only counts as having no connections on the other.
pub fn diff(old: (&Engine, &Matrix), new: (&Engine, &Matrix)) -> Vec<PairChange> {
    let index = |(engine, matrix): (&Engine, &Matrix)| -> BTreeMap<String, usize> {
        let endpoints = matrix.endpoints.iter().enumerate().map(|(i, id)| (engine.endpoint(*id).key.to_string(), i));
        let n = matrix.endpoints.len();
        let outside = matrix.externals.iter().enumerate().map(|(k, r)| (outside_name(r), n + k));
        endpoints.chain(outside).collect()
    };
    let (old_index, new_index) = (index(old), index(new));
    let mut names: Vec<&String> = old_index.keys().chain(new_index.keys()).collect();
    names.sort();
    names.dedup();
    let none = ConnSet::none();
    let mut out = Vec::new();
    let outside = |name: &str| name.starts_with('(');
    for src in &names {
        for dst in &names {
            if src == dst || (outside(src) && outside(dst)) {
                continue;
            }
            let lookup = |idx: &BTreeMap<String, usize>, m: &Matrix| match (idx.get(*src), idx.get(*dst)) {
                (Some(&i), Some(&j)) => m.get(i, j).clone(),
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
