//! A self-contained HTML page: a graph (inline SVG, no scripts from
//! anywhere) and a searchable connectivity table.

use std::collections::BTreeMap;
use std::io::{self, Write};

use palisade_engine::GroupRow;

use super::Names;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const MAX_GRAPH_NODES: usize = 300;
const MAX_GRAPH_EDGES: usize = 20_000;

pub fn write(out: &mut dyn Write, title: &str, names: &Names, rows: &[GroupRow]) -> io::Result<()> {
    let mut edges = Vec::new();
    let mut too_many = false;
    let mut nodes: BTreeMap<String, usize> = BTreeMap::new();
    for row in rows {
        let srcs = names.items(&row.sources);
        let dsts = names.items(&row.destinations);
        // Past what can be drawn, edges are not even built (memory stays flat).
        if edges.len() + srcs.len() * dsts.len() > MAX_GRAPH_EDGES {
            too_many = true;
        } else {
            for s in &srcs {
                for d in &dsts {
                    edges.push((s.clone(), d.clone(), row.connections.to_string()));
                }
            }
        }
        for n in srcs.into_iter().chain(dsts) {
            nodes.insert(n, 0);
        }
    }
    for n in &names.names {
        nodes.insert(n.clone(), 0);
    }
    let count = nodes.len();
    for (i, v) in nodes.values_mut().enumerate() {
        *v = i;
    }
    writeln!(out, "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>", esc(title))?;
    writeln!(
        out,
        "<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}}\
         th{{background:#eee}}input{{font-size:1em;padding:4px;width:30em}}svg text{{font-size:10px}}line{{stroke:#4a7;stroke-opacity:.5}}line:hover{{stroke:#c00;stroke-opacity:1}}</style></head><body>"
    )?;
    writeln!(
        out,
        "<h1>{}</h1><p>{} endpoints, {} ranges of addresses outside the cluster, {} rows of allowed connections \
         (a pod can always reach itself).</p>",
        esc(title),
        names.endpoint_count(),
        names.externals().len(),
        rows.len()
    )?;
    writeln!(out, "<h2>Graph</h2>")?;
    if count <= MAX_GRAPH_NODES && !too_many {
        let size = 300.0 + count as f64 * 12.0;
        let (cx, cy, r) = (size / 2.0, size / 2.0, size / 2.0 - 140.0);
        let pos = |i: usize| {
            let a = i as f64 / count.max(1) as f64 * std::f64::consts::TAU;
            (cx + r * a.cos(), cy + r * a.sin(), a)
        };
        writeln!(out, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{size:.0}\" height=\"{size:.0}\">")?;
        writeln!(out, "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"6\" markerHeight=\"6\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"#4a7\"/></marker></defs>")?;
        for (s, d, label) in &edges {
            let ((x1, y1, _), (x2, y2, _)) = (pos(nodes[s]), pos(nodes[d]));
            writeln!(
                out,
                "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" marker-end=\"url(#arrow)\"><title>{} → {}: {}</title></line>",
                esc(s),
                esc(d),
                esc(label)
            )?;
        }
        for (name, &i) in &nodes {
            let (x, y, a) = pos(i);
            let deg = a.to_degrees();
            let (rot, anchor) = if (90.0..270.0).contains(&deg) { (deg + 180.0, "end") } else { (deg, "start") };
            writeln!(
                out,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"#246\"><title>{n}</title></circle><text x=\"{x:.1}\" y=\"{y:.1}\" dx=\"{dx}\" text-anchor=\"{anchor}\" transform=\"rotate({rot:.1} {x:.1} {y:.1})\">{n}</text>",
                n = esc(name),
                dx = if anchor == "start" { 8 } else { -8 },
            )?;
        }
        writeln!(out, "</svg>")?;
    } else {
        writeln!(out, "<p>{count} nodes: too many to draw usefully; use the table below.</p>")?;
    }
    writeln!(out, "<h2>Allowed connections</h2><p><input id=\"q\" placeholder=\"filter: namespace, endpoint or port\" oninput=\"f()\"></p>")?;
    writeln!(
        out,
        "<table id=\"t\"><thead><tr><th>source</th><th>destination</th><th>connections</th></tr></thead><tbody>"
    )?;
    for row in rows {
        writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&names.describe(&row.sources)),
            esc(&names.describe(&row.destinations)),
            esc(&row.connections.to_string())
        )?;
    }
    writeln!(out, "</tbody></table>")?;
    writeln!(
        out,
        "<script>function f(){{var q=document.getElementById('q').value.toLowerCase();for(const r of document.querySelectorAll('#t tbody tr')){{r.style.display=r.textContent.toLowerCase().includes(q)?'':'none'}}}}</script></body></html>"
    )
}
