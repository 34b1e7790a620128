//! `palisade bench gen`: realistic generated clusters for benchmarks.
//!
//! Shape, from what production clusters look like: namespaces per team and
//! environment; workloads of several replicas sharing labels (app, tier,
//! version) and named container ports; a default-deny in most namespaces;
//! allow rules by pod selector, by namespace+pod selector, by ipBlock with
//! except, named ports, port ranges, egress with DNS. Deterministic per seed.

use std::fmt::Write;

/// splitmix64: tiny, fast, and the same on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A named container port: name, protocol, number.
type NamedPort = (&'static str, &'static str, u16);

const TIERS: &[(&str, &[NamedPort])] = &[
    ("frontend", &[("http", "TCP", 8080), ("metrics", "TCP", 9090)]),
    ("backend", &[("http", "TCP", 8080), ("grpc", "TCP", 9000), ("metrics", "TCP", 9090)]),
    ("db", &[("postgres", "TCP", 5432), ("metrics", "TCP", 9187)]),
    ("cache", &[("redis", "TCP", 6379)]),
    ("worker", &[("metrics", "TCP", 9090)]),
    ("dns", &[("dns", "UDP", 53), ("dns-tcp", "TCP", 53)]),
];
const ENVS: &[&str] = &["prod", "prod", "staging", "dev"];

struct App {
    namespace: usize,
    name: String,
    tier: usize,
}

pub struct Spec {
    pub namespaces: usize,
    pub pods: usize,
    pub policies: usize,
    pub seed: u64,
}

impl Spec {
    /// The benches' first line: what was generated.
    pub fn describe(&self, yaml_bytes: usize) -> String {
        format!(
            "cluster: {} namespaces, {} pods, {} policies, {yaml_bytes} bytes of YAML",
            self.namespaces, self.pods, self.policies
        )
    }
}

/// The cluster as multi-document YAML.
pub fn generate(spec: &Spec) -> String {
    let mut rng = Rng::new(spec.seed);
    let mut out = String::with_capacity(spec.pods * 700 + spec.policies * 900);
    let ns_count = spec.namespaces.max(1);
    let ns_name = |i: usize| format!("team-{i}");
    for i in 0..ns_count {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n  labels:\n    team: t{}\n    env: {}\n",
            ns_name(i),
            i,
            ENVS[i % ENVS.len()]
        );
    }
    // Workloads of 1-8 replicas; every namespace gets some.
    let mut apps = Vec::new();
    let mut pod = 0usize;
    while pod < spec.pods {
        let namespace = apps.len() % ns_count;
        let tier = if apps.len() < ns_count && namespace == 0 { 5 } else { rng.below(TIERS.len() - 1) };
        let app = App { namespace, name: format!("{}-{}", TIERS[tier].0, apps.len()), tier };
        let replicas = (1 + rng.below(8)).min(spec.pods - pod);
        for r in 0..replicas {
            let ip = 0x0a00_0000u32 + 256 + pod as u32; // 10.0.1.0 upwards
            let node = pod % 10;
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}-{r}\n  namespace: {ns}\n  labels:\n    app: {name}\n    tier: {tier}\n    version: v{v}\nspec:\n  nodeName: node-{node}\n  containers:\n  - name: main\n    image: registry.example/{tier}:1\n    ports:\n",
                name = app.name,
                ns = ns_name(namespace),
                tier = TIERS[tier].0,
                v = 1 + (apps.len() % 3),
            );
            for (pname, proto, port) in TIERS[tier].1 {
                let _ = write!(out, "    - name: {pname}\n      containerPort: {port}\n      protocol: {proto}\n");
            }
            let _ = write!(out, "status:\n  podIP: {}\n", std::net::Ipv4Addr::from(ip));
            pod += 1;
        }
        apps.push(app);
    }
    // Policies: a default-deny per namespace first (most namespaces), then allows.
    let mut written = 0usize;
    for i in 0..ns_count {
        if written >= spec.policies || i % 5 == 4 {
            continue;
        }
        let egress = i % 3 == 0;
        let _ = write!(
            out,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: default-deny\n  namespace: {}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress{}]\n",
            ns_name(i),
            if egress { ", Egress" } else { "" }
        );
        written += 1;
        if egress && written < spec.policies {
            let _ = write!(
                out,
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-dns\n  namespace: {}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector:\n        matchLabels:\n          team: t0\n      podSelector:\n        matchLabels:\n          tier: dns\n    ports:\n    - protocol: UDP\n      port: 53\n    - protocol: TCP\n      port: 53\n",
                ns_name(i)
            );
            written += 1;
        }
    }
    let mut k = 0usize;
    while written < spec.policies && !apps.is_empty() {
        let target = &apps[rng.below(apps.len())];
        let ns = ns_name(target.namespace);
        let _ = write!(
            out,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-{}-{k}\n  namespace: {ns}\nspec:\n  podSelector:\n    matchLabels:\n      app: {}\n",
            target.name, target.name
        );
        let kind = rng.below(10);
        let ports = TIERS[target.tier].1;
        let (pname, proto, pnum) = *rng.pick(ports);
        out.push_str("  ingress:\n  - from:\n");
        match kind {
            // Same-namespace caller by app label.
            0..=3 => {
                let peer = same_namespace_app(&apps, target.namespace, &mut rng);
                let _ = write!(out, "    - podSelector:\n        matchLabels:\n          app: {peer}\n");
            }
            // Cross-namespace: namespace labels AND pod tier.
            4..=5 => {
                let other = rng.below(ns_count);
                let _ = write!(
                    out,
                    "    - namespaceSelector:\n        matchLabels:\n          team: t{other}\n      podSelector:\n        matchExpressions:\n        - key: tier\n          operator: In\n          values: [frontend, backend]\n"
                );
            }
            // Monitoring from every prod namespace.
            6 => {
                out.push_str("    - namespaceSelector:\n        matchExpressions:\n        - key: env\n          operator: In\n          values: [prod]\n      podSelector:\n        matchLabels:\n          tier: worker\n");
            }
            // External clients by CIDR with a carve-out.
            7..=8 => {
                let a = 1 + rng.below(200);
                let _ = write!(
                    out,
                    "    - ipBlock:\n        cidr: 198.{a}.0.0/16\n        except:\n        - 198.{a}.{}.0/24\n",
                    rng.below(256)
                );
            }
            // The tier below, plus a whole-namespace peer.
            _ => {
                out.push_str("    - podSelector:\n        matchLabels:\n          tier: frontend\n    - namespaceSelector:\n        matchLabels:\n          env: staging\n");
            }
        }
        out.push_str("    ports:\n");
        if rng.chance(50) {
            let _ = write!(out, "    - protocol: {proto}\n      port: {pname}\n");
        } else if rng.chance(30) {
            let _ = write!(
                out,
                "    - protocol: {proto}\n      port: {pnum}\n      endPort: {}\n",
                pnum.saturating_add(10)
            );
        } else {
            let _ = write!(out, "    - protocol: {proto}\n      port: {pnum}\n");
        }
        written += 1;
        k += 1;
    }
    out
}

fn same_namespace_app(apps: &[App], ns: usize, rng: &mut Rng) -> String {
    for _ in 0..8 {
        let a = &apps[rng.below(apps.len())];
        if a.namespace == ns {
            return a.name.clone();
        }
    }
    apps.iter().find(|a| a.namespace == ns).map(|a| a.name.clone()).unwrap_or_default()
}

/// `n` random TCP flows between the engine's endpoints on typical ports:
/// the verdict-query workload of both benchmarks.
pub fn random_flows(engine: &palisade_engine::Engine, n: usize, seed: u64) -> Vec<palisade_engine::Flow> {
    use palisade_engine::{Flow, FlowEnd};
    let ids: Vec<_> = engine.endpoints().map(|(id, _)| id).collect();
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| Flow {
            src: FlowEnd::Endpoint(ids[rng.below(ids.len())]),
            dst: FlowEnd::Endpoint(ids[rng.below(ids.len())]),
            protocol: palisade_model::Protocol::Tcp,
            port: *rng.pick(&[53u16, 5432, 6379, 8080, 9090]),
        })
        .collect()
}
