//! Graphviz output: namespaces as clusters, edges labelled with connection
//! sets. Whole-namespace groups are drawn as one `ns/*` node so a
//! namespace-wide rule is one edge, not n*m.

use std::collections::BTreeSet;
use std::io::{self, Write};

use palisade_engine::GroupRow;

use super::Names;

/// Past this a graph is not readable, and Graphviz will not lay it out.
const MAX_EDGES: usize = 100_000;

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn write(out: &mut dyn Write, names: &Names, rows: &[GroupRow]) -> io::Result<()> {
    let edge_count: usize =
        rows.iter().map(|r| names.items(&r.sources).len() * names.items(&r.destinations).len()).sum();
    if edge_count > MAX_EDGES {
        return Err(io::Error::other(format!(
            "the graph would have {edge_count} edges (more than {MAX_EDGES}): narrow it with --from/--to, or use -o table"
        )));
    }
    writeln!(out, "digraph palisade {{")?;
    writeln!(out, "  rankdir=LR; compound=true; node [shape=box, style=rounded, fontname=\"Helvetica\"]; edge [fontname=\"Helvetica\", fontsize=10];")?;
    let mut edges = Vec::new();
    let mut nodes: BTreeSet<String> = BTreeSet::new();
    for row in rows {
        let srcs = names.items(&row.sources);
        let dsts = names.items(&row.destinations);
        for s in &srcs {
            for d in &dsts {
                edges.push((s.clone(), d.clone(), row.connections.to_string()));
            }
        }
        nodes.extend(srcs);
        nodes.extend(dsts);
    }
    for (i, name) in names.names.iter().enumerate() {
        let _ = i;
        nodes.insert(name.clone());
    }
    let namespace_of = |n: &str| n.split_once('/').map(|(ns, _)| ns.to_string());
    for ns in names.namespaces() {
        writeln!(out, "  subgraph {} {{", quote(&format!("cluster_{ns}")))?;
        writeln!(out, "    label={}; style=dashed;", quote(ns))?;
        for n in nodes.iter().filter(|n| namespace_of(n).as_deref() == Some(ns)) {
            let shape = if n.ends_with("/*") { ", shape=folder" } else { "" };
            writeln!(
                out,
                "    {} [label={}{shape}];",
                quote(n),
                quote(n.split_once('/').map(|(_, r)| r).unwrap_or(n))
            )?;
        }
        writeln!(out, "  }}")?;
    }
    if nodes.contains("*") {
        writeln!(out, "  \"*\" [label=\"all endpoints\", shape=folder];")?;
    }
    for (s, d, label) in edges {
        writeln!(out, "  {} -> {} [label={}];", quote(&s), quote(&d), quote(&label))?;
    }
    writeln!(out, "}}")
}
