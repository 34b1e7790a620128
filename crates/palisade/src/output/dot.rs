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
        return write_grouped(out, names, rows);
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
    if !names.externals().is_empty() {
        writeln!(out, "  subgraph \"cluster_outside\" {{")?;
        writeln!(out, "    label=\"outside the cluster\"; style=dotted;")?;
        for n in names.externals().iter().filter(|n| nodes.contains(*n)) {
            writeln!(out, "    {} [shape=ellipse];", quote(n))?;
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

/// Too many endpoints to draw one node each: a node per row's source set
/// and destination set (labelled with their first items and a count), an
/// edge per row. Every row of the table is still there.
fn write_grouped(out: &mut dyn Write, names: &Names, rows: &[GroupRow]) -> io::Result<()> {
    let mut ids: std::collections::HashMap<&[usize], usize> = std::collections::HashMap::new();
    writeln!(out, "digraph palisade {{")?;
    writeln!(
        out,
        "  rankdir=LR; node [shape=folder, fontname=\"Helvetica\"]; edge [fontname=\"Helvetica\", fontsize=10];"
    )?;
    for row in rows {
        let mut end = [0usize; 2];
        for (k, set) in [&row.sources[..], &row.destinations[..]].into_iter().enumerate() {
            let next = ids.len();
            let id = *ids.entry(set).or_insert(next);
            if id == next {
                let items = names.items(set);
                // Lines joined by Graphviz's `\n` escape, so not through `quote`.
                let mut label: Vec<String> = items.iter().take(3).map(|i| i.replace('"', "\\\"")).collect();
                if items.len() > 3 {
                    label.push(format!("... and {} more", items.len() - 3));
                }
                writeln!(out, "  g{id} [label=\"{}\"];", label.join("\\n"))?;
            }
            end[k] = id;
        }
        writeln!(out, "  g{} -> g{} [label={}];", end[0], end[1], quote(&row.connections.to_string()))?;
    }
    writeln!(out, "}}")
}
