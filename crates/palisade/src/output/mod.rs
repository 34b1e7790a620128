//! Rendering results for people (tables, graphs, pages) and for programs
//! (json, tsv). Nothing here decides anything: it prints the engine's answers.

pub mod dot;
pub mod html;
pub mod table;

use std::collections::BTreeMap;

use palisade_engine::{Engine, Matrix};

/// Endpoint display names in matrix order, and per-namespace counts for
/// compressing sets into `ns/*`.
pub struct Names {
    pub names: Vec<String>,
    namespaces: Vec<String>,
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
        Names { names, namespaces, per_namespace }
    }

    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.per_namespace.keys().map(String::as_str)
    }

    /// Items of a set of endpoint indexes (sorted): `*` for everything,
    /// `ns/*` for a whole namespace, otherwise the endpoints' names.
    pub fn items(&self, set: &[usize]) -> Vec<String> {
        if set.len() == self.names.len() && !set.is_empty() {
            return vec!["*".into()];
        }
        let mut by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for &i in set {
            by_ns.entry(&self.namespaces[i]).or_default().push(i);
        }
        let mut out = Vec::new();
        for (ns, members) in by_ns {
            if members.len() == self.per_namespace[ns] && members.len() > 1 {
                out.push(format!("{ns}/*"));
            } else {
                out.extend(members.iter().map(|&i| self.names[i].clone()));
            }
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
