//! `palisade bench dataplane`: what enforcement costs, measured in a lab.
//! Between two pods on different nodes and two on the same node: TCP
//! throughput, request/response rate (RR) and new connections per second
//! (CRR), with no filtering, with a stateful accept-all table (the
//! conntrack floor), and with Palisade's rules compiled to N peer entries.
//! Then the time to apply a full ruleset and a single-pod change on a
//! generated cluster. Ratios are against floors measured in the same run.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use palisade_dataplane::netns::{Netns, OwnedNetns};
use palisade_dataplane::nfnetlink::NetlinkSession;
use palisade_dataplane::{sender, DenyAction, NodeCompiler, Options};
use palisade_engine::Engine;
use palisade_lab::probe::{connect_tcp, echo};
use palisade_lab::{Lab, LabOptions};
use palisade_model::{parse_sources, Cluster, Endpoint, EndpointKey, Source};

use super::lab::require_root;
use crate::cli::BenchDataplaneArgs;
use crate::gen::{generate, Spec};

const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench, labels: {role: client}}
spec: {nodeName: node-a, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: near, namespace: bench, labels: {role: server}}
spec: {nodeName: node-a, containers: [{name: c, image: i, ports: [{containerPort: 5001}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: far, namespace: bench, labels: {role: server}}
spec: {nodeName: node-b, containers: [{name: c, image: i, ports: [{containerPort: 5001}]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: servers, namespace: bench}
spec:
  podSelector: {matchLabels: {role: server}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}], ports: [{port: 5001}, {port: 5003}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: clients, namespace: bench}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {role: server}}}], ports: [{port: 5001}, {port: 5003}]}]
";

/// The port of the bench's own one-way sink in each server pod (the lab's
/// servers echo, which halves and muddles a throughput figure).
const SINK_PORT: u16 = 5003;

/// A sink in a server pod: reads every connection to the end with a large
/// buffer and counts the bytes, so throughput is measured at the receiver.
struct Sink {
    received: Arc<AtomicU64>,
}

/// Client -> one server: its echo port (RR, CRR) and its sink (throughput).
pub(super) struct BenchPath {
    pub(super) name: &'static str,
    echo: SocketAddr,
    sink_addr: SocketAddr,
    sink: Sink,
}

impl BenchPath {
    pub(super) fn measure(&self, client: &Netns, secs: f64) -> Result<Rates> {
        measure(client, self.echo, (self.sink_addr, &self.sink), secs)
    }
}

impl Sink {
    fn start(pod: &Netns, addr: SocketAddr) -> Result<Sink> {
        let listener = pod.enter(|| std::net::TcpListener::bind(addr))?.context("sink bind")?;
        let received = Arc::new(AtomicU64::new(0));
        let count = received.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let count = count.clone();
                std::thread::spawn(move || {
                    // The greeting `connect_tcp` waits for, as the lab's servers send.
                    if conn.write_all(b"sink\n").is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; 1 << 20];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        Ok(Sink { received })
    }
}

#[derive(Clone, Copy)]
pub(super) struct Rates {
    pub(super) gbits: f64,
    pub(super) rr: f64,
    pub(super) crr: f64,
    /// Machine CPU time (all cores, user + system + interrupts) per request
    /// and per new connection, in microseconds. Client, server and kernel
    /// all run here, so this is the whole cost of an operation; it is less
    /// sensitive to scheduling noise than a rate.
    pub(super) cpu_rr: f64,
    pub(super) cpu_crr: f64,
}

/// Busy CPU time of the whole machine so far, in microseconds, from
/// /proc/stat (user, nice, system, irq, softirq; USER_HZ is 100 on Linux).
fn busy_us() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let get = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    (get(0) + get(1) + get(2) + get(5) + get(6)) * 10_000.0
}

fn measure(src: &Netns, dst: SocketAddr, sink: (SocketAddr, &Sink), secs: f64) -> Result<Rates> {
    let window = Duration::from_secs_f64(secs);
    // Request/response on one connection.
    let (mut conn, _) = connect_tcp(src, dst, Duration::from_secs(2)).context("RR connect")?;
    conn.set_nodelay(true)?;
    let start = Instant::now();
    let cpu = busy_us();
    let mut n = 0u64;
    while start.elapsed() < window {
        echo(&mut conn, "x")?;
        n += 1;
    }
    let rr = n as f64 / start.elapsed().as_secs_f64();
    let cpu_rr = (busy_us() - cpu) / n as f64;
    drop(conn);
    // New connections: connect, read the greeting, close.
    let start = Instant::now();
    let cpu = busy_us();
    let mut n = 0u64;
    while start.elapsed() < window {
        connect_tcp(src, dst, Duration::from_secs(2)).context("CRR connect")?;
        n += 1;
    }
    let crr = n as f64 / start.elapsed().as_secs_f64();
    let cpu_crr = (busy_us() - cpu) / n as f64;
    // Throughput: one way into the sink, counted where it arrives.
    let (mut conn, _) = connect_tcp(src, sink.0, Duration::from_secs(2)).context("stream connect")?;
    let chunk = vec![b'a'; 256 * 1024];
    let before = sink.1.received.load(Ordering::Relaxed);
    let start = Instant::now();
    while start.elapsed() < window {
        conn.write_all(&chunk)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let bytes = sink.1.received.load(Ordering::Relaxed) - before;
    drop(conn);
    Ok(Rates { gbits: bytes as f64 * 8.0 / elapsed / 1e9, rr, crr, cpu_rr, cpu_crr })
}

/// Phantom pods matched by the client selector: peer entries in the
/// server's ingress set, with addresses no lab pod uses.
fn phantoms(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint {
            key: EndpointKey::pod("bench", &format!("phantom-{i}")),
            labels: [("role".to_string(), "client".to_string())].into_iter().collect(),
            ips: vec![std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a64_0000u32 + i as u32))],
            ports: vec![],
            host_network: false,
            node: Some("elsewhere".into()),
            pods: vec![format!("phantom-{i}")],
            uid: None,
        })
        .collect()
}

/// Attaches (`on`) or removes the sender check on every lab pod's veth:
/// part of Palisade's cost, absent from the floors.
pub(super) fn set_sender_checks(lab: &Lab, on: bool) -> Result<()> {
    let plan = &lab.topology.plan;
    for pod in &plan.pods {
        let ns = lab.topology.node_netns(pod.node);
        if on {
            sender::attach_in(&ns, &pod.host_if, &pod.ips)?;
        } else {
            sender::detach_in(&ns, &pod.host_if)?;
            // What counts is that none is left.
            anyhow::ensure!(
                !sender::is_attached_in(&ns, &pod.host_if, &pod.ips)?,
                "{}: sender check left on {}",
                ns.name,
                pod.host_if
            );
        }
    }
    Ok(())
}

fn set_floor(lab: &Lab, floor: &str) -> Result<()> {
    set_sender_checks(lab, false)?;
    for n in 0..lab.topology.plan.nodes.len() {
        let ns = lab.topology.node_netns(n);
        let _ = ns.exec("nft", &["delete", "table", "inet", "palisade"], None);
        if floor == "conntrack" {
            ns.exec(
                "nft",
                &["-f", "-"],
                Some(
                    "table inet palisade {\n chain forward {\n  type filter hook forward priority filter; policy accept;\n  \
                     ct state established,related accept\n  ct state invalid drop\n }\n}\n",
                ),
            )?;
        }
    }
    Ok(())
}

/// Pins every thread of this process to `cpu`; threads started later
/// inherit it from the thread that starts them.
fn pin_to_cpu(cpu: usize) -> Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    for task in std::fs::read_dir("/proc/self/task").context("/proc/self/task")? {
        let tid: i32 = task?.file_name().to_string_lossy().parse().context("thread id")?;
        sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set)
            .with_context(|| format!("pinning thread {tid} to CPU {cpu}"))?;
    }
    Ok(())
}

pub fn run(args: &BenchDataplaneArgs, out: &mut dyn Write) -> Result<()> {
    require_root()?;
    if let Some(cpu) = args.cpu {
        pin_to_cpu(cpu)?;
    }
    let (cluster, problems, _) =
        Cluster::from_manifests(parse_sources(&[Source { name: "bench.yaml".into(), text: PODS.into() }]));
    anyhow::ensure!(problems.is_empty(), "{problems:?}");
    let opts = LabOptions { deny: DenyAction::Drop, ..LabOptions::default() };
    let run_id = format!("{}b", std::process::id());
    let mut lab = Lab::start(&cluster, &run_id, &[], opts, |_, _| {})?;
    let plan = lab.topology.plan.clone();
    let pod = |name: &str| plan.pods.iter().find(|p| p.key.name == name).expect("bench pod");
    let client = Netns::named(&pod("client").netns);
    // Thousands of new connections a second leave the client's ports in
    // TIME_WAIT; without reuse the port search, not the dataplane, would
    // set the pace of every configuration after the first.
    client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    client.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    let mut paths = Vec::new();
    for (name, server) in [("same node", "near"), ("cross node", "far")] {
        let ip = pod(server).ips[0];
        let sink_addr = SocketAddr::new(ip, SINK_PORT);
        let sink = Sink::start(&Netns::named(&pod(server).netns), sink_addr)?;
        paths.push(BenchPath { name, echo: SocketAddr::new(ip, 5001), sink_addr, sink });
    }

    if let Some(cpu) = args.cpu {
        // Again: threads the lab and the sinks started are pinned too.
        pin_to_cpu(cpu)?;
        writeln!(out, "client, servers and sinks pinned to CPU {cpu}")?;
    }
    let mut configs: Vec<(String, Option<usize>)> =
        vec![("no filtering".into(), None), ("conntrack only".into(), None)];
    for n in &args.entries {
        configs.push((format!("palisade, {n} entries"), Some(*n)));
    }
    if args.paired {
        super::bench_paired::paired(&mut lab, &cluster, &paths, args, out)?;
        drop(lab);
        return apply_times_unless_skipped(args, out);
    }
    if args.interleave {
        interleaved(&mut lab, &cluster, &configs, &paths, args, out)?;
        drop(lab);
        return apply_times_unless_skipped(args, out);
    }
    writeln!(
        out,
        "dataplane bench: {} rounds of {:.1} s per measurement; rates are medians",
        args.rounds, args.seconds
    )?;
    writeln!(
        out,
        "{:<12} {:<26} {:>9} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "path",
        "configuration",
        "Gbit/s",
        "RR/s",
        "CRR/s",
        "RR/ct",
        "CRR/ct",
        "Gbit/ct",
        "us/RR",
        "us/CRR",
        "ct/RRcpu",
        "ct/CRRcpu"
    )?;
    for bench_path in &paths {
        let path = bench_path.name;
        let mut floor: Option<Rates> = None;
        for (name, entries) in &configs {
            set_config(&mut lab, &cluster, name, *entries)?;
            let mut samples = Vec::new();
            for _ in 0..args.rounds {
                samples.push(bench_path.measure(&client, args.seconds)?);
            }
            let med = |f: fn(&Rates) -> f64| {
                let mut v: Vec<f64> = samples.iter().map(f).collect();
                v.sort_by(|a, b| a.total_cmp(b));
                v[v.len() / 2]
            };
            let r = Rates {
                gbits: med(|r| r.gbits),
                rr: med(|r| r.rr),
                crr: med(|r| r.crr),
                cpu_rr: med(|r| r.cpu_rr),
                cpu_crr: med(|r| r.cpu_crr),
            };
            if name == "conntrack only" {
                floor = Some(r);
            }
            let ratio = |x: f64, f: Option<f64>| f.map_or("-".to_string(), |f| format!("{:.3}", x / f));
            writeln!(
                out,
                "{path:<12} {name:<26} {:>9.2} {:>10.0} {:>10.0} {:>8} {:>8} {:>8} {:>9.1} {:>9.1} {:>9} {:>9}",
                r.gbits,
                r.rr,
                r.crr,
                ratio(r.rr, floor.map(|f| f.rr)),
                ratio(r.crr, floor.map(|f| f.crr)),
                ratio(r.gbits, floor.map(|f| f.gbits)),
                r.cpu_rr,
                r.cpu_crr,
                // The floor's CPU per operation over this one: 0.97 means
                // 3% more CPU than conntrack alone.
                floor.map_or("-".to_string(), |f| format!("{:.3}", f.cpu_rr / r.cpu_rr)),
                floor.map_or("-".to_string(), |f| format!("{:.3}", f.cpu_crr / r.cpu_crr)),
            )?;
            out.flush()?;
        }
    }
    drop(lab);
    apply_times_unless_skipped(args, out)
}

fn apply_times_unless_skipped(args: &BenchDataplaneArgs, out: &mut dyn Write) -> Result<()> {
    if args.no_apply_times {
        return Ok(());
    }
    apply_times(args, out)
}

/// Puts configuration `entries` in force: no table or the conntrack-only
/// floor (`None`, by `name`), or Palisade with `n` peer entries.
pub(super) fn set_config(lab: &mut Lab, cluster: &Cluster, name: &str, entries: Option<usize>) -> Result<()> {
    match entries {
        None => set_floor(lab, if name == "no filtering" { "none" } else { "conntrack" })?,
        Some(n) => {
            set_floor(lab, "none")?;
            lab.update(cluster)?;
            for p in phantoms(n) {
                lab.engine.upsert_endpoint(p);
            }
            lab.engine.compile();
            lab.forget_rules()?;
            lab.apply()?;
            set_sender_checks(lab, true)?;
        }
    }
    // Let the kernel free a replaced table's objects first (RCU, set
    // teardown), or that is measured as the new configuration's cost.
    std::thread::sleep(Duration::from_secs(2));
    Ok(())
}

/// Every round measures every configuration once, one after the other, in
/// an order rotated by one each round (so no configuration always follows
/// the same one, or always comes first); each configuration's ratio to the
/// conntrack floor is taken within the round, and the median ratio over
/// rounds is reported with its interquartile range.
fn interleaved(
    lab: &mut Lab,
    cluster: &Cluster,
    configs: &[(String, Option<usize>)],
    paths: &[BenchPath],
    args: &BenchDataplaneArgs,
    out: &mut dyn Write,
) -> Result<()> {
    let pod = |name: &str| lab.topology.plan.pods.iter().find(|p| p.key.name == name).expect("bench pod").clone();
    let client = Netns::named(&pod("client").netns);
    // samples[path][config][round]
    let mut samples: Vec<Vec<Vec<Rates>>> = vec![vec![Vec::new(); configs.len()]; paths.len()];
    for round in 0..args.rounds {
        for k in 0..configs.len() {
            let c = (round + k) % configs.len();
            let (name, entries) = &configs[c];
            set_config(lab, cluster, name, *entries)?;
            for (p, path) in paths.iter().enumerate() {
                samples[p][c].push(path.measure(&client, args.seconds)?);
            }
        }
        eprintln!("round {}/{} measured", round + 1, args.rounds);
    }
    let floor = configs.iter().position(|(n, _)| n == "conntrack only").expect("the floor is measured");
    writeln!(
        out,
        "dataplane bench, interleaved: {} rounds, each measuring every configuration in turn ({:.1} s each);
ratios are the median over rounds of (configuration / conntrack floor of the same round) [interquartile range];
cpu columns: the floor's CPU time per operation / this configuration's (below 1: more CPU than the floor)",
        args.rounds, args.seconds
    )?;
    writeln!(
        out,
        "{:<12} {:<26} {:>20} {:>20} {:>20} {:>20} {:>20}",
        "path", "configuration", "RR/ct", "CRR/ct", "Gbit/ct", "ct/RRcpu", "ct/CRRcpu"
    )?;
    for (p, path) in paths.iter().enumerate() {
        for (c, (name, _)) in configs.iter().enumerate() {
            let pairs = || samples[p][c].iter().zip(&samples[p][floor]);
            let summary = |v: Vec<f64>| {
                let (m, q1, q3) = median_iqr(v);
                format!("{m:.3} [{q1:.2}-{q3:.2}]")
            };
            writeln!(
                out,
                "{:<12} {name:<26} {:>20} {:>20} {:>20} {:>20} {:>20}",
                path.name,
                summary(pairs().map(|(x, f)| x.rr / f.rr).collect()),
                summary(pairs().map(|(x, f)| x.crr / f.crr).collect()),
                summary(pairs().map(|(x, f)| x.gbits / f.gbits).collect()),
                summary(pairs().map(|(x, f)| f.cpu_rr / x.cpu_rr).collect()),
                summary(pairs().map(|(x, f)| f.cpu_crr / x.cpu_crr).collect()),
            )?;
        }
    }
    Ok(())
}

/// Median and quartiles (nearest rank) of a non-empty sample.
pub(super) fn median_iqr(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.25), at(0.75))
}

/// Full apply and single-pod change on a generated cluster, in a scratch
/// namespace: compile + render + `nft -f`, end to end.
fn apply_times(args: &BenchDataplaneArgs, out: &mut dyn Write) -> Result<()> {
    let spec = Spec { namespaces: 100, pods: args.pods, policies: args.policies, seed: 1 };
    let (cluster, problems, _) =
        Cluster::from_manifests(parse_sources(&[Source { name: "gen.yaml".into(), text: generate(&spec) }]));
    anyhow::ensure!(problems.is_empty(), "generated cluster is invalid");
    let mut engine = Engine::from_cluster(&cluster);
    let ns = OwnedNetns::create(&format!("pal-{}b-apply", std::process::id()))?;
    let opts = Options::new(DenyAction::Drop);
    // The node of the generated cluster's first pod, and its pods.
    let node = cluster.endpoints.first().and_then(|e| e.node.clone());
    let local = |engine: &Engine, id| engine.endpoint(id).node == node;
    let iface = |engine: &Engine, id| local(engine, id).then(String::new);
    let start = Instant::now();
    let mut compiler = NodeCompiler::new(opts.clone());
    let tx = compiler.resync(&engine, &|id| iface(&engine, id));
    let compiled = start.elapsed();
    tx.apply_in(Some(&ns.name))?;
    let full_time = start.elapsed();
    if let Ok(dir) = std::env::var("PALISADE_BENCH_DUMP") {
        std::fs::write(format!("{dir}/full.nft"), tx.render())?;
    }
    let full = compiler.ruleset();
    let elements: usize = full.sets.values().map(|(_, e)| e.len()).sum();
    writeln!(
        out,
        "\nfull apply, {} pods / {} policies, node {}: {} sets, {} elements, {} chains: {:.0} ms (compile {:.0} ms)",
        args.pods,
        args.policies,
        node.as_deref().unwrap_or("-"),
        full.sets.len(),
        elements,
        full.chains.len(),
        full_time.as_secs_f64() * 1e3,
        compiled.as_secs_f64() * 1e3
    )?;
    // Single-pod changes on this node, ten of each kind, end to end
    // (engine update + incremental compile + kernel). Pods added, deleted,
    // or relabelled without a change of policy touch only set and map
    // elements; a relabel into another app's policies may need chains no
    // local pod used yet, and a relabel into an app with no pod on this
    // node always does. All of it goes over netlink.
    let locals: Vec<_> = engine.endpoints().filter(|(id, _)| local(&engine, *id)).map(|(_, e)| e.clone()).collect();
    anyhow::ensure!(locals.len() >= 20, "the node has fewer than 20 pods");
    let app = |e: &Endpoint| e.labels.get("app").cloned();
    // Apps of the namespace that no local pod runs: their policies' chains
    // are not on this node.
    let local_apps: std::collections::BTreeSet<(String, Option<String>)> =
        locals.iter().map(|e| (e.key.namespace.clone(), app(e))).collect();
    let elsewhere: Vec<Endpoint> = engine
        .endpoints()
        .filter(|(id, _)| !local(&engine, *id))
        .map(|(_, e)| e.clone())
        .filter(|e| !local_apps.contains(&(e.key.namespace.clone(), app(e))))
        .collect();
    let kinds: [(&str, &MakeChange); 5] = [
        ("pod added", &|i, ep| {
            let mut new = ep.clone();
            new.key.name = format!("bench-new-{i}");
            new.ips = vec![std::net::IpAddr::from([10, 255, 200, i as u8])];
            Change::Upsert(new)
        }),
        ("pod deleted", &|i, ep| Change::Remove(EndpointKey { name: format!("bench-new-{i}"), ..ep.key.clone() })),
        ("pod relabelled, same policies (new identity)", &|i, ep| {
            let mut new = ep.clone();
            new.labels.insert("pod-template-hash".into(), format!("bench-{i}"));
            Change::Upsert(new)
        }),
        ("pod relabelled into another app", &|i, ep| {
            let other = locals.iter().skip(i + 1).find(|o| app(o) != app(ep) && o.key.namespace == ep.key.namespace);
            let mut new = ep.clone();
            new.labels = other.map_or_else(|| ep.labels.clone(), |o| o.labels.clone());
            Change::Upsert(new)
        }),
        ("pod relabelled into an app not on this node", &|i, ep| {
            let other = elsewhere.iter().filter(|o| o.key.namespace == ep.key.namespace).nth(i);
            let mut new = ep.clone();
            new.labels = other.map_or_else(|| ep.labels.clone(), |o| o.labels.clone());
            Change::Upsert(new)
        }),
    ];
    let mut session = NetlinkSession::new(Some(&ns.name));
    for (kind, make) in kinds {
        let (mut times, mut compile_times, mut ops, mut fast, mut new_chains) = (Vec::new(), Vec::new(), 0, 0, 0);
        for (i, ep) in locals.iter().take(10).enumerate() {
            let change = make(i, ep);
            let start = Instant::now();
            match change {
                Change::Upsert(ep) => drop(engine.upsert_endpoint(ep)),
                Change::Remove(key) => drop(engine.remove_endpoint(&key)),
            }
            let changes = engine.compile();
            let update = compiler.update(&engine, &changes, &|id| iface(&engine, id));
            compile_times.push(start.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(update.full.is_none(), "the update was not incremental: {:?}", update.full);
            ops += update.transaction.ops.len();
            fast += usize::from(update.netlink.is_some());
            let adds_chain = |op: &palisade_dataplane::nft::Op| matches!(op, palisade_dataplane::nft::Op::AddChain(_));
            new_chains += usize::from(update.transaction.ops.iter().any(adds_chain));
            update.apply(&mut session)?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        compile_times.sort_by(|a, b| a.total_cmp(b));
        writeln!(
            out,
            "single-pod change, {kind}: median {:.1} ms, max {:.1} ms end to end (compile {:.2} ms; {} ops; \
             {new_chains}/10 added a chain; {fast}/10 over netlink)",
            times[5],
            times[9],
            compile_times[5],
            ops / 10
        )?;
    }
    element_floor(&mut session, out)
}

/// The kernel's own cost of one element added and one removed over
/// netlink, in a table with one empty set: the floor under a single-pod
/// change.
fn element_floor(session: &mut NetlinkSession, out: &mut dyn Write) -> Result<()> {
    use palisade_dataplane::nfnetlink::NetlinkBatch;
    use palisade_dataplane::nft::{run_nft_in, KeyType, Op, Transaction};
    run_nft_in(session.netns(), &["-f", "-"], Some("table inet floor {\n set s { type ipv4_addr; }\n}\n"))?;
    let keys = |_: &str| Some(KeyType(vec!["ipv4_addr"]));
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    for i in 0..10u8 {
        for (add, times) in [(true, &mut adds), (false, &mut dels)] {
            let elements = vec![format!("10.9.9.{i}")];
            let op = if add {
                Op::AddElements { set: "s".into(), elements }
            } else {
                Op::DeleteElements { set: "s".into(), elements }
            };
            let mut tx = Transaction::new("floor");
            tx.push(op);
            let batch = NetlinkBatch::from_transaction(&tx, keys)?.expect("element batch");
            let start = Instant::now();
            session.apply(&batch)?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    adds.sort_by(|a, b| a.total_cmp(b));
    dels.sort_by(|a, b| a.total_cmp(b));
    writeln!(
        out,
        "kernel floor, one element in an otherwise empty table over netlink: add median {:.2} ms, delete median {:.2} ms",
        adds[5], dels[5]
    )?;
    Ok(())
}

/// A single-pod change of the i-th local pod.
type MakeChange<'a> = dyn Fn(usize, &Endpoint) -> Change + 'a;

enum Change {
    Upsert(Endpoint),
    Remove(EndpointKey),
}
