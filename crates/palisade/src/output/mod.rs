//! Rendering results for people (tables, graphs, pages) and for programs
//! (json, tsv). Nothing here decides anything: it prints the engine's answers.

pub mod dot;
pub mod html;
pub mod table;

use std::collections::BTreeMap;

use palisade_engine::{Engine, Matrix};

/// A set's item for every range of outside addresses at once.
pub const EVERYWHERE_OUTSIDE: &str = "(anywhere outside)";

/// Display names in matrix order (endpoints, then the outside world's
/// ranges), and per-namespace counts for compressing sets into `ns/*`.
pub struct Names {
    pub names: Vec<String>,
    namespaces: Vec<String>,
    endpoint_count: usize,
    per_namespace: BTreeMap<String, usize>,
}

impl Names {
    pub fn new(engine: &Engine, matrix: &Matrix) -> Self {
        let mut per_namespace = BTreeMap::new();
        let mut names = Vec::new();
        let mut namespaces = Vec::new();
        for id in &matrix.endpoints {
            let key = &engine.endpoint(*id).key;
            *per_namespace.entry(key.namespace.clone()).or_default() += 1;
            names.push(key.to_string());
            namespaces.push(key.namespace.clone());
        }
        // In parentheses: a range's name has its own commas and `except`,
        // and a reader sees at once that it is outside the cluster.
        names.extend(matrix.externals.iter().map(|r| format!("({})", r.name)));
        Names { names, namespaces, endpoint_count: matrix.endpoints.len(), per_namespace }
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.per_namespace.keys().map(String::as_str)
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoint_count
    }

    /// The names of the outside world's ranges.
    pub fn externals(&self) -> &[String] {
        &self.names[self.endpoint_count..]
    }

    /// Items of a set of member indexes (sorted): `*` for every endpoint,
    /// `ns/*` for a whole namespace, otherwise the endpoints' names; then
    /// the outside ranges by name, `(anywhere outside)` for all of them.
    pub fn items(&self, set: &[usize]) -> Vec<String> {
        let split = set.partition_point(|&i| i < self.endpoint_count);
        let (endpoints, externals) = set.split_at(split);
        let mut out = Vec::new();
        if endpoints.len() == self.endpoint_count && !endpoints.is_empty() {
            out.push("*".to_string());
        } else {
            let mut by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for &i in endpoints {
                by_ns.entry(&self.namespaces[i]).or_default().push(i);
            }
            for (ns, members) in by_ns {
                if members.len() == self.per_namespace[ns] && members.len() > 1 {
                    out.push(format!("{ns}/*"));
                } else {
                    out.extend(members.iter().map(|&i| self.names[i].clone()));
                }
            }
        }
        let all_outside = externals.len() == self.names.len() - self.endpoint_count;
        if all_outside && externals.len() > 1 {
            out.push(EVERYWHERE_OUTSIDE.to_string());
        } else {
            out.extend(externals.iter().map(|&i| self.names[i].clone()));
        }
        out
    }

    pub fn describe(&self, set: &[usize]) -> String {
        self.items(set).join(", ")
    }
}

/// Escapes for TSV: tabs and newlines cannot appear in a field.
pub fn tsv_field(s: &str) -> String {
    s.replace(['\t', '\n'], " ")
}
