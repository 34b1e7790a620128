//! `palisade analyze`: the connectivity of a cluster, grouped for people or
//! per pair for programs.

use std::io::Write;

use anyhow::Result;
use palisade_engine::{Engine, Flow, FlowEnd, Matrix, SideVerdict};
use serde_json::json;

use crate::cli::{AnalyzeArgs, AnalyzeFormat};
use crate::input::{endpoint_matches, load_input, parse_probe, Failure, Ui};
use crate::output::{self, Names};

pub fn run(args: &AnalyzeArgs, ui: &Ui, out: &mut dyn Write) -> Result<()> {
    let probes = args.ports.iter().map(|p| parse_probe(p)).collect::<Result<Vec<_>, _>>()?;
    let (_, engine) = load_input(&args.input, ui)?;
    let matrix = Matrix::compute(&engine);
    let names = Names::new(&engine, &matrix);
    let keep = |patterns: &[String], i: usize| {
        patterns.is_empty() || patterns.iter().any(|p| endpoint_matches(p, engine.endpoint(matrix.endpoints[i])))
    };
    let n = matrix.endpoints.len();
    let sources: Vec<usize> = (0..n).filter(|&i| keep(&args.from, i)).collect();
    let destinations: Vec<usize> = (0..n).filter(|&i| keep(&args.to, i)).collect();
    for (patterns, list, flag) in [(&args.from, &sources, "--from"), (&args.to, &destinations, "--to")] {
        if !patterns.is_empty() && list.is_empty() {
            return Err(Failure::Usage(format!("{flag} {}: matches no endpoint", patterns.join(" "))).into());
        }
    }
    if !probes.is_empty() {
        return per_probe(args.format, &engine, &matrix, &names, &sources, &destinations, &probes, out);
    }
    match args.format {
        AnalyzeFormat::Tsv => {
            writeln!(out, "src\tdst\tconnections")?;
            for &i in &sources {
                for &j in destinations.iter().filter(|&&j| j != i) {
                    let c = matrix.get(i, j);
                    if !c.is_none() {
                        writeln!(
                            out,
                            "{}\t{}\t{}",
                            output::tsv_field(&names.names[i]),
                            output::tsv_field(&names.names[j]),
                            c
                        )?;
                    }
                }
            }
        }
        AnalyzeFormat::Json => {
            let mut pairs = Vec::new();
            for &i in &sources {
                for &j in destinations.iter().filter(|&&j| j != i) {
                    let c = matrix.get(i, j);
                    if !c.is_none() {
                        pairs.push(json!({"src": names.names[i], "dst": names.names[j], "connections": c}));
                    }
                }
            }
            let doc = json!({"endpoints": names.names, "connections": pairs});
            serde_json::to_writer_pretty(&mut *out, &doc)?;
            writeln!(out)?;
        }
        format => {
            let rows = filtered_rows(&matrix, &engine, &sources, &destinations);
            match format {
                AnalyzeFormat::Table => {
                    let table: Vec<Vec<String>> = rows
                        .iter()
                        .map(|r| {
                            vec![names.describe(&r.sources), names.describe(&r.destinations), r.connections.to_string()]
                        })
                        .collect();
                    output::table::write(out, &["SOURCE", "DESTINATION", "CONNECTIONS"], &table)?;
                    ui.note(&format!(
                        "{} endpoints in {} classes; pairs not listed have no connection; a pod can always reach itself",
                        n,
                        matrix.class_count()
                    ));
                }
                AnalyzeFormat::Dot => output::dot::write(out, &names, &rows)?,
                AnalyzeFormat::Html => output::html::write(out, "Palisade: cluster connectivity", &names, &rows)?,
                AnalyzeFormat::Tsv | AnalyzeFormat::Json => unreachable!(),
            }
        }
    }
    Ok(())
}

fn filtered_rows(
    matrix: &Matrix,
    engine: &Engine,
    sources: &[usize],
    destinations: &[usize],
) -> Vec<palisade_engine::GroupRow> {
    let all = sources.len() == matrix.endpoints.len() && destinations.len() == matrix.endpoints.len();
    let mut rows = matrix.grouped(engine);
    if !all {
        let (s, d): (std::collections::HashSet<usize>, std::collections::HashSet<usize>) =
            (sources.iter().copied().collect(), destinations.iter().copied().collect());
        for r in &mut rows {
            r.sources.retain(|i| s.contains(i));
            r.destinations.retain(|i| d.contains(i));
        }
        rows.retain(|r| !r.sources.is_empty() && !r.destinations.is_empty());
    }
    rows
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

#[allow(clippy::too_many_arguments)]
fn per_probe(
    format: AnalyzeFormat,
    engine: &Engine,
    matrix: &Matrix,
    names: &Names,
    sources: &[usize],
    destinations: &[usize],
    probes: &[(palisade_model::Protocol, u16)],
    out: &mut dyn Write,
) -> Result<()> {
    let verdict = |i: usize, j: usize, (proto, port): (palisade_model::Protocol, u16)| {
        if matrix.get(i, j).contains(proto, port) {
            "allow"
        } else {
            "deny"
        }
    };
    let pairs =
        || sources.iter().flat_map(move |&i| destinations.iter().filter(move |&&j| j != i).map(move |&j| (i, j)));
    match format {
        AnalyzeFormat::Tsv => {
            writeln!(out, "src\tdst\tprotocol\tport\tverdict")?;
            for (i, j) in pairs() {
                for &probe in probes {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}",
                        names.names[i],
                        names.names[j],
                        probe.0.as_lower(),
                        probe.1,
                        verdict(i, j, probe)
                    )?;
                }
            }
        }
        AnalyzeFormat::Json => {
            let mut rows = Vec::new();
            for (i, j) in pairs() {
                for &(protocol, port) in probes {
                    let flow = Flow {
                        src: FlowEnd::Endpoint(matrix.endpoints[i]),
                        dst: FlowEnd::Endpoint(matrix.endpoints[j]),
                        protocol,
                        port,
                    };
                    let v = engine.verdict(&flow);
                    rows.push(json!({
                        "src": names.names[i], "dst": names.names[j], "protocol": protocol.as_lower(), "port": port,
                        "verdict": if v.allowed { "allow" } else { "deny" },
                        "egress": {"decision": v.egress.name(), "policies": deciding_policies(engine, &v.egress)},
                        "ingress": {"decision": v.ingress.name(), "policies": deciding_policies(engine, &v.ingress)},
                    }));
                }
            }
            serde_json::to_writer_pretty(&mut *out, &rows)?;
            writeln!(out)?;
        }
        AnalyzeFormat::Table => {
            let probe_names: Vec<String> = probes.iter().map(|(p, n)| format!("{}/{n}", p.as_lower())).collect();
            let mut header = vec!["SRC", "DST"];
            header.extend(probe_names.iter().map(String::as_str));
            let rows: Vec<Vec<String>> = pairs()
                .map(|(i, j)| {
                    let mut row = vec![names.names[i].clone(), names.names[j].clone()];
                    row.extend(probes.iter().map(|&p| verdict(i, j, p).to_string()));
                    row
                })
                .collect();
            output::table::write(out, &header, &rows)?;
        }
        AnalyzeFormat::Dot | AnalyzeFormat::Html => {
            return Err(Failure::Usage("--port gives per-probe verdicts: use -o table, tsv or json".into()).into())
        }
    }
    Ok(())
}
