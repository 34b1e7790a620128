//! The lab as a deployment runs: a `palisade agent` process per node, pods
//! wired by executing `palisade-cni`. While probe threads connect between
//! pods, pods come and go, labels and policies change, and agents are
//! killed (SIGKILL) and restarted; no probe may succeed that the engine
//! forbade in every state the kernels could hold during it. And a pod is
//! never reachable before its policy is in the kernel. Needs root.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_dataplane::netns::Netns;
use palisade_dataplane::DenyAction;
use palisade_engine::Engine;
use palisade_lab::probe::connect_tcp;
use palisade_lab::{AgentSetup, Lab, LabOptions};
use palisade_model::{parse_sources, Cluster, EndpointKey, Source};
use palisade_testkit::churn::{judge, Rng, Seen, World};
use palisade_testkit::privileged;

const SLOTS: usize = 8;
const CHANGES: usize = 240;

fn cluster(text: &str) -> Cluster {
    let (c, problems, _) =
        Cluster::from_manifests(parse_sources(&[Source { name: "test.yaml".into(), text: text.into() }]));
    assert!(problems.is_empty(), "{problems:?}");
    c
}

fn options() -> LabOptions {
    LabOptions {
        deny: DenyAction::Reject,
        agents: Some(AgentSetup { palisade: env!("CARGO_BIN_EXE_palisade").into() }),
        ..LabOptions::default()
    }
}

type Pods = Arc<Mutex<Vec<(EndpointKey, Netns, SocketAddr)>>>;

fn current_pods(lab: &Lab) -> Vec<(EndpointKey, Netns, SocketAddr)> {
    let plan = &lab.topology.plan;
    plan.pods.iter().map(|p| (p.key.clone(), Netns::named(&p.netns), SocketAddr::new(p.ips[0], 80))).collect()
}

#[test]
fn churn_with_pods_coming_and_going_and_agents_killed() {
    if !privileged("lab with agents: churn") {
        return;
    }
    let seed = 0x5eed_a6e7u64;
    let mut rng = Rng(seed);
    let mut world = World::new(SLOTS, 6, 4);
    for k in 0..2 {
        world.policies[k] = Some(world.random_policy(&mut rng, k));
    }
    let run_id = format!("{}ag", std::process::id());
    let mut lab = Lab::start(&cluster(&world.manifests()), &run_id, &[], options(), |_, _| {}).unwrap();
    lab.apply().unwrap();

    let states: Arc<Mutex<Vec<Cluster>>> = Arc::new(Mutex::new(vec![lab.cluster.clone()]));
    let applied = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let pods: Pods = Arc::new(Mutex::new(current_pods(&lab)));
    let mut probers = Vec::new();
    for t in 0..4u64 {
        let (pods, applied, stop) = (pods.clone(), applied.clone(), stop.clone());
        probers.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9 + t);
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let snapshot = pods.lock().unwrap().clone();
                let (s, d) = (rng.below(snapshot.len()), rng.below(snapshot.len()));
                if s == d {
                    continue;
                }
                let (src, dst) = (&snapshot[s], &snapshot[d]);
                let from = applied.load(Ordering::SeqCst);
                let connected = connect_tcp(&src.1, dst.2, Duration::from_millis(1000))
                    .is_ok_and(|(_, greeting)| greeting == dst.0.to_string());
                let to = applied.load(Ordering::SeqCst);
                seen.push(Seen { src: src.0.clone(), dst: dst.0.clone(), from, to, connected });
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        }));
    }

    let started = Instant::now();
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut restarts = 0;
    for i in 1..=CHANGES {
        *kinds.entry(world.change(&mut rng, true)).or_default() += 1;
        let next = cluster(&world.manifests());
        // Probers stop picking pods about to go (their probes in flight
        // may fail: a failure is never a violation).
        let keys: Vec<EndpointKey> = next.endpoints.iter().map(|e| e.key.clone()).collect();
        pods.lock().unwrap().retain(|p| keys.contains(&p.0));
        lab.update(&next).unwrap();
        states.lock().unwrap().push(lab.cluster.clone());
        lab.apply().unwrap_or_else(|e| panic!("change {i}: {e}: {:?}", std::error::Error::source(&e)));
        applied.store(i, Ordering::SeqCst);
        *pods.lock().unwrap() = current_pods(&lab);
        if i % 40 == 20 {
            // Kill a node's agent mid-churn; its successor takes over.
            let node = (i / 40) % lab.topology.plan.nodes.len();
            lab.agents().unwrap().restart(node).unwrap();
            restarts += 1;
        }
    }
    let churn = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Seen> = probers.into_iter().flat_map(|p| p.join().unwrap()).collect();
    assert!(lab.agents().unwrap().all_running(), "an agent died during the churn");

    let engines: Vec<Engine> = states.lock().unwrap().iter().map(Engine::from_cluster).collect();
    let (violations, wrongly_denied) = judge(&seen, &engines);
    let connected = seen.iter().filter(|s| s.connected).count();
    eprintln!(
        "churn with agents (seed {seed:#x}): {CHANGES} changes {kinds:?} and {restarts} agent kills in {:.1} s ({:.1} ms each), {} probes ({connected} connected), {} violations, {wrongly_denied} allowed probes refused",
        churn.as_secs_f64(),
        churn.as_secs_f64() * 1000.0 / CHANGES as f64,
        seen.len(),
        violations.len(),
    );
    assert!(kinds.get("pod added").copied().unwrap_or(0) > 10 && kinds.get("pod removed").copied().unwrap_or(0) > 10);
    assert!(seen.len() > 1000, "the probe loop barely ran: {} probes", seen.len());
    assert!(connected > 100 && connected < seen.len(), "the changes should both allow and deny");
    assert!(violations.is_empty(), "{} probes got through:\n{}", violations.len(), violations.join("\n"));
    assert_eq!(wrongly_denied, 0, "probes refused although every state in their window allowed them");
}

const BASE: &str = "
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec: {nodeName: lab-node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: x, labels: {app: other}}
spec: {nodeName: lab-node-2, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
";

const DB: &str = "
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: x, labels: {app: db}}
spec: {nodeName: lab-node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
";

#[test]
fn a_pod_is_never_reachable_before_its_policy() {
    if !privileged("lab with agents: a new pod is unreachable until its policy is in place") {
        return;
    }
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let run_id = format!("{}fc", std::process::id());
    let mut lab = Lab::start(&cluster(BASE), &run_id, &[], options(), |_, _| {}).unwrap();
    lab.apply().unwrap();
    lab.update(&cluster(&format!("{BASE}{DB}"))).unwrap();
    lab.publish().unwrap();
    let new = lab.start_new_pods().unwrap();
    let db = lab.topology.plan.pods[new[0]].clone();
    let addr = SocketAddr::new(db.ips[0], 80);
    let from = |name: &str| {
        let p = lab.topology.plan.pods.iter().find(|p| p.key.name == name).unwrap();
        Netns::named(&p.netns)
    };
    let (web, other) = (from("web"), from("other"));

    // Freeze db's node's agent: the plugin wires the pod, then waits for a
    // confirmation that cannot come. Probe db all that time, from a pod its
    // policy allows and one it does not: nothing may get through.
    let agent = Pid::from_raw(lab.agents().unwrap().pid(db.node).unwrap() as i32);
    kill(agent, Signal::SIGSTOP).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let (web, other) = (web.clone(), other.clone());
        std::thread::spawn(move || {
            let (mut tries, mut through) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for (name, ns) in [("web", &web), ("other", &other)] {
                    tries += 1;
                    if connect_tcp(ns, addr, Duration::from_millis(200)).is_ok() {
                        through.push(name);
                    }
                }
            }
            (tries, through)
        })
    };
    let started = Instant::now();
    let err = lab.wire_pods(&new).expect_err("ADD must fail while the agent cannot confirm").to_string();
    let waited = started.elapsed();
    kill(agent, Signal::SIGCONT).unwrap();
    stop.store(true, Ordering::Relaxed);
    let (tries, through) = prober.join().unwrap();
    eprintln!("ADD refused after {waited:?}: {err}; {tries} probes meanwhile, {} got through", through.len());
    assert!(err.contains("\"code\":101"), "the plugin fails closed with PolicyNotReady: {err}");
    assert!(tries > 10, "the pod was probed while it was wired: {tries} probes");
    assert!(through.is_empty(), "db was reachable before its policy: {} of {tries} probes got through", through.len());
    assert!(
        !Netns::named(&lab.topology.plan.nodes[db.node].netns)
            .exec("ip", &["-o", "link"], None)
            .unwrap()
            .contains(&db.host_if),
        "a refused ADD leaves no link behind"
    );

    // The agent is back: ADD again succeeds, and db is reachable exactly
    // as its policy says.
    lab.wire_pods(&new).unwrap();
    assert!(connect_tcp(&web, addr, Duration::from_millis(1000)).is_ok(), "web -> db is allowed");
    assert!(connect_tcp(&other, addr, Duration::from_millis(1000)).is_err(), "other -> db is denied");

    // The agent's memory of its pods is destroyed and it is killed: its
    // successor takes the pods back from the kernel's own record, so the
    // node's pods keep their network and their policy.
    // db's veth also loses its sender check, as if wired by an older
    // plugin: the successor puts it back.
    let node_ns = Netns::named(&lab.topology.plan.nodes[db.node].netns);
    let db_if = lab.topology.plan.pods.iter().find(|p| p.key.name == "db").unwrap().host_if.clone();
    let agents = lab.agents().unwrap();
    std::fs::write(agents.state_file(db.node), "not json").unwrap();
    palisade_dataplane::sender::detach_in(&node_ns, &db_if).unwrap();
    agents.restart(db.node).unwrap();
    assert!(connect_tcp(&web, addr, Duration::from_millis(1000)).is_ok(), "web -> db is still allowed");
    assert!(connect_tcp(&other, addr, Duration::from_millis(1000)).is_err(), "other -> db is still denied");
    assert!(
        palisade_dataplane::sender::is_attached_in(&node_ns, &db_if, &db.ips).unwrap(),
        "db's sender check is back"
    );
    let web_pod = lab.topology.plan.pods.iter().find(|p| p.key.name == "web").unwrap().clone();
    let web_addr = SocketAddr::new(web_pod.ips[0], 80);
    assert!(connect_tcp(&other, web_addr, Duration::from_millis(1000)).is_ok(), "web (same node) still reachable");
}

const TENANT_Y: &str = "
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: y, labels: {app: api}}
spec: {nodeName: lab-node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: y, labels: {app: client}}
spec: {nodeName: lab-node-2, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
";

/// Tenant x's new policy: nothing may reach `other`.
const X_ISOLATES_OTHER: &str = "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: other-closed, namespace: x}
spec: {podSelector: {matchLabels: {app: other}}, policyTypes: [Ingress]}
";

/// Tenant y's policy, unreadable (a /33 CIDR).
const BROKEN: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: y}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]
";

#[test]
fn a_bad_object_closes_only_what_it_could_affect() {
    if !privileged("lab with agents: one tenant's bad object") {
        return;
    }
    let run_id = format!("{}bo", std::process::id());
    let mut lab = Lab::start(&cluster(&format!("{BASE}{TENANT_Y}")), &run_id, &[], options(), |_, _| {}).unwrap();
    lab.apply().unwrap();
    let manifests = std::path::Path::new(palisade_lab::agents::AGENTS_DIR).join(&run_id).join("manifests");
    let judged_by = |lab: &mut Lab, cluster: &Cluster| {
        lab.engine = Engine::from_cluster(cluster);
        let results = lab.probe(&[(palisade_model::Protocol::Tcp, 80)]);
        let wrong: Vec<String> = results
            .iter()
            .filter(|r| !r.agrees())
            .map(|r| format!("{} -> {}: {:?}, engine allows: {}", r.src, r.dst, r.outcome, r.engine_allows))
            .collect();
        assert!(wrong.is_empty(), "the kernels disagree with the engine:\n{}", wrong.join("\n"));
        results
    };
    let allowed = |results: &[palisade_lab::ProbeResult], ns: &str| {
        results.iter().filter(|r| r.src.namespace == ns || r.dst.namespace == ns).filter(|r| r.engine_allows).count()
    };

    // Tenant y writes a policy no agent can read.
    std::fs::write(manifests.join("broken.yaml"), BROKEN).unwrap();
    // Meanwhile tenant x adds a pod and a policy: published (every agent
    // applied them and is ready), and the new pod starts.
    lab.update(&cluster(&format!("{BASE}{TENANT_Y}{DB}{X_ISOLATES_OTHER}"))).unwrap();
    lab.publish().expect("every agent converges despite y's bad object");
    let new = lab.start_new_pods().unwrap();
    lab.wire_pods(&new).expect("a new pod of x starts despite y's bad object");

    // y is closed: its pods isolated both ways; x is as its policies say.
    let mut closed = lab.cluster.clone();
    closed.policies.push(palisade_model::stand_in::deny_all("y", "broken"));
    let results = judged_by(&mut lab, &closed);
    assert_eq!(allowed(&results, "y"), 0, "y's pods are isolated both ways");
    assert!(allowed(&results, "x") >= 3, "x's pods still talk as their policies allow");
    let to_other = results.iter().find(|r| r.src.name == "web" && r.dst.name == "other").unwrap();
    assert!(!to_other.engine_allows && to_other.agrees(), "x's new policy is in force: {to_other:?}");

    // Each agent names the object.
    for node in 0..2 {
        let socket = std::path::Path::new(palisade_lab::agents::AGENTS_DIR).join(&run_id).join(format!("n{node}.sock"));
        let status =
            palisade_agent::cni_socket::call(&socket, &serde_json::json!({"op": "status"}), Duration::from_secs(5))
                .unwrap();
        assert_eq!(status["unreadable"], serde_json::json!(["NetworkPolicy y/broken"]), "{status}");
        assert_eq!(status["ready"], serde_json::json!(true), "{status}");
    }

    // Fixed (here: removed): y is open again.
    std::fs::remove_file(manifests.join("broken.yaml")).unwrap();
    lab.publish().unwrap();
    let open = lab.cluster.clone();
    let results = judged_by(&mut lab, &open);
    assert!(allowed(&results, "y") > 0, "y's pods talk again");
}

/// The runtime's ADD usually follows the pod's creation by milliseconds,
/// before the agent's source shows it: ADD waits (bounded by the plugin's
/// timeout) instead of failing the sandbox.
#[test]
fn an_add_waits_for_the_source_to_show_the_pod() {
    if !privileged("lab with agents: ADD before the source shows the pod") {
        return;
    }
    let run_id = format!("{}wt", std::process::id());
    let mut lab = Lab::start(&cluster(BASE), &run_id, &[], options(), |_, _| {}).unwrap();
    lab.apply().unwrap();
    lab.update(&cluster(&format!("{BASE}{DB}"))).unwrap();
    let new = lab.start_new_pods().unwrap();
    let run = palisade_lab::agents::RunDir::of(&lab.topology.plan);
    let started = Instant::now();
    let added = std::thread::scope(|s| {
        let wiring = s.spawn(|| lab.wire_pods(&new));
        // The pod reaches the source 300 ms after its ADD started.
        std::thread::sleep(Duration::from_millis(300));
        run.write(&lab.cluster).unwrap();
        wiring.join().unwrap()
    });
    let took = started.elapsed();
    added.unwrap_or_else(|e| panic!("ADD before the source showed the pod failed: {e}"));
    assert!(took >= Duration::from_millis(300), "ADD returned before the pod was known: {took:?}");
    let db = lab.topology.plan.pods[new[0]].clone();
    let from = |name: &str| {
        let p = lab.topology.plan.pods.iter().find(|p| p.key.name == name).unwrap();
        Netns::named(&p.netns)
    };
    let addr = SocketAddr::new(db.ips[0], 80);
    assert!(connect_tcp(&from("web"), addr, Duration::from_millis(1000)).is_ok(), "web -> db is allowed");
    assert!(connect_tcp(&from("other"), addr, Duration::from_millis(1000)).is_err(), "other -> db is denied");

    // Each node's agent keeps to its node: per-pod state (a pod veth with
    // an address) only for its own pods.
    let plan = &lab.topology.plan;
    for (n, node) in plan.nodes.iter().enumerate() {
        let table = Netns::named(&node.netns).exec("nft", &["list", "table", "inet", "palisade"], None).unwrap();
        for pod in &plan.pods {
            let ip = pod.ips[0].to_string();
            let local = table
                .lines()
                .any(|l| l.contains("\"pal") && (l.contains(&format!(". {ip} ")) || l.contains(&format!(". {ip},"))));
            assert_eq!(local, pod.node == n, "node {n}'s table and pod {} (on node {}):\n{table}", pod.key, pod.node);
        }
    }
}
