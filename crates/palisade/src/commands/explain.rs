//! `palisade explain`: why one connection is allowed or denied.

use std::io::Write;

use anyhow::Result;
use palisade_engine::{Engine, Flow, FlowEnd};
use palisade_model::EndpointKey;

use crate::cli::{ExplainArgs, TextOrJson};
use crate::input::{load_input, parse_probe, Failure, Ui};

/// The flow end `s` names and, when it names one pod of an endpoint (by
/// name or address), that pod.
fn resolve(engine: &Engine, s: &str) -> Result<(FlowEnd, Option<String>), Failure> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        // A pod's address is that pod: its policies apply. hostNetwork
        // pods share their node's: name one of them.
        let holders: Vec<_> = engine.endpoints().filter(|(_, e)| e.ips.contains(&ip)).collect();
        return match holders.as_slice() {
            [] => Ok((FlowEnd::Address(ip), None)),
            [(id, _)] => Ok((FlowEnd::Endpoint(*id), Some(ip.to_string()))),
            many => Err(Failure::Usage(format!(
                "{s}: the address of {}: name one of them",
                many.iter().map(|(_, e)| e.key.to_string()).collect::<Vec<_>>().join(", ")
            ))),
        };
    }
    let key = EndpointKey::parse(s);
    if let Some(id) = engine.endpoint_id(&key) {
        let pod = key.kind.is_none().then(|| key.to_string());
        return Ok((FlowEnd::Endpoint(id), pod));
    }
    // `ns/name` also finds a workload `ns/name[Kind]` when only one has
    // that name, and the endpoint a pod `ns/name` is part of;
    // `ns/name[Kind]` finds the one variant of a workload.
    let candidates: Vec<_> = engine
        .endpoints()
        .filter(|(_, e)| {
            e.key.namespace == key.namespace
                && match &key.kind {
                    None => e.key.name == key.name || e.pods.contains(&key.name),
                    Some(kind) => e.key.name == key.name && e.key.kind.as_ref() == Some(kind) && key.variant.is_none(),
                }
        })
        .map(|(id, _)| id)
        .collect();
    let pod = (key.kind.is_none()).then(|| format!("{}/{}", key.namespace, key.name));
    match candidates.as_slice() {
        [one] if engine.endpoint(*one).pods.contains(&key.name) => Ok((FlowEnd::Endpoint(*one), pod)),
        [one] => Ok((FlowEnd::Endpoint(*one), None)),
        [] => Err(Failure::Usage(format!("{s:?}: no such endpoint (write ns/name, ns/name[Kind], or an IP address)"))),
        many => Err(Failure::Usage(format!(
            "{s:?} is ambiguous: {}",
            many.iter().map(|id| engine.endpoint(*id).key.to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

pub fn run(args: &ExplainArgs, ui: &Ui, out: &mut dyn Write) -> Result<()> {
    let (protocol, port) = parse_probe(&args.port)?;
    let (_, engine) = load_input(&args.input, ui)?;
    let ((src, src_pod), (dst, dst_pod)) = (resolve(&engine, &args.src)?, resolve(&engine, &args.dst)?);
    let flow = Flow { src, dst, protocol, port };
    // One pod named on both ends (by name or address), though its
    // endpoint is a workload's: the engine's rule for a pod to itself.
    let e = if src == dst && src_pod.is_some() && src_pod == dst_pod {
        engine.explain_pod_to_itself(&flow)
    } else {
        engine.explain(&flow)
    };
    if args.format == TextOrJson::Json {
        serde_json::to_writer_pretty(&mut *out, &e)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{} -> {} {}/{}: {}",
        e.source,
        e.destination,
        protocol.as_lower(),
        port,
        if e.allowed { "ALLOWED" } else { "DENIED" }
    )?;
    for side in [&e.egress, &e.ingress] {
        let what = match side.direction {
            palisade_model::Direction::Egress => "egress from",
            palisade_model::Direction::Ingress => "ingress to",
        };
        let summary = match side.decision {
            "external" => "outside the cluster: no policy applies".to_string(),
            "self" => "an endpoint's traffic to itself never leaves its network namespace: allowed".to_string(),
            "node-local" => "traffic between a pod and its own node is always allowed".to_string(),
            "not-isolated" => "no policy selects it for this direction: allowed".to_string(),
            "allowed" => format!("isolated by {} policy(ies); allowed", side.policies.len()),
            _ => format!("isolated by {} policy(ies); no rule allows it: DENIED", side.policies.len()),
        };
        writeln!(out, "\n{what} {}: {summary}", side.endpoint)?;
        for p in &side.policies {
            writeln!(out, "  NetworkPolicy {}", p.policy)?;
            if p.rules.is_empty() {
                writeln!(out, "    (no {} rules: denies all)", side.direction)?;
            }
            for r in &p.rules {
                writeln!(out, "    rule {}: {} - {}", r.index, if r.allows { "allows" } else { "no match" }, r.reason)?;
            }
        }
    }
    Ok(())
}
