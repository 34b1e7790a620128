//! `palisade analyze`: the connectivity of a cluster and of the outside
//! world to and from it, grouped (every format, by default) or per pair
//! (`--pairs`, streamed), or per probe (`--port`).

use std::io::Write;
use std::net::IpAddr;

use anyhow::Result;
use palisade_engine::{Engine, Flow, FlowEnd, Matrix, SideVerdict};
use serde_json::json;

use crate::cli::{AnalyzeArgs, AnalyzeFormat};
use crate::input::{endpoint_matches, load_input, parse_probe, Failure, Ui};
use crate::output::{self, table, Names};

/// A chosen row or column: a matrix member, and for `--port`, the exact
/// outside address asked for (the verdict is its range's; the name is its own).
#[derive(Clone, Copy)]
struct Pick {
    member: usize,
    address: Option<IpAddr>,
}

/// The members a list of `--from`/`--to` patterns selects (all when empty).
fn select(patterns: &[String], flag: &str, engine: &Engine, matrix: &Matrix) -> Result<Vec<Pick>, Failure> {
    let all = |member| Pick { member, address: None };
    if patterns.is_empty() {
        return Ok((0..matrix.len()).map(all).collect());
    }
    // (member, address): several addresses of one outside range are several picks.
    let mut picked: std::collections::BTreeSet<(usize, Option<IpAddr>)> = std::collections::BTreeSet::new();
    for pattern in patterns {
        if let Ok(ip) = pattern.parse::<IpAddr>() {
            // A pod's address is that pod, as in `explain` (hostNetwork
            // pods share their node's: every one of them).
            let before = picked.len();
            for (i, id) in matrix.endpoints.iter().enumerate() {
                if engine.endpoint(*id).ips.contains(&ip) {
                    picked.insert((i, None));
                }
            }
            if picked.len() == before {
                let k = (matrix.endpoints.len()..matrix.len()).find(|&k| matrix.external(k).unwrap().contains(ip));
                if let Some(k) = k {
                    picked.insert((k, Some(ip)));
                }
            }
        } else if let Ok(net) = pattern.parse::<ipnet::IpNet>() {
            for i in 0..matrix.len() {
                let hit = match matrix.external(i) {
                    Some(range) => range.overlaps(&net),
                    None => engine.endpoint(matrix.endpoints[i]).ips.iter().any(|ip| net.contains(ip)),
                };
                if hit {
                    picked.insert((i, None));
                }
            }
        } else {
            for (i, id) in matrix.endpoints.iter().enumerate() {
                if endpoint_matches(pattern, engine.endpoint(*id)) {
                    picked.insert((i, None));
                }
            }
            if pattern == "*" {
                picked.extend((matrix.endpoints.len()..matrix.len()).map(|k| (k, None)));
            }
        }
    }
    if picked.is_empty() {
        return Err(Failure::Usage(format!("{flag} {}: matches no endpoint or outside range", patterns.join(" "))));
    }
    Ok(picked.into_iter().map(|(member, address)| Pick { member, address }).collect())
}

pub fn run(args: &AnalyzeArgs, ui: &Ui, out: &mut dyn Write) -> Result<()> {
    let probes = args.ports.iter().map(|p| parse_probe(p)).collect::<Result<Vec<_>, _>>()?;
    if args.pairs && !matches!(args.format, AnalyzeFormat::Tsv | AnalyzeFormat::Json | AnalyzeFormat::Jsonl) {
        return Err(Failure::Usage("--pairs writes one row per pair: use -o tsv, json or jsonl".into()).into());
    }
    if args.pairs && !probes.is_empty() {
        return Err(Failure::Usage("--port already gives one row per pair and probe: drop --pairs".into()).into());
    }
    let (_, engine) = load_input(&args.input, ui)?;
    let matrix = Matrix::compute(&engine);
    let names = Names::new(&engine, &matrix);
    let sources = select(&args.from, "--from", &engine, &matrix)?;
    let destinations = select(&args.to, "--to", &engine, &matrix)?;
    let view = View { engine: &engine, matrix: &matrix, names: &names, sources: &sources, destinations: &destinations };
    if !probes.is_empty() {
        return per_probe(args.format, &view, &probes, out);
    }
    if args.pairs {
        return per_pair(args.format, &view, out);
    }
    let rows = filtered_rows(&matrix, &engine, &sources, &destinations);
    let items = |r: &palisade_engine::GroupRow| (names.items(&r.sources), names.items(&r.destinations));
    match args.format {
        AnalyzeFormat::Table => {
            let cells: Vec<Vec<Vec<String>>> = rows
                .iter()
                .map(|r| {
                    let (s, d) = items(r);
                    vec![
                        table::wrap_items(&s, table::CELL_WIDTH, table::CELL_LINES),
                        table::wrap_items(&d, table::CELL_WIDTH, table::CELL_LINES),
                        vec![r.connections.to_string()],
                    ]
                })
                .collect();
            table::write_multiline(out, &["SOURCE", "DESTINATION", "CONNECTIONS"], &cells)?;
            ui.note(&format!(
                "{} endpoints in {} classes, and {} range(s) of addresses outside the cluster (cut by the policies' \
                 ipBlocks); pairs not listed have no connection; a pod can always reach itself",
                matrix.endpoints.len(),
                matrix.class_count() - matrix.externals.len(),
                matrix.externals.len()
            ));
        }
        AnalyzeFormat::Tsv => {
            writeln!(out, "sources\tdestinations\tconnections")?;
            for r in &rows {
                let (s, d) = items(r);
                let (s, d) = (output::tsv_field(&s.join(", ")), output::tsv_field(&d.join(", ")));
                writeln!(out, "{s}\t{d}\t{}", r.connections)?;
            }
        }
        AnalyzeFormat::Json => {
            // Streamed: the head, then one row at a time.
            write!(out, "{{\n  \"endpoints\": ")?;
            serde_json::to_writer(&mut *out, &names.names[..names.endpoint_count()])?;
            write!(out, ",\n  \"external\": ")?;
            let external: Vec<_> = matrix
                .externals
                .iter()
                .zip(names.externals())
                .map(|(r, name)| {
                    let intervals: Vec<[String; 2]> =
                        r.intervals.iter().map(|(a, b)| [a.to_string(), b.to_string()]).collect();
                    json!({"name": name, "intervals": intervals})
                })
                .collect();
            serde_json::to_writer(&mut *out, &external)?;
            write!(out, ",\n  \"connections\": [")?;
            for (k, r) in rows.iter().enumerate() {
                let (s, d) = items(r);
                write!(out, "{}\n    ", if k == 0 { "" } else { "," })?;
                serde_json::to_writer(
                    &mut *out,
                    &json!({"sources": s, "destinations": d, "connections": r.connections}),
                )?;
            }
            writeln!(out, "\n  ]\n}}")?;
        }
        AnalyzeFormat::Jsonl => {
            for r in &rows {
                let (s, d) = items(r);
                serde_json::to_writer(
                    &mut *out,
                    &json!({"sources": s, "destinations": d, "connections": r.connections}),
                )?;
                writeln!(out)?;
            }
        }
        AnalyzeFormat::Dot => output::dot::write(out, &names, &rows)?,
        AnalyzeFormat::Html => output::html::write(out, "Palisade: cluster connectivity", &names, &rows)?,
    }
    Ok(())
}

fn filtered_rows(
    matrix: &Matrix,
    engine: &Engine,
    sources: &[Pick],
    destinations: &[Pick],
) -> Vec<palisade_engine::GroupRow> {
    let all = sources.len() == matrix.len() && destinations.len() == matrix.len();
    let mut rows = matrix.grouped(engine);
    if !all {
        let (s, d): (std::collections::HashSet<usize>, std::collections::HashSet<usize>) =
            (sources.iter().map(|p| p.member).collect(), destinations.iter().map(|p| p.member).collect());
        for r in &mut rows {
            r.sources.retain(|i| s.contains(i));
            r.destinations.retain(|i| d.contains(i));
        }
        rows.retain(|r| !r.sources.is_empty() && !r.destinations.is_empty());
    }
    rows
}

/// Every ordered pair with a connection, one per line as it is found:
/// memory stays flat whatever the number of pairs.
/// The analysis and the chosen rows and columns: what the per-pair and
/// per-probe forms walk.
struct View<'a> {
    engine: &'a Engine,
    matrix: &'a Matrix,
    names: &'a Names,
    sources: &'a [Pick],
    destinations: &'a [Pick],
}

impl View<'_> {
    /// A pick's name: the address asked for, or the member's name.
    fn name(&self, p: &Pick) -> String {
        p.address.map(|a| a.to_string()).unwrap_or_else(|| self.names.names[p.member].clone())
    }

    /// The ordered pairs to show: not two outside ranges, not a pod with
    /// itself; a workload with itself is traffic between its replicas.
    fn pairs(&self) -> impl Iterator<Item = (&Pick, &Pick)> + '_ {
        let n = self.matrix.endpoints.len();
        let shown = move |s: &Pick, d: &Pick| {
            if s.member >= n && d.member >= n {
                return false;
            }
            s.member != d.member
                || (s.member < n && !self.engine.endpoint(self.matrix.endpoints[s.member]).is_one_pod())
        };
        self.sources
            .iter()
            .flat_map(move |s| self.destinations.iter().filter(move |d| shown(s, d)).map(move |d| (s, d)))
    }
}

fn per_pair(format: AnalyzeFormat, view: &View, out: &mut dyn Write) -> Result<()> {
    let matrix = view.matrix;
    match format {
        AnalyzeFormat::Tsv => writeln!(out, "src\tdst\tconnections")?,
        AnalyzeFormat::Json => write!(out, "[")?,
        _ => {}
    }
    let mut first = true;
    for (s, d) in view.pairs() {
        let c = matrix.get(s.member, d.member);
        if c.is_none() {
            continue;
        }
        let (src, dst) = (view.name(s), view.name(d));
        match format {
            AnalyzeFormat::Tsv => {
                writeln!(out, "{}\t{}\t{c}", output::tsv_field(&src), output::tsv_field(&dst))?;
            }
            _ => {
                if format == AnalyzeFormat::Json {
                    write!(out, "{}\n  ", if first { "" } else { "," })?;
                }
                serde_json::to_writer(&mut *out, &json!({"src": src, "dst": dst, "connections": c}))?;
                if format == AnalyzeFormat::Jsonl {
                    writeln!(out)?;
                }
            }
        }
        first = false;
    }
    if format == AnalyzeFormat::Json {
        writeln!(out, "\n]")?;
    }
    Ok(())
}

/// The names of the policies that decided one side of a flow.
pub fn deciding_policies(engine: &Engine, side: &SideVerdict) -> Vec<String> {
    let name = |id| {
        let p = engine.policy(id);
        format!("{}/{}", p.namespace, p.name)
    };
    let mut v: Vec<String> = match side {
        SideVerdict::Allowed { rules } => rules.iter().map(|r| name(r.policy)).collect(),
        SideVerdict::Denied { policies } => policies.iter().map(|p| name(*p)).collect(),
        _ => Vec::new(),
    };
    v.dedup();
    v
}

fn per_probe(
    format: AnalyzeFormat,
    view: &View,
    probes: &[(palisade_model::Protocol, u16)],
    out: &mut dyn Write,
) -> Result<()> {
    let (engine, matrix) = (view.engine, view.matrix);
    let (sources, destinations) = (view.sources, view.destinations);
    let name = |p: &Pick| view.name(p);
    let end = |p: &Pick| p.address.map(FlowEnd::Address).unwrap_or_else(|| matrix.end(p.member));
    // An outside address's verdicts are its range's (the ranges are cut so).
    let verdict = |s: &Pick, d: &Pick, (proto, port): (palisade_model::Protocol, u16)| {
        if matrix.get(s.member, d.member).contains(proto, port) {
            "allow"
        } else {
            "deny"
        }
    };
    let pairs = || view.pairs();
    match format {
        AnalyzeFormat::Tsv => {
            writeln!(out, "src\tdst\tprotocol\tport\tverdict")?;
            for (s, d) in pairs() {
                for &probe in probes {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}",
                        name(s),
                        name(d),
                        probe.0.as_lower(),
                        probe.1,
                        verdict(s, d, probe)
                    )?;
                }
            }
        }
        AnalyzeFormat::Json | AnalyzeFormat::Jsonl => {
            let json = format == AnalyzeFormat::Json;
            if json {
                write!(out, "[")?;
            }
            let mut first = true;
            for (s, d) in pairs() {
                for &(protocol, port) in probes {
                    let v = engine.verdict(&Flow { src: end(s), dst: end(d), protocol, port });
                    let row = json!({
                        "src": name(s), "dst": name(d), "protocol": protocol.as_lower(), "port": port,
                        "verdict": if v.allowed { "allow" } else { "deny" },
                        "egress": {"decision": v.egress.name(), "policies": deciding_policies(engine, &v.egress)},
                        "ingress": {"decision": v.ingress.name(), "policies": deciding_policies(engine, &v.ingress)},
                    });
                    if json {
                        let text = serde_json::to_string_pretty(&row)?.replace('\n', "\n  ");
                        write!(out, "{}\n  {text}", if first { "" } else { "," })?;
                    } else {
                        serde_json::to_writer(&mut *out, &row)?;
                        writeln!(out)?;
                    }
                    first = false;
                }
            }
            if json {
                writeln!(out, "\n]")?;
            }
        }
        AnalyzeFormat::Table => {
            // Widths from the names, then rows as they come.
            let probe_names: Vec<String> = probes.iter().map(|(p, n)| format!("{}/{n}", p.as_lower())).collect();
            let width = |picks: &[Pick], title: &str| {
                picks.iter().map(|p| name(p).chars().count()).max().unwrap_or(0).max(title.len())
            };
            let (ws, wd) = (width(sources, "SRC"), width(destinations, "DST"));
            let line = |out: &mut dyn Write, s: &str, d: &str, cells: &[String]| -> std::io::Result<()> {
                let mut text = format!("{s:<ws$}  {d:<wd$}");
                for (cell, title) in cells.iter().zip(&probe_names) {
                    text.push_str(&format!("  {cell:<w$}", w = title.len().max(5)));
                }
                writeln!(out, "{}", text.trim_end())
            };
            line(out, "SRC", "DST", &probe_names)?;
            for (s, d) in pairs() {
                let cells: Vec<String> = probes.iter().map(|&p| verdict(s, d, p).to_string()).collect();
                line(out, &name(s), &name(d), &cells)?;
            }
        }
        AnalyzeFormat::Dot | AnalyzeFormat::Html => {
            return Err(
                Failure::Usage("--port gives per-probe verdicts: use -o table, tsv, json or jsonl".into()).into()
            )
        }
    }
    Ok(())
}
