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

/// Every ordered pair whose connections differ. An endpoint present on one
/// side only counts as having no connections on the other.
pub fn diff(old: (&Engine, &Matrix), new: (&Engine, &Matrix)) -> Vec<PairChange> {
    let index = |(engine, matrix): (&Engine, &Matrix)| -> BTreeMap<String, usize> {
        matrix.endpoints.iter().enumerate().map(|(i, id)| (engine.endpoint(*id).key.to_string(), i)).collect()
    };
    let (old_index, new_index) = (index(old), index(new));
    let mut names: Vec<&String> = old_index.keys().chain(new_index.keys()).collect();
    names.sort();
    names.dedup();
    let none = ConnSet::none();
    let mut out = Vec::new();
    for src in &names {
        for dst in &names {
            if src == dst {
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
